"""The `torch` backend: masked temperature attention that never holds the whole Nq x Nk matrix.

Works on already-normalised inputs (the public function does the O(N*D) normalisation prepass).
Two implementations of the same function, both memory-lean (one block of scores at a time):

- on CPU, where PyTorch's fused flash-attention kernel takes the problem (D == Dv), the additive-bias
  identity of docs/design.md §1.1 through `F.scaled_dot_product_attention` (:func:`sdpa_masked_attention`);
  forward at B=16, H=2, Nq=1024, Nk=900, D=288, fp32: 205 ms against 400 ms for the loop below (median
  of 5, 2 threads on a shared 2-core AMD EPYC, 2026-11-26);
- everywhere else, :class:`ChunkedMaskedAttention`, a query-chunked loop with its own backward.

ChunkedMaskedAttention: the forward walks over query chunks, keeping only each row's max m_i and log-sum l_i; the backward
walks over the same chunks again and recomputes the scores from them (the FlashAttention recipe, in
PyTorch). Peak extra memory is one chunk of scores, [B, H, chunk, Nk], in the forward and the backward.

    z_ij = <q_i, k_j> / t   (valid key j)      z_ij = -lambda_m   (invalid key j)
    m_i = max_j z_ij,   l_i = log sum_j exp(z_ij - m_i)
    p_ij = exp((z_ij - m_i) - l_i),   out_i = sum_j p_ij v_j

m and l are kept apart rather than as one log-sum-exp m + l: when all keys of a row are invalid,
m = -lambda_m = -1e4, where one float32 step is ~1e-3, so a summed lse would bias that row's weights by
~1e-3 relative, while z - m is exactly 0.
backward, with delta_i = <dout_i, out_i>:
    dv_j = sum_i p_ij dout_i,   dz_ij = p_ij (<dout_i, v_j> - delta_i)   (0 on invalid keys)
    dq_i = sum_j dz_ij k_j / t,  dk_j = sum_i dz_ij q_i / t,  dt = -sum_ij dz_ij <q_i, k_j> / t^2
"""
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend

# Use PyTorch's fused CPU flash attention where it applies (tests switch it off to exercise the loop).
SDPA_ON_CPU = True

# Elements of one score chunk [B, H, chunk, Nk]: 2**20 floats = 4 MiB in float32. The forward holds one
# such buffer at a time, the backward three (logits, weights, their gradient).
_CHUNK_ELEMENTS = 1 << 20


def query_chunk(batch_heads: int, nq: int, nk: int, budget: int | None = None) -> int:
    """Rows per query chunk so that one chunk of scores stays within `budget` elements."""
    budget = _CHUNK_ELEMENTS if budget is None else budget
    return max(1, min(nq, budget // max(1, batch_heads * nk)))


def _logits(q, k, invalid, inv_t, lambda_m):
    """z for one query chunk, in one buffer: q [B,H,c,D], k [B,H,Nk,D] -> [B,H,c,Nk]."""
    z = q @ k.transpose(-1, -2)
    return z.mul_(inv_t).masked_fill_(invalid, -lambda_m)


class ChunkedMaskedAttention(torch.autograd.Function):
    """Autograd op on normalised inputs; saves q, k, v, out and the row statistics m, l [B, H, Nq] only."""

    @staticmethod
    def forward(ctx, q, k, v, key_valid, temperature, lambda_m):
        B, H, Nq, _ = q.shape
        Nk = k.shape[2]
        compute = compute_dtype(q.dtype)
        qc, kc, vc = q.to(compute), k.to(compute), v.to(compute)
        inv_t = (1.0 / temperature.to(compute))[:, :, None, None]
        invalid = ~key_valid[:, None, None, :]
        out = torch.empty(B, H, Nq, v.shape[-1], dtype=compute, device=q.device)
        row_max = torch.empty(B, H, Nq, dtype=compute, device=q.device)
        log_sum = torch.empty_like(row_max)
        step = query_chunk(B * H, Nq, Nk)
        for i in range(0, Nq, step):
            rows = slice(i, i + step)
            z = _logits(qc[:, :, rows], kc, invalid, inv_t, lambda_m)  # [B, H, c, Nk]
            m = z.amax(dim=-1, keepdim=True)
            p = z.sub_(m).exp_()  # unnormalised weights, in z's buffer
            total = p.sum(dim=-1, keepdim=True)
            torch.div(p @ vc, total, out=out[:, :, rows])
            row_max[:, :, rows] = m[..., 0]
            log_sum[:, :, rows] = total[..., 0].log()
        ctx.save_for_backward(q, k, v, key_valid, temperature, out, row_max, log_sum)
        ctx.lambda_m = lambda_m
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, dout):
        q, k, v, key_valid, temperature, out, row_max, log_sum = ctx.saved_tensors
        B, H, Nq, _ = q.shape
        compute = out.dtype
        qc, kc, vc, do = q.to(compute), k.to(compute), v.to(compute), dout.to(compute)
        t = temperature.to(compute)[:, :, None, None]
        invalid = ~key_valid[:, None, None, :]
        delta = (do.unsqueeze(-2) @ out.unsqueeze(-1))[..., 0]  # [B, H, Nq, 1] = <dout_i, out_i>, no [Nq, Dv] temporary
        dq = torch.empty_like(qc)
        dk = torch.zeros(kc.shape, dtype=compute, device=q.device)  # contiguous: accumulated in place below
        dv = torch.zeros(vc.shape, dtype=compute, device=q.device)
        dz_dot_z = torch.zeros(B, H, 1, 1, dtype=compute, device=q.device)
        step = query_chunk(B * H, Nq, k.shape[2])
        for i in range(0, Nq, step):
            rows = slice(i, i + step)
            z = _logits(qc[:, :, rows], kc, invalid, 1.0 / t, ctx.lambda_m)  # [B, H, c, Nk]
            p = torch.exp((z - row_max[:, :, rows, None]).sub_(log_sum[:, :, rows, None]))
            # dv += p^T do and dk += dz^T q accumulate in place (baddbmm_): no [B, H, Nk, D] temporary per chunk
            dv.flatten(0, 1).baddbmm_(p.flatten(0, 1).transpose(1, 2), do[:, :, rows].flatten(0, 1))
            dz = (do[:, :, rows] @ vc.transpose(-1, -2)).sub_(delta[:, :, rows]).mul_(p)
            del p
            dz.masked_fill_(invalid, 0.0)  # an invalid key's logit is a constant
            dq[:, :, rows] = dz @ kc
            dk.flatten(0, 1).baddbmm_(dz.flatten(0, 1).transpose(1, 2), qc[:, :, rows].flatten(0, 1))
            # sum_ij dz_ij z_ij as a batched dot product (no chunk-sized temporary)
            dz_dot_z += dz.flatten(2).unsqueeze(-2) @ z.flatten(2).unsqueeze(-1)
        # dz_ij = dL/dz_ij and z_ij = s_ij / t on valid keys: dL/dt = -sum dz_ij s_ij / t^2 = -sum dz_ij z_ij / t
        dt = -dz_dot_z[:, :, 0, 0] / t[:, :, 0, 0]
        return (dq.div_(t).to(q.dtype), dk.div_(t).to(k.dtype), dv.to(v.dtype), None,
                dt.to(temperature.dtype), None)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Both implementations compute in float64 for float64 inputs and in float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _flash_takes(q, k, v, bias) -> bool:
    """True iff `F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1)` runs the fused CPU flash
    kernel (no Nq x Nk matrix) rather than the materialising math fallback."""
    if torch.compiler.is_compiling():
        return True  # the caller made the inputs contiguous with D == Dv: what CPU flash attention takes
    try:
        choice = torch._fused_sdp_choice(q, k, v, bias, 0.0, False, scale=1.0)
    except (AttributeError, RuntimeError, TypeError):
        return False
    return choice == int(SDPBackend.FLASH_ATTENTION)


def sdpa_masked_attention(q, k, v, key_valid, temperature, lambda_m):
    """The same function through `F.scaled_dot_product_attention` and the additive-bias identity (docs/design.md §1.1).

        z_ij = <q_i, k'_j> + bias_j,   k'_j = k_j / t (valid) or 0 (invalid),   bias_j = 0 or -lambda_m

    The temperature goes with the keys: one pass over k applies it and the mask, and q is used as it
    comes when it is contiguous. An image whose keys are all invalid gets bias 0 everywhere instead: its logits are all equal either
    way (uniform weights), but at 0 rather than -lambda_m, so the log-sum-exp that the fused backward
    recomputes the weights from keeps float32 precision there (at -1e4 one float32 step is ~1e-3).
    Gradients to q, k, v and temperature come from autograd through SDPA's own fused backward.
    Computes in float32 (float64 for float64 inputs) and returns the dtype of q, or None where SDPA would
    not run its fused kernel on these inputs (the caller then uses the chunked loop).
    """
    compute = compute_dtype(q.dtype)
    with torch.autocast(q.device.type, enabled=False):
        # [B, H, Nk, 1]: 1/t on valid keys, 0 on invalid ones
        key_scale = key_valid[:, None, :, None].to(compute) / temperature.to(compute)[:, :, None, None]
        # The fused kernel wants unit stride along D (a copy only where the input is a strided view).
        qc = q.to(compute).contiguous()
        ks = (k.to(compute) * key_scale).contiguous()
        vc = v.to(compute).contiguous()
        penalised = ~key_valid & key_valid.any(dim=1, keepdim=True)  # [B, Nk]
        bias = torch.zeros(penalised.shape, dtype=compute, device=q.device).masked_fill_(penalised, -lambda_m)
        bias = bias[:, None, None, :]
        if not _flash_takes(qc, ks, vc, bias):
            return None
        out = F.scaled_dot_product_attention(qc, ks, vc, attn_mask=bias, scale=1.0)
    return out.to(q.dtype)


def sdpa_applies(q, v) -> bool:
    """Whether the `torch` backend may take the SDPA path: CPU tensors with D == Dv (and SDPA_ON_CPU)."""
    return SDPA_ON_CPU and q.device.type == "cpu" and q.shape[-1] == v.shape[-1]
