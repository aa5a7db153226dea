"""Backward kernels of the triton backend: delta, dk and dv (program per key block), dq and the temperature's
partial sums (program per query block). The math and the tiling are in the docstring of `tiles`."""
import triton
import triton.language as tl

from .tiles import _dot_abt, _load_rows, _log2e_over, _logits2, _store_block, _zero_blocks


@triton.jit
def masked_attention_bwd_delta_kernel(
    OUT, OUT_LO, GRAD_OUT, DELTA, NROWS, DV,
    HAS_LO: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """Grid (cdiv(B*H*Nq, BLOCK_R),): delta[r] = <dout[r], out[r] (+ out_lo[r])> in fp32, rows of Dv."""
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R]
    r_mask = offs_r < NROWS
    rows = offs_r.to(tl.int64)
    acc = tl.zeros([BLOCK_R], dtype=tl.float32)  # [BLOCK_R]
    for e0 in range(0, DV, BLOCK_E):
        offs_e = e0 + tl.arange(0, BLOCK_E)  # [BLOCK_E]
        o = _load_rows(OUT, rows, offs_e, r_mask, offs_e < DV, DV, True)  # [BLOCK_R, BLOCK_E] fp32
        if HAS_LO:
            o += _load_rows(OUT_LO, rows, offs_e, r_mask, offs_e < DV, DV, True)  # [BLOCK_R, BLOCK_E]
        do = _load_rows(GRAD_OUT, rows, offs_e, r_mask, offs_e < DV, DV, True)  # [BLOCK_R, BLOCK_E]
        acc += tl.sum(o * do, axis=1)
    tl.store(DELTA + offs_r, acc, mask=r_mask)


# ---------------------------------------------------------------------------------------------------
# Backward (dk/dv and dq kernels). Both walk the head dims in chunks of BLOCK_C columns (D and Dv are
# constexprs, so the chunk loops are unrolled) and take a program's chunks in ROTATED order: chunk i of
# a program whose first output column block is cb0 lies at columns ((cb0 + i) mod NUM) * BLOCK_C. A
# contraction over D (or Dv) is a sum over all chunks in any order, so the first NUM_CB chunks that
# the contraction loads are exactly the program's own output columns, and the same loaded tile feeds
# both the score product and the gradient product: no operand is loaded twice per tile. Output block j
# is stored at the unrotated columns (cb0 + j) * BLOCK_C; a block past the last chunk wrapped round to
# another program's chunk and is masked out at the store (the padding any column split has).
# Every tl.dot has the program's resident rows (BLOCK_N keys in dk/dv, BLOCK_M queries in dq) as its
# M dimension, so 64-row programs reach wgmma on sm_90 whatever the streamed tile height.
# ---------------------------------------------------------------------------------------------------


@triton.jit
def _rotated_cols(i, cb0, NUM: tl.constexpr, BLOCK_C: tl.constexpr):
    """Columns of chunk i in a program's rotated order: chunk (cb0 + i) mod NUM -> [BLOCK_C]."""
    return ((cb0 + i) % NUM) * BLOCK_C + tl.arange(0, BLOCK_C)


@triton.jit
def _load_chunks(base, offs_r, r_mask, stride_r, cb0, NCOLS: tl.constexpr, NUM: tl.constexpr,
                 BLOCK_C: tl.constexpr, UPCAST: tl.constexpr):
    """All NUM column chunks of base[offs_r, :NCOLS] in rotated order -> tuple of NUM [R, BLOCK_C] tiles."""
    tiles = ()
    for i in tl.static_range(NUM):
        offs_c = _rotated_cols(i, cb0, NUM, BLOCK_C)  # [BLOCK_C]
        tiles = tiles + (_load_rows(base, offs_r, offs_c, r_mask, offs_c < NCOLS, stride_r, UPCAST),)
    return tiles


@triton.jit
def _held_rows(a_base, b_base, offs_r, r_mask, stride_a, stride_b, cb0, NA: tl.constexpr, NB: tl.constexpr,
               BLOCK_C: tl.constexpr, RESIDENT: tl.constexpr, UPCAST: tl.constexpr):
    """RESIDENT: every chunk of a program's own rows of two operands (k and v, or q and dout; NA and NB
    columns) in rotated order -> two tuples of [R, BLOCK_C] tiles; otherwise two empty tuples."""
    a_held = ()
    b_held = ()
    if RESIDENT:
        a_held = _load_chunks(a_base, offs_r, r_mask, stride_a, cb0, NA, (NA + BLOCK_C - 1) // BLOCK_C, BLOCK_C, UPCAST)
        b_held = _load_chunks(b_base, offs_r, r_mask, stride_b, cb0, NB, (NB + BLOCK_C - 1) // BLOCK_C, BLOCK_C, UPCAST)
    return a_held, b_held


@triton.jit
def _dot_abt_kept(held, a_base, offs_a, a_mask, stride_a, b_base, offs_b, b_mask, stride_b, cb0,
                  BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, NCOLS: tl.constexpr, NUM: tl.constexpr,
                  NUM_KEEP: tl.constexpr, BLOCK_C: tl.constexpr, RESIDENT: tl.constexpr,
                  UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """sum_c a[offs_a, c] * b[offs_b, c] over the NUM chunks of NCOLS columns (rotated order).

    a's chunks are `held` (RESIDENT: loaded once by the caller) or loaded here; every b chunk is loaded
    once. -> ([BLOCK_A, BLOCK_B] fp32, tuple of b's first min(NUM_KEEP, NUM) chunks [BLOCK_B, BLOCK_C])."""
    acc = tl.zeros([BLOCK_A, BLOCK_B], dtype=tl.float32)  # [BLOCK_A, BLOCK_B]
    kept = ()
    for i in tl.static_range(NUM):
        offs_c = _rotated_cols(i, cb0, NUM, BLOCK_C)  # [BLOCK_C]
        c_mask = offs_c < NCOLS
        if RESIDENT:
            a = held[i]  # [BLOCK_A, BLOCK_C]
        else:
            a = _load_rows(a_base, offs_a, offs_c, a_mask, c_mask, stride_a, UPCAST)  # [BLOCK_A, BLOCK_C]
        b = _load_rows(b_base, offs_b, offs_c, b_mask, c_mask, stride_b, UPCAST)  # [BLOCK_B, BLOCK_C]
        acc = tl.dot(a, tl.trans(b), acc, input_precision=DOT_PRECISION)  # [BLOCK_A, BLOCK_B]
        if i < NUM_KEEP:
            kept = kept + (b,)
    return acc, kept


@triton.jit
def _load_own(base, offs_r, r_mask, stride_r, cb0, NCOLS: tl.constexpr, NUM_CB: tl.constexpr,
              BLOCK_C: tl.constexpr, UPCAST: tl.constexpr):
    """The program's NUM_CB column blocks of base[offs_r, :NCOLS] (0 past NCOLS) -> tuple of [R, BLOCK_C]."""
    tiles = ()
    for j in tl.static_range(NUM_CB):
        offs_c = (cb0 + j) * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C]
        tiles = tiles + (_load_rows(base, offs_r, offs_c, r_mask, offs_c < NCOLS, stride_r, UPCAST),)
    return tiles


@triton.jit
def _dot_blocks(accs, a, kept, NUM_CB: tl.constexpr, NUM_KEPT: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """accs[j] + a @ kept[j] for j < NUM_KEPT (a [R, S], kept[j] [S, BLOCK_C]); later blocks unchanged."""
    out = ()
    for j in tl.static_range(NUM_CB):
        if j < NUM_KEPT:
            out = out + (tl.dot(a, kept[j], accs[j], input_precision=DOT_PRECISION),)  # [R, BLOCK_C]
        else:
            out = out + (accs[j],)
    return out


@triton.jit
def _as_operand(x, like, UPCAST: tl.constexpr):
    """An fp32 tile as the operand of a dot with `like`'s tiles (their dtype; fp32 kept under UPCAST)."""
    if UPCAST:
        return x
    return x.to(like.dtype.element_ty)


@triton.jit
def _head(Q, K, V, GRAD_OUT, TEMP, bh, stride_qbh, stride_kbh, stride_vbh, stride_dobh):
    """Head bh (= b*H + h) of a backward program -> (bh as int64, its base pointers into q, k, v and dout,
    its temperature t in fp32, scale2 = log2(e) / t)."""
    bh64 = bh.to(tl.int64)
    t = tl.load(TEMP + bh).to(tl.float32)
    return (bh64, Q + bh64 * stride_qbh, K + bh64 * stride_kbh, V + bh64 * stride_vbh, GRAD_OUT + bh64 * stride_dobh,
            t, _log2e_over(t))


@triton.jit
def masked_attention_bwd_dkdv_kernel(
    Q, K, V, VALID, TEMP, GRAD_OUT, ROW_MAX2, ROW_LOG2SUM, DELTA, GRAD_K, GRAD_V,
    stride_qbh, stride_qn, stride_kbh, stride_kn, stride_vbh, stride_vn, stride_dobh, stride_don,
    H, NQ, NK, D: tl.constexpr, DV: tl.constexpr, neg_lambda2,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr,
    BLOCK_C: tl.constexpr, NUM_CB: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    RESIDENT: tl.constexpr = False,
):
    """Grid (cdiv(Nk, BLOCK_N), B*H, cdiv(max(D, Dv), NUM_CB*BLOCK_C)): dk, dv [bh, keys, column range].

    Loops over query tiles in the transposed orientation: s^T = k q^T and dp^T = v dout^T [BLOCK_N, BLOCK_M],
    then dk_j += dz^T q[:, block j], dv_j += p^T dout[:, block j] for the program's NUM_CB column blocks,
    the q and dout chunks of block j being those the contraction loaded (see the section comment).
    RESIDENT: the program's k and v rows (all chunks) are loaded once before the loop and D, Dv are
    contracted in rotated BLOCK_C chunks (BLOCK_D == BLOCK_E == BLOCK_C), each q and dout chunk loaded
    once per tile; otherwise a pipelined loop walks D (Dv) in BLOCK_D (BLOCK_E) chunks, re-loading k and
    v per tile, and the own q and dout columns are loaded again for the products.
    """
    tl.static_assert(not RESIDENT or (BLOCK_D == BLOCK_C and BLOCK_E == BLOCK_C),
                     "RESIDENT: BLOCK_D == BLOCK_E == BLOCK_C")
    NUM_DC: tl.constexpr = (D + BLOCK_C - 1) // BLOCK_C
    NUM_EC: tl.constexpr = (DV + BLOCK_C - 1) // BLOCK_C
    # own dk (dv) blocks that receive a product: those over columns of D (Dv) when RESIDENT, else all
    KEPT_D: tl.constexpr = NUM_CB if (NUM_CB < NUM_DC or not RESIDENT) else NUM_DC
    KEPT_E: tl.constexpr = NUM_CB if (NUM_CB < NUM_EC or not RESIDENT) else NUM_EC
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    cb0 = tl.program_id(2) * NUM_CB
    bh64, q_base, k_base, v_base, do_base, t, scale2 = _head(Q, K, V, GRAD_OUT, TEMP, bh, stride_qbh, stride_kbh,
                                                             stride_vbh, stride_dobh)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    offs_mb = tl.arange(0, BLOCK_M)  # [BLOCK_M]
    n_mask = offs_n < NK
    valid = tl.load(VALID + (bh // H) * NK + offs_n, mask=n_mask, other=0) != 0  # [BLOCK_N]
    # RESIDENT: NUM_DC and NUM_EC tiles [BLOCK_N, BLOCK_C] of the program's own k and v rows
    k_held, v_held = _held_rows(k_base, v_base, offs_n, n_mask, stride_kn, stride_vn, cb0, D, DV, BLOCK_C,
                                RESIDENT, UPCAST)

    dk = _zero_blocks(BLOCK_N, BLOCK_C, NUM_CB)  # NUM_CB x [BLOCK_N, BLOCK_C] fp32
    dv = _zero_blocks(BLOCK_N, BLOCK_C, NUM_CB)  # NUM_CB x [BLOCK_N, BLOCK_C] fp32
    for m0 in range(0, NQ, BLOCK_M):
        offs_m = m0 + offs_mb  # [BLOCK_M]
        m_mask = offs_m < NQ
        row_max2 = tl.load(ROW_MAX2 + bh64 * NQ + offs_m, mask=m_mask, other=0.0)  # [BLOCK_M]
        row_log2sum = tl.load(ROW_LOG2SUM + bh64 * NQ + offs_m, mask=m_mask, other=0.0)  # [BLOCK_M]
        delta = tl.load(DELTA + bh64 * NQ + offs_m, mask=m_mask, other=0.0)  # [BLOCK_M]
        if RESIDENT:  # every q and dout tile loaded once; the own chunks kept for dk, dv
            st, q_own = _dot_abt_kept(k_held, k_base, offs_n, n_mask, stride_kn, q_base, offs_m, m_mask, stride_qn,
                                      cb0, BLOCK_N, BLOCK_M, D, NUM_DC, NUM_CB, BLOCK_C, True, UPCAST,
                                      DOT_PRECISION)  # [BLOCK_N, BLOCK_M], KEPT_D x [BLOCK_M, BLOCK_C]
            dpt, do_own = _dot_abt_kept(v_held, v_base, offs_n, n_mask, stride_vn, do_base, offs_m, m_mask,
                                        stride_don, cb0, BLOCK_N, BLOCK_M, DV, NUM_EC, NUM_CB, BLOCK_C, True, UPCAST,
                                        DOT_PRECISION)  # [BLOCK_N, BLOCK_M], KEPT_E x [BLOCK_M, BLOCK_C]
        else:  # D and Dv walked by a pipelined loop of BLOCK_D / BLOCK_E chunks; own columns loaded again
            st = _dot_abt(k_base, q_base, offs_n, offs_m, n_mask, m_mask, stride_kn, stride_qn, D,
                          BLOCK_N, BLOCK_M, BLOCK_D, UPCAST, DOT_PRECISION)  # [BLOCK_N, BLOCK_M]
            dpt = _dot_abt(v_base, do_base, offs_n, offs_m, n_mask, m_mask, stride_vn, stride_don, DV,
                           BLOCK_N, BLOCK_M, BLOCK_E, UPCAST, DOT_PRECISION)  # [BLOCK_N, BLOCK_M]
            # NUM_CB x [BLOCK_M, BLOCK_C] each
            q_own = _load_own(q_base, offs_m, m_mask, stride_qn, cb0, D, NUM_CB, BLOCK_C, UPCAST)
            do_own = _load_own(do_base, offs_m, m_mask, stride_don, cb0, DV, NUM_CB, BLOCK_C, UPCAST)
        z2t = tl.where(valid[:, None], st * scale2, neg_lambda2)  # [BLOCK_N, BLOCK_M]
        z2t = tl.where(m_mask[None, :], z2t, float("-inf"))  # query rows past Nq contribute nothing
        pt = tl.exp2((z2t - row_max2[None, :]) - row_log2sum[None, :])  # [BLOCK_N, BLOCK_M]
        dzt = tl.where(valid[:, None], pt * (dpt - delta[None, :]), 0.0)  # [BLOCK_N, BLOCK_M]
        dk = _dot_blocks(dk, _as_operand(dzt, Q, UPCAST), q_own, NUM_CB, KEPT_D, DOT_PRECISION)  # NUM_CB x [BLOCK_N, BLOCK_C]
        dv = _dot_blocks(dv, _as_operand(pt, GRAD_OUT, UPCAST), do_own, NUM_CB, KEPT_E, DOT_PRECISION)  # NUM_CB x [BLOCK_N, BLOCK_C]

    inv_t = 1.0 / t
    dk_base = GRAD_K + bh64 * stride_kbh
    dv_base = GRAD_V + bh64 * stride_vbh
    for j in tl.static_range(NUM_CB):
        _store_block(dk_base, dk[j] * inv_t, offs_n, n_mask, (cb0 + j) * BLOCK_C, stride_kn, D, BLOCK_C)
        _store_block(dv_base, dv[j], offs_n, n_mask, (cb0 + j) * BLOCK_C, stride_vn, DV, BLOCK_C)


@triton.jit
def _dt_share(dq, q, c_mask):
    """sum(dq * q) over one dq block [R, BLOCK_C] (fp32) and its q tile, columns c_mask only -> scalar."""
    return tl.sum(tl.sum(tl.where(c_mask[None, :], dq * q.to(tl.float32), 0.0), axis=1), axis=0)


@triton.jit
def masked_attention_bwd_dq_kernel(
    Q, K, V, VALID, TEMP, GRAD_OUT, ROW_MAX2, ROW_LOG2SUM, DELTA, GRAD_Q, DT_PART,
    stride_qbh, stride_qn, stride_kbh, stride_kn, stride_vbh, stride_vn, stride_dobh, stride_don,
    H, NQ, NK, D: tl.constexpr, DV: tl.constexpr, neg_lambda2, stride_part,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr,
    BLOCK_C: tl.constexpr, NUM_CB: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    RESIDENT: tl.constexpr = False,
):
    """Grid (cdiv(Nq, BLOCK_M), B*H, cdiv(D, NUM_CB*BLOCK_C)): dq[bh, rows, column range] in q's dtype.

    Loops over key tiles: s = q k^T, dp = dout v^T [BLOCK_M, BLOCK_N], dz as in the dk/dv kernel, then
    dq_j += dz k[:, block j]. RESIDENT (as in the dk/dv kernel): the program's q and dout rows are loaded
    once before the loop and the k chunks the contraction loaded feed dq; otherwise q and dout are
    re-loaded per tile and the own k columns loaded again. Epilogue: the program's share of
    sum_i <dq_i, q_i> (fp32, before dq is rounded), less the centring term (sum_j dz_ij)(sum_j p_ij s_ij)/t
    of its rows in the column split 0 only (see the module docstring), goes to
    DT_PART[bh, pid_m * n_splits + pid_c] (row stride stride_part).
    """
    tl.static_assert(not RESIDENT or (BLOCK_D == BLOCK_C and BLOCK_E == BLOCK_C),
                     "RESIDENT: BLOCK_D == BLOCK_E == BLOCK_C")
    NUM_DC: tl.constexpr = (D + BLOCK_C - 1) // BLOCK_C
    NUM_EC: tl.constexpr = (DV + BLOCK_C - 1) // BLOCK_C
    # own dq blocks that receive a product: those over columns of D when RESIDENT, else all
    KEPT_D: tl.constexpr = NUM_CB if (NUM_CB < NUM_DC or not RESIDENT) else NUM_DC
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    pid_c = tl.program_id(2)
    cb0 = pid_c * NUM_CB
    b = bh // H
    bh64, q_base, k_base, v_base, do_base, t, scale2 = _head(Q, K, V, GRAD_OUT, TEMP, bh, stride_qbh, stride_kbh,
                                                             stride_vbh, stride_dobh)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    offs_nb = tl.arange(0, BLOCK_N)  # [BLOCK_N]
    m_mask = offs_m < NQ
    row_max2 = tl.load(ROW_MAX2 + bh64 * NQ + offs_m, mask=m_mask, other=0.0)  # [BLOCK_M]
    row_log2sum = tl.load(ROW_LOG2SUM + bh64 * NQ + offs_m, mask=m_mask, other=0.0)  # [BLOCK_M]
    delta = tl.load(DELTA + bh64 * NQ + offs_m, mask=m_mask, other=0.0)  # [BLOCK_M]
    # RESIDENT: NUM_DC and NUM_EC tiles [BLOCK_M, BLOCK_C] of the program's own q and dout rows
    q_held, do_held = _held_rows(q_base, do_base, offs_m, m_mask, stride_qn, stride_don, cb0, D, DV, BLOCK_C,
                                 RESIDENT, UPCAST)

    dq = _zero_blocks(BLOCK_M, BLOCK_C, NUM_CB)  # NUM_CB x [BLOCK_M, BLOCK_C] fp32
    dz_sum = tl.zeros([BLOCK_M], dtype=tl.float32)  # [BLOCK_M] sum_j dz_ij (0 in exact arithmetic)
    ps_sum = tl.zeros([BLOCK_M], dtype=tl.float32)  # [BLOCK_M] sum_j p_ij s_ij
    for n0 in range(0, NK, BLOCK_N):
        offs_n = n0 + offs_nb  # [BLOCK_N]
        n_mask = offs_n < NK
        valid = tl.load(VALID + b * NK + offs_n, mask=n_mask, other=0) != 0  # [BLOCK_N]
        if RESIDENT:  # every k and v tile loaded once; the own k chunks kept for dq
            s, k_own = _dot_abt_kept(q_held, q_base, offs_m, m_mask, stride_qn, k_base, offs_n, n_mask, stride_kn,
                                     cb0, BLOCK_M, BLOCK_N, D, NUM_DC, NUM_CB, BLOCK_C, True, UPCAST,
                                     DOT_PRECISION)  # [BLOCK_M, BLOCK_N], KEPT_D x [BLOCK_N, BLOCK_C]
            dp, _ = _dot_abt_kept(do_held, do_base, offs_m, m_mask, stride_don, v_base, offs_n, n_mask, stride_vn,
                                  cb0, BLOCK_M, BLOCK_N, DV, NUM_EC, 0, BLOCK_C, True, UPCAST,
                                  DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
        else:  # D and Dv walked by a pipelined loop of BLOCK_D / BLOCK_E chunks; own k columns loaded again
            s = _dot_abt(q_base, k_base, offs_m, offs_n, m_mask, n_mask, stride_qn, stride_kn, D,
                         BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
            dp = _dot_abt(do_base, v_base, offs_m, offs_n, m_mask, n_mask, stride_don, stride_vn, DV,
                          BLOCK_M, BLOCK_N, BLOCK_E, UPCAST, DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
            # NUM_CB x [BLOCK_N, BLOCK_C]
            k_own = _load_own(k_base, offs_n, n_mask, stride_kn, cb0, D, NUM_CB, BLOCK_C, UPCAST)
        z2 = _logits2(s, valid, n_mask, scale2, neg_lambda2)  # [BLOCK_M, BLOCK_N]
        z2 = tl.where(m_mask[:, None], z2, float("-inf"))  # rows past Nq contribute nothing
        p = tl.exp2((z2 - row_max2[:, None]) - row_log2sum[:, None])  # [BLOCK_M, BLOCK_N]
        dz = tl.where(valid[None, :], p * (dp - delta[:, None]), 0.0)  # [BLOCK_M, BLOCK_N]
        dq = _dot_blocks(dq, _as_operand(dz, K, UPCAST), k_own, NUM_CB, KEPT_D, DOT_PRECISION)  # NUM_CB x [BLOCK_M, BLOCK_C]
        dz_sum += tl.sum(dz, axis=1)
        ps_sum += tl.sum(p * s, axis=1)  # p is 0 past Nk and Nq; any per-row constant keeps dt exact

    inv_t = 1.0 / t
    dq_base = GRAD_Q + bh64 * stride_qbh
    part = 0.0
    for j in tl.static_range(NUM_CB):
        col0 = (cb0 + j) * BLOCK_C
        offs_c = col0 + tl.arange(0, BLOCK_C)  # [BLOCK_C], unrotated: past D for a wrapped block
        tile = dq[j] * inv_t  # [BLOCK_M, BLOCK_C]
        _store_block(dq_base, tile, offs_m, m_mask, col0, stride_qn, D, BLOCK_C)
        if RESIDENT and j < KEPT_D:
            q_own = q_held[j]  # [BLOCK_M, BLOCK_C], the same columns as block j unless it wrapped
        else:
            q_own = _load_rows(q_base, offs_m, offs_c, m_mask, offs_c < D, stride_qn, True)  # [BLOCK_M, BLOCK_C]
        part += _dt_share(tile, q_own, offs_c < D)
    if pid_c == 0:  # the centring term, once per row
        part -= tl.sum(tl.where(m_mask, dz_sum * ps_sum, 0.0), axis=0) * inv_t
    tl.store(DT_PART + bh64 * stride_part + pid_m * tl.num_programs(2) + pid_c, part)
