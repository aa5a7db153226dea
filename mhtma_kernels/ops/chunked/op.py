"""The query-chunked GEMM path registered with ``torch.library``: custom ops that torch.compile and
torch.export trace as single graph nodes (no graph break), with fake (shape) implementations and autograd.

Ops (namespace ``mhtma``; q, k already L2-normalised, as for every backend below the public function):

    mhtma::chunked_gemm_attention(q, k, v, key_valid, temperature, float lambda_m, bool bounded=False)
        -> (out [B,H,Nq,Dv] in v's dtype, row_max [B,H,Nq], log_sum [B,H,Nq])
    mhtma::chunked_gemm_attention_backward(q, k, v, key_valid, temperature, row_max, dout, float lambda_m)
        -> (dq, dk, dv, dtemperature)

row_max and log_sum are the per-row softmax statistics (natural base, compute dtype: fp32, or fp64 for
fp64 inputs) of :func:`.gemm.chunked_forward`; the backward needs only row_max (it renormalises the
weights per row, see :func:`.gemm.chunked_backward`). The ops call those plain functions.
``bounded``: q and k rows have norm <= 1, so the forward may use the fixed bound 1/t as the row max.

For ONNX (or any consumer of aten-only graphs), :data:`EXPORT_DECOMPOSITIONS` maps the forward op to
:func:`decompose_chunked_attention`, the same math with the score matrix materialised
(``ExportedProgram.run_decompositions(EXPORT_DECOMPOSITIONS)``).
"""
import torch

from ..rules import NAMESPACE, compute_dtype
from .gemm import RowStats, chunked_backward, chunked_forward


@torch.library.custom_op(f"{NAMESPACE}::chunked_gemm_attention", mutates_args=())
def chunked_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor,
                              temperature: torch.Tensor, lambda_m: float, bounded: bool = False
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    out, stats = chunked_forward(q, k, v, key_valid, temperature, lambda_m, bounded, out_dtype=v.dtype)
    return tuple(x.contiguous() for x in (out, stats.m, stats.l))  # the fake's layout


@chunked_attention_forward.register_fake
def _(q, k, v, key_valid, temperature, lambda_m, bounded=False):
    B, H, Nq, _ = q.shape
    row_max = q.new_empty(B, H, Nq, dtype=compute_dtype(q.dtype))
    return v.new_empty(B, H, Nq, v.shape[3]), row_max, torch.empty_like(row_max)


@torch.library.custom_op(f"{NAMESPACE}::chunked_gemm_attention_backward", mutates_args=())
def chunked_attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor,
                               temperature: torch.Tensor, row_max: torch.Tensor, dout: torch.Tensor, lambda_m: float
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    stats = RowStats(row_max, row_max.new_empty(0))
    dq, dk, dv, dt = chunked_backward(q, k, v, key_valid, temperature, lambda_m, stats, dout)
    return tuple(x.contiguous() for x in (dq, dk, dv, dt.to(temperature.dtype)))  # the fake's layout


@chunked_attention_backward.register_fake
def _(q, k, v, key_valid, temperature, row_max, dout, lambda_m):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), temperature.new_empty(temperature.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, key_valid, temperature, lambda_m = inputs[:6]
    ctx.save_for_backward(q, k, v, key_valid, temperature, output[1])
    ctx.lambda_m = lambda_m


def _backward(ctx, dout, _d_row_max, _d_log_sum):
    q, k, v, key_valid, temperature, row_max = ctx.saved_tensors
    dq, dk, dv, dt = chunked_attention_backward(q, k, v, key_valid, temperature, row_max, dout, ctx.lambda_m)
    return dq, dk, dv, None, dt, None, None


chunked_attention_forward.register_autograd(_backward, setup_context=_setup_context)


def chunked_attention(q, k, v, key_valid, temperature, lambda_m: float, bounded: bool = False) -> torch.Tensor:
    """The query-chunked GEMM path on normalised q, k as one traceable op -> ``[B, H, Nq, Dv]`` in v's dtype."""
    return chunked_attention_forward(q, k, v, key_valid, temperature, float(lambda_m), bool(bounded))[0]


def decompose_chunked_attention(q, k, v, key_valid, temperature, lambda_m, bounded=False):
    """``mhtma::chunked_gemm_attention`` in aten ops (the score matrix materialised), for export to ONNX.

    Same outputs as the op: (out, row_max, log_sum); a consumer of the inference graph keeps only ``out``.
    """
    compute = compute_dtype(q.dtype)
    qc, kc, vc = q.to(compute), k.to(compute), v.to(compute)
    z = (qc @ kc.transpose(-1, -2)) / temperature.to(compute)[:, :, None, None]
    z = torch.where(key_valid[:, None, None, :], z, torch.full_like(z, -lambda_m))
    row_max = z.amax(dim=-1, keepdim=True)
    p = torch.exp(z - row_max)
    total = p.sum(dim=-1, keepdim=True)
    out = ((p @ vc) / total).to(v.dtype)
    return out, row_max[..., 0], total[..., 0].log()


EXPORT_DECOMPOSITIONS = {torch.ops.mhtma.chunked_gemm_attention.default: decompose_chunked_attention}
