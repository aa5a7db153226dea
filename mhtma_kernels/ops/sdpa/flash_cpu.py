"""The op on PyTorch's fused CPU flash-attention kernel (aten ``_scaled_dot_product_flash_attention_for_cpu``
and its backward), with the L2 normalisation, temperature and mask folded into the operands so that no
normalised copy of the keys is ever held (the `torch` backend on CPU where D == Dv).

Inputs are the raw q [B,H,Nq,D], k [B,H,Nk,D], v [B,H,Nk,D] (``normalize``: L2-normalise q and k here).
With c_i = max(|x_i|, eps) (or 1 without normalisation) and the additive-bias identity of docs/design.md §1.1:

    qn_i = q_i / c_i
    ks_j = k_j * f_j,   f_j = valid_j / (t * c_j)             (0 for an invalid key)
    bias_j = -lambda_m on invalid keys (0 in an image without a valid key: uniform weights there)
    out, lse = flash(qn, ks, v, bias, scale=1)                 z_ij = <qn_i, ks_j> + bias_j

Backward, from flash's own backward (dqn, dks, dv) and the row dots r_j = <ks_j, dks_j>:

    dL/dt = -sum_j r_j / t                    (ks depends on t as ks = kn * valid / t)
    dk_j  = f_j dks_j - [|k_j| >= eps] (t r_j / c_j) ks_j    (the normalisation's backward, since kn = t ks)
    dq_i  = (dqn_i - [|q_i| >= eps] <qn_i, dqn_i> qn_i) / c_i

Memory. The work runs over groups of (image, head) slices, as many per group as fit the chunk budget of
:func:`..rules.chunk_budget_mb` (``MHTMA_CHUNK_MB``; at least one slice): a group's qn and ks (and in the
backward flash's gradients of the group) are the only copies; the forward holds out next to the inputs,
the backward recomputes qn and ks per group from q and k instead of saving them and works in place in
flash's gradient buffers. Computes in float32 (float64 for float64 inputs).
"""
import torch

from ..reference import EPS
from ..rules import chunk_budget_mb, compute_dtype

_FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_FLASH_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def _into(x: torch.Tensor, factor: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """x * factor (or x) as a fresh contiguous tensor in ``dtype``, one pass, whatever x's strides."""
    if factor is None:
        return x.to(dtype).contiguous()
    return torch.mul(x, factor, out=torch.empty(x.shape, dtype=dtype, device=x.device))


def _norms(x: torch.Tensor, normalize: bool, dtype: torch.dtype):
    """(c [.., N, 1] = max(|x|, eps), keep = |x| >= eps) in ``dtype``, or (None, None) without normalisation."""
    if not normalize:
        return None, None
    n = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=dtype)
    return n.clamp_min(EPS), (n >= EPS).to(dtype)


def _operands(q, k, v, key_valid, temperature, lambda_m: float, normalize: bool):
    """(qn, ks, v, bias [B,1,1,Nk], f [B,H,Nk,1], t [B,H,1,1], c_q, keep_q, c_k, keep_k) in the compute dtype,
    for one group of (image, head) slices: the arguments are that group's slices, flattened to B = 1."""
    dtype = compute_dtype(q.dtype)
    t = temperature.to(dtype)[:, :, None, None]
    c_q, keep_q = _norms(q, normalize, dtype)
    c_k, keep_k = _norms(k, normalize, dtype)
    f = key_valid[:, None, :, None].to(dtype) / t
    if normalize:
        f = f / c_k
    qn = _into(q, None if c_q is None else 1.0 / c_q, dtype)
    ks = _into(k, f, dtype)
    bias = torch.zeros(key_valid.shape, dtype=dtype, device=q.device).masked_fill_(_penalised(key_valid), -lambda_m)
    return qn, ks, _into(v, None, dtype), bias[:, None, None, :], f, t, c_q, keep_q, c_k, keep_k


def _penalised(key_valid: torch.Tensor) -> torch.Tensor:
    """[B, Nk] True where the key gets -lambda_m: invalid, in an image that has a valid key."""
    return ~key_valid & key_valid.any(dim=1, keepdim=True)


def _groups(q: torch.Tensor):
    """Slices of the flattened (image, head) axis, as many slices per group as the chunk budget holds."""
    B, H, Nq, D = q.shape
    per_slice = Nq * D * torch.finfo(compute_dtype(q.dtype)).bits // 8
    step = max(1, min(B * H, int(chunk_budget_mb(q.device) * 2 ** 20) // max(1, per_slice)))
    return [slice(i, i + step) for i in range(0, B * H, step)]


def _group_args(q, k, v, key_valid, temperature, rows: slice):
    """The group's q, k, v [G, 1, N, D], key_valid [G, Nk], temperature [G, 1] (G slices of B*H)."""
    B, H = temperature.shape
    flat = [x.flatten(0, 1)[rows, None] for x in (q, k, v)]
    image = torch.arange(B * H, device=q.device)[rows] // H
    return (*flat, key_valid[image], temperature.flatten()[rows, None])


def _row_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """<a_i, b_i> along the last axis -> [..., N, 1], as batched 1 x D x 1 products (no [.., N, D] temporary)."""
    return (a.unsqueeze(-2) @ b.unsqueeze(-1))[..., 0]


def flash_cpu_forward(q, k, v, key_valid, temperature, lambda_m: float, normalize: bool):
    """-> (out [B,H,Nq,D], lse [B,H,Nq]) in the compute dtype (see the module docstring)."""
    B, H, Nq, _ = q.shape
    dtype = compute_dtype(q.dtype)
    out = torch.empty(B * H, Nq, v.shape[3], dtype=dtype, device=q.device)
    lse = torch.empty(B * H, Nq, dtype=dtype, device=q.device)
    for rows in _groups(q):
        qn, ks, vc, bias = _operands(*_group_args(q, k, v, key_valid, temperature, rows), lambda_m, normalize)[:4]
        out_g, lse_g = _FLASH(qn, ks, vc, attn_mask=bias, scale=1.0)
        out[rows], lse[rows] = out_g[:, 0], lse_g[:, 0]
    return out.view(B, H, Nq, -1), lse.view(B, H, Nq)


def flash_cpu_backward(q, k, v, key_valid, temperature, lambda_m: float, normalize: bool, out, lse, dout):
    """-> (dq, dk, dv in the inputs' dtypes, dtemperature [B, H] in temperature's dtype)."""
    B, H = temperature.shape
    grads = [torch.empty(x.shape, dtype=x.dtype, device=x.device).flatten(0, 1) for x in (q, k, v)]
    dt = torch.empty(B * H, dtype=temperature.dtype, device=q.device)
    out, lse, dout = out.flatten(0, 1), lse.flatten(0, 1), dout.flatten(0, 1)
    for rows in _groups(q):
        group = _group_args(q, k, v, key_valid, temperature, rows)
        dq, dk, dv, dt_g = _group_backward(*group, lambda_m, normalize, out[rows, None], lse[rows, None],
                                           dout[rows, None])
        for grad, g in zip(grads, (dq, dk, dv)):
            grad[rows] = g[:, 0]
        dt[rows] = dt_g[:, 0]
    return (*(g.view(x.shape) for g, x in zip(grads, (q, k, v))), dt.view(B, H))


def _group_backward(q, k, v, key_valid, temperature, lambda_m: float, normalize: bool, out, lse, dout):
    """One group's backward (see the module docstring) -> (dq, dk, dv, dt) in the compute dtype."""
    qn, ks, vc, bias, f, t, c_q, keep_q, c_k, keep_k = _operands(q, k, v, key_valid, temperature, lambda_m,
                                                                 normalize)
    dqn, dks, dv = _FLASH_BACKWARD(dout.to(qn.dtype).contiguous(), qn, ks, vc, out, lse, 0.0, False,
                                   attn_mask=bias, scale=1.0)
    del vc
    r = _row_dots(ks, dks)  # [G, 1, Nk, 1]
    dt = -r.sum(dim=(2, 3)) / t[:, :, 0, 0]
    dk = dks.mul_(f)
    if normalize:
        dk.addcmul_(ks, keep_k * r * t / c_k, value=-1.0)
    del ks
    dq = dqn
    if normalize:
        dq.addcmul_(qn, keep_q * _row_dots(qn, dqn), value=-1.0).div_(c_q)
    return dq, dk, dv, dt
