"""The `torch` backend: masked temperature attention that never holds the whole Nq x Nk matrix.

Works on already-normalised inputs (the public function does the O(N*D) normalisation prepass).
The forward walks over query chunks, keeping only each row's max m_i and log-sum l_i; the backward
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

# Elements of one score chunk [B, H, chunk, Nk]: 2**22 floats = 16 MiB in float32.
_CHUNK_ELEMENTS = 1 << 22


def query_chunk(batch_heads: int, nq: int, nk: int, budget: int | None = None) -> int:
    """Rows per query chunk so that one chunk of scores stays within `budget` elements."""
    budget = _CHUNK_ELEMENTS if budget is None else budget
    return max(1, min(nq, budget // max(1, batch_heads * nk)))


def _scores(q, k, valid, inv_t, lambda_m):
    """Logits z and raw similarities s for one query chunk: q [B,H,c,D], k [B,H,Nk,D] -> both [B,H,c,Nk]."""
    s = q @ k.transpose(-1, -2)
    z = torch.where(valid, s * inv_t, torch.full_like(s, -lambda_m))
    return z, s


class ChunkedMaskedAttention(torch.autograd.Function):
    """Autograd op on normalised inputs; saves q, k, v, out and the row statistics m, l [B, H, Nq] only."""

    @staticmethod
    def forward(ctx, q, k, v, key_valid, temperature, lambda_m):
        B, H, Nq, _ = q.shape
        Nk = k.shape[2]
        compute = torch.float64 if q.dtype == torch.float64 else torch.float32
        qc, kc, vc = q.to(compute), k.to(compute), v.to(compute)
        inv_t = (1.0 / temperature.to(compute))[:, :, None, None]
        valid = key_valid[:, None, None, :]
        out = torch.empty(B, H, Nq, v.shape[-1], dtype=compute, device=q.device)
        row_max = torch.empty(B, H, Nq, dtype=compute, device=q.device)
        log_sum = torch.empty_like(row_max)
        step = query_chunk(B * H, Nq, Nk)
        for i in range(0, Nq, step):
            z, _ = _scores(qc[:, :, i:i + step], kc, valid, inv_t, lambda_m)
            m_c = z.amax(dim=-1, keepdim=True)
            p = torch.exp(z - m_c)
            total = p.sum(dim=-1, keepdim=True)
            out[:, :, i:i + step] = (p @ vc) / total
            row_max[:, :, i:i + step] = m_c[..., 0]
            log_sum[:, :, i:i + step] = torch.log(total[..., 0])
        ctx.save_for_backward(q, k, v, key_valid, temperature, out, row_max, log_sum)
        ctx.lambda_m = lambda_m
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, dout):
        q, k, v, key_valid, temperature, out, row_max, log_sum = ctx.saved_tensors
        compute = out.dtype
        qc, kc, vc, do = q.to(compute), k.to(compute), v.to(compute), dout.to(compute)
        t = temperature.to(compute)[:, :, None, None]
        valid = key_valid[:, None, None, :]
        delta = (do * out).sum(-1)  # [B, H, Nq]
        dq = torch.empty_like(qc)
        dk = torch.zeros_like(kc)
        dv = torch.zeros_like(vc)
        dt = torch.zeros_like(t)
        step = query_chunk(q.shape[0] * q.shape[1], q.shape[2], k.shape[2])
        for i in range(0, q.shape[2], step):
            rows = slice(i, i + step)
            z, s = _scores(qc[:, :, rows], kc, valid, 1.0 / t, ctx.lambda_m)
            p = torch.exp((z - row_max[:, :, rows, None]) - log_sum[:, :, rows, None])
            dv += p.transpose(-1, -2) @ do[:, :, rows]
            dz = p * (do[:, :, rows] @ vc.transpose(-1, -2) - delta[:, :, rows, None])
            dz = torch.where(valid, dz, torch.zeros_like(dz))
            dq[:, :, rows] = (dz @ kc) / t
            dk += (dz.transpose(-1, -2) @ qc[:, :, rows]) / t
            dt -= (dz * s).sum(dim=(-1, -2), keepdim=True) / (t * t)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, dt[:, :, 0, 0].to(temperature.dtype), None


def chunked_masked_attention(q, k, v, key_valid, temperature, lambda_m):
    """The `torch` backend on normalised q [B,H,Nq,D], k [B,H,Nk,D], v [B,H,Nk,Dv] -> [B,H,Nq,Dv]."""
    return ChunkedMaskedAttention.apply(q, k, v, key_valid, temperature, float(lambda_m))
