"""`mhtma-inpaint`: fill the holes of your own images with a trained generator.

    mhtma-inpaint --checkpoint runs/x/checkpoints/best.pt --image photo.jpg --mask photo_mask.png --output out/
    mhtma-inpaint --checkpoint best.pt --image photos/ --mask masks/ --output out/ [--sketch sketches/]

The core is :func:`inpaint_image`, also used by the web UI (``mhtma-ui``).

Rules (what a user can rely on)
* **Mask**: a pixel is a hole when its value is > 127. Gray ("L") masks use the value, RGB masks the
  largest of the three channels (so white, red, green, … strokes on black all mark holes). Masks with
  transparency (RGBA/LA/PA, or P with a transparent colour, where at least one pixel has alpha < 255 —
  e.g. a layer painted in an editor) use the alpha channel: hole = alpha > 127, whatever the colour. A
  fully opaque RGBA mask is read by its colour like RGB. 16-bit/32-bit gray masks are scaled to 0–255
  first. The mask must have the image's size (after EXIF orientation is applied to both).
* **Any image size**: the network needs sides divisible by its ``multiple`` (8) and at least its
  ``min_size`` (16 with 3×3 attention patches); the image is padded at the bottom/right by reflection
  (replication for sides shorter than the pad) and the prediction cropped back.
* **Large images** (longer side > ``--max-size``, default the checkpoint's training size ``data.size``): the network runs on a window around the
  holes — their bounding box grown by half its longer side (at least 32 px) on every side, clipped to
  the image. If that window is still longer than ``--max-size`` it is downscaled (antialiased bicubic;
  the mask so that every pixel touching a hole stays a hole) for the network, and the prediction is
  upscaled back (bicubic). Only hole pixels are replaced, so the rest of a large photo stays sharp.
* **Known pixels are bit-identical** to the input: the prediction is rounded to 8 bits and written
  only into the hole of a copy of the input array. The output keeps the input's mode for L, LA, RGB and
  RGBA (alpha is copied, not inpainted; gray outputs use the prediction's luminance); other modes
  (P, CMYK, 16-bit, …) are converted to RGB/RGBA first, and the identity holds for that conversion.
* **Sketch** (guided models, ``model.sketch=true``): lines drawn by the person, read with
  :func:`mhtma_model.sketch.load_user_sketch` (white/coloured lines on a plain background or a
  transparent layer). Giving a sketch to a model trained without sketches is an error; a sketch model
  without a sketch gets an empty one (no guidance).
* **Outputs**: ``OUTPUT/<name>.png`` with the input's size, for input ``<name>.<any ext>``. In folder
  mode images and masks (and sketches) are paired by their path relative to the folder without the
  extension (``photos/a/b.jpg`` ↔ ``masks/a/b.png`` → ``out/a/b.png``); a missing, mismatched (size),
  ambiguous (two files with one name) or unreadable pair is reported and skipped, the rest is still
  written. A sketch is optional per image; a mask or sketch without an image is reported.
* **Exit status**: 0 when every image was written, 1 when at least one pair failed, 2 for usage errors
  (bad arguments, missing or incompatible checkpoint, CUDA requested but absent).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .data import open_image
from .masks import has_transparency, mask_from_image

MAX_SIZE = 512
CONTEXT_MIN_MARGIN = 32

_NATIVE_MODES = ("L", "LA", "RGB", "RGBA")


# ---------------------------------------------------------------------------------------------- inputs

def resolve_device(device: Union[str, torch.device, None] = "auto") -> torch.device:
    """"auto" -> CUDA when available, else CPU; "cuda" without a GPU -> ValueError."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    return dev


def _native(image: Image.Image) -> Image.Image:
    if image.mode in _NATIVE_MODES:
        return image
    return image.convert("RGBA" if has_transparency(image) else "RGB")


# ---------------------------------------------------------------------------------------- the geometry

def plan_window(hole: np.ndarray, max_size: int = MAX_SIZE) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """Where the network runs: ``((top, bottom, left, right), (net_h, net_w))`` for a bool hole [H, W].

    Whole image at native size when its longer side ≤ ``max_size``; else the holes' bounding box grown
    by max(32, longer box side / 2) per side, clipped, and downscaled to a longer side of ``max_size``
    when still larger.
    """
    if max_size < 8:
        raise ValueError(f"max_size must be at least 8, got {max_size}")
    height, width = hole.shape
    if max(height, width) <= max_size:
        return (0, height, 0, width), (height, width)
    rows, cols = np.nonzero(hole.any(axis=1))[0], np.nonzero(hole.any(axis=0))[0]
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    margin = max(CONTEXT_MIN_MARGIN, max(bottom - top, right - left) // 2)
    top, bottom = max(0, top - margin), min(height, bottom + margin)
    left, right = max(0, left - margin), min(width, right + margin)
    wh, ww = bottom - top, right - left
    scale = min(1.0, max_size / max(wh, ww))
    net = (max(1, round(wh * scale)), max(1, round(ww * scale)))
    return (int(top), int(bottom), int(left), int(right)), net


def pad_to_multiple(x: torch.Tensor, multiple: int, min_size: int = 0) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad ``x [B, C, H, W]`` at the bottom/right to sides that are multiples of ``multiple`` and at least
    ``min_size`` (reflect; replicate when a side is too short to reflect) -> (padded, (H, W))."""
    height, width = x.shape[-2:]
    target_h = max(-(-height // multiple) * multiple, -(-min_size // multiple) * multiple)
    target_w = max(-(-width // multiple) * multiple, -(-min_size // multiple) * multiple)
    ph, pw = target_h - height, target_w - width
    if ph == 0 and pw == 0:
        return x, (height, width)
    mode = "reflect" if ph < height and pw < width else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (height, width)


def generator_uses_sketch(generator) -> bool:
    flag = getattr(generator, "sketch", False)
    return flag if isinstance(flag, bool) else False


def _generator_device(generator) -> Optional[torch.device]:
    for param in generator.parameters():
        return param.device
    return None


@torch.no_grad()
def predict_batch(generator, images: np.ndarray, holes: np.ndarray, sketches: Optional[np.ndarray] = None,
                  device: Union[str, torch.device] = "cpu") -> np.ndarray:
    """Raw refined predictions for a batch of same-size images.

    ``images`` uint8 [B, h, w, 3], ``holes`` bool [B, h, w], ``sketches`` float [B, h, w] in {0, 1} or None
    -> float32 [B, h, w, 3] in [0, 255] (not rounded, not composited). Pads to ``generator.multiple``
    (reflect) and crops back.
    """
    dev = torch.device(device)
    multiple = int(getattr(generator, "multiple", 8))
    min_size = int(getattr(generator, "min_size", multiple))
    x = torch.tensor(np.asarray(images, dtype=np.uint8)).permute(0, 3, 1, 2).to(dev, torch.float32) / 127.5 - 1.0
    m = torch.tensor(np.asarray(holes, dtype=np.float32))[:, None].to(dev)
    x, (h, w) = pad_to_multiple(x, multiple, min_size)
    m, _ = pad_to_multiple(m, multiple, min_size)
    if sketches is not None:
        sk = torch.tensor(np.asarray(sketches, dtype=np.float32))[:, None].to(dev)
        s, _ = pad_to_multiple(sk, multiple, min_size)
        _coarse, refined = generator(x, m, s)
    else:
        _coarse, refined = generator(x, m)
    out = (refined[:, :, :h, :w].float().clamp(-1, 1) + 1.0) * 127.5
    return out.permute(0, 2, 3, 1).cpu().numpy()


def predict(generator, image: np.ndarray, hole: np.ndarray, sketch: Optional[np.ndarray] = None,
            device: Union[str, torch.device] = "cpu") -> np.ndarray:
    """:func:`predict_batch` for one image: uint8 [h, w, 3], bool [h, w], sketch [h, w] | None -> float32 [h, w, 3]."""
    return predict_batch(generator, image[None], hole[None], None if sketch is None else sketch[None], device)[0]


def inpaint_image(generator, image: Image.Image, mask: Image.Image, sketch: Optional[Image.Image] = None,
                  device: Union[str, torch.device] = "cpu", max_size: Optional[int] = None) -> Image.Image:
    """Inpaint ``image`` where ``mask`` marks holes -> PIL image of the same size; known pixels bit-identical.

    ``generator``: an :class:`~mhtma_model.networks.InpaintGenerator` (eval mode; it is moved to ``device``).
    ``image``: any PIL image (mode handling in the module docstring); ``mask``: PIL, same size, rules in
    :func:`mask_from_image`; ``sketch``: PIL lines or None (only for sketch generators). ``max_size``:
    longest side the network sees (large-image strategy in the module docstring); None = the
    generator's ``training_size`` (set by :func:`mhtma_model.checkpoint.load_generator`: a network sees
    its inputs at the scale it was trained on), else MAX_SIZE.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL image, got {type(image).__name__}")
    if not isinstance(mask, Image.Image):
        raise TypeError(f"mask must be a PIL image, got {type(mask).__name__}")
    if mask.size != image.size:
        raise ValueError(f"mask size {mask.size[0]}x{mask.size[1]} differs from image size "
                         f"{image.size[0]}x{image.size[1]} (width x height)")
    uses_sketch = generator_uses_sketch(generator)
    if sketch is not None and not uses_sketch:
        raise ValueError("a sketch was given but this generator was trained without sketches (model.sketch=false)")
    if sketch is not None and not isinstance(sketch, Image.Image):
        raise TypeError(f"sketch must be a PIL image or None, got {type(sketch).__name__}")
    dev = resolve_device(device)
    if max_size is None:
        max_size = getattr(generator, "training_size", None) or MAX_SIZE

    source = _native(image)
    hole = mask_from_image(mask)
    if not hole.any():
        return source.copy()
    rgb = np.asarray(source.convert("RGB"))
    (top, bottom, left, right), net_size = plan_window(hole, max_size)
    win_rgb, win_hole = rgb[top:bottom, left:right], hole[top:bottom, left:right]
    win_size = win_hole.shape
    win_sketch = None
    if uses_sketch:
        if sketch is None:
            win_sketch = np.zeros(win_size, np.float32)
        else:
            from .sketch import load_user_sketch

            win_sketch = load_user_sketch(sketch, rgb.shape[:2])[top:bottom, left:right]

    net_rgb, net_hole, net_sketch = win_rgb, win_hole, win_sketch
    if net_size != win_size:
        (nh, nw) = net_size
        net_rgb = np.asarray(Image.fromarray(win_rgb).resize((nw, nh), Image.BICUBIC))
        covered = Image.fromarray(win_hole.astype(np.uint8) * 255).resize((nw, nh), Image.BILINEAR)
        net_hole = np.asarray(covered) > 0
        if win_sketch is not None:
            from .sketch import thin_strokes

            net_sketch = thin_strokes(win_sketch > 0.5, net_size)

    if _generator_device(generator) not in (None, dev):
        generator.to(dev)
    pred = predict(generator, net_rgb, net_hole, net_sketch, dev)
    if net_size != win_size:
        up = torch.from_numpy(pred).permute(2, 0, 1)[None]
        up = F.interpolate(up, size=win_size, mode="bicubic", align_corners=False)
        pred = up[0].permute(1, 2, 0).numpy()
    pred_u8 = np.clip(np.round(pred), 0, 255).astype(np.uint8)

    out = np.array(source, copy=True)
    window = out[top:bottom, left:right]
    if source.mode in ("RGB", "RGBA"):
        window[..., :3][win_hole] = pred_u8[win_hole]
    else:  # L or LA: ITU-R 601 luminance of the prediction, as PIL's RGB -> L conversion
        gray = np.asarray(Image.fromarray(pred_u8).convert("L"))
        if source.mode == "L":
            window[win_hole] = gray[win_hole]
        else:
            window[..., 0][win_hole] = gray[win_hole]
    return Image.fromarray(out)


# ------------------------------------------------------------------------------------------------- CLI

def pair_key(path: Path, root: Path) -> str:
    """The name that pairs files across folders: ``path`` relative to ``root``, without extension."""
    return path.relative_to(root).with_suffix("").as_posix()


def files_by_key(root: Path) -> dict[str, list[Path]]:
    """The images under ``root`` (recursive) grouped by :func:`pair_key`."""
    from .data import list_images

    keyed: dict[str, list[Path]] = {}
    for path in list_images(root):
        keyed.setdefault(pair_key(path, root), []).append(path)
    return keyed


def pair_inputs(image: Path, mask: Path, sketch: Optional[Path] = None):
    """-> (pairs [(key, image_path, mask_path, sketch_path | None)], problems [(key, reason)])."""
    if image.is_file():
        if not mask.is_file():
            raise ValueError(f"--image is a file, so --mask must be a file too: {mask}")
        if sketch is not None and not sketch.is_file():
            raise ValueError(f"--image is a file, so --sketch must be a file too: {sketch}")
        return [(image.stem, image, mask, sketch)], []
    if not image.is_dir():
        raise ValueError(f"--image not found: {image}")
    if not mask.is_dir():
        raise ValueError(f"--image is a folder, so --mask must be a folder too: {mask}")
    if sketch is not None and not sketch.is_dir():
        raise ValueError(f"--image is a folder, so --sketch must be a folder too: {sketch}")
    images, masks = files_by_key(image), files_by_key(mask)
    sketches = files_by_key(sketch) if sketch is not None else {}
    pairs, problems = [], []
    for key, paths in sorted(images.items()):
        if len(paths) > 1:
            problems.append((key, "several images share this name: " + ", ".join(p.name for p in paths)))
        elif key not in masks:
            problems.append((key, f"no mask named {key}.* in {mask}"))
        elif len(masks[key]) > 1:
            problems.append((key, "several masks share this name: " + ", ".join(p.name for p in masks[key])))
        elif len(sketches.get(key, [])) > 1:
            problems.append((key, "several sketches share this name: " + ", ".join(p.name for p in sketches[key])))
        else:
            sk = sketches.get(key)
            pairs.append((key, paths[0], masks[key][0], sk[0] if sk else None))
    for key in sorted(set(masks) - set(images)):
        problems.append((key, f"mask without an image in {image}"))
    for key in sorted(set(sketches) - set(images)):
        problems.append((key, f"sketch without an image in {image}"))
    return pairs, problems


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mhtma-inpaint", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="generator checkpoint (.pt) written by mhtma-train")
    p.add_argument("--image", required=True, help="an image file or a folder of images")
    p.add_argument("--mask", required=True, help="a mask file or a folder of masks (pixel > 127 = hole)")
    p.add_argument("--output", required=True, help="folder for the inpainted PNGs")
    p.add_argument("--sketch", default=None, help="optional sketch file or folder (sketch-guided models)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--max-size", type=int, default=None,
                   help="longest side the network sees; larger inputs use the window/resize strategy "
                        "(default: the checkpoint's training size, data.size)")
    return p


def load_generator_or_exit(path: str, parser: argparse.ArgumentParser):
    """Load a checkpoint with :func:`mhtma_model.checkpoint.load_generator`; errors -> parser.error (exit 2)."""
    ckpt = Path(path)
    if not ckpt.is_file():
        parser.error(f"checkpoint not found: {ckpt}")
    from .checkpoint import CheckpointError, load_generator

    try:
        return load_generator(ckpt, map_location="cpu")
    except (CheckpointError, ValueError, KeyError, RuntimeError, OSError) as exc:
        parser.error(f"cannot use checkpoint {ckpt}: {exc}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    from tqdm import tqdm

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_size is not None and args.max_size < 8:
        parser.error(f"--max-size must be at least 8, got {args.max_size}")
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        pairs, problems = pair_inputs(Path(args.image), Path(args.mask),
                                      Path(args.sketch) if args.sketch else None)
    except ValueError as exc:
        parser.error(str(exc))
    generator, _config = load_generator_or_exit(args.checkpoint, parser)
    uses_sketch = generator_uses_sketch(generator)
    if args.sketch and not uses_sketch:
        parser.error(f"--sketch given but {args.checkpoint} was trained without sketches (model.sketch=false)")
    if uses_sketch and not args.sketch:
        print("note: this is a sketch-guided model and no --sketch was given; running without guidance",
              file=sys.stderr)
    generator.to(device)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)

    written = 0
    for key, image_path, mask_path, sketch_path in tqdm(pairs, desc="inpainting", unit="img",
                                                         disable=len(pairs) < 2):
        try:
            image, mask = open_image(image_path), open_image(mask_path)
            sketch = open_image(sketch_path) if sketch_path is not None else None
            if mask.size != image.size:
                raise ValueError(f"mask {mask_path.name} is {mask.size[0]}x{mask.size[1]} but image "
                                 f"{image_path.name} is {image.size[0]}x{image.size[1]}")
            result = inpaint_image(generator, image, mask, sketch=sketch, device=device, max_size=args.max_size)
            target = out_dir / f"{key}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            result.save(target)
            written += 1
        except (OSError, ValueError) as exc:
            problems.append((key, str(exc)))
            tqdm.write(f"skipped {key}: {exc}", file=sys.stderr)
    print(f"wrote {written} image(s) to {out_dir}")
    if problems:
        print(f"{len(problems)} problem(s):", file=sys.stderr)
        for key, reason in problems:
            print(f"  {key}: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
