"""Inference: a trained generator applied to images of any size — pad, window, resize, composite.
:class:`mhtma_model.Inpainter` (used by ``mhtma-inpaint``, ``mhtma-ui`` and the export) and ``mhtma-eval``
call this module; the pairing of image, mask and sketch files is :mod:`mhtma_model.input_files`.

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
* **Known pixels are bit-identical** to the input, in its own mode and values: the network sees the
  8-bit view of the image, its prediction is rounded to 8 bits and written only into the hole of a copy
  of the input, in the input's mode (16-bit and float grey, palette, CMYK, 1-bit, with alpha: the rules
  are :mod:`mhtma_model.image_modes`; alpha is copied, not inpainted).
* **Sketch** (guided models, ``model.sketch=true``): lines drawn by the person, read with
  :func:`mhtma_model.sketch.load_user_sketch` (white/coloured lines on a plain background or a
  transparent layer). Giving a sketch to a model trained without sketches is an error; a sketch model
  without a sketch gets an empty one (no guidance).
* **Precision** (``precision=`` here, ``--precision`` in the command lines; :mod:`mhtma_model.precision`):
  "auto" (default) = bf16 autocast on a CUDA GPU with bf16, TF32 fp32 on older GPUs, fp32 on CPU;
  "bf16", "fp16" (CUDA), "tf32", "fp32" (IEEE, TF32 off). The prediction handed back, the 8-bit
  rounding and the composite are fp32. ``--compile`` / ``prepare_generator(compile=True)``: torch.compile of the
  generator (default off; the first image of each size pays the compilation).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .checkpoint import CheckpointError, load_generator
from .device import resolve_device
from .image_modes import kept, network_rgb, paste_prediction
from .images import mask_from_image
from .pinned_backend import pinned_backend_problem
from .pixel_range import from_network, to_network, to_uint8
from .precision import compile_module, inference_dtype, inference_precision
from .sketch import load_user_sketch, thin_strokes

MAX_SIZE = 512
#: What to do about a checkpoint whose attention is pinned to a backend this machine cannot run.
PINNED_REMEDY = ("no option of the inference commands overrides a checkpoint's backend: run it on a CUDA GPU "
                 "the kernels fit, or train with model.backend=auto")
CONTEXT_MIN_MARGIN = 32


# ---------------------------------------------------------------------------------------- generator

def open_generator(path) -> tuple:
    """:func:`mhtma_model.checkpoint.load_generator` on CPU -> ``(generator, config)``; ValueError with a
    message for the user when the file is missing or unusable."""
    ckpt = Path(path)
    if not ckpt.is_file():
        raise ValueError(f"checkpoint not found: {ckpt}")
    try:
        return load_generator(ckpt, map_location="cpu")
    except CheckpointError as exc:  # its message starts with the path
        raise ValueError(f"cannot use checkpoint {exc}") from exc
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        raise ValueError(f"cannot use checkpoint {ckpt}: {exc}") from exc


def prepare_generator(generator, device: Union[str, torch.device], precision: str = "auto",
                      compile: bool = False):
    """Move ``generator`` to ``device`` in eval mode and compile it in place when ``compile`` -> the generator.
    ValueError (one line) for a precision that cannot run on ``device`` (fp16 on CPU, bf16 on a GPU without
    it). The precision is not stored on the module: pass it to :func:`predict_batch` and friends (or hold
    both in a :class:`mhtma_model.Inpainter`)."""
    dev = resolve_device(device)
    inference_dtype(precision, dev)
    generator.to(dev).eval()
    if compile and not getattr(generator, "compiled_with", None):
        compile_module(generator)
    return generator


def check_pinned_backend(generator, device: torch.device, precision: str) -> None:
    """ValueError (one line) when ``generator``'s attention is pinned to backend='triton' and the kernels cannot
    run on ``device`` at ``precision``: what the inference command lines check after loading (``mhtma-export``
    does not: it exports the `torch` backend)."""
    problem = pinned_backend_problem(generator, device, inference_dtype(precision, device), PINNED_REMEDY)
    if problem:
        raise ValueError(problem)


def generator_uses_sketch(generator) -> bool:
    flag = getattr(generator, "sketch", False)
    return flag if isinstance(flag, bool) else False


def _generator_device(generator) -> Optional[torch.device]:
    for param in generator.parameters():
        return param.device
    return None


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


@torch.no_grad()
def predict_batch(generator, images: np.ndarray, holes: np.ndarray, sketches: Optional[np.ndarray] = None,
                  device: Union[str, torch.device] = "cpu", precision: str = "auto") -> np.ndarray:
    """Raw refined predictions for a batch of same-size images.

    ``images`` uint8 [B, h, w, 3], ``holes`` bool [B, h, w], ``sketches`` float [B, h, w] in {0, 1} or None
    -> float32 [B, h, w, 3] in [0, 255] (not rounded, not composited). Pads to ``generator.multiple``
    (reflect) and crops back. ``precision``: module docstring.
    """
    dev = torch.device(device)
    multiple = int(getattr(generator, "multiple", 8))
    min_size = int(getattr(generator, "min_size", multiple))
    x = to_network(np.asarray(images, dtype=np.uint8)).to(dev)
    m = torch.tensor(np.asarray(holes, dtype=np.float32))[:, None].to(dev)
    x, (h, w) = pad_to_multiple(x, multiple, min_size)
    m, _ = pad_to_multiple(m, multiple, min_size)
    inputs = (x, m)
    if sketches is not None:
        sk = torch.tensor(np.asarray(sketches, dtype=np.float32))[:, None].to(dev)
        inputs += (pad_to_multiple(sk, multiple, min_size)[0],)
    with inference_precision(precision, dev):
        _coarse, refined = generator(*inputs)
    return from_network(refined[:, :, :h, :w])


def predict(generator, image: np.ndarray, hole: np.ndarray, sketch: Optional[np.ndarray] = None,
            device: Union[str, torch.device] = "cpu", precision: str = "auto") -> np.ndarray:
    """:func:`predict_batch` for one image: uint8 [h, w, 3], bool [h, w], sketch [h, w] | None -> float32 [h, w, 3]."""
    return predict_batch(generator, image[None], hole[None], None if sketch is None else sketch[None], device,
                         precision)[0]


def _check_inputs(generator, image, mask, sketch) -> None:
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL image, got {type(image).__name__}")
    if not isinstance(mask, Image.Image):
        raise TypeError(f"mask must be a PIL image, got {type(mask).__name__}")
    if mask.size != image.size:
        raise ValueError(f"mask size {mask.size[0]}x{mask.size[1]} differs from image size "
                         f"{image.size[0]}x{image.size[1]} (width x height)")
    if sketch is not None and not generator_uses_sketch(generator):
        raise ValueError("a sketch was given but this generator was trained without sketches (model.sketch=false)")
    if sketch is not None and not isinstance(sketch, Image.Image):
        raise TypeError(f"sketch must be a PIL image or None, got {type(sketch).__name__}")


def _network_inputs(rgb: np.ndarray, hole: np.ndarray, sketch: Optional[np.ndarray], net_size: tuple[int, int]):
    """The window's pixels, hole and sketch at the size the network sees (unchanged when it fits)."""
    if net_size == hole.shape:
        return rgb, hole, sketch
    nh, nw = net_size
    net_rgb = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BICUBIC))
    covered = Image.fromarray(hole.astype(np.uint8) * 255).resize((nw, nh), Image.BILINEAR)
    net_sketch = None if sketch is None else thin_strokes(sketch > 0.5, net_size)
    return net_rgb, np.asarray(covered) > 0, net_sketch


def _predict_window(generator, rgb, hole, sketch, net_size, device, precision) -> np.ndarray:
    """uint8 [h, w, 3] prediction for a window (downscaled for the network and upscaled back if needed)."""
    pred = predict(generator, *_network_inputs(rgb, hole, sketch, net_size), device, precision)
    if net_size != hole.shape:
        up = torch.from_numpy(pred).permute(2, 0, 1)[None]
        up = F.interpolate(up, size=hole.shape, mode="bicubic", align_corners=False)
        pred = up[0].permute(1, 2, 0).numpy()
    return to_uint8(pred)


@dataclass
class _Case:
    """One image on its way through the network: the output's source, the hole, the window and its inputs."""
    source: Image.Image
    hole: np.ndarray
    box: tuple = (0, 0, 0, 0)
    net_size: tuple = (0, 0)
    rgb: Optional[np.ndarray] = None
    sketch: Optional[np.ndarray] = None

    @property
    def whole(self) -> bool:
        """Whether the network sees the whole image at its own size (such cases can share a forward)."""
        return self.box == (0, self.hole.shape[0], 0, self.hole.shape[1]) and tuple(self.net_size) == self.hole.shape


def _plan(generator, image, mask, sketch, max_size: Optional[int]) -> _Case:
    """Check the inputs and plan where the network runs (:func:`plan_window`) -> a :class:`_Case`."""
    _check_inputs(generator, image, mask, sketch)
    if max_size is None:
        max_size = getattr(generator, "training_size", None) or MAX_SIZE
    source = kept(image)
    hole = mask_from_image(mask)
    if not hole.any():
        return _Case(source, hole)
    rgb = network_rgb(source)
    box, net_size = plan_window(hole, max_size)
    top, bottom, left, right = box
    win_sketch = None
    if generator_uses_sketch(generator):
        win_sketch = (np.zeros((bottom - top, right - left), np.float32) if sketch is None
                      else load_user_sketch(sketch, rgb.shape[:2])[top:bottom, left:right])
    return _Case(source, hole, box, net_size, rgb[top:bottom, left:right], win_sketch)


def _window_hole(case: _Case) -> np.ndarray:
    top, bottom, left, right = case.box
    return case.hole[top:bottom, left:right]


def inpaint_image(generator, image: Image.Image, mask: Image.Image, sketch: Optional[Image.Image] = None,
                  device: Union[str, torch.device] = "cpu", max_size: Optional[int] = None,
                  precision: str = "auto") -> Image.Image:
    """Inpaint ``image`` where ``mask`` marks holes -> PIL image of the same size; known pixels bit-identical.

    ``generator``: an :class:`~mhtma_model.networks.InpaintGenerator` (eval mode; it is moved to ``device``).
    ``image``: any PIL image (mode handling in the module docstring); ``mask``: PIL, same size, rules in
    :func:`mask_from_image`; ``sketch``: PIL lines or None (only for sketch generators). ``max_size``:
    longest side the network sees (large-image strategy in the module docstring); None = the
    generator's ``training_size`` (set by :func:`mhtma_model.checkpoint.load_generator`: a network sees
    its inputs at the scale it was trained on), else MAX_SIZE. ``precision``: module docstring.
    """
    return inpaint_images(generator, [image], [mask], [sketch], device, max_size, precision)[0]


def inpaint_images(generator, images: Sequence[Image.Image], masks: Sequence[Image.Image],
                   sketches: Optional[Sequence[Optional[Image.Image]]] = None,
                   device: Union[str, torch.device] = "cpu", max_size: Optional[int] = None,
                   precision: str = "auto") -> list[Image.Image]:
    """:func:`inpaint_image` of several images -> a list, in order. Images of one size that the network sees
    whole (longer side <= ``max_size``) share one forward; the others (windowed or resized) run one by one."""
    sketches = [None] * len(images) if sketches is None else list(sketches)
    if not len(images) == len(masks) == len(sketches):
        raise ValueError(f"got {len(images)} images, {len(masks)} masks and {len(sketches)} sketches; "
                         "give one mask (and one sketch or None) per image")
    dev = resolve_device(device)
    cases = [_plan(generator, *inputs, max_size) for inputs in zip(images, masks, sketches)]
    if _generator_device(generator) not in (None, dev):
        generator.to(dev)
    results: list = [case.source.copy() for case in cases]
    groups: dict = {}
    for i, case in enumerate(cases):
        if case.hole.any():
            groups.setdefault(case.hole.shape if case.whole else ("alone", i), []).append(i)
    for members in groups.values():
        if len(members) == 1:
            case = cases[members[0]]
            preds = [_predict_window(generator, case.rgb, _window_hole(case), case.sketch, case.net_size, dev,
                                     precision)]
        else:
            group = [cases[i] for i in members]
            sk = None if group[0].sketch is None else np.stack([c.sketch for c in group])
            preds = to_uint8(predict_batch(generator, np.stack([c.rgb for c in group]),
                                           np.stack([c.hole for c in group]), sk, dev, precision))
        for i, pred in zip(members, preds):
            results[i] = paste_prediction(cases[i].source, pred, _window_hole(cases[i]), cases[i].box)
    return results
