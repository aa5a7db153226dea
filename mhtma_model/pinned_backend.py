"""Whether a generator whose attention layers are pinned to ``backend='triton'`` (``model.backend=triton`` in its
config) can run on a device: the one check every command line makes before it does any work, so that a pinned
checkpoint on a machine without a usable GPU is one line, not a traceback from inside the op."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from mhtma_kernels.layers import MaskedTemperatureAttention
from mhtma_kernels.ops import resolve_backend
from mhtma_kernels.ops.rules import triton_import_error


def _why_not(layers: list, device: torch.device, dtype: Optional[torch.dtype]) -> Optional[str]:
    """Why the triton kernels cannot run these layers on ``device`` (None when they can)."""
    error = triton_import_error()
    if error is not None:
        return f"the triton package cannot be imported ({error})"
    from mhtma_kernels.ops.triton import device as gpus, launcher

    if device.type != "cuda":
        return None if launcher.interpreting() else f"it needs a CUDA GPU and this run is on {device}"
    gpu = gpus.current(torch.empty(0, device=device))
    for layer in layers:
        d = layer.head_channels * layer.patch_size ** 2
        why = launcher.refusal(d, d, dtype or torch.float32, gpu)
        if why is not None:
            return why
    return None


def pinned_backend_problem(generator: nn.Module, device: torch.device, dtype: Optional[torch.dtype],
                           remedy: str) -> Optional[str]:
    """One line saying why ``generator``'s layers pinned to backend='triton' (by ``model.backend``, or by
    ``MHTMA_BACKEND`` for layers on 'auto') cannot run on ``device`` at ``dtype`` (None = fp32) and what to do
    (``remedy``, or unset MHTMA_BACKEND); None when nothing is pinned to triton or it can run there."""
    layers = [m for m in generator.modules() if isinstance(m, MaskedTemperatureAttention)
              and m.backend != "reference" and resolve_backend(m.backend) == "triton"]
    if not layers:
        return None
    why = _why_not(layers, torch.device(device), dtype)
    if why is None:
        return None
    if all(m.backend == "auto" for m in layers):
        return f"MHTMA_BACKEND=triton cannot run here: {why}; unset MHTMA_BACKEND (or set it to torch)"
    return (f"the model's attention is pinned to backend='triton' (model.backend), which cannot run here: {why}; "
            f"{remedy}")
