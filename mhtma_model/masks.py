"""Hole masks: the generated mask protocols (DeepFill v2 free-form, box, LaMa thin/medium/thick), or masks
read from files.

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

Protocols (:data:`MASK_PROTOCOLS`, :func:`protocol_mask`; mask ``i`` of a set with seed ``S`` is drawn
from ``numpy.random.default_rng([S, i])`` for every protocol, so ``mhtma-masks`` files, ``mhtma-eval
--mask-protocol`` and training's validation masks agree):

- ``free-form``: :func:`free_form_mask` below (unchanged; not capped at half the image);
- ``box``: one axis-aligned rectangle, each side a uniform integer in [S/4, S/2] px, at a uniform
  position (hole ratio 1/16 to 1/4);
- ``lama-thin``, ``lama-medium``, ``lama-thick``: the rules of LaMa's evaluation masks (Suvorov et al.
  2022, advimman/lama ``configs/data_gen/random_{thin,medium,thick}_{256,512}.yaml``), re-implemented
  here. A mask is either strokes or boxes: boxes with probability 0.3 / 1.3 where the config lists
  boxes with weight 0.3 beside strokes with weight 1 (thin has none). Strokes: ``n`` in
  [min_times, max_times + 1] polylines (LaMa's generator, with its size ramp at full strength, adds one
  to the configured maximum count), each from a uniform start pixel with 1-5 segments; a segment's angle is ``0.01 + a`` rad
  with ``a`` a uniform integer in [0, 3] (mirrored to ``2π − angle`` on every other stroke), its length
  ``10 + U{0..max_len−1}`` px, its width ``5 + U{0..max_width−1}`` px, drawn with round ends; the end
  point is clipped to the image. Boxes: ``n`` in [min_times, max_times] rectangles with sides uniform
  integers in [bbox_min, bbox_max] (inclusive, again by the ramp's + 1; below the image side minus twice
  the margin), placed inside the margin.
  A mask covering more than half of the image (LaMa's ``max_tamper_area: 0.5``) or nothing is
  rejected and redrawn from the same generator. The parameters are LaMa's at 256 and 512 px
  (:data:`LAMA_RULES`); other sizes scale every length of the 256 set (below 384 px) or of the 512 set
  linearly with the size, counts unchanged. One difference from LaMa's ``bin/gen_mask_dataset.py``: it draws on the
  photo resized to the shorter side and then crops a square, where these masks are drawn on the square
  itself (the same rules, but not LaMa's files).

Reading mask files (the > 127 rule, alpha layers) lives in :mod:`mhtma_model.images`
(:func:`~mhtma_model.images.mask_from_image`, :func:`~mhtma_model.images.load_mask`).

Hole-ratio distribution at 256×256 (200 masks, seeds ``default_rng([0, i])``, see tests/test_masks.py):
mean 0.263; min 0.151, 5 % 0.165, 25 % 0.214, median 0.261, 75 % 0.302, 95 % 0.372, max 0.551
(the 96×96 square alone is 0.141).
"""
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
from PIL import Image, ImageDraw

from .images import list_images, load_mask, mask_from_image, positive_size

# load_mask and mask_from_image live in mhtma_model.images; importable from here as before.
__all__ = ["free_form_mask", "box_mask", "lama_mask", "protocol_mask", "seeded_mask", "check_protocol",
           "ProtocolMix", "parse_protocol_mix", "MASK_PROTOCOLS", "LAMA_RULES", "MAX_HOLE_RATIO", "StrokeRule", "BoxRule", "LamaRule",
           "hole_ratio", "MaskFolder", "load_mask", "mask_from_image"]


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


# ------------------------------------------------------------------------------------------- protocols

MASK_PROTOCOLS = ("free-form", "box", "lama-thin", "lama-medium", "lama-thick")
MAX_HOLE_RATIO = 0.5   # LaMa's max_tamper_area
MAX_DRAWS = 1000       # rejected draws before giving up (never reached with the published rules)


@dataclass(frozen=True)
class StrokeRule:
    """LaMa's irregular strokes (config values): count in [min_times, max_times + 1], widths 5 + U{0..max_width-1}, lengths
    10 + U{0..max_len-1}, angles 0.01 + U{0..max_angle-1} rad; ``base``: the px of the constant 5 and 10."""
    min_times: int
    max_times: int
    max_width: int
    max_len: int
    max_angle: int = 4
    base_width: float = 5.0
    base_len: float = 10.0


@dataclass(frozen=True)
class BoxRule:
    """LaMa's boxes (config values): count in [min_times, max_times], sides in [min_size, max_size], ``margin`` px
    from the border."""
    margin: int
    min_size: int
    max_size: int
    min_times: int
    max_times: int


@dataclass(frozen=True)
class LamaRule:
    """One LaMa protocol at one size: strokes, and boxes drawn instead with weight ``box_weight`` : 1."""
    strokes: StrokeRule
    boxes: Optional[BoxRule] = None
    box_weight: float = 0.0


LAMA_RULES: dict = {
    ("lama-thin", 256): LamaRule(StrokeRule(4, 50, 10, 40)),
    ("lama-thin", 512): LamaRule(StrokeRule(4, 70, 20, 100)),
    ("lama-medium", 256): LamaRule(StrokeRule(4, 5, 50, 100), BoxRule(0, 10, 50, 1, 5), 0.3),
    ("lama-medium", 512): LamaRule(StrokeRule(4, 10, 100, 200), BoxRule(0, 30, 150, 1, 5), 0.3),
    ("lama-thick", 256): LamaRule(StrokeRule(1, 5, 100, 200), BoxRule(10, 30, 150, 1, 3), 0.3),
    ("lama-thick", 512): LamaRule(StrokeRule(1, 5, 250, 450), BoxRule(10, 30, 300, 1, 4), 0.3),
}


def check_protocol(name: str) -> str:
    """``name`` if it is one of :data:`MASK_PROTOCOLS`, else ValueError listing them."""
    if name not in MASK_PROTOCOLS:
        raise ValueError(f"unknown mask protocol {name!r}; choose one of {', '.join(MASK_PROTOCOLS)}")
    return name


def _scaled(rule: LamaRule, size: int, base: int) -> LamaRule:
    """Every length of ``rule`` (published at ``base`` px) times size / base; counts unchanged."""
    if size == base:
        return rule
    f = size / base
    px = lambda v: max(1, round(v * f))  # noqa: E731
    strokes = replace(rule.strokes, max_width=px(rule.strokes.max_width), max_len=px(rule.strokes.max_len),
                      base_width=rule.strokes.base_width * f, base_len=rule.strokes.base_len * f)
    boxes = rule.boxes
    if boxes is not None:
        boxes = replace(boxes, margin=round(boxes.margin * f), min_size=px(boxes.min_size),
                        max_size=max(px(boxes.max_size), px(boxes.min_size) + 1))
    return replace(rule, strokes=strokes, boxes=boxes)


def lama_rule(protocol: str, size: int) -> LamaRule:
    """The :class:`LamaRule` of ``protocol`` at ``size`` px (module docstring: published or scaled)."""
    base = 512 if size >= 384 else 256
    return _scaled(LAMA_RULES[(protocol, base)], size, base)


def _lama_strokes(size: int, rule: StrokeRule, rng: np.random.Generator) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for stroke in range(int(rng.integers(rule.min_times, rule.max_times + 2))):  # LaMa's ramp: max + 1 inclusive
        x, y = int(rng.integers(size)), int(rng.integers(size))
        for _ in range(1 + int(rng.integers(5))):
            angle = 0.01 + int(rng.integers(rule.max_angle))
            if stroke % 2 == 0:
                angle = 2 * math.pi - angle
            length = rule.base_len + int(rng.integers(rule.max_len))
            width = max(1, round(rule.base_width + int(rng.integers(rule.max_width))))
            end_x = int(np.clip(int(x + length * math.sin(angle)), 0, size))
            end_y = int(np.clip(int(y + length * math.cos(angle)), 0, size))
            draw.line([(x, y), (end_x, end_y)], fill=255, width=width)
            half = width / 2
            for px, py in ((x, y), (end_x, end_y)):  # round ends
                draw.ellipse((px - half, py - half, px + half, py + half), fill=255)
            x, y = end_x, end_y
    return np.asarray(canvas) > 127


def _lama_boxes(size: int, rule: BoxRule, rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    largest = min(rule.max_size + 1, size - 2 * rule.margin)  # exclusive bound; LaMa's ramp adds the + 1
    for _ in range(int(rng.integers(rule.min_times, rule.max_times + 1))):
        w = int(rng.integers(rule.min_size, max(largest, rule.min_size + 1)))
        h = int(rng.integers(rule.min_size, max(largest, rule.min_size + 1)))
        left = int(rng.integers(rule.margin, max(size - rule.margin - w + 1, rule.margin + 1)))
        top = int(rng.integers(rule.margin, max(size - rule.margin - h + 1, rule.margin + 1)))
        mask[top:top + h, left:left + w] = True
    return mask


def lama_mask(protocol: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A LaMa-protocol mask (module docstring) -> float32 ``[size, size]`` in {0, 1}, 0 < hole ratio ≤ 0.5."""
    rule = lama_rule(protocol, size)
    p_box = rule.box_weight / (1.0 + rule.box_weight) if rule.boxes is not None else 0.0
    for _ in range(MAX_DRAWS):
        boxes = p_box > 0 and rng.random() < p_box
        mask = _lama_boxes(size, rule.boxes, rng) if boxes else _lama_strokes(size, rule.strokes, rng)
        if 0 < mask.mean() <= MAX_HOLE_RATIO:
            return mask.astype(np.float32)
    raise RuntimeError(f"{protocol}: no mask with a hole ratio in (0, {MAX_HOLE_RATIO}] in {MAX_DRAWS} draws "
                       f"at {size} px")


def box_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """One rectangle, sides uniform in [size/4, size/2] px, uniform position -> float32 ``[size, size]``."""
    low, high = max(1, size // 4), max(1, size // 2)
    h, w = int(rng.integers(low, high + 1)), int(rng.integers(low, high + 1))
    top, left = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
    mask = np.zeros((size, size), np.float32)
    mask[top:top + h, left:left + w] = 1.0
    return mask


def protocol_mask(protocol: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A square mask of ``protocol`` (:data:`MASK_PROTOCOLS`) at ``size`` px -> float32 ``[size, size]`` in {0, 1}."""
    check_protocol(protocol)
    size = positive_size(size, size, "protocol_mask")[0]
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"protocol_mask: rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if protocol == "free-form":
        return free_form_mask(size, size, rng)
    if protocol == "box":
        return box_mask(size, rng)
    return lama_mask(protocol, size, rng)


def seeded_mask(protocol: str, size: int, seed: int, index: int) -> np.ndarray:
    """Mask ``index`` of the set with ``seed``: ``protocol_mask(protocol, size, default_rng([seed, index]))``."""
    return protocol_mask(protocol, size, np.random.default_rng([seed, index]))


def parse_protocol_mix(text: str) -> dict:
    """``"lama-thick:2, free-form:1"`` (or one name, weight 1) -> ``{"lama-thick": 2.0, "free-form": 1.0}``;
    ValueError (one line) for an unknown name, a bad weight or a repeated name."""
    weights: dict = {}
    for part in str(text).split(","):
        name, _, weight = part.strip().partition(":")
        name = name.strip()
        check_protocol(name)
        if name in weights:
            raise ValueError(f"mask protocol {name} is listed twice in {text!r}")
        try:
            weights[name] = float(weight) if weight.strip() else 1.0
        except ValueError:
            raise ValueError(f"the weight of {name} must be a number, got {weight.strip()!r}") from None
    ProtocolMix(weights)  # checks the weights
    return weights


class ProtocolMix:
    """Training masks drawn from several protocols: ``ProtocolMix({"lama-thick": 1, "free-form": 1})``.

    ``mix.mask(size, rng)`` picks a protocol with probability proportional to its weight (one draw
    from ``rng``; skipped when there is one protocol), then draws its mask from the same ``rng``.
    """

    def __init__(self, weights: Mapping[str, float]):
        if not weights:
            raise ValueError("ProtocolMix: give at least one protocol with a positive weight")
        for name, weight in weights.items():
            check_protocol(name)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0 \
                    or not math.isfinite(weight):
                raise ValueError(f"ProtocolMix: the weight of {name} must be a finite number > 0, got {weight!r}")
        self.names = list(weights)
        total = float(sum(weights.values()))
        self.probabilities = np.array([weights[n] / total for n in self.names])

    def __repr__(self) -> str:
        return "ProtocolMix({" + ", ".join(f"{n!r}: {p:.3g}" for n, p in zip(self.names, self.probabilities)) + "})"

    def mask(self, size: int, rng: np.random.Generator) -> np.ndarray:
        name = self.names[0] if len(self.names) == 1 else self.names[int(rng.choice(len(self.names),
                                                                                     p=self.probabilities))]
        return protocol_mask(name, size, rng)


if __name__ == "__main__":  # the library is not the command; say where the command is instead of doing nothing
    raise SystemExit("mhtma_model.masks is the mask library; the command is mhtma-masks "
                     "(or python -m mhtma_model.mask_set), e.g. mhtma-masks --protocol box --count 10 --output masks/")
