"""Fréchet Inception Distance (FID) from Inception-v3 pool features, with weights read from a local file.

Nothing downloads. The weights file is given as a path (``mhtma-eval --fid-weights FILE``) or through the
environment variable ``MHTMA_INCEPTION``. Two formats are understood, told apart by the classifier size:

* **torchvision's Inception-v3** (``fc.weight`` of shape [1000, 2048]): the state dict of
  ``torchvision.models.inception_v3(weights="IMAGENET1K_V1")``. Create it once on a machine with
  internet access::

      python -c "import torch, torchvision; torch.save(torchvision.models.inception_v3(weights='IMAGENET1K_V1').state_dict(), 'inception_v3_torchvision.pt')"

  These are *not* the TensorFlow weights that published FIDs use, so numbers from them are only
  comparable with each other (same weights, same protocol), not with papers.
* **the TensorFlow FID Inception port** (``fc.weight`` of shape [1008, 2048]) as distributed for
  ``pytorch-fid`` (``pt_inception-2015-12-05-6726825d.pth``, keys in torchvision's naming). The
  network is then built with the TF graph's differences (average pools that do not count padding, a
  max pool in the last block's pool branch), so FIDs are close to the reference TF implementation
  (small differences remain from the image resizing).

Features: images in [0, 1] ``[B, 3, H, W]`` are resized to 299×299 (bilinear, no corner alignment),
scaled to [-1, 1] and passed through the network up to the global average pool -> ``[B, 2048]``.

FID between feature sets with means μ₁, μ₂ and covariances Σ₁, Σ₂ (unbiased, N − 1)::

    FID = |μ₁ − μ₂|² + tr(Σ₁) + tr(Σ₂) − 2 tr((Σ₁ Σ₂)^{1/2})

The trace of the matrix square root is computed as Σᵢ √λᵢ over the eigenvalues of the symmetric PSD
matrix Σ₁^{1/2} Σ₂ Σ₁^{1/2} (same spectrum as Σ₁Σ₂), which stays real and stable for the singular
covariances of small sample sets; :func:`fid_from_features` uses an exact N×M form for small sets.

Why not a library: torchmetrics' ``FrechetInceptionDistance`` gets its default feature extractor from
torch-fidelity, which downloads weights at run time, and with a custom extractor it would add a
dependency for a formula of a few lines; the statistics are written here and pinned in
``tests/test_metrics.py`` against closed forms and ``scipy.linalg.sqrtm``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .weights_files import load_weights_file, resolve_weights_file

INCEPTION_ENV = "MHTMA_INCEPTION"
FEATURE_DIM = 2048
INPUT_SIZE = 299

HOW_TO_GET_WEIGHTS = (
    "save torchvision's Inception-v3 state dict once on a machine with internet access: python -c \"import "
    "torch, torchvision; torch.save(torchvision.models.inception_v3(weights='IMAGENET1K_V1').state_dict(), "
    "'inception_v3_torchvision.pt')\" (or use pytorch-fid's pt_inception-2015-12-05-6726825d.pth), then pass "
    f"--fid-weights FILE or set {INCEPTION_ENV}=FILE"
)


def resolve_inception_path(path: Union[str, os.PathLike, None] = None) -> Optional[Path]:
    """``path``, else ``$MHTMA_INCEPTION``, else None (FID is then skipped by the caller).

    A path that is named but does not exist raises FileNotFoundError (naming the file and how to get it).
    """
    return resolve_weights_file(
        path, INCEPTION_ENV, option="--fid-weights",
        not_found=lambda file, source: f"Inception-v3 weights file not found: {file} (from {source}); {HOW_TO_GET_WEIGHTS}")


#: The one line a command prints when no Inception weights are configured.
FID_SKIPPED = (f"FID skipped (and P-IDS/U-IDS): no Inception-v3 weights given; to report them, "
               f"{HOW_TO_GET_WEIGHTS}")


def note_fid_skipped(file=None) -> None:
    """Print :data:`FID_SKIPPED` as one plain line on ``file`` (default stderr); not a Python warning,
    which would add the warning class and a source line."""
    print(f"note: {FID_SKIPPED}", file=file if file is not None else sys.stderr, flush=True)


# --- the TensorFlow-graph variants of three torchvision Inception blocks (FID port) -------------------------

def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _fid_block_classes():
    from torchvision.models.inception import InceptionA, InceptionC, InceptionE

    class TFInceptionA(InceptionA):
        """InceptionA whose pool branch averages only over real (unpadded) pixels, as in the TF graph."""

        def _forward(self, x):
            b5 = self.branch5x5_2(self.branch5x5_1(x))
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            return [self.branch1x1(x), b5, b3, self.branch_pool(_tf_avg_pool(x))]

    class TFInceptionC(InceptionC):
        """InceptionC with the TF graph's padding-excluding average pool."""

        def _forward(self, x):
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            d = x
            for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                          self.branch7x7dbl_4, self.branch7x7dbl_5):
                d = layer(d)
            return [self.branch1x1(x), b7, d, self.branch_pool(_tf_avg_pool(x))]

    class TFInceptionE(InceptionE):
        """InceptionE; ``pool="avg"`` (padding-excluding average, Mixed_7b) or ``"max"`` (Mixed_7c)."""

        def __init__(self, in_channels, pool="avg"):
            super().__init__(in_channels)
            self.pool = pool

        def _forward(self, x):
            b3 = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
            if self.pool == "max":
                pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
            else:
                pooled = _tf_avg_pool(x)
            return [self.branch1x1(x), b3, d, self.branch_pool(pooled)]

    return TFInceptionA, TFInceptionC, TFInceptionE


def build_inception(variant: str = "torchvision", aux_logits: bool = False) -> nn.Module:
    """An untrained Inception-v3 of the given ``variant`` ("torchvision" or "tf-fid"), classifier kept."""
    from torchvision.models import inception_v3

    if variant == "torchvision":
        return inception_v3(weights=None, aux_logits=aux_logits, init_weights=False, transform_input=False)
    if variant != "tf-fid":
        raise ValueError(f"variant must be 'torchvision' or 'tf-fid', got {variant!r}")
    net = inception_v3(weights=None, aux_logits=aux_logits, init_weights=False, transform_input=False,
                       num_classes=1008)
    block_a, block_c, block_e = _fid_block_classes()
    net.Mixed_5b = block_a(192, pool_features=32)
    net.Mixed_5c = block_a(256, pool_features=64)
    net.Mixed_5d = block_a(288, pool_features=64)
    net.Mixed_6b = block_c(768, channels_7x7=128)
    net.Mixed_6c = block_c(768, channels_7x7=160)
    net.Mixed_6d = block_c(768, channels_7x7=160)
    net.Mixed_6e = block_c(768, channels_7x7=192)
    net.Mixed_7b = block_e(1280, pool="avg")
    net.Mixed_7c = block_e(2048, pool="max")
    return net


class InceptionFeatures(nn.Module):
    """Inception-v3 pool features: ``forward(images [B, 3, H, W] in [0, 1]) -> [B, 2048]`` (float32).

    ``weights_path``: a torchvision-format state dict (see the module docstring; a dict holding it under
    "state_dict" is accepted too). Raises FileNotFoundError for a missing file and ValueError for a file
    that is not an Inception-v3 state dict.
    """

    def __init__(self, weights_path: Union[str, os.PathLike]):
        super().__init__()
        path = Path(weights_path)
        state = load_weights_file(path, "Inception-v3 weights file", HOW_TO_GET_WEIGHTS)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not isinstance(state.get("fc.weight"), torch.Tensor):
            raise ValueError(f"{path} is not an Inception-v3 state dict (no 'fc.weight' tensor); {HOW_TO_GET_WEIGHTS}")
        classes = state["fc.weight"].shape[0]
        if classes == 1000:
            self.variant = "torchvision"
        elif classes == 1008:
            self.variant = "tf-fid"
        else:
            raise ValueError(f"{path}: fc.weight has {classes} classes; expected 1000 (torchvision) or 1008 "
                             "(TF FID port)")
        aux = any(k.startswith("AuxLogits.") for k in state)
        net = build_inception(self.variant, aux_logits=aux)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{path} does not match the {self.variant} Inception-v3 layout: {exc}") from exc
        net.fc = nn.Identity()
        net.AuxLogits = None
        net.aux_logits = False
        self.net = net.eval().requires_grad_(False)

    def train(self, mode: bool = True):  # always inference: dropout/batch-norm stay in eval mode
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {list(images.shape)}")
        x = F.interpolate(images.float(), size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        feats = self.net(x * 2.0 - 1.0)
        return feats.reshape(feats.shape[0], -1)


def _float64(features) -> np.ndarray:
    """A tensor (any device) or array-like -> float64 numpy array."""
    return np.asarray(features.cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """``features [N, D]`` (N ≥ 2) -> (mean [D], unbiased covariance [D, D]) in float64."""
    feats = _float64(features)
    if feats.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {list(feats.shape)}")
    if feats.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 feature vectors per set, got {feats.shape[0]}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (see the module docstring)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"shapes must be mu [D], sigma [D, D] for both: got {mu1.shape}, {sigma1.shape}, "
                         f"{mu2.shape}, {sigma2.shape}")
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2.0)
    trace_sqrt = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)
    return max(value, 0.0)


def fid_from_features(features_a, features_b) -> float:
    """FID between two feature sets ``[N, D]`` and ``[M, D]`` (N, M ≥ 2).

    With A = centred features_aᵀ [D, N] and B likewise, Σ₁ = AAᵀ/(N−1), Σ₂ = BBᵀ/(M−1), and the non-zero
    eigenvalues of Σ₁Σ₂ are those of (AᵀB)(AᵀB)ᵀ / ((N−1)(M−1)), so tr((Σ₁Σ₂)^{1/2}) is the sum of the
    singular values of AᵀB over √((N−1)(M−1)). That N×M route is used when both sets are no larger than
    D (always exact, and fast for the small sets of per-bucket FIDs); otherwise the D×D covariances.
    """
    a, b = _float64(features_a), _float64(features_b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be [N, D] and [M, D] with the same D, got {list(a.shape)} and {list(b.shape)}")
    n, m, d = a.shape[0], b.shape[0], a.shape[1]
    if max(n, m) > d:
        return frechet_distance(*feature_statistics(a), *feature_statistics(b))
    if min(n, m) < 2:
        raise ValueError(f"FID needs at least 2 feature vectors per set, got {n} and {m}")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    ca, cb = a - mu_a, b - mu_b
    trace_a, trace_b = (ca ** 2).sum() / (n - 1), (cb ** 2).sum() / (m - 1)
    trace_sqrt = np.linalg.svd(ca @ cb.T, compute_uv=False).sum() / np.sqrt((n - 1) * (m - 1))
    diff = mu_a - mu_b
    return max(float(diff @ diff + trace_a + trace_b - 2.0 * trace_sqrt), 0.0)


__all__ = ["INCEPTION_ENV", "resolve_inception_path", "FID_SKIPPED", "note_fid_skipped", "build_inception", "InceptionFeatures",
           "feature_statistics", "frechet_distance", "fid_from_features"]
