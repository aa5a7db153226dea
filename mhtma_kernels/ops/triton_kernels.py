"""Triton kernels of the masked temperature attention (forward and backward).

All kernels work on ALREADY L2-normalised q, k (the public function does that O(N*D) prepass) and on
contiguous tensors whose last axis has stride 1, flattened over batch*heads ("bh"):

    q [BH, Nq, D], k [BH, Nk, D], v [BH, Nk, Dv], key_valid [B, Nk] (uint8), temperature [BH] (fp32)

Scores are kept in base 2 so that one multiplier turns a dot product into an exponent:

    z2_ij = <q_i, k_j> * (log2(e) / t)   if key j is valid
          = -lambda_m * log2(e)           if key j is invalid
          = -inf                          if j >= Nk (padding of a partial tile: never counts)
    p_ij  = exp2((z2_ij - m2_i) - l2_i),   m2_i = max_j z2_ij,   l2_i = log2 sum_j exp2(z2_ij - m2_i)

The row statistics are kept as two fp32 numbers, not one log-sum-exp m2 + l2: in a row whose keys
are all invalid m2 = -lambda_m*log2(e) ~ -1.4e4, where one fp32 step is ~1e-3, so a summed lse would
bias every recomputed weight of that row by ~1e-3 relative; z2 - m2 is exact (0) there instead.
    out_i = sum_j p_ij v_j

A row whose keys are all invalid has every z2 equal to the same constant, hence uniform weights,
without any special case. Backward (delta_i = <dout_i, out_i>, computed by the launcher):

    dv_j = sum_i p_ij dout_i
    dz_ij = p_ij (<dout_i, v_j> - delta_i), set to 0 on invalid keys (their logit is a constant)
    dq_i = sum_j dz_ij k_j / t,      dk_j = sum_i dz_ij q_i / t

Tiling. The head dims D and Dv are arbitrary (45, 288, 576, 864): nothing is padded in memory.
Every product that contracts over D (q k^T) or over Dv (dout v^T) walks that axis in chunks of
BLOCK_D / BLOCK_E with masked loads (`_dot_abt`). Output columns (out over Dv, dq/dk over D, dv over
Dv) are a grid axis of column blocks BLOCK_DV / BLOCK_DK, each program recomputing the scores it
needs. Trade-off: one column block per program keeps the fp32 accumulator at BLOCK_M x BLOCK_DV
registers (no spills for D, Dv up to 864), at the price of recomputing q k^T once per column block;
with Dv <= BLOCK_DV (the common case for the launcher's defaults up to Dv = 128) there is no
recomputation at all. The launcher (`triton_op.choose_config`) picks the sizes.

bf16 under TRITON_INTERPRET=1: `tl.dot` on bf16 tiles is wrong in Triton 3.8's interpreter, so the
launcher sets UPCAST=True there and every loaded tile is converted to fp32 before it reaches tl.dot.
On a GPU UPCAST is False and the tensor cores see the input dtype (fp32 accumulation throughout).
"""
import triton
import triton.language as tl


@triton.jit
def _load_rows(base, offs_r, offs_c, r_mask, c_mask, stride_r, UPCAST: tl.constexpr):
    """Tile base[offs_r, offs_c] of a row-major matrix (columns contiguous) -> [R, C]; 0 outside."""
    tile = tl.load(base + offs_r[:, None] * stride_r + offs_c[None, :],
                   mask=r_mask[:, None] & c_mask[None, :], other=0.0)  # [R, C]
    if UPCAST:
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def _dot_abt(a_base, b_base, offs_a, offs_b, a_mask, b_mask, stride_a, stride_b, K,
             BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
             UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """sum_c a[offs_a, c] * b[offs_b, c] over c < K, walked in BLOCK_K chunks -> [BLOCK_A, BLOCK_B] fp32."""
    acc = tl.zeros([BLOCK_A, BLOCK_B], dtype=tl.float32)  # [BLOCK_A, BLOCK_B]
    offs_kb = tl.arange(0, BLOCK_K)  # [BLOCK_K]
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + offs_kb  # [BLOCK_K]
        k_mask = offs_k < K
        a = _load_rows(a_base, offs_a, offs_k, a_mask, k_mask, stride_a, UPCAST)  # [BLOCK_A, BLOCK_K]
        b = _load_rows(b_base, offs_b, offs_k, b_mask, k_mask, stride_b, UPCAST)  # [BLOCK_B, BLOCK_K]
        acc = tl.dot(a, tl.trans(b), acc, input_precision=DOT_PRECISION)  # [BLOCK_A, BLOCK_B]
    return acc


@triton.jit
def _logits2(s, valid, n_mask, scale2, neg_lambda2):
    """Base-2 logits from similarities s [M, N]: s*scale2 (valid), neg_lambda2 (invalid), -inf (j >= Nk)."""
    z2 = tl.where(valid[None, :], s * scale2, neg_lambda2)  # [M, N]
    return tl.where(n_mask[None, :], z2, float("-inf"))  # [M, N]


@triton.jit
def masked_attention_fwd_kernel(
    Q, K, V, VALID, TEMP, OUT, M2, L2,
    stride_qbh, stride_qn, stride_kbh, stride_kn, stride_vbh, stride_vn, stride_obh, stride_on,
    H, NQ, NK, D, DV, neg_lambda2,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Grid (cdiv(Nq, BLOCK_M), B*H, cdiv(Dv, BLOCK_DV)): out[bh, rows, cols], m2[bh, rows], l2[bh, rows].

    Online softmax over key tiles: running max m_i, running sum l_i, rescaled accumulator.
    """
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    pid_c = tl.program_id(2)
    b = bh // H
    bh64 = bh.to(tl.int64)
    q_base = Q + bh64 * stride_qbh
    k_base = K + bh64 * stride_kbh
    v_base = V + bh64 * stride_vbh
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    offs_c = pid_c * BLOCK_DV + tl.arange(0, BLOCK_DV)  # [BLOCK_DV]
    offs_nb = tl.arange(0, BLOCK_N)  # [BLOCK_N]
    m_mask = offs_m < NQ
    c_mask = offs_c < DV
    scale2 = 1.4426950408889634 / tl.load(TEMP + bh).to(tl.float32)  # log2(e) / t

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # [BLOCK_M]
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # [BLOCK_M]
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)  # [BLOCK_M, BLOCK_DV]
    for n0 in range(0, NK, BLOCK_N):
        offs_n = n0 + offs_nb  # [BLOCK_N]
        n_mask = offs_n < NK
        valid = tl.load(VALID + b * NK + offs_n, mask=n_mask, other=0) != 0  # [BLOCK_N]
        s = _dot_abt(q_base, k_base, offs_m, offs_n, m_mask, n_mask, stride_qn, stride_kn, D,
                     BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
        z2 = _logits2(s, valid, n_mask, scale2, neg_lambda2)  # [BLOCK_M, BLOCK_N]
        # The first tile always holds key 0 (finite logit), so m_new is finite from then on.
        m_new = tl.maximum(m_i, tl.max(z2, axis=1))  # [BLOCK_M]
        alpha = tl.exp2(m_i - m_new)  # [BLOCK_M]
        p = tl.exp2(z2 - m_new[:, None])  # [BLOCK_M, BLOCK_N]
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = _load_rows(v_base, offs_n, offs_c, n_mask, c_mask, stride_vn, UPCAST)  # [BLOCK_N, BLOCK_DV]
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)  # [BLOCK_M, BLOCK_DV]
        m_i = m_new

    out = acc / l_i[:, None]  # [BLOCK_M, BLOCK_DV]
    o_ptrs = OUT + bh64 * stride_obh + offs_m[:, None] * stride_on + offs_c[None, :]
    tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=m_mask[:, None] & c_mask[None, :])
    # Every column block computes the same statistics; the first one writes them.
    tl.store(M2 + bh64 * NQ + offs_m, m_i, mask=m_mask & (pid_c == 0))
    tl.store(L2 + bh64 * NQ + offs_m, tl.log2(l_i), mask=m_mask & (pid_c == 0))


@triton.jit
def masked_attention_bwd_dkdv_kernel(
    Q, K, V, VALID, TEMP, DO, M2, L2, DELTA, DK, DV_OUT,
    stride_qbh, stride_qn, stride_kbh, stride_kn, stride_vbh, stride_vn, stride_dobh, stride_don,
    H, NQ, NK, D, DV, neg_lambda2,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr,
    BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Grid (cdiv(Nk, BLOCK_N), B*H, n_col): dk[bh, keys, D-block c] and dv[bh, keys, Dv-block c].

    Loops over query tiles, recomputing p from (m2, l2) and dz from delta. dk/dv share the layout of k/v.
    A program whose column block lies past D (or past Dv) computes a fully masked tile of it.
    """
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    pid_c = tl.program_id(2)
    b = bh // H
    bh64 = bh.to(tl.int64)
    q_base = Q + bh64 * stride_qbh
    k_base = K + bh64 * stride_kbh
    v_base = V + bh64 * stride_vbh
    do_base = DO + bh64 * stride_dobh
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    offs_dk = pid_c * BLOCK_DK + tl.arange(0, BLOCK_DK)  # [BLOCK_DK]
    offs_dv = pid_c * BLOCK_DV + tl.arange(0, BLOCK_DV)  # [BLOCK_DV]
    offs_mb = tl.arange(0, BLOCK_M)  # [BLOCK_M]
    n_mask = offs_n < NK
    dk_mask = offs_dk < D
    dv_mask = offs_dv < DV
    t = tl.load(TEMP + bh).to(tl.float32)
    scale2 = 1.4426950408889634 / t
    valid = tl.load(VALID + b * NK + offs_n, mask=n_mask, other=0) != 0  # [BLOCK_N]

    dk_acc = tl.zeros([BLOCK_N, BLOCK_DK], dtype=tl.float32)  # [BLOCK_N, BLOCK_DK]
    dv_acc = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)  # [BLOCK_N, BLOCK_DV]
    for m0 in range(0, NQ, BLOCK_M):
        offs_m = m0 + offs_mb  # [BLOCK_M]
        m_mask = offs_m < NQ
        m2 = tl.load(M2 + bh64 * NQ + offs_m, mask=m_mask, other=0.0)  # [BLOCK_M]
        l2 = tl.load(L2 + bh64 * NQ + offs_m, mask=m_mask, other=0.0)  # [BLOCK_M]
        delta = tl.load(DELTA + bh64 * NQ + offs_m, mask=m_mask, other=0.0)  # [BLOCK_M]
        s = _dot_abt(q_base, k_base, offs_m, offs_n, m_mask, n_mask, stride_qn, stride_kn, D,
                     BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
        z2 = _logits2(s, valid, n_mask, scale2, neg_lambda2)  # [BLOCK_M, BLOCK_N]
        z2 = tl.where(m_mask[:, None], z2, float("-inf"))  # rows past Nq contribute nothing
        p = tl.exp2((z2 - m2[:, None]) - l2[:, None])  # [BLOCK_M, BLOCK_N]
        do = _load_rows(do_base, offs_m, offs_dv, m_mask, dv_mask, stride_don, UPCAST)  # [BLOCK_M, BLOCK_DV]
        dv_acc = tl.dot(tl.trans(p.to(do.dtype)), do, dv_acc, input_precision=DOT_PRECISION)  # [BLOCK_N, BLOCK_DV]
        dp = _dot_abt(do_base, v_base, offs_m, offs_n, m_mask, n_mask, stride_don, stride_vn, DV,
                      BLOCK_M, BLOCK_N, BLOCK_E, UPCAST, DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
        dz = tl.where(valid[None, :], p * (dp - delta[:, None]), 0.0)  # [BLOCK_M, BLOCK_N]
        q = _load_rows(q_base, offs_m, offs_dk, m_mask, dk_mask, stride_qn, UPCAST)  # [BLOCK_M, BLOCK_DK]
        dk_acc = tl.dot(tl.trans(dz.to(q.dtype)), q, dk_acc, input_precision=DOT_PRECISION)  # [BLOCK_N, BLOCK_DK]

    dk_ptrs = DK + bh64 * stride_kbh + offs_n[:, None] * stride_kn + offs_dk[None, :]
    tl.store(dk_ptrs, (dk_acc / t).to(DK.dtype.element_ty), mask=n_mask[:, None] & dk_mask[None, :])
    dv_ptrs = DV_OUT + bh64 * stride_vbh + offs_n[:, None] * stride_vn + offs_dv[None, :]
    tl.store(dv_ptrs, dv_acc.to(DV_OUT.dtype.element_ty), mask=n_mask[:, None] & dv_mask[None, :])


@triton.jit
def masked_attention_bwd_dq_kernel(
    Q, K, V, VALID, TEMP, DO, M2, L2, DELTA, DQ,
    stride_qbh, stride_qn, stride_kbh, stride_kn, stride_vbh, stride_vn, stride_dobh, stride_don,
    H, NQ, NK, D, DV, neg_lambda2,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Grid (cdiv(Nq, BLOCK_M), B*H, cdiv(D, BLOCK_DK)): dq[bh, rows, D-block c] in fp32 (layout of q).

    Loops over key tiles, recomputing p and dz as the dk/dv kernel does.
    """
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    pid_c = tl.program_id(2)
    b = bh // H
    bh64 = bh.to(tl.int64)
    q_base = Q + bh64 * stride_qbh
    k_base = K + bh64 * stride_kbh
    v_base = V + bh64 * stride_vbh
    do_base = DO + bh64 * stride_dobh
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    offs_dk = pid_c * BLOCK_DK + tl.arange(0, BLOCK_DK)  # [BLOCK_DK]
    offs_nb = tl.arange(0, BLOCK_N)  # [BLOCK_N]
    m_mask = offs_m < NQ
    dk_mask = offs_dk < D
    t = tl.load(TEMP + bh).to(tl.float32)
    scale2 = 1.4426950408889634 / t
    m2 = tl.load(M2 + bh64 * NQ + offs_m, mask=m_mask, other=0.0)  # [BLOCK_M]
    l2 = tl.load(L2 + bh64 * NQ + offs_m, mask=m_mask, other=0.0)  # [BLOCK_M]
    delta = tl.load(DELTA + bh64 * NQ + offs_m, mask=m_mask, other=0.0)  # [BLOCK_M]

    dq_acc = tl.zeros([BLOCK_M, BLOCK_DK], dtype=tl.float32)  # [BLOCK_M, BLOCK_DK]
    for n0 in range(0, NK, BLOCK_N):
        offs_n = n0 + offs_nb  # [BLOCK_N]
        n_mask = offs_n < NK
        valid = tl.load(VALID + b * NK + offs_n, mask=n_mask, other=0) != 0  # [BLOCK_N]
        s = _dot_abt(q_base, k_base, offs_m, offs_n, m_mask, n_mask, stride_qn, stride_kn, D,
                     BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
        z2 = _logits2(s, valid, n_mask, scale2, neg_lambda2)  # [BLOCK_M, BLOCK_N]
        z2 = tl.where(m_mask[:, None], z2, float("-inf"))
        p = tl.exp2((z2 - m2[:, None]) - l2[:, None])  # [BLOCK_M, BLOCK_N]
        dp = _dot_abt(do_base, v_base, offs_m, offs_n, m_mask, n_mask, stride_don, stride_vn, DV,
                      BLOCK_M, BLOCK_N, BLOCK_E, UPCAST, DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
        dz = tl.where(valid[None, :], p * (dp - delta[:, None]), 0.0)  # [BLOCK_M, BLOCK_N]
        k = _load_rows(k_base, offs_n, offs_dk, n_mask, dk_mask, stride_kn, UPCAST)  # [BLOCK_N, BLOCK_DK]
        dq_acc = tl.dot(dz.to(k.dtype), k, dq_acc, input_precision=DOT_PRECISION)  # [BLOCK_M, BLOCK_DK]

    dq_ptrs = DQ + bh64 * stride_qbh + offs_m[:, None] * stride_qn + offs_dk[None, :]
    tl.store(dq_ptrs, dq_acc / t, mask=m_mask[:, None] & dk_mask[None, :])
