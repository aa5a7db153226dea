"""The one evaluator behind ``mhtma-eval`` and training validation: 8-bit composite, per-image metrics,
set metrics (FID, P-IDS/U-IDS) and the hole-ratio buckets, so both report the same figure for the same
images, masks and predictions.

Per batch, :meth:`Evaluator.add` takes the ground truths (uint8 ``[B, S, S, 3]``), the holes (bool
``[B, S, S]``) and the predictions (float in [0, 255] or uint8, ``[B, S, S, 3]``; e.g. a generator's
refined output through :func:`mhtma_model.pixel_range.from_network`), and

1. composites in 8 bits (:func:`composite_8bit`): hole pixels = the rounded, clipped prediction, known
   pixels copied from the ground truth;
2. computes MAE %, PSNR, SSIM (:mod:`mhtma_model.metrics`) and, when an :class:`~mhtma_model.lpips_metric.LpipsDistance`
   is given, LPIPS, per image, on that composite against the ground truth, both in [0, 1];
3. keeps the Inception-v3 pool features of composite and truth when an
   :class:`~mhtma_model.fid.InceptionFeatures` is given.

:meth:`Evaluator.summary` gives the overall and per-bucket rows (:func:`mhtma_model.metrics.summarise`):
means of the per-image metrics; FID for sets of ≥ 2 images; P-IDS/U-IDS (:mod:`mhtma_model.ids`) for sets
of ≥ :data:`~mhtma_model.ids.IDS_MIN_IMAGES` images, when scikit-learn is installed.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch

from . import fid as fidmod
from . import ids as idsmod
from . import metrics as M
from .pixel_range import to_uint8


def composite_8bit(prediction: np.ndarray, truth: np.ndarray, holes: np.ndarray) -> np.ndarray:
    """uint8 ``[B, H, W, 3]``: the rounded prediction inside ``holes`` (bool ``[B, H, W]``), ``truth`` elsewhere."""
    prediction, truth, holes = np.asarray(prediction), np.asarray(truth), np.asarray(holes, dtype=bool)
    if truth.dtype != np.uint8 or truth.ndim != 4 or truth.shape[-1] != 3:
        raise ValueError(f"truth must be uint8 [B, H, W, 3], got {truth.dtype} {list(truth.shape)}")
    if prediction.shape != truth.shape or holes.shape != truth.shape[:3]:
        raise ValueError(f"prediction {list(prediction.shape)}, truth {list(truth.shape)} and holes "
                         f"{list(holes.shape)} must agree ([B, H, W, 3] and [B, H, W])")
    if prediction.dtype != np.uint8:
        prediction = to_uint8(prediction)
    out = truth.copy()
    out[holes] = prediction[holes]
    return out


def _to_tensor(images: np.ndarray, device) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> float32 ``[B, 3, H, W]`` in [0, 1] on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(device, torch.float32) / 255.0


class Evaluator:
    """Collects per-image rows (and features) batch by batch; see the module docstring.

    ``lpips``: an LpipsDistance or None; ``inception``: an InceptionFeatures or None; ``ids``: compute
    P-IDS/U-IDS from the Inception features (needs scikit-learn); ``device``: where LPIPS and Inception run.
    ``records``: one dict per image (``name``, ``hole_ratio`` and every per-image metric), in order.
    """

    def __init__(self, lpips=None, inception=None, ids: bool = True, device: Union[str, torch.device] = "cpu"):
        self.lpips, self.inception, self.device = lpips, inception, torch.device(device)
        self.ids = bool(ids) and inception is not None and idsmod.sklearn_available()
        self.records: list[dict] = []
        self.feats_out: list[torch.Tensor] = []
        self.feats_gt: list[torch.Tensor] = []

    def add(self, names: Sequence[str], truth: np.ndarray, holes: np.ndarray, prediction: np.ndarray) -> np.ndarray:
        """Score one batch -> its 8-bit composited outputs uint8 ``[B, S, S, 3]``."""
        if len(names) != len(truth):
            raise ValueError(f"{len(names)} names for {len(truth)} images")
        outputs = composite_8bit(prediction, truth, holes)
        values = M.image_metrics(outputs, truth)
        if self.lpips is not None or self.inception is not None:
            out_t, gt_t = _to_tensor(outputs, self.device), _to_tensor(truth, self.device)
            if self.lpips is not None:
                values["lpips"] = self.lpips(out_t, gt_t).double().cpu().numpy()
            if self.inception is not None:
                self.feats_out.append(self.inception(out_t).double().cpu())
                self.feats_gt.append(self.inception(gt_t).double().cpu())
        for i, name in enumerate(names):
            self.records.append({"name": str(name), "hole_ratio": float(np.asarray(holes[i]).mean()),
                                 **{k: float(v[i]) for k, v in values.items()}})
        return outputs

    def _features(self) -> Optional[tuple[np.ndarray, np.ndarray]]:
        if not self.feats_out:
            return None
        return torch.cat(self.feats_out).numpy(), torch.cat(self.feats_gt).numpy()

    def summary(self, records: Optional[list] = None) -> dict:
        """``{"overall": row, "buckets": [...]}`` over ``records`` (default: this evaluator's; another
        list, e.g. gathered from every rank, is summarised without set metrics)."""
        if records is not None:
            return M.summarise(records)
        feats = self._features()
        if feats is None:
            return M.summarise(self.records)
        fake, real = feats
        fid_fn = lambda idx: fidmod.fid_from_features(fake[idx], real[idx])  # noqa: E731
        set_fn = None
        if self.ids:
            def set_fn(idx):
                scores = idsmod.ids_or_none(real[idx], fake[idx])
                return scores if scores is not None else {"p_ids": None, "u_ids": None}
        return M.summarise(self.records, fid_fn=fid_fn, set_fn=set_fn)


__all__ = ["Evaluator", "composite_8bit"]
