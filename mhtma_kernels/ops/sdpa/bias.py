"""The op through PyTorch's fused attention (`F.scaled_dot_product_attention`) and the additive-bias
identity of docs/design.md §1.1: memory-lean where SDPA runs a fused kernel (CPU flash attention; on CUDA
the memory-efficient or cuDNN kernels), never its materialising math fallback.

    z_ij = <q_i, k'_j> + bias_j,   k'_j = k_j / t (valid) or 0 (invalid),   bias_j = 0 or -lambda_m

Inputs are the raw q, k (``normalize``: L2-normalised here). On CPU the whole path is one custom op,
``mhtma::sdpa_cpu_attention`` (:mod:`.flash_cpu`: normalisation, temperature and mask folded into the
operands, gradients from flash's own backward, no normalised copy of k held). On CUDA, q and k are
normalised first and gradients to q, k, v and temperature come from autograd through SDPA's fused backward.
"""
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend

from ..reference import l2_normalize
from ..rules import compute_dtype
from .op import sdpa_cpu_attention


def _fused_kernel_takes(q, k, v, bias) -> bool:
    """True iff `F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1)` runs a fused kernel
    (no Nq x Nk matrix) rather than the materialising math fallback."""
    if torch.compiler.is_compiling():
        return True  # the caller made the inputs contiguous with D == Dv: what CPU flash attention takes
    try:
        choice = torch._fused_sdp_choice(q, k, v, bias, 0.0, False, scale=1.0)
    except (AttributeError, RuntimeError, TypeError):
        return False
    return choice != int(SDPBackend.MATH)


def _operands(q, k, v, key_valid, temperature, lambda_m, dtype):
    """(q, k', v, bias [B, 1, 1, Nk]) contiguous in ``dtype`` (see the module docstring).

    The temperature goes with the keys: one pass over k applies it and the mask. An image whose keys
    are all invalid gets bias 0 everywhere instead: its logits are all equal either way (uniform
    weights), but at 0 rather than -lambda_m, so the log-sum-exp that the fused backward recomputes the
    weights from keeps fp32 precision there (at -1e4 one fp32 step is ~1e-3)."""
    key_scale = key_valid[:, None, :, None].to(dtype) / temperature.to(dtype)[:, :, None, None]  # [B, H, Nk, 1]
    qc = q.to(dtype).contiguous()  # the fused kernels want unit stride along D
    ks = (k.to(dtype) * key_scale).contiguous()
    vc = v.to(dtype).contiguous()
    penalised = ~key_valid & key_valid.any(dim=1, keepdim=True)  # [B, Nk]
    bias = torch.zeros(penalised.shape, dtype=dtype, device=q.device).masked_fill_(penalised, -lambda_m)
    return qc, ks, vc, bias[:, None, None, :]


def sdpa_masked_attention(q, k, v, key_valid, temperature, lambda_m, normalize):
    """Masked temperature attention through SDPA -> [B, H, Nq, Dv] in q's dtype, or None where SDPA would
    not run a fused kernel on these inputs.

    CPU: computes in fp32 (fp64 for fp64 inputs). CUDA: in the input dtype (the fused kernels' own fp32
    accumulation)."""
    if q.device.type == "cpu":
        if not sdpa_takes(q, k, v):
            return None
        return sdpa_cpu_attention(q, k, v, key_valid, temperature, lambda_m, normalize)
    return sdpa_autograd_attention(q, k, v, key_valid, temperature, lambda_m, normalize)


def sdpa_autograd_attention(q, k, v, key_valid, temperature, lambda_m, normalize):
    """The CUDA form: q, k normalised, 1/t and the mask folded into the keys, F.scaled_dot_product_attention
    in the input dtype, gradients from autograd -> [B, H, Nq, Dv], or None where SDPA would not run a
    fused kernel (device-independent code: the tests run it on CPU, where SDPA's flash kernel takes it)."""
    if normalize:
        q, k = l2_normalize(q), l2_normalize(k)
    dtype = q.dtype
    with torch.autocast(q.device.type, enabled=False):
        qc, ks, vc, bias = _operands(q, k, v, key_valid, temperature, lambda_m, dtype)
        if not _fused_kernel_takes(qc, ks, vc, bias):
            return None
        out = F.scaled_dot_product_attention(qc, ks, vc, attn_mask=bias, scale=1.0)
    return out.to(q.dtype)


def sdpa_takes(q, k, v) -> bool:
    """Whether SDPA's fused kernel takes inputs shaped and typed like these (checked on empty stand-ins)."""
    dtype = compute_dtype(q.dtype) if q.device.type == "cpu" else q.dtype

    def like(x):
        return torch.empty(x.shape, dtype=dtype, device=x.device).requires_grad_(x.requires_grad)

    bias = torch.empty(q.shape[0], 1, 1, k.shape[2], dtype=dtype, device=q.device)
    return _fused_kernel_takes(like(q), like(k), like(v), bias)


def sdpa_applies(q, v) -> bool:
    """Whether the SDPA path may take these inputs at all: D == Dv, on CPU or CUDA."""
    return q.device.type in ("cpu", "cuda") and q.shape[-1] == v.shape[-1]
