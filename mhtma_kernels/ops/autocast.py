"""Autocast for the op: which low-precision dtype (if any) q, k, v are cast to.

Inside ``torch.autocast(device_type, dtype)`` PyTorch casts the inputs of matmuls and convolutions
to ``dtype``; a custom op sees whatever it is given. The public function therefore does what
autocast does for ``torch.matmul``: floating inputs other than float64 are cast to the autocast
dtype (bf16/fp16), so the fused kernels run on tensor cores under AMP. The temperature is not cast
(a learned scale keeps its precision); the op then runs with autocast disabled, so its internal
fp32 accumulation is not re-cast by autocast.
"""
import torch


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast computes matmuls in on ``device``, or None when autocast is off there."""
    device_type = device.type
    if device_type not in ("cuda", "cpu") or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def cast_for_autocast(dtype: torch.dtype, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Cast floating tensors to ``dtype`` as autocast would (float64 is left alone, as autocast does)."""
    return tuple(x if x.dtype == torch.float64 else x.to(dtype) for x in tensors)
