"""Sketches for user-guided inpainting (paper Sec. IV-F): edge maps, their clean-up, and user drawings.

The user-guided generator takes a fifth input channel ``sketch * mask``: one-pixel-wide structure lines
inside the hole. During training they are derived from the training image itself; at test time a person
draws them. This module supplies both, always as ``float32 [H, W]`` arrays in ``{0, 1}``:

* :func:`edges` — one interface for every edge detector: ``uint8 [H, W, 3] -> float32 [H, W]`` in
  ``[0, 1]`` (1 = edge). Detectors:

  - ``"canny"`` (default, no weights): Canny on the grey image with Gaussian ``sigma = 2 * s`` where
    ``s = sqrt(H * W / 256^2)`` scales with the image; hysteresis thresholds are the 80 % / 90 %
    quantiles of the gradient magnitude, with an absolute floor (0.02 / 0.05 on a [0, 1] image) so
    that a flat or nearly flat image yields no edges. Output is binary (a special case of [0, 1]).
  - ``"sobel"`` (no weights): grey map ``|grad(G_sigma * I)| / max |grad(G_sigma * I)|`` with
    ``sigma = s`` (0 everywhere for a constant image).
  - ``"learned"``: :class:`EdgeNet`, a small HED-style network (stages of 3x3 convs, one side output
    per stage, upsampled and fused by a 1x1 conv, sigmoid). Its weights are a ``state_dict`` read from
    a local file (argument, else env ``MHTMA_EDGE_WEIGHTS``); nothing is downloaded.
  - any callable with the same signature as :func:`edges`.

* :func:`make_sketch` — the paper's three steps on an edge map ``E``:
  ``B = E > 0.65``; area opening (drop 8-connected components of ``B`` with fewer than
  ``round(100 * H * W / 256^2)`` pixels, at least 1); morphological skeletonisation (Zhang's thinning,
  :func:`skimage.morphology.skeletonize`) -> lines one pixel wide.

* :func:`load_user_sketch` — a drawing made by a person (file path, PIL image or array), see its
  docstring for the stroke-colour rule; resized and thinned to one-pixel lines.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from .images import UnreadableImageError, has_transparency, open_image
from .pixel_range import to_uint8
from .weights_files import resolve_weights_file

#: Edge-map threshold of the paper (Sec. IV-F, Paris StreetView).
SKETCH_THRESHOLD = 0.65
#: Smallest component kept by the area opening, in pixels at 256 x 256 (8-connectivity).
MIN_COMPONENT_AREA_256 = 100
#: Environment variable naming the weights file of the learned detector.
EDGE_WEIGHTS_ENV = "MHTMA_EDGE_WEIGHTS"

Detector = Union[str, Callable[[np.ndarray], np.ndarray], None]
ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]


# --------------------------------------------------------------------------------------------- checks
def _check_rgb_uint8(image: np.ndarray, name: str = "image") -> np.ndarray:
    if isinstance(image, Image.Image):  # convenience: a PIL image is taken as its RGB pixels
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy uint8 array [H, W, 3] (or a PIL image), got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"{name} must have dtype uint8 (values 0..255), got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must have shape [H, W, 3], got {list(image.shape)}")
    if image.shape[0] < 3 or image.shape[1] < 3:
        raise ValueError(f"{name} must be at least 3 x 3 pixels, got {image.shape[0]} x {image.shape[1]}")
    return image


def _size_scale(height: int, width: int) -> float:
    """``s = sqrt(H * W / 256^2)``: the image's linear size relative to the paper's 256 x 256."""
    return math.sqrt(height * width / (256.0 * 256.0))


def min_component_area(height: int, width: int) -> int:
    """Area-opening threshold for an ``H x W`` image: ``max(1, round(100 * H * W / 256^2))`` pixels."""
    return max(1, int(round(MIN_COMPONENT_AREA_256 * height * width / (256.0 * 256.0))))


def _gray(image: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2gray

    return rgb2gray(image).astype(np.float64)  # [H, W] in [0, 1]


# ------------------------------------------------------------------------------------------ detectors
def canny_edges(image: np.ndarray) -> np.ndarray:
    """Binary Canny edges (see module docstring): ``uint8 [H, W, 3] -> float32 [H, W]`` in {0, 1}."""
    from skimage.feature import canny

    image = _check_rgb_uint8(image)
    gray = _gray(image)
    sigma = 2.0 * _size_scale(*gray.shape)
    adaptive = canny(gray, sigma=sigma, low_threshold=0.8, high_threshold=0.9, use_quantiles=True)
    floor = canny(gray, sigma=sigma, low_threshold=0.02, high_threshold=0.05)
    return (adaptive & floor).astype(np.float32)


def sobel_edges(image: np.ndarray) -> np.ndarray:
    """Grey Sobel magnitude of the smoothed image scaled to max 1: ``float32 [H, W]`` in [0, 1]."""
    from skimage.filters import gaussian, sobel

    image = _check_rgb_uint8(image)
    gray = _gray(image)
    magnitude = sobel(gaussian(gray, sigma=_size_scale(*gray.shape)))
    peak = float(magnitude.max())
    if peak <= 1e-6:
        return np.zeros(gray.shape, dtype=np.float32)
    return np.clip(magnitude / peak, 0.0, 1.0).astype(np.float32)


def resolve_edge_weights(path: Union[str, os.PathLike, None] = None) -> Path:
    """Path of the learned detector's weights: ``path``, else ``$MHTMA_EDGE_WEIGHTS``.

    Raises FileNotFoundError naming the file (or the missing setting) and how to provide one.
    """
    how = (
        "The learned edge detector needs a local weights file: a state_dict of "
        "mhtma_model.sketch.EdgeNet saved with torch.save (nothing is downloaded). Pass its path or set "
        f"{EDGE_WEIGHTS_ENV}; or use the default detector 'canny', which needs no weights."
    )
    return resolve_weights_file(
        path, EDGE_WEIGHTS_ENV, option="the argument",
        missing=f"no edge-detector weights given and {EDGE_WEIGHTS_ENV} is not set. {how}",
        not_found=lambda file, source: f"edge-detector weights file not found: {file}. {how}")


class EdgeNet(nn.Module):
    """Small HED-style edge detector: ``[B, 3, H, W]`` in [0, 1] -> logits ``[B, 1, H, W]``.

    Stage k (k = 0..len(widths)-1) runs at 1/2^k resolution: (max-pool 2 for k > 0), two 3x3
    conv + ReLU. Each stage has a 1x1 side output, bilinearly upsampled to H x W; a 1x1 conv fuses
    the side outputs. The input is ImageNet-normalised inside the module.
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 64)):
        super().__init__()
        if len(widths) < 1 or any(int(w) < 1 for w in widths):
            raise ValueError(f"widths must be a non-empty list of positive ints, got {list(widths)}")
        self.widths = tuple(int(w) for w in widths)
        stages, sides = [], []
        cin = 3
        for k, w in enumerate(self.widths):
            layers = [nn.MaxPool2d(2, ceil_mode=True)] if k > 0 else []
            layers += [nn.Conv2d(cin, w, 3, padding=1), nn.ReLU(inplace=True),
                       nn.Conv2d(w, w, 3, padding=1), nn.ReLU(inplace=True)]
            stages.append(nn.Sequential(*layers))
            sides.append(nn.Conv2d(w, 1, 1))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.sides = nn.ModuleList(sides)
        self.fuse = nn.Conv2d(len(self.widths), 1, 1)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x must have shape [B, 3, H, W], got {list(x.shape)}")
        height, width = x.shape[-2:]
        h = (x - self.mean) / self.std
        side_maps = []
        for stage, side in zip(self.stages, self.sides):
            h = stage(h)
            s = side(h)
            if s.shape[-2:] != (height, width):
                s = nn.functional.interpolate(s, size=(height, width), mode="bilinear", align_corners=False)
            side_maps.append(s)
        return self.fuse(torch.cat(side_maps, dim=1))


class LearnedEdgeDetector:
    """Callable ``uint8 [H, W, 3] -> float32 [H, W]`` in [0, 1]: ``sigmoid(EdgeNet(image))``.

    ``weights``: path of an EdgeNet ``state_dict`` (else ``$MHTMA_EDGE_WEIGHTS``); a missing file raises
    FileNotFoundError naming it. ``widths`` must match the saved network.
    """

    def __init__(self, weights: Union[str, os.PathLike, None] = None, widths: Sequence[int] = (16, 32, 64, 64),
                 device: str = "cpu"):
        self.path = resolve_edge_weights(weights)
        self.device = torch.device(device)
        self.net = EdgeNet(widths)
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
            self.net.load_state_dict(state)
        except Exception as exc:  # unreadable or a different architecture
            raise ValueError(f"edge-detector weights {self.path} could not be loaded into EdgeNet "
                             f"(widths={list(widths)}): {exc}") from exc
        self.net.eval().to(self.device)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        image = _check_rgb_uint8(image)
        x = torch.from_numpy(image).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        with torch.no_grad():
            prob = torch.sigmoid(self.net(x))[0, 0]
        return prob.cpu().numpy().astype(np.float32)


_NAMED = {"canny": canny_edges, "sobel": sobel_edges}


def get_detector(detector: Detector = None) -> Callable[[np.ndarray], np.ndarray]:
    """Resolve ``detector``: None/"canny" (default), "sobel", "learned" (weights from
    ``$MHTMA_EDGE_WEIGHTS``), or a callable ``uint8 [H, W, 3] -> [H, W]``."""
    if detector is None:
        return canny_edges
    if callable(detector):
        return detector
    if isinstance(detector, str):
        if detector in _NAMED:
            return _NAMED[detector]
        if detector == "learned":
            return LearnedEdgeDetector()
        raise ValueError(f"detector must be one of 'canny', 'sobel', 'learned' or a callable, got {detector!r}")
    raise TypeError(f"detector must be None, a name or a callable, got {type(detector).__name__}")


def edges(image: np.ndarray, detector: Detector = None) -> np.ndarray:
    """Edge map of ``image`` (``uint8 [H, W, 3]``) -> ``float32 [H, W]`` in [0, 1], 1 = edge.

    ``detector`` defaults to the classical Canny detector (see :func:`get_detector`).
    """
    image = _check_rgb_uint8(image)
    out = np.asarray(get_detector(detector)(image))
    if out.shape != image.shape[:2]:
        raise ValueError(f"edge detector returned shape {list(out.shape)}, expected {list(image.shape[:2])}")
    out = out.astype(np.float32)
    if not np.all(np.isfinite(out)) or out.min() < 0.0 or out.max() > 1.0:
        raise ValueError("edge detector must return finite values in [0, 1]")
    return out


# ------------------------------------------------------------------------------------------ clean-up
def area_opening(binary: np.ndarray, min_area: int) -> np.ndarray:
    """Drop the 8-connected components of ``binary`` (bool [H, W]) with fewer than ``min_area`` pixels."""
    from skimage.measure import label

    if min_area <= 1 or not binary.any():
        return binary.copy()
    labels = label(binary, connectivity=2)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_area
    keep[0] = False
    return keep[labels]


def skeleton(binary: np.ndarray) -> np.ndarray:
    """Morphological skeleton (one pixel wide) of ``binary`` (bool [H, W]) -> bool [H, W]."""
    from skimage.morphology import skeletonize

    return skeletonize(binary.astype(bool))


def clean_edge_map(edge_map: np.ndarray, threshold: float = SKETCH_THRESHOLD) -> np.ndarray:
    """Binarise (``> threshold``), area-open and skeletonise an edge map -> float32 [H, W] in {0, 1}."""
    edge_map = np.asarray(edge_map, dtype=np.float32)
    if edge_map.ndim != 2:
        raise ValueError(f"edge_map must have shape [H, W], got {list(edge_map.shape)}")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    binary = edge_map > threshold
    binary = area_opening(binary, min_component_area(*binary.shape))
    return skeleton(binary).astype(np.float32)


def make_sketch(image: np.ndarray, detector: Detector = None, threshold: float = SKETCH_THRESHOLD) -> np.ndarray:
    """Training sketch of ``image`` (``uint8 [H, W, 3]``) -> ``float32 [H, W]`` in {0, 1}.

    ``edges(image, detector) > threshold`` -> area opening (8-connected components under
    ``min_component_area(H, W)`` pixels removed) -> skeleton one pixel wide.
    """
    return clean_edge_map(edges(image, detector), threshold)


# ------------------------------------------------------------------------------------- user sketches
def _as_size(size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (int(size), int(size))
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise TypeError(f"size must be an int or a pair (H, W), got {size!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {(height, width)}")
    return height, width


def _open_sketch(path_or_image: ImageLike) -> Image.Image:
    if isinstance(path_or_image, Image.Image):
        return path_or_image
    if isinstance(path_or_image, np.ndarray):
        arr = path_or_image
        if arr.dtype != np.uint8:
            if np.issubdtype(arr.dtype, np.floating) and arr.size and arr.min() >= 0 and arr.max() <= 1:
                arr = to_uint8(arr * 255)
            else:
                raise TypeError(f"sketch array must be uint8 or float in [0, 1], got {arr.dtype}")
        if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4)):
            return Image.fromarray(arr)
        raise ValueError(f"sketch array must be [H, W], [H, W, 3] or [H, W, 4], got {list(arr.shape)}")
    if isinstance(path_or_image, (str, os.PathLike)):
        path = Path(path_or_image)
        if not path.is_file():
            raise FileNotFoundError(f"sketch file not found: {path}")
        try:
            return open_image(path, what="sketch")
        except UnreadableImageError as exc:
            raise ValueError(str(exc)) from exc
    raise TypeError(f"sketch must be a path, a PIL image or a numpy array, got {type(path_or_image).__name__}")


def stroke_map(path_or_image: ImageLike) -> np.ndarray:
    """Stroke pixels of a user drawing at its own size -> bool [H, W].

    Rule (documented for users):
    * an image with transparency (any alpha < 255) — e.g. a layer painted in a web editor: strokes are
      the pixels with alpha > 127, whatever their colour;
    * otherwise the background colour is the per-channel median of the image's one-pixel border; a pixel
      is a stroke when its RGB colour differs from it by more than 96 (Euclidean distance in 0..255
      units, 22 % of the largest possible). So dark strokes on a light background, light strokes on a
      dark background and coloured strokes on either all work; the strokes must not touch most of the
      border.
    """
    img = _open_sketch(path_or_image)
    if has_transparency(img):
        alpha = np.asarray(img.convert("RGBA"))[..., 3]
        if alpha.min() < 255:
            return alpha > 127
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        peak = arr.max() if arr.size and arr.max() > 0 else 1.0
        img = Image.fromarray(to_uint8(arr / peak * 255))
    rgb = np.asarray(img.convert("RGB"), dtype=np.float64)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]], axis=0)
    background = np.median(border, axis=0)
    distance = np.sqrt(((rgb - background) ** 2).sum(axis=-1))
    return distance > 96.0


def load_user_sketch(path_or_image: ImageLike, size) -> np.ndarray:
    """A person's sketch -> ``float32 [H, W]`` in {0, 1} with one-pixel-wide lines, ``size = (H, W)`` or int.

    Strokes are found with :func:`stroke_map` (transparent layer, or colour far from the border's
    median colour), resized to ``size`` (bilinear on the 0/1 stroke map; a resized pixel counts as a
    stroke when at least a quarter of it was, so thin lines survive downscaling), then skeletonised.
    No area opening: every line the person drew is kept.
    """
    return thin_strokes(stroke_map(path_or_image), size)


def thin_strokes(strokes: np.ndarray, size) -> np.ndarray:
    """Stroke map ``bool [h, w]`` -> one-pixel lines ``float32 [H, W]`` in {0, 1}, ``size = (H, W)`` or int.

    Resized bilinearly when the size differs (a resized pixel is a stroke when at least a quarter of it
    was, so thin lines survive downscaling), then skeletonised.
    """
    height, width = _as_size(size)
    strokes = np.asarray(strokes, dtype=bool)
    if strokes.shape != (height, width):
        resized = Image.fromarray(strokes.astype(np.uint8) * 255).resize((width, height), Image.BILINEAR)
        strokes = np.asarray(resized) >= 64
    return skeleton(strokes).astype(np.float32)


__all__ = [
    "SKETCH_THRESHOLD", "MIN_COMPONENT_AREA_256", "EDGE_WEIGHTS_ENV", "min_component_area",
    "canny_edges", "sobel_edges", "resolve_edge_weights", "LearnedEdgeDetector", "EdgeNet",
    "get_detector", "edges", "area_opening", "skeleton", "clean_edge_map", "make_sketch",
    "stroke_map", "load_user_sketch", "thin_strokes",
]
