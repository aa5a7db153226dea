"""Training data: the train/val split, the inpainting dataset and the embedded demo dataset built from
scikit-image's sample photos. Files are read with :mod:`mhtma_model.images` (:func:`load_rgb`: any mode
to 8-bit RGB, EXIF orientation applied).

Unreadable files (truncated, not an image, decompression bomb) raise :class:`UnreadableImageError`
(an ``OSError``) naming the path; :class:`InpaintingDataset` warns once per file and substitutes the
next readable image instead of crashing mid-epoch.
"""
import json
import os
import secrets
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .images import UnreadableImageError, list_images, load_rgb, open_image
from .masks import MaskFolder, ProtocolMix, free_form_mask
from .output_files import OutputError, check_output_folder
from .pixel_range import to_network
from .sketch import make_sketch

# The image readers moved to mhtma_model.images; importable from here as before.
__all__ = ["InpaintingDataset", "UnreadableImageWarning", "cache_root", "demo_dataset_root", "resize_crop",
           "split_paths", "UnreadableImageError", "list_images", "load_rgb", "open_image"]

class UnreadableImageWarning(UserWarning):
    """Issued once per unreadable file by :class:`InpaintingDataset` (the file is replaced)."""


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

    Masks: generated with :func:`mhtma_model.masks.free_form_mask` when ``masks`` is None (or drawn from
    ``protocols``, a :class:`~mhtma_model.masks.ProtocolMix`, by the same generator), else taken
    from a :class:`~mhtma_model.masks.MaskFolder` (train: a file drawn with the mask generator; val:
    file ``index % len``), resized to S×S.

    Unreadable files: a :class:`UnreadableImageWarning` once per file (per process: each DataLoader
    worker holds its own copy), then the next readable image (index + 1, + 2, ...) is used; if none
    is readable, UnreadableImageError.
    """

    def __init__(self, paths, size: int, masks: MaskFolder | None = None, train: bool = True, seed: int = 0,
                 sketch: bool = False, protocols: ProtocolMix | None = None):
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("InpaintingDataset: paths is empty (no images found?)")
        if isinstance(size, bool) or not isinstance(size, int) or size < 8:
            raise ValueError(f"InpaintingDataset: size must be an int >= 8, got {size!r}")
        if masks is not None and not isinstance(masks, MaskFolder):
            raise TypeError(f"InpaintingDataset: masks must be None or a MaskFolder, got {type(masks).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"InpaintingDataset: seed must be an int >= 0, got {seed!r}")
        if protocols is not None and (masks is not None or not isinstance(protocols, ProtocolMix)):
            raise TypeError("InpaintingDataset: protocols must be a ProtocolMix, and only without masks")
        self.size, self.masks, self.train, self.seed, self.sketch = size, masks, bool(train), seed, bool(sketch)
        self.protocols = protocols
        self.epoch = 0
        self._unreadable: set[int] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random crops, flips and masks ``__getitem__`` produces."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"InpaintingDataset.set_epoch: epoch must be an int >= 0, got {epoch!r}")
        self.epoch = epoch

    def check_readable(self) -> None:
        """UnreadableImageError unless some image decodes (the unreadable ones met first are warned about), so
        a folder of broken files fails before a run starts rather than at its first batch."""
        self._readable_image(0)

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
            return free_form_mask(s, s, rng) if self.protocols is None else self.protocols.mask(s, rng)
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
            "image": to_network(pixels),
            "mask": torch.from_numpy(self._mask(index))[None],
            "index": index,
        }
        if self.sketch:
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
    try:
        check_output_folder(folder.parent, "the demo data's cache")
    except OutputError as exc:
        raise OutputError(f"{exc} (set MHTMA_CACHE to a writable folder)") from None
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{secrets.token_hex(6)}"
    tmp.mkdir()  # not tempfile.mkdtemp: the cached folder gets the umask's mode (0755 under 022), not 0700
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
