"""The `triton` backend registered with ``torch.library`` (``torch.library.custom_op`` with explicit fake
implementations: an opaque node that torch.compile calls as is, no graph break).

Ops (namespace ``mhtma``; q, k already L2-normalised):

    mhtma::triton_attention(q, k, v, key_valid, temperature, float lambda_m, bool bounded)
        -> (out [B,H,Nq,Dv] in v's dtype, out_lo (rounding residual, v's dtype; empty when v is fp32),
            row_max2, row_log2sum [B,H,Nq] fp32)
    mhtma::triton_attention_backward(q, k, v, key_valid, temperature, out, out_lo, row_max2, row_log2sum, dout,
                                     float lambda_m, bool need_dq, bool need_dkdv, bool need_dt)
        -> (dq | empty, dk | empty, dv | empty, dtemperature [B,H] fp32 | empty)

The forward kernel is launched by ``launcher.launch_forward``; block sizes are autotuned there on a GPU (the
fixed ``choose_config`` under the interpreter or with MHTMA_AUTOTUNE=0).

The backward has two implementations, chosen per shape (:data:`..timed_choice.TRITON_BACKWARD`, the first
call per (device, dtype, shape bucket, needed gradients) times both):

* ``fused``: the backward kernels (``launcher.launch_backward``); dL/dt = -(1/t) sum_i <dq_i, q_i> from fp32
  partial sums in the dq kernel;
* ``chunked``: the query-chunked GEMM backward (:func:`..chunked.gemm.chunked_backward`), recomputing the
  weights from the forward's base-2 row maxima row_max2 and renormalising them per row (whole rows per chunk).

Env ``MHTMA_TRITON_BACKWARD`` = ``fused`` | ``chunked`` forces one (``auto``, the default, measures;
under the CPU interpreter the default is ``fused``, nothing is timed). The choice is made inside the
backward op's implementation, which runs outside any compiled graph.

``bounded``: q and k rows have norm <= 1 (normalised by the public function), so the forward kernel may
use the bound of the logits instead of a running max (rules.FIXED_MAX_LIMIT).
"""
import os

import torch

from ..chunked.gemm import RowStats, chunked_backward
from ..rules import MAX_BATCH_HEADS, NAMESPACE, triton_import_error
from ..timed_choice import TRITON_BACKWARD, shape_key
from . import launcher


def _require_triton() -> None:
    error = triton_import_error()
    if error is not None:
        raise ImportError(
            "backend='triton' needs the `triton` package, which could not be imported "
            f"({error}); install triton or use backend='torch'"
        ) from error


_require_triton()  # at import: the backward's default asks the launcher whether it interprets


def _register(name: str):
    return torch.library.custom_op(f"{NAMESPACE}::{name}", mutates_args=())


def _prepare(q, k, v, key_valid, temperature):
    """Contiguous inputs, the key mask as bytes, the temperature as fp32 [B, H]."""
    valid_u8 = key_valid.contiguous().view(torch.uint8)  # bool storage read as bytes
    temp = temperature.detach().to(torch.float32).contiguous()
    return q.contiguous(), k.contiguous(), v.contiguous(), valid_u8, temp


@_register("triton_attention")
def triton_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor,
                             temperature: torch.Tensor, lambda_m: float, bounded: bool
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v, valid_u8, temp = _prepare(q, k, v, key_valid, temperature)
    out, (row_max2, row_log2sum, out_lo) = launcher.launch_forward(q, k, v, valid_u8, temp, lambda_m, None, bounded)
    return out, (out.new_empty(0) if out_lo is None else out_lo), row_max2, row_log2sum


@_register("triton_attention_backward")
def triton_attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor,
                              temperature: torch.Tensor, out: torch.Tensor, out_lo: torch.Tensor, row_max2: torch.Tensor,
                              row_log2sum: torch.Tensor, dout: torch.Tensor, lambda_m: float, need_dq: bool, need_dkdv: bool,
                              need_dt: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    args = (q, k, v, key_valid, temperature, out, out_lo, row_max2, row_log2sum, dout, lambda_m,
            (need_dq, need_dkdv, need_dt))
    dq, dk, dv, dt = BACKWARDS[backward_choice(*args)](*args)
    empty = q.new_empty(0)
    return (dq if need_dq else empty.clone(), dk if need_dkdv else empty.clone(),
            dv if need_dkdv else empty.clone(), dt if need_dt else empty.float())


def _fused_backward(q, k, v, key_valid, temperature, out, out_lo, row_max2, row_log2sum, dout, lambda_m, needs):
    q, k, v, valid_u8, temp = _prepare(q, k, v, key_valid, temperature)
    stats = (row_max2, row_log2sum, out_lo if out_lo.numel() else None)
    need_dq, need_dkdv, need_dt = needs
    return launcher.launch_backward(q, k, v, valid_u8, temp, lambda_m, None, out, stats, dout.contiguous(),
                               need_dq=need_dq, need_dkdv=need_dkdv, need_dt=need_dt)


def _chunked_backward(q, k, v, key_valid, temperature, out, out_lo, row_max2, row_log2sum, dout, lambda_m, needs):
    """The chunked GEMM backward from the fused forward's base-2 row maxima (all four gradients)."""
    stats = RowStats(row_max2, row_log2sum, base2=True)
    dq, dk, dv, dt = chunked_backward(q, k, v, key_valid, temperature, lambda_m, stats, dout)
    return dq, dk, dv, dt.float()


BACKWARDS = {"fused": _fused_backward, "chunked": _chunked_backward}


def backward_choice(*args) -> str:
    """'fused' or 'chunked' for the backward call ``args``: env MHTMA_TRITON_BACKWARD forces one; by
    default the first call per (device, dtype, shape bucket, needed gradients) times both (see the module
    docstring), except under the CPU interpreter (fused, untimed)."""
    forced = os.environ.get("MHTMA_TRITON_BACKWARD", "auto").strip() or "auto"
    if forced not in ("auto",) + tuple(BACKWARDS):
        raise ValueError(f"MHTMA_TRITON_BACKWARD must be one of {('auto',) + tuple(BACKWARDS)}, got {forced!r}")
    if forced != "auto":
        return forced
    if launcher.interpreting():
        return "fused"
    q, k, v = args[:3]
    key = shape_key(q, k, v, args[-1])
    trials = {name: (lambda fn=fn: fn(*args)) for name, fn in BACKWARDS.items()}
    return TRITON_BACKWARD.choose(key, q.device, q.dtype, trials)


@triton_attention_forward.register_fake
def _(q, k, v, key_valid, temperature, lambda_m, bounded):
    B, H, Nq, _ = q.shape
    out = v.new_empty(B, H, Nq, v.shape[3])
    out_lo = out.new_empty(0) if v.dtype == torch.float32 else torch.empty_like(out)
    row_max2 = q.new_empty(B, H, Nq, dtype=torch.float32)
    return out, out_lo, row_max2, torch.empty_like(row_max2)


@triton_attention_backward.register_fake
def _(q, k, v, key_valid, temperature, out, out_lo, row_max2, row_log2sum, dout, lambda_m, need_dq, need_dkdv, need_dt):
    empty = q.new_empty(0)
    dq = q.new_empty(q.shape) if need_dq else empty.clone()  # contiguous, as the kernels write them
    dk = k.new_empty(k.shape) if need_dkdv else empty.clone()
    dv = v.new_empty(v.shape) if need_dkdv else empty.clone()
    dt = q.new_empty(q.shape[:2], dtype=torch.float32) if need_dt else empty.float()
    return dq, dk, dv, dt


def _setup_context(ctx, inputs, output):
    q, k, v, key_valid, temperature, lambda_m, _bounded = inputs
    out, out_lo, row_max2, row_log2sum = output
    ctx.save_for_backward(q, k, v, key_valid, temperature, out, out_lo, row_max2, row_log2sum)
    ctx.lambda_m = lambda_m


def _backward(ctx, dout, _d_out_lo, _d_m2, _d_l2):
    q, k, v, key_valid, temperature, out, out_lo, row_max2, row_log2sum = ctx.saved_tensors
    need_q, need_k, need_v, _, need_t = ctx.needs_input_grad[:5]
    dq, dk, dv, dt = triton_attention_backward(q, k, v, key_valid, temperature, out, out_lo, row_max2, row_log2sum, dout,
                                               ctx.lambda_m, need_q, need_k or need_v, need_t)
    return (dq if need_q else None, dk if need_k else None, dv if need_v else None, None,
            dt.to(temperature.dtype) if need_t else None, None, None)


triton_attention_forward.register_autograd(_backward, setup_context=_setup_context)


def triton_attention(q, k, v, key_valid, temperature, lambda_m: float, bounded: bool = False) -> torch.Tensor:
    """Fused masked temperature attention on normalised q, k as one traceable op -> ``[B, H, Nq, Dv]``.

    Checks what the kernels need (dtype fp16/bf16/fp32, CUDA or the interpreter, B*H <= 65535); the
    public function handles empty problems before it gets here.
    """
    _require_triton()
    launcher.check_inputs(q, k, v, temperature)
    B, H = q.shape[:2]
    if B * H > MAX_BATCH_HEADS:  # CUDA limit of grid axis 1
        raise ValueError(f"backend='triton' supports at most {MAX_BATCH_HEADS} batch*heads, got B*H = {B * H}; "
                         "split the batch")
    lambda_m = min(float(lambda_m), launcher.LAMBDA_CAP)
    return triton_attention_forward(q, k, v, key_valid, temperature, lambda_m, bool(bounded))[0]
