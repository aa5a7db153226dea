"""Training data: image folders, robust RGB loading, the train/val split, the inpainting dataset and the
embedded demo dataset built from scikit-image's sample photos.

Image modes handled by :func:`load_rgb` (every result is 8-bit RGB):

- RGB as is; L / 1 / P (palette) / CMYK / YCbCr / LAB / HSV through Pillow's conversion;
- 16-bit grey (``I;16*``, and ``I`` when its values exceed 255) scaled by 255/65535; float (``F``)
  taken as [0, 1] when its maximum is <= 1, else as [0, 255];
- an alpha channel (RGBA, LA, PA, palette or grey with a transparency key) is composited on a
  **white** background (transparent regions of product shots and logos are usually white);
- EXIF orientation is applied.

Unreadable files (truncated, not an image, decompression bomb) raise :class:`UnreadableImageError`
(an ``OSError``) naming the path; :class:`InpaintingDataset` warns once per file and substitutes the
next readable image instead of crashing mid-epoch.
"""
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .masks import MaskFolder, free_form_mask, has_transparency

#: File suffixes treated as images (case-insensitive).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class UnreadableImageError(OSError):
    """An image file that Pillow cannot decode (message names the path and Pillow's reason)."""


class UnreadableImageWarning(UserWarning):
    """Issued once per unreadable file by :class:`InpaintingDataset` (the file is replaced)."""


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


def open_image(path, min_side: int | None = None) -> Image.Image:
    """Open and fully decode ``path`` with EXIF orientation applied; UnreadableImageError on failure.

    ``min_side``: JPEGs are decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides
    >= ``min_side`` (much faster for large photos that are resized down anyway); other formats ignore it.
    """
    try:
        with Image.open(path) as image:
            if min_side is not None and image.format == "JPEG":
                image.draft(image.mode, (min_side, min_side))
            image.load()
            return ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(f"cannot read image {path}: {error}") from error


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


def split_paths(paths, val_fraction: float, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Seeded random split -> ``(train_paths, val_paths)``, each in the input order.

    ``round(n * val_fraction)`` validation images, at least 1 when ``val_fraction > 0`` and n >= 2, and
    always at least one training image. ``val_fraction`` must lie in [0, 1).
    """
    paths = list(paths)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) \
            or not 0 <= val_fraction < 1:
        raise ValueError(f"split_paths: val_fraction must be a number in [0, 1), got {val_fraction!r}")
    n = len(paths)
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, max(0, n - 1))
    chosen = set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())
    train = [p for i, p in enumerate(paths) if i not in chosen]
    val = [p for i, p in enumerate(paths) if i in chosen]
    return train, val


def resize_crop(image: Image.Image, size: int, rng: np.random.Generator | None) -> Image.Image:
    """Resize so the shorter side is ``size`` (bicubic), then crop ``size × size``: at a uniform random
    position drawn from ``rng``, or centred when ``rng`` is None."""
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), Image.Resampling.BICUBIC)
    if rng is None:
        left, top = (nw - size) // 2, (nh - size) // 2
    else:
        left, top = int(rng.integers(0, nw - size + 1)), int(rng.integers(0, nh - size + 1))
    return image.crop((left, top, left + size, top + size))


class InpaintingDataset(torch.utils.data.Dataset):
    r"""Images with hole masks for training/validation.

    Item ``i``: ``{"image": float32 [3, S, S] in [-1, 1], "mask": float32 [1, S, S] in {0, 1} (1 = hole),
    "index": i}`` plus ``"sketch": float32 [1, S, S]`` in {0, 1} when ``sketch=True``
    (:func:`mhtma_model.sketch.make_sketch` of the crop).

    Pipeline: :func:`load_rgb` -> shorter side to S -> crop S×S (random when ``train``, centred
    otherwise) -> horizontal flip with p = 0.5 (``train`` only) -> mask.

    Randomness is a pure function of (seed, epoch, index) — identical with any number of DataLoader
    workers and on resume:

    - train: augmentation ``default_rng([seed, epoch, index, 1])``, mask ``default_rng([seed, epoch, index])``;
    - val: no augmentation, mask ``default_rng([seed, index])`` (the same masks every epoch, and the
      same as ``mhtma-eval``'s generated masks for that seed).

    Masks: generated with :func:`mhtma_model.masks.free_form_mask` when ``masks`` is None, else taken
    from a :class:`~mhtma_model.masks.MaskFolder` (train: a file drawn with the mask generator; val:
    file ``index % len``), resized to S×S.

    Unreadable files: a :class:`UnreadableImageWarning` once per file (per process: each DataLoader
    worker holds its own copy), then the next readable image (index + 1, + 2, ...) is used; if none
    is readable, UnreadableImageError.
    """

    def __init__(self, paths, size: int, masks: MaskFolder | None = None, train: bool = True, seed: int = 0,
                 sketch: bool = False):
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("InpaintingDataset: paths is empty (no images found?)")
        if isinstance(size, bool) or not isinstance(size, int) or size < 8:
            raise ValueError(f"InpaintingDataset: size must be an int >= 8, got {size!r}")
        if masks is not None and not isinstance(masks, MaskFolder):
            raise TypeError(f"InpaintingDataset: masks must be None or a MaskFolder, got {type(masks).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"InpaintingDataset: seed must be an int >= 0, got {seed!r}")
        self.size, self.masks, self.train, self.seed, self.sketch = size, masks, bool(train), seed, bool(sketch)
        self.epoch = 0
        self._unreadable: set[int] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random crops, flips and masks ``__getitem__`` produces."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"InpaintingDataset.set_epoch: epoch must be an int >= 0, got {epoch!r}")
        self.epoch = epoch

    def _readable_image(self, index: int) -> Image.Image:
        n = len(self.paths)
        for step in range(n):
            j = (index + step) % n
            if j in self._unreadable:
                continue
            try:
                return load_rgb(self.paths[j], min_side=self.size)
            except UnreadableImageError as error:
                self._unreadable.add(j)
                warnings.warn(f"skipping unreadable image ({error}); another image is used in its place",
                              UnreadableImageWarning, stacklevel=3)
        raise UnreadableImageError(f"none of the {n} images of the dataset can be read (first: {self.paths[0]})")

    def _mask(self, index: int) -> np.ndarray:
        s = self.size
        rng = np.random.default_rng([self.seed, self.epoch, index] if self.train else [self.seed, index])
        if self.masks is None:
            return free_form_mask(s, s, rng)
        pick = int(rng.integers(len(self.masks))) if self.train else index
        return self.masks.mask(pick, (s, s))

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"InpaintingDataset: index {index} out of range for {len(self)} images")
        index = index % len(self)
        image = self._readable_image(index)
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, index, 1])
            image = resize_crop(image, self.size, rng)
            if rng.random() < 0.5:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            image = resize_crop(image, self.size, None)
        pixels = np.asarray(image, dtype=np.uint8)
        item = {
            "image": torch.from_numpy(pixels.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1).contiguous(),
            "mask": torch.from_numpy(self._mask(index))[None],
            "index": index,
        }
        if self.sketch:
            from .sketch import make_sketch

            item["sketch"] = torch.from_numpy(np.asarray(make_sketch(pixels), dtype=np.float32))[None]
        return item


# ------------------------------------------------------------------------------------------------ demo

def _demo_sources() -> dict:
    """scikit-image sample photos bundled with the package (no download): name -> loader."""
    import skimage.data as data

    return {
        "astronaut": data.astronaut,
        "chelsea": data.chelsea,
        "coffee": data.coffee,
        "rocket": data.rocket,
        "immunohistochemistry": data.immunohistochemistry,
        "hubble_deep_field": data.hubble_deep_field,
        "retina": data.retina,
        "motorcycle": lambda: data.stereo_motorcycle()[0],
    }


def cache_root() -> Path:
    """``$MHTMA_CACHE`` if set, else ``~/.cache/mhtma``."""
    return Path(os.environ.get("MHTMA_CACHE") or Path.home() / ".cache" / "mhtma").expanduser()


def _write_demo(folder: Path, count: int, size: int, seed: int) -> None:
    images = {}
    for name, loader in _demo_sources().items():
        try:
            array = np.asarray(loader())
        except Exception as error:  # a sample missing from this scikit-image build: use the others
            warnings.warn(f"demo dataset: scikit-image sample {name!r} is unavailable ({error}); skipped")
            continue
        if array.ndim == 3 and array.shape[2] >= 3 and array.dtype == np.uint8:
            images[name] = Image.fromarray(array[..., :3])
    if not images:
        raise RuntimeError("demo dataset: none of scikit-image's sample photos could be loaded")
    rng = np.random.default_rng(seed)
    names = sorted(images)
    for i in range(count):
        name = names[i % len(names)]
        image = images[name]
        short = min(image.size)
        low = min(size, short)
        side = int(rng.integers(low, max(low, int(short * 0.9)) + 1))
        left = int(rng.integers(0, image.width - side + 1))
        top = int(rng.integers(0, image.height - side + 1))
        crop = image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
        crop.save(folder / f"{name}_{i:03d}.png")
    manifest = {"source": "skimage.data", "count": count, "size": size, "seed": seed, "photos": names}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))


def demo_dataset_root(count: int = 48, size: int = 160, seed: int = 0) -> Path:
    """Folder of ``count`` PNG crops (``size × size``) of scikit-image's bundled sample photos
    (astronaut, chelsea, coffee, rocket, immunohistochemistry, hubble_deep_field, retina, motorcycle;
    random square crops whose side lies between ``size`` px and 9/10 of the photo's shorter side,
    resized to ``size``), created once and cached at
    ``cache_root() / "demo" / f"skimage-{count}x{size}px-seed{seed}"``.

    The folder is built in a temporary sibling folder and renamed into place, so concurrent callers
    never see a half-written dataset (the loser of a race discards its copy).
    """
    for name, value in (("count", count), ("size", size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"demo_dataset_root: {name} must be a positive int, got {value!r}")
    folder = cache_root() / "demo" / f"skimage-{count}x{size}px-seed{seed}"
    if (folder / "manifest.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        _write_demo(tmp, count, size, seed)
        if folder.exists() and not (folder / "manifest.json").is_file():
            shutil.rmtree(folder, ignore_errors=True)  # a stale, incomplete folder (never made by rename)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "manifest.json").is_file():  # not a lost race: a real error
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
