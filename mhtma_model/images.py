"""Reading pictures from disk: images, masks, folders of them, and the one error type for unreadable files.

Every file the project reads (training images, mask files, sketches, ``mhtma-inpaint`` / ``mhtma-eval``
inputs, uploads to ``mhtma-ui``) is opened by :func:`open_image`: fully decoded, EXIF orientation applied,
failures raised as :class:`UnreadableImageError` (an ``OSError``) naming the path.

16-bit colour (RGB/RGBA with 16 bits a channel, which Pillow holds in 8): the picture carries its full
values along (:mod:`mhtma_model.deep_colour`).

EXIF orientation: applied to the pixels, and the orientation tag of the picture's EXIF (kept in
``info["exif"]`` with the ICC profile in ``info["icc_profile"]``) reset to 1, so an output that carries
the EXIF on is not rotated twice.

:func:`load_rgb` gives the 8-bit RGB view of any mode (:func:`mhtma_model.image_modes.to_rgb`: 16-bit
and float grey scaled to 8 bits, alpha composited on **white**). How a picture keeps its own mode
through inpainting and into a file is :mod:`mhtma_model.image_modes`.

Masks (:func:`mask_from_image`, :func:`load_mask`, :func:`mask_from_array`): a pixel is a hole when its
value is > 127 (rule in :func:`mask_from_image`); arrays of 0 and 1 and bool arrays mean 1/True = hole
(:func:`mask_from_array`); convention everywhere: 1 = hole.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import ExifTags, Image, ImageOps

from .deep_colour import attach, is_deep, read_low_bytes
from .image_modes import has_transparency, to_8bit, to_rgb  # noqa: F401  (the 8-bit view, re-exported)

#: File suffixes treated as images (case-insensitive).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
MASK_THRESHOLD = 127  # mask files: value (or alpha) > 127 = hole


#: What a user can do about a file that does not decode (the end of every unreadable-file message).
UNREADABLE_HINT = ("give a complete PNG, JPEG, WebP, TIFF or BMP file (if it opens in an image viewer, "
                   "re-save it from there)")


class UnreadableImageError(OSError):
    """An image file that Pillow cannot decode (message names the path, the reason and what to do)."""


def _unreadable(path, error: Exception, what: str) -> UnreadableImageError:
    """The one message for a file that does not decode: which file, why, and what to do."""
    if isinstance(error, Image.UnidentifiedImageError):
        empty = isinstance(path, (str, Path)) and Path(path).is_file() and Path(path).stat().st_size == 0
        reason = "the file is empty" if empty else "not a picture format Pillow knows"
    else:
        reason = str(error) or type(error).__name__
    return UnreadableImageError(f"cannot read {what} {path}: {reason}; {UNREADABLE_HINT}")


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
               check_header: Optional[Callable[[Image.Image], object]] = None,
               full_depth: bool = True, what: str = "image") -> Image.Image:
    """Open and fully decode ``path`` with EXIF orientation applied; UnreadableImageError on failure.

    ``min_side``: JPEGs are decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides
    >= ``min_side`` (much faster for large photos that are resized down anyway); other formats ignore it.
    ``check_header``: called with the opened, not yet decoded image (size and mode known) before the
    pixels are decoded; its exceptions propagate unchanged (the UI refuses huge uploads this way).
    ``full_depth``: a 16-bit colour file carries its 16-bit values (:mod:`mhtma_model.deep_colour`; a
    second decode); False when only the 8-bit picture is wanted.
    ``what``: the file's role in the error message ("image", "mask", "sketch").
    """
    try:
        image = Image.open(path)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise _unreadable(path, error, what) from error
    with image:
        if check_header is not None:
            check_header(image)
        try:
            if min_side is not None and image.format == "JPEG":
                image.draft(image.mode, (min_side, min_side))
            low = read_low_bytes(path, image, _upright) if full_depth and is_deep(image) else None
            image.load()
            upright = _upright(image)
            return upright if low is None else attach(upright, low)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise _unreadable(path, error, what) from error


def _upright(image: Image.Image) -> Image.Image:
    """``image`` with its EXIF orientation applied and the tag reset to 1 (module docstring)."""
    exif = image.getexif()
    if exif.get(ExifTags.Base.Orientation, 1) == 1:
        return image.copy()
    upright = ImageOps.exif_transpose(image)
    exif = upright.getexif()
    exif[ExifTags.Base.Orientation] = 1
    upright.info["exif"] = exif.tobytes()
    return upright


# ------------------------------------------------------------------------------------------- modes

def load_rgb(path, min_side: int | None = None) -> Image.Image:
    """Read ``path`` as an 8-bit RGB PIL image (any mode, see module docstring); raises
    :class:`UnreadableImageError` naming the path if it cannot be decoded. ``min_side``: see
    :func:`open_image` (reduced-size JPEG decoding; the result keeps both sides >= min_side)."""
    image = open_image(path, min_side, full_depth=False)
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


def mask_from_array(mask: np.ndarray) -> np.ndarray:
    """A mask given as a numpy array -> bool ``[H, W]`` (True = hole): the one rule for array masks.

    * bool: True = hole;
    * any integer or float array whose values are all 0 or 1: 1 = hole (a label mask);
    * otherwise a uint8 picture, [H, W], [H, W, 3] or [H, W, 4], read like a mask file
      (:func:`mask_from_image`: value > 127 = hole, so 0/255 masks mean 255 = hole).

    Anything else (other dtypes or shapes, a float or wide-int array with values other than 0 and 1)
    is a ValueError saying what is accepted.
    """
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"mask must be a numpy array, got {type(mask).__name__}")
    if not (mask.ndim == 2 or (mask.ndim == 3 and mask.shape[2] in (3, 4))):
        raise ValueError(f"mask array must have shape [H, W], [H, W, 3] or [H, W, 4], got {list(mask.shape)}")
    if mask.dtype == np.bool_ or (mask.dtype.kind in "iuf" and np.isin(mask, (0, 1)).all()):
        mask = (mask != 0).astype(np.uint8) * 255
    elif mask.dtype != np.uint8:
        raise ValueError(f"mask array of {mask.dtype} must hold only 0 and 1 (1 = hole); give bool, 0/1, "
                         "or a uint8 picture (> 127 = hole)")
    return mask_from_image(Image.fromarray(mask))


def load_mask(path, size=None) -> np.ndarray:
    """Read a mask image -> float32 ``[H, W]`` in {0, 1} by the rule of :func:`mask_from_image`.

    ``size=(H, W)`` resizes with nearest neighbour (None keeps the file's size). Unreadable files raise
    :class:`UnreadableImageError` naming the path.
    """
    if size is not None:
        if not (isinstance(size, (tuple, list)) and len(size) == 2):
            raise ValueError(f"load_mask: size must be (height, width), got {size!r}")
        size = positive_size(size[0], size[1], "load_mask")
    opened = open_image(path, what="mask")
    try:
        hole = Image.fromarray(mask_from_image(opened))
    except (OSError, ValueError) as error:
        raise UnreadableImageError(f"cannot read mask {path}: {error}") from error
    if size is not None and (hole.height, hole.width) != size:
        hole = hole.resize((size[1], size[0]), Image.Resampling.NEAREST)
    return np.asarray(hole, dtype=np.float32)
