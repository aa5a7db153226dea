"""Hole masks: DeepFill v2 free-form strokes ∪ one square generated on the fly, or masks read from files.

Convention everywhere: float32 ``[H, W]`` arrays in {0, 1}, 1 = hole (missing pixel).

Free-form generator (DeepFill v2 recipe, sizes given at 256 px and scaled by ``s = min(H, W) / 256``):

- 1-3 strokes; each a polyline of 4-11 vertices starting at a uniform random point; consecutive
  segments turn by angles drawn around 2π/5 (± up to 2π/15, alternating direction, so strokes
  zig-zag); segment lengths ~ N(r, r/2) clipped to [0, 2r] with r = sqrt(H² + W²) / 8; vertices are
  clipped to the image; each stroke has one width drawn from U(12, 40)·s px and is drawn with round
  joints and caps (PIL lines + a filled circle at every vertex);
- the whole stroke mask is flipped left-right and/or top-bottom with probability 0.5 each;
- union with one square hole of side round(96·s) at a uniform random position.

All randomness comes from the ``numpy.random.Generator`` passed in, so a seed reproduces a mask
exactly (``numpy.random.default_rng([seed, index])`` is the project's convention).

Reading mask files (the > 127 rule, alpha layers) lives in :mod:`mhtma_model.images`
(:func:`~mhtma_model.images.mask_from_image`, :func:`~mhtma_model.images.load_mask`).

Hole-ratio distribution at 256×256 (200 masks, seeds ``default_rng([0, i])``, see tests/test_masks.py):
mean 0.263; min 0.151, 5 % 0.165, 25 % 0.214, median 0.261, 75 % 0.302, 95 % 0.372, max 0.551
(the 96×96 square alone is 0.141).
"""
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .images import list_images, load_mask, mask_from_image, positive_size

# load_mask and mask_from_image live in mhtma_model.images; importable from here as before.
__all__ = ["free_form_mask", "hole_ratio", "MaskFolder", "load_mask", "mask_from_image"]


def _strokes(height: int, width: int, rng: np.random.Generator, scale: float) -> Image.Image:
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    radius = math.hypot(height, width) / 8
    mean_angle, angle_range = 2 * math.pi / 5, 2 * math.pi / 15
    for _ in range(int(rng.integers(1, 4))):  # 1-3 strokes
        vertices = int(rng.integers(4, 12))  # 4-11 vertices
        low = mean_angle - rng.uniform(0, angle_range)
        high = mean_angle + rng.uniform(0, angle_range)
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        points = [(x, y)]
        for i in range(vertices - 1):
            angle = rng.uniform(low, high)
            if i % 2 == 0:
                angle = 2 * math.pi - angle
            length = float(np.clip(rng.normal(radius, radius / 2), 0, 2 * radius))
            x = float(np.clip(x + length * math.cos(angle), 0, width - 1))
            y = float(np.clip(y + length * math.sin(angle), 0, height - 1))
            points.append((x, y))
        stroke = max(1, round(rng.uniform(12, 40) * scale))
        draw.line(points, fill=255, width=stroke)
        half = stroke / 2
        for px, py in points:  # round joints and caps
            draw.ellipse((px - half, py - half, px + half, py + half), fill=255)
    if rng.random() < 0.5:
        canvas = canvas.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.5:
        canvas = canvas.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    return canvas


def free_form_mask(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Free-form strokes ∪ one square hole (module docstring) -> float32 ``[height, width]`` in {0, 1}."""
    height, width = positive_size(height, width, "free_form_mask")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"free_form_mask: rng must be a numpy.random.Generator (numpy.random.default_rng(seed)), "
                        f"got {type(rng).__name__}")
    scale = min(height, width) / 256
    mask = np.asarray(_strokes(height, width, rng, scale)) > 127
    side = min(max(1, round(96 * scale)), height, width)
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    mask[top:top + side, left:left + side] = True
    return mask.astype(np.float32)


def hole_ratio(mask) -> float:
    """Fraction of hole pixels (values > 0.5) of a mask (numpy array or torch tensor, any shape)."""
    if hasattr(mask, "detach"):  # torch tensor
        mask = mask.detach().cpu().float().numpy()
    array = np.asarray(mask, dtype=np.float32)
    if array.size == 0:
        raise ValueError("hole_ratio: the mask is empty")
    return float((array > 0.5).mean())


class MaskFolder:
    """Masks read from a folder (recursive; the image suffixes of :func:`mhtma_model.images.list_images`).

    ``len(folder)``; ``folder.mask(i, size=(H, W))`` -> float32 ``[H, W]`` in {0, 1} of file ``i % len``
    (sorted order), resized with nearest neighbour. ``folder.paths`` lists the files.
    """

    def __init__(self, root):
        self.root = Path(root)
        self.paths = list_images(self.root)
        if not self.paths:
            raise ValueError(f"MaskFolder: no mask images (.png, .jpg, ...) found under {self.root}")

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"MaskFolder({str(self.root)!r}, {len(self)} masks)"

    def mask(self, i: int, size) -> np.ndarray:
        return load_mask(self.paths[int(i) % len(self.paths)], size)
