"""Whether a generator whose attention layers are pinned to ``backend='triton'`` (``model.backend=triton`` in its
config) can run on a device: the one check every command line makes before it does any work, so that a pinned
checkpoint on a machine without a usable GPU is one line, not a traceback from inside the op."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from mhtma_kernels.layers import MaskedTemperatureAttention
from mhtma_kernels.ops import resolve_backend
from mhtma_kernels.ops.backends import triton_refusal


def pinned_backend_problem(generator: nn.Module, device: torch.device, dtype: Optional[torch.dtype],
                           remedy: str) -> Optional[str]:
    """One line saying why ``generator``'s layers pinned to backend='triton' (by ``model.backend``, or by
    ``MHTMA_BACKEND`` for layers on 'auto') cannot run on ``device`` at ``dtype`` (None = fp32) and what to do
    (``remedy``, or unset MHTMA_BACKEND); None when nothing is pinned to triton or it can run there."""
    layers = [m for m in generator.modules() if isinstance(m, MaskedTemperatureAttention)
              and m.backend != "reference" and resolve_backend(m.backend) == "triton"]
    if not layers:
        return None
    head_dims = [m.head_channels * m.patch_size ** 2 for m in layers]
    why = triton_refusal(head_dims, dtype or torch.float32, torch.device(device))
    if why is None:
        return None
    if all(m.backend == "auto" for m in layers):
        return f"MHTMA_BACKEND=triton cannot run here: {why}; unset MHTMA_BACKEND (or set it to torch)"
    return (f"the model's attention is pinned to backend='triton' (model.backend), which cannot run here: {why}; "
            f"{remedy}")
