"""Image-quality metrics for inpainting results (docs/design.md §4) and their per-hole-ratio summary.

Every function takes images in [0, 1]: torch tensors ``[B, C, H, W]`` (or one image ``[C, H, W]``) or
numpy arrays ``[B, H, W, C]`` / ``[H, W, C]`` (uint8 arrays are divided by 255). Per-image results are
float64 numpy arrays of length B.

* MAE % = mean over pixels and channels of ``|gt - out|`` × 100.
* PSNR = ``10 · log10(1 / MSE)`` dB (data range 1). Identical images (MSE = 0) get the finite cap
  :data:`PSNR_CAP_DB` = 100 dB (the PSNR of an MSE of 1e-10, far above 8-bit quantisation noise:
  an error of one grey level in a single pixel of a 256×256 image already gives ≈ 96 dB), so that
  means over a data set never contain inf.
* SSIM (Wang et al. 2004): Gaussian window of 11 taps, σ = 1.5, population (co)variances, C1 = 0.01²,
  C2 = 0.03², computed per channel and averaged over the valid region (the 5-pixel border, where the
  window would leave the image, is excluded) and then over the channels. This is exactly
  :func:`skimage.metrics.structural_similarity` with ``gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1`` — the same convention as TensorFlow's ``tf.image.ssim``
  and torchmetrics' SSIM with a Gaussian kernel — so scikit-image (a required dependency) computes it;
  ``tests/test_metrics.py`` pins that agreement against a from-the-formula float64 computation.
  MAE and PSNR are one-line formulas and are computed here (tests compare PSNR with scikit-image's
  ``peak_signal_noise_ratio`` away from the identical case, where scikit-image returns inf).

Hole-ratio buckets follow the paper's Table IV: [0, 0.1), [0.1, 0.2), …, [0.5, 0.6), plus ``>0.6``
(0.6 to 1 inclusive) so that every image is counted; a ratio exactly on a boundary goes to the upper
bucket (0.1 → "0.1-0.2").
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence, Union

import numpy as np
import torch
from skimage.metrics import structural_similarity

PSNR_CAP_DB = 100.0
SSIM_SIGMA = 1.5
SSIM_WINDOW = 11
SSIM_K1, SSIM_K2 = 0.01, 0.03

#: Hole-ratio buckets (label, low inclusive, high exclusive); the last one includes 1.0.
BUCKETS: tuple[tuple[str, float, float], ...] = tuple(
    (f"{i / 10:.1f}-{(i + 1) / 10:.1f}", i / 10, (i + 1) / 10) for i in range(6)
) + ((">0.6", 0.6, math.inf),)

ImageBatch = Union[torch.Tensor, np.ndarray]


def _as_nhwc64(images: ImageBatch, name: str) -> np.ndarray:
    """Any accepted layout -> float64 numpy [B, H, W, C] in [0, 1]."""
    if isinstance(images, torch.Tensor):
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4:
            raise ValueError(f"{name} must be a tensor [B, C, H, W] or [C, H, W], got shape {list(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(f"{name} must be a float tensor in [0, 1], got {images.dtype}")
        arr = images.detach().to("cpu", torch.float64).permute(0, 2, 3, 1).numpy()
    elif isinstance(images, np.ndarray):
        arr = images
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4:
            raise ValueError(f"{name} must be an array [B, H, W, C] or [H, W, C], got shape {list(images.shape)}")
        if arr.dtype == np.uint8:
            arr = arr.astype(np.float64) / 255.0
        elif np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float64)
        else:
            raise TypeError(f"{name} must be uint8 or float in [0, 1], got {arr.dtype}")
    else:
        raise TypeError(f"{name} must be a torch tensor or a numpy array, got {type(images).__name__}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf")
    if arr.size and (arr.min() < -1e-6 or arr.max() > 1 + 1e-6):
        raise ValueError(f"{name} must lie in [0, 1], got range [{arr.min():.4g}, {arr.max():.4g}]")
    return arr


def _pair(output: ImageBatch, target: ImageBatch) -> tuple[np.ndarray, np.ndarray]:
    out = _as_nhwc64(output, "output")
    gt = _as_nhwc64(target, "target")
    if out.shape != gt.shape:
        raise ValueError(f"output and target shapes differ: {list(out.shape)} vs {list(gt.shape)}")
    return out, gt


def _mae_percent(out: np.ndarray, gt: np.ndarray) -> np.ndarray:
    return np.abs(out - gt).mean(axis=(1, 2, 3)) * 100.0


def _psnr(out: np.ndarray, gt: np.ndarray, cap_db: float = PSNR_CAP_DB) -> np.ndarray:
    mse = ((out - gt) ** 2).mean(axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        values = 10.0 * np.log10(1.0 / mse)
    return np.minimum(values, cap_db)


def _ssim(out: np.ndarray, gt: np.ndarray) -> np.ndarray:
    if out.shape[1] < SSIM_WINDOW or out.shape[2] < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {out.shape[1]}x{out.shape[2]}")
    return np.array([
        structural_similarity(o, g, gaussian_weights=True, sigma=SSIM_SIGMA, use_sample_covariance=False,
                              data_range=1.0, channel_axis=-1, K1=SSIM_K1, K2=SSIM_K2)
        for o, g in zip(out, gt)
    ], dtype=np.float64)


def mae_percent(output: ImageBatch, target: ImageBatch) -> np.ndarray:
    """Per-image mean absolute error × 100 -> float64 [B]."""
    return _mae_percent(*_pair(output, target))


def psnr(output: ImageBatch, target: ImageBatch, cap_db: float = PSNR_CAP_DB) -> np.ndarray:
    """Per-image PSNR in dB with data range 1 -> float64 [B]; values are capped at ``cap_db`` (identical -> cap)."""
    return _psnr(*_pair(output, target), cap_db)


def ssim(output: ImageBatch, target: ImageBatch) -> np.ndarray:
    """Per-image SSIM (11-tap Gaussian, σ 1.5, per channel, mean) -> float64 [B]; images need H, W ≥ 11."""
    return _ssim(*_pair(output, target))


def image_metrics(output: ImageBatch, target: ImageBatch) -> dict[str, np.ndarray]:
    """``{"mae_percent", "psnr", "ssim"}``, each a float64 [B] array (inputs checked and converted once)."""
    out, gt = _pair(output, target)
    return {"mae_percent": _mae_percent(out, gt), "psnr": _psnr(out, gt), "ssim": _ssim(out, gt)}


def bucket_label(ratio: float) -> str:
    """The hole-ratio bucket of ``ratio`` in [0, 1] (see :data:`BUCKETS`)."""
    ratio = float(ratio)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"hole ratio must lie in [0, 1], got {ratio}")
    for label, low, high in BUCKETS:
        if low <= ratio < high:
            return label
    raise AssertionError("unreachable: the last bucket is unbounded")


#: Per-image metrics averaged on summary rows, in table order (LPIPS only when computed).
PER_IMAGE_METRICS = ("mae_percent", "psnr", "ssim", "lpips")


def summarise(records: Sequence[Mapping[str, float]], fid_fn=None, set_fn=None) -> dict[str, object]:
    """Mean metrics overall and per hole-ratio bucket.

    ``records``: one mapping per image with ``hole_ratio`` and the per-image metrics (``mae_percent``,
    ``psnr``, ``ssim``, optionally ``lpips``: those of :data:`PER_IMAGE_METRICS` the first record has).
    ``fid_fn``: optional callable ``(indices: list[int]) -> float | None`` giving the FID of a subset.
    ``set_fn``: optional callable ``(indices) -> dict`` of further set-level values (e.g. P-IDS/U-IDS,
    None where the subset is too small), merged into each row.
    Returns ``{"overall": row, "buckets": [row, ...]}``; a row is ``{"bucket", "count", <metric>: mean,
    ...[, "fid"]}``. The six buckets 0–0.6 are always listed (count 0 → metrics None); ">0.6" only when
    an image falls in it. FID appears on a bucket row only when it has ≥ 2 images.
    """
    keys = [k for k in PER_IMAGE_METRICS if records and k in records[0]] or list(PER_IMAGE_METRICS[:3])

    def row(name: str, idx: list[int]) -> dict[str, object]:
        out: dict[str, object] = {"bucket": name, "count": len(idx)}
        for key in keys:
            out[key] = float(np.mean([records[i][key] for i in idx])) if idx else None
        if fid_fn is not None:
            out["fid"] = fid_fn(idx) if len(idx) >= 2 else None
        if set_fn is not None:
            out.update(set_fn(idx))
        return out

    by_bucket: dict[str, list[int]] = {label: [] for label, _, _ in BUCKETS}
    for i, rec in enumerate(records):
        by_bucket[bucket_label(rec["hole_ratio"])].append(i)
    buckets = [row(label, by_bucket[label]) for label, _, _ in BUCKETS
               if label != ">0.6" or by_bucket[label]]
    return {"overall": row("overall", list(range(len(records)))), "buckets": buckets}


__all__ = ["PSNR_CAP_DB", "BUCKETS", "PER_IMAGE_METRICS", "mae_percent", "psnr", "ssim", "image_metrics", "bucket_label", "summarise"]
