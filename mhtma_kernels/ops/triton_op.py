"""The `triton` backend: launcher, block-size choice and autograd Function around the fused kernels.

Inputs are ALREADY L2-normalised (the public function normalises in a PyTorch prepass, so that
autograd differentiates the norm exactly and the kernels are identical for normalize=True/False):

    q [B, H, Nq, D], k [B, H, Nk, D], v [B, H, Nk, Dv], key_valid [B, Nk] bool, temperature [B, H] > 0
    -> out [B, H, Nq, Dv] in v's dtype

Forward: one kernel (online softmax over key tiles). It saves the output in fp32, so that
delta_i = <dout_i, out_i> is not computed from an fp16/bf16-rounded output (that visibly biases
the temperature gradient), and per-row base-2 statistics m2 (max logit) and l2 (log2 of the sum),
[B, H, Nq] fp32 each (kept apart, see triton_kernels).
Backward: delta in PyTorch (O(Nq*Dv)), one kernel for dk and dv (program per key block), one for
dq (program per query block); nothing of size Nq x Nk is ever stored. The gradient to the
temperature is a cheap PyTorch epilogue on the fp32 dq of the kernel (dq w.r.t. the normalised q):
with g_ij = dL/dz_ij (zero on invalid keys) and z_ij = s_ij / t,

    dL/dt = -sum_ij g_ij s_ij / t^2 = -(1/t) * sum_i <dq_i, q_i>,   as dq_i = sum_j g_ij k_j / t.

Dtypes: fp16, bf16 and fp32 inputs, fp32 accumulation (fp32 matmuls use IEEE precision, not TF32).
float64 is refused with a TypeError rather than silently computed in fp32 (use backend="torch").
"""
import math
from dataclasses import dataclass

import torch

try:
    import triton

    from . import triton_kernels
except ImportError as error:  # pragma: no cover - exercised only where triton is missing
    triton = None
    triton_kernels = None
    _IMPORT_ERROR = error
else:
    _IMPORT_ERROR = None

_SUPPORTED = (torch.float16, torch.bfloat16, torch.float32)
_LOG2E = 1.4426950408889634
# exp2(-lambda_m * log2(e) - m) is exactly 0 in fp32 next to any valid logit (|z| <= 1/t) once
# lambda_m exceeds ~150 + 1/t; capping the constant keeps it finite in fp32 without changing results.
_LAMBDA_CAP = 1e30


@dataclass(frozen=True)
class KernelConfig:
    """Block sizes and launch parameters of the three kernels (all block sizes powers of two >= 16).

    block_m, block_n   forward tile: query rows x key rows
    block_d            chunk of the D axis in every q k^T contraction
    block_dv           forward output columns per program (a grid axis over Dv blocks)
    bwd_block_m/n      backward tile: query rows x key rows
    bwd_block_e        chunk of the Dv axis in the backward's dout v^T contraction
    bwd_block_dk       dq / dk output columns per program (grid axis over D blocks)
    bwd_block_dv       dv output columns per program (grid axis over Dv blocks)
    """

    block_m: int
    block_n: int
    block_d: int
    block_dv: int
    bwd_block_m: int
    bwd_block_n: int
    bwd_block_e: int
    bwd_block_dk: int
    bwd_block_dv: int
    num_warps: int = 4
    num_stages: int = 2
    bwd_num_warps: int = 4
    bwd_num_stages: int = 1


def _pow2(n: int, low: int, high: int) -> int:
    """Smallest power of two >= n, clamped to [low, high]."""
    return max(low, min(high, triton.next_power_of_2(max(1, n))))


def choose_config(nq: int, nk: int, d: int, dv: int, dtype: torch.dtype, interpret: bool) -> KernelConfig:
    """Block sizes for one problem shape (the single place to tune them).

    GPU: 64 x 64 forward score tiles (64 x 32 in fp32), 32 x 64 in the backward, D and Dv
    contracted in chunks of 32, output columns in blocks of up to 128 (Dv <= 128 -> one block, no
    recomputation; Dv = 288 -> 3 blocks, q k^T recomputed 3 times, but the fp32 accumulator stays
    64 x 128 and nothing spills), 8 warps. Interpreter (CPU): cost grows with the number of tile
    iterations, not tile size, so tiles are as large as the problem (up to 64 rows, 512 columns).
    """
    if interpret:
        rows_q, rows_k = _pow2(nq, 16, 64), _pow2(nk, 16, 64)
        cols_d, cols_dv = _pow2(d, 16, 512), _pow2(dv, 16, 512)
        return KernelConfig(rows_q, rows_k, cols_d, cols_dv, rows_q, rows_k, cols_dv, cols_d, cols_dv)
    # Chosen so that ptxas reports no register spills for sm_90 at D = Dv in {45, 288, 864} and
    # fp16/bf16/fp32 (checked by compiling ahead of time); runtime tuning is the benchmarks' job.
    return KernelConfig(
        block_m=64, block_n=32 if dtype == torch.float32 else 64, block_d=_pow2(d, 16, 32),
        block_dv=_pow2(dv, 16, 128),
        bwd_block_m=32, bwd_block_n=64, bwd_block_e=_pow2(dv, 16, 32),
        bwd_block_dk=_pow2(d, 16, 128), bwd_block_dv=_pow2(dv, 16, 128),
        num_warps=8, num_stages=2, bwd_num_warps=8, bwd_num_stages=1,
    )


def _interpreting() -> bool:
    """True when the kernels were built for Triton's CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return type(triton_kernels.masked_attention_fwd_kernel).__name__ == "InterpretedFunction"


def _check_inputs(q, k, v, temperature):
    if q.dtype not in _SUPPORTED:
        raise TypeError(
            f"q, k, v must be float16, bfloat16 or float32 for backend='triton', got {q.dtype}; "
            "use backend='torch' or backend='reference' for float64"
        )
    if temperature.dtype not in _SUPPORTED + (torch.float64,):
        raise TypeError(f"temperature must be a floating-point tensor, got {temperature.dtype}")
    if q.device.type != "cuda" and not _interpreting():
        raise ValueError(
            f"backend='triton' needs CUDA tensors (got tensors on {q.device}); set TRITON_INTERPRET=1 before "
            "importing triton to run the kernels on CPU, or use backend='torch'"
        )


def _constexprs(kernel: str, config: KernelConfig, dtype: torch.dtype, interpret: bool) -> dict:
    """Block sizes and flags of one kernel ("fwd", "dkdv" or "dq") for an input dtype."""
    c = config
    flags = dict(
        UPCAST=dtype == torch.bfloat16 and interpret,  # Triton 3.8 interpreter: bf16 tl.dot is wrong
        DOT_PRECISION="ieee" if dtype == torch.float32 else "tf32",  # tf32 is ignored for fp16/bf16 tiles
    )
    if kernel == "fwd":
        return dict(BLOCK_M=c.block_m, BLOCK_N=c.block_n, BLOCK_D=c.block_d, BLOCK_DV=c.block_dv, **flags)
    blocks = dict(BLOCK_M=c.bwd_block_m, BLOCK_N=c.bwd_block_n, BLOCK_D=c.block_d, BLOCK_E=c.bwd_block_e,
                  BLOCK_DK=c.bwd_block_dk)
    if kernel == "dkdv":
        blocks["BLOCK_DV"] = c.bwd_block_dv
    return dict(blocks, **flags)


def _launch_options(kernel: str, config: KernelConfig) -> dict:
    if kernel == "fwd":
        return dict(num_warps=config.num_warps, num_stages=config.num_stages)
    return dict(num_warps=config.bwd_num_warps, num_stages=config.bwd_num_stages)


def _kernel(kernel: str):
    return {
        "fwd": triton_kernels.masked_attention_fwd_kernel,
        "dkdv": triton_kernels.masked_attention_bwd_dkdv_kernel,
        "dq": triton_kernels.masked_attention_bwd_dq_kernel,
    }[kernel]


def _launch(kernel: str, grid, args, config: KernelConfig, dtype: torch.dtype):
    meta = _constexprs(kernel, config, dtype, _interpreting())
    _kernel(kernel)[grid](*args, **meta, **_launch_options(kernel, config))


def _forward(q, k, v, key_valid_u8, temp, lambda_m, config):
    """Launch the forward kernel on contiguous inputs -> (out [B,H,Nq,Dv] fp32, m2, l2 [B,H,Nq] fp32)."""
    B, H, Nq, D = q.shape
    Nk, Dv = k.shape[2], v.shape[3]
    out = torch.empty(B, H, Nq, Dv, dtype=torch.float32, device=q.device)
    m2 = torch.empty(B, H, Nq, dtype=torch.float32, device=q.device)
    l2 = torch.empty_like(m2)
    # Axis 0 (fastest) walks the query blocks of one (b, h), so they share its k, v tiles in L2.
    grid = (triton.cdiv(Nq, config.block_m), B * H, triton.cdiv(Dv, config.block_dv))
    args = (q, k, v, key_valid_u8, temp, out, m2, l2,
            q.stride(1), q.stride(2), k.stride(1), k.stride(2), v.stride(1), v.stride(2), out.stride(1), out.stride(2),
            H, Nq, Nk, D, Dv, -lambda_m * _LOG2E)
    _launch("fwd", grid, args, config, q.dtype)
    return out, m2, l2


def _backward(q, k, v, key_valid_u8, temp, lambda_m, config, out, m2, l2, dout, need_dq, need_dkdv):
    """Launch the backward kernels -> (dq fp32 or None, dk or None, dv or None); dk, dv in k's/v's dtype."""
    B, H, Nq, D = q.shape
    Nk, Dv = k.shape[2], v.shape[3]
    delta = (dout.float() * out).sum(-1)  # [B, H, Nq] fp32, from the fp32 forward output
    c = config
    tail = (q.stride(1), q.stride(2), k.stride(1), k.stride(2), v.stride(1), v.stride(2),
            dout.stride(1), dout.stride(2), H, Nq, Nk, D, Dv, -lambda_m * _LOG2E)
    dq = dk = dv = None
    if need_dkdv:
        dk = torch.empty_like(k)
        dv = torch.empty_like(v)
        n_col = max(triton.cdiv(D, c.bwd_block_dk), triton.cdiv(Dv, c.bwd_block_dv))
        grid = (triton.cdiv(Nk, c.bwd_block_n), B * H, n_col)
        _launch("dkdv", grid, (q, k, v, key_valid_u8, temp, dout, m2, l2, delta, dk, dv) + tail, c, q.dtype)
    if need_dq:
        dq = torch.empty(q.shape, dtype=torch.float32, device=q.device)
        grid = (triton.cdiv(Nq, c.bwd_block_m), B * H, triton.cdiv(D, c.bwd_block_dk))
        _launch("dq", grid, (q, k, v, key_valid_u8, temp, dout, m2, l2, delta, dq) + tail, c, q.dtype)
    return dq, dk, dv


_TRITON_DTYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
_FP32_POINTERS = ("TEMP", "OUT", "M2", "L2", "DELTA", "DQ")
_INPUT_POINTERS = ("Q", "K", "V", "DO", "DK", "DV_OUT")  # in the input dtype


def compile_for_gpu(d: int, dv: int, dtype: torch.dtype = torch.float16, arch: int = 90,
                    config: KernelConfig | None = None) -> dict:
    """Compile the three kernels for CUDA sm_<arch> ahead of time, without a GPU (ptxas ships with triton).

    Uses the block sizes the launcher would pick for head dims d, dv (or `config`). Returns
    {"fwd" | "dkdv" | "dq": triton CompiledKernel}; `kernel.asm["cubin"]` and
    `kernel.metadata.shared` (bytes of shared memory) are there to inspect, e.g. register use with
    `cuobjdump --dump-resource-usage`. Needs a process where TRITON_INTERPRET is not set.
    """
    if _IMPORT_ERROR is not None:
        raise ImportError(f"compile_for_gpu needs triton ({_IMPORT_ERROR})") from _IMPORT_ERROR
    if _interpreting():
        raise RuntimeError("compile_for_gpu needs compiled kernels: import triton without TRITON_INTERPRET=1")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    config = config or choose_config(4096, 4096, d, dv, dtype, interpret=False)
    compiled = {}
    for name in ("fwd", "dkdv", "dq"):
        fn = _kernel(name)
        constexprs = _constexprs(name, config, dtype, interpret=False)
        signature = {}
        for arg in fn.arg_names:
            if arg in constexprs:
                signature[arg] = "constexpr"
            elif arg == "VALID":
                signature[arg] = "*u8"
            elif arg in _FP32_POINTERS:
                signature[arg] = "*fp32"
            elif arg in _INPUT_POINTERS:
                signature[arg] = "*" + _TRITON_DTYPE[dtype]
            elif arg == "neg_lambda2":
                signature[arg] = "fp32"
            else:
                signature[arg] = "i32"
        source = ASTSource(fn=fn, signature=signature,
                           constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})
        compiled[name] = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                                        options=_launch_options(name, config))
    return compiled


class TritonMaskedAttention(torch.autograd.Function):
    """Autograd op on normalised inputs; saves q, k, v, key_valid, temperature, out, m2 and l2 [B,H,Nq]."""

    @staticmethod
    def forward(ctx, q, k, v, key_valid, temperature, lambda_m, config):
        # .contiguous() is a no-op for tensors that already are; the kernels need stride 1 along D.
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        valid_u8 = key_valid.contiguous().view(torch.uint8)  # [B, Nk], bool storage read as bytes
        temp = temperature.detach().to(torch.float32).contiguous()  # [B, H]
        out, m2, l2 = _forward(q, k, v, valid_u8, temp, lambda_m, config)
        ctx.save_for_backward(q, k, v, valid_u8, temp, out, m2, l2)
        out = out.to(v.dtype)
        ctx.lambda_m = lambda_m
        ctx.config = config
        ctx.temperature_dtype = temperature.dtype
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, valid_u8, temp, out, m2, l2 = ctx.saved_tensors
        need_q, need_k, need_v, _, need_t = ctx.needs_input_grad[:5]
        dq, dk, dv = _backward(
            q, k, v, valid_u8, temp, ctx.lambda_m, ctx.config, out, m2, l2, dout.contiguous(),
            need_dq=need_q or need_t, need_dkdv=need_k or need_v,
        )
        dt = None
        if need_t:
            # dL/dt = -(1/t) * sum_i <dq_i, q_i>, from the fp32 dq before it is cast to q's dtype.
            dt = (-(dq * q.float()).sum(dim=(-1, -2)) / temp).to(ctx.temperature_dtype)
        if dq is not None:
            dq = dq.to(q.dtype) if need_q else None
        return dq, dk if need_k else None, dv if need_v else None, None, dt, None, None


def triton_masked_attention(q, k, v, key_valid, temperature, lambda_m, config: KernelConfig | None = None):
    """Fused masked temperature attention on ALREADY L2-normalised q, k.

    Args:
        q: ``[B, H, Nq, D]``, k: ``[B, H, Nk, D]`` (normalised), v: ``[B, H, Nk, Dv]``;
            float16, bfloat16 or float32, one dtype; CUDA, or CPU under ``TRITON_INTERPRET=1``.
        key_valid: ``[B, Nk]`` bool (True = valid key), shared by all heads.
        temperature: ``[B, H]`` > 0.
        lambda_m: mask penalty: ``z_ij = -lambda_m`` for invalid keys (``<q_i, k_j> / t`` otherwise).
        config: block sizes; ``None`` -> ``choose_config(...)`` for this shape.

    Returns:
        ``softmax_j(z_ij) @ v`` as ``[B, H, Nq, Dv]`` in v's dtype; differentiable w.r.t. q, k, v and
        temperature.
    """
    if _IMPORT_ERROR is not None:
        raise ImportError(
            "backend='triton' needs the `triton` package, which could not be imported "
            f"({_IMPORT_ERROR}); install triton or use backend='torch'"
        ) from _IMPORT_ERROR
    _check_inputs(q, k, v, temperature)
    B, H, Nq, D = q.shape
    Nk, Dv = k.shape[2], v.shape[3]
    if B * H > 65535:  # CUDA limit of grid axis 1
        raise ValueError(f"backend='triton' supports at most 65535 batch*heads, got B*H = {B * H}; split the batch")
    if B * H * Nq * Dv == 0:  # nothing to compute; keep the graph connected for autograd
        return v.new_zeros(B, H, Nq, Dv) + 0 * (v.sum() + q.sum() + k.sum() + temperature.sum()).to(v.dtype)
    lambda_m = min(float(lambda_m), _LAMBDA_CAP)
    if not math.isfinite(lambda_m):
        raise ValueError(f"lambda_m must be finite, got {lambda_m!r}")
    if config is None:
        config = choose_config(Nq, Nk, D, Dv, q.dtype, _interpreting())
    return TritonMaskedAttention.apply(q, k, v, key_valid, temperature, lambda_m, config)
