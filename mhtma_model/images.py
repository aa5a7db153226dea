"""Reading pictures from disk: images, masks, folders of them, and the one error type for unreadable files.

Every file the project reads (training images, mask files, sketches, ``mhtma-inpaint`` / ``mhtma-eval``
inputs, uploads to ``mhtma-ui``) is opened by :func:`open_image`: fully decoded, EXIF orientation applied,
failures raised as :class:`UnreadableImageError` (an ``OSError``) naming the path.

Image modes handled by :func:`load_rgb` / :func:`to_rgb` (every result is 8-bit RGB):

- RGB as is; L / 1 / P (palette) / CMYK / YCbCr / LAB / HSV through Pillow's conversion;
- 16-bit grey (``I;16*``, and ``I`` when its values exceed 255) scaled by 255/65535; float (``F``)
  taken as [0, 1] when its maximum is <= 1, else as [0, 255];
- an alpha channel (RGBA, LA, PA, palette or grey with a transparency key) is composited on a
  **white** background (transparent regions of product shots and logos are usually white).

Masks (:func:`mask_from_image`, :func:`load_mask`): a pixel is a hole when its value is > 127 (rule in
:func:`mask_from_image`); convention everywhere: 1 = hole.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image, ImageOps

#: File suffixes treated as images (case-insensitive).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
MASK_THRESHOLD = 127  # mask files: value (or alpha) > 127 = hole


class UnreadableImageError(OSError):
    """An image file that Pillow cannot decode (message names the path and Pillow's reason)."""


# ------------------------------------------------------------------------------------------- files

def list_images(root) -> list[Path]:
    """All image files under ``root`` (recursive; suffixes :data:`IMAGE_SUFFIXES`, any case), sorted by
    their path relative to root. Hidden files (name starting with ".") are skipped.
    Raises FileNotFoundError if ``root`` is not a folder."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a folder")
    found = [p for p in root.rglob("*")
             if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def no_images_found(root, what: str) -> str:
    """The one message for a folder without images: ``what`` (e.g. "data.root", "--image folder") and
    ``root``, saying what was searched for, so the user can tell a wrong folder from wrong file types."""
    return (f"{what} {root}: found no images (searched it and its sub-folders for "
            f"{' '.join(IMAGE_SUFFIXES)} files, any case; hidden files are skipped)")


def pair_key(path: Path, root: Path) -> str:
    """The name that pairs files across folders: ``path`` relative to ``root``, without extension."""
    return path.relative_to(root).with_suffix("").as_posix()


def files_by_key(root: Path) -> dict[str, list[Path]]:
    """The images under ``root`` (recursive) grouped by :func:`pair_key`."""
    keyed: dict[str, list[Path]] = {}
    for path in list_images(root):
        keyed.setdefault(pair_key(path, root), []).append(path)
    return keyed


def open_image(path, min_side: int | None = None,
               check_header: Optional[Callable[[Image.Image], object]] = None) -> Image.Image:
    """Open and fully decode ``path`` with EXIF orientation applied; UnreadableImageError on failure.

    ``min_side``: JPEGs are decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides
    >= ``min_side`` (much faster for large photos that are resized down anyway); other formats ignore it.
    ``check_header``: called with the opened, not yet decoded image (size and mode known) before the
    pixels are decoded; its exceptions propagate unchanged (the UI refuses huge uploads this way).
    """
    try:
        image = Image.open(path)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(f"cannot read image {path}: {error}") from error
    with image:
        if check_header is not None:
            check_header(image)
        try:
            if min_side is not None and image.format == "JPEG":
                image.draft(image.mode, (min_side, min_side))
            image.load()
            return ImageOps.exif_transpose(image)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise UnreadableImageError(f"cannot read image {path}: {error}") from error


# ------------------------------------------------------------------------------------------- modes

def has_transparency(img: Image.Image) -> bool:
    """True for modes with an alpha channel and palette images with a transparent colour."""
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info)


def to_8bit(image: Image.Image) -> Image.Image:
    """16-bit (``I;16*``, ``I``) and float (``F``) single-channel images -> 8-bit ``L``; others unchanged."""
    if image.mode.startswith("I;16"):
        values = np.asarray(image).astype(np.float64) * (255.0 / 65535.0)
    elif image.mode == "I":
        values = np.asarray(image).astype(np.float64)
        if values.max(initial=0) > 255:
            values = values * (255.0 / 65535.0)
    elif image.mode == "F":
        values = np.asarray(image).astype(np.float64)
        finite = values[np.isfinite(values)]
        if finite.size and finite.max() <= 1.0:
            values = values * 255.0
    else:
        return image
    values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow image -> 8-bit RGB (rules in the module docstring)."""
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if has_transparency(image) or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return to_8bit(image).convert("RGB")


def load_rgb(path, min_side: int | None = None) -> Image.Image:
    """Read ``path`` as an 8-bit RGB PIL image (any mode, see module docstring); raises
    :class:`UnreadableImageError` naming the path if it cannot be decoded. ``min_side``: see
    :func:`open_image` (reduced-size JPEG decoding; the result keeps both sides >= min_side)."""
    image = open_image(path, min_side)
    try:
        return to_rgb(image)
    except (OSError, ValueError) as error:
        raise UnreadableImageError(f"cannot convert image {path} ({image.mode}) to RGB: {error}") from error


# ------------------------------------------------------------------------------------------- masks

def positive_size(height, width, owner: str) -> tuple[int, int]:
    """``(height, width)`` as ints; ValueError naming ``owner`` unless both are positive ints."""
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
    return int(height), int(width)


def mask_from_image(mask: Image.Image) -> np.ndarray:
    """A mask picture -> bool ``[H, W]`` (True = hole): the project's one rule for mask files.

    A pixel is a hole when its value is > 127: gray masks use the value, RGB masks the largest channel
    (any bright stroke on black), 16/32-bit gray masks are scaled to 0-255 first. A mask with
    transparency where some pixel has alpha < 255 (a layer painted in an editor) uses alpha > 127,
    whatever the colour; a fully opaque RGBA mask is read by its colour.
    """
    if not isinstance(mask, Image.Image):
        raise TypeError(f"mask must be a PIL image, got {type(mask).__name__}")
    if has_transparency(mask):
        alpha = np.asarray(mask.convert("RGBA"))[..., 3]
        if alpha.min() < 255:
            return alpha > MASK_THRESHOLD
    if mask.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(mask, dtype=np.float64)
        peak = 65535.0 if mask.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return arr * (255.0 / peak) > MASK_THRESHOLD
    if mask.mode == "1":
        return np.asarray(mask.convert("L")) > MASK_THRESHOLD
    if mask.mode == "L":
        return np.asarray(mask) > MASK_THRESHOLD
    return np.asarray(mask.convert("RGB")).max(axis=2) > MASK_THRESHOLD


def load_mask(path, size=None) -> np.ndarray:
    """Read a mask image -> float32 ``[H, W]`` in {0, 1} by the rule of :func:`mask_from_image`.

    ``size=(H, W)`` resizes with nearest neighbour (None keeps the file's size). Unreadable files raise
    :class:`UnreadableImageError` naming the path.
    """
    if size is not None:
        if not (isinstance(size, (tuple, list)) and len(size) == 2):
            raise ValueError(f"load_mask: size must be (height, width), got {size!r}")
        size = positive_size(size[0], size[1], "load_mask")
    try:
        hole = Image.fromarray(mask_from_image(open_image(path)))
    except (OSError, ValueError) as error:
        raise UnreadableImageError(f"cannot read mask {path}: {error}") from error
    if size is not None and (hole.height, hole.width) != size:
        hole = hole.resize((size[1], size[0]), Image.Resampling.NEAREST)
    return np.asarray(hole, dtype=np.float32)
