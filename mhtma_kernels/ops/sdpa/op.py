"""The CPU flash path registered with ``torch.library`` (:mod:`.flash_cpu`; raw q, k: it normalises them itself
when ``normalize``), one graph node for torch.compile and torch.export:

    mhtma::sdpa_cpu_attention(q, k, v, key_valid, temperature, float lambda_m, bool normalize)
        -> (out [B,H,Nq,D], lse [B,H,Nq]) in the compute dtype
    mhtma::sdpa_cpu_attention_backward(q, k, v, key_valid, temperature, out, lse, dout, float lambda_m,
                                       bool normalize) -> (dq, dk, dv, dtemperature)
"""
import torch

from ..rules import NAMESPACE, compute_dtype
from .flash_cpu import flash_cpu_backward, flash_cpu_forward


@torch.library.custom_op(f"{NAMESPACE}::sdpa_cpu_attention", mutates_args=())
def sdpa_cpu_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor,
                               temperature: torch.Tensor, lambda_m: float, normalize: bool
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    out, lse = flash_cpu_forward(q, k, v, key_valid, temperature, lambda_m, normalize)
    return out.contiguous(), lse.contiguous()  # the fake's layout


@sdpa_cpu_attention_forward.register_fake
def _(q, k, v, key_valid, temperature, lambda_m, normalize):
    B, H, Nq, _ = q.shape
    dtype = compute_dtype(q.dtype)
    return v.new_empty(B, H, Nq, v.shape[3], dtype=dtype), q.new_empty(B, H, Nq, dtype=dtype)


@torch.library.custom_op(f"{NAMESPACE}::sdpa_cpu_attention_backward", mutates_args=())
def sdpa_cpu_attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor,
                                temperature: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, dout: torch.Tensor,
                                lambda_m: float, normalize: bool
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    grads = flash_cpu_backward(q, k, v, key_valid, temperature, lambda_m, normalize, out, lse, dout)
    return tuple(x.contiguous() for x in grads)  # the fake's layout


@sdpa_cpu_attention_backward.register_fake
def _(q, k, v, key_valid, temperature, out, lse, dout, lambda_m, normalize):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), temperature.new_empty(temperature.shape)


def _sdpa_setup_context(ctx, inputs, output):
    q, k, v, key_valid, temperature, lambda_m, normalize = inputs
    ctx.save_for_backward(q, k, v, key_valid, temperature, *output)
    ctx.lambda_m, ctx.normalize = lambda_m, normalize


def _sdpa_backward(ctx, dout, _d_lse):
    q, k, v, key_valid, temperature, out, lse = ctx.saved_tensors
    dq, dk, dv, dt = sdpa_cpu_attention_backward(q, k, v, key_valid, temperature, out, lse, dout, ctx.lambda_m,
                                                 ctx.normalize)
    return dq, dk, dv, None, dt, None, None


sdpa_cpu_attention_forward.register_autograd(_sdpa_backward, setup_context=_sdpa_setup_context)


def sdpa_cpu_attention(q, k, v, key_valid, temperature, lambda_m: float, normalize: bool) -> torch.Tensor:
    """The CPU flash path on raw q, k as one traceable op -> ``[B, H, Nq, D]`` in v's dtype."""
    out = sdpa_cpu_attention_forward(q, k, v, key_valid, temperature, float(lambda_m), bool(normalize))[0]
    return out.to(v.dtype)
