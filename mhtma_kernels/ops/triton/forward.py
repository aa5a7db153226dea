"""Forward kernel, version 3: the q row block resident, the key loop innermost, every tile load pipelined.

Same contract and math as version 2 (the other branch of the entry kernel; `tiles`' module docstring
defines z2, row_max2, row_log2sum, the padding and the invalid-key constant); what changes is the loop structure:

* the head dims are compile-time constants (HEAD_D, HEAD_DV), so the D and Dv axes are cut into static
  pieces whose widths are powers of two (D = 576 -> 512 + 64; D = 45 -> 32 + 16, the last piece masked);
* the program's q rows are loaded once, as a tuple of D pieces, before the key loop (q resident);
* the key loop is the only loop, so Triton's software pipeliner (num_stages) turns the k and v tile loads
  into asynchronous copies: cp.async from pointer tensors, or with TMA=True TMA loads through tensor
  descriptors (16-byte aligned row strides; `triton.set_allocator` must be set, the launcher does it);
* s = q k^T is summed over the D pieces inside one iteration, p @ v goes to one accumulator per Dv piece
  (a tuple built in `tl.static_range`): the scores of a tile are computed once for all output columns of
  the program (COLS columns at col0 = pid_c * COLS; COLS >= Dv unless the columns are split over the grid);
* on the fixed-max path (bounded logits, see version 2) no row reduction inside the loop: the weights are
  summed elementwise into a [BLOCK_M, BLOCK_N] tile, reduced once after the loop.

The entry kernel `masked_attention_forward_kernel` takes version 2's arguments plus VERSION and the v3
constexprs, so that one `triton.autotune` measures both versions' candidates.
"""
import triton
import triton.language as tl

from .tiles import _dot_abt, _dot_block, _log2e_over, _logits2, _store_block, _zero_blocks


@triton.jit
def _store_out_block(o_base, lo_base, tile, offs_r, r_mask, col0, stride_r, NCOLS,
                     BLOCK_C: tl.constexpr, HAS_LO: tl.constexpr):
    """out[block] = tile rounded to out's dtype; with HAS_LO also out_lo[block] = tile - that rounding."""
    rounded = tile.to(o_base.dtype.element_ty)  # [R, BLOCK_C]
    _store_block(o_base, rounded, offs_r, r_mask, col0, stride_r, NCOLS, BLOCK_C)
    if HAS_LO:
        _store_block(lo_base, tile - rounded.to(tl.float32), offs_r, r_mask, col0, stride_r, NCOLS, BLOCK_C)


@triton.jit
def _tile_logits2(q_base, k_base, VALID, b, offs_m, m_mask, offs_n, NK, D, stride_qn, stride_kn, scale2, neg_lambda2,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                  UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Base-2 logits of one tile: query rows offs_m x key rows offs_n -> [BLOCK_M, BLOCK_N] fp32."""
    n_mask = offs_n < NK
    valid = tl.load(VALID + b * NK + offs_n, mask=n_mask, other=0) != 0  # [BLOCK_N]
    s = _dot_abt(q_base, k_base, offs_m, offs_n, m_mask, n_mask, stride_qn, stride_kn, D,
                 BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
    return _logits2(s, valid, n_mask, scale2, neg_lambda2)


@triton.jit
def _accumulate_v2(accs, alpha, p, v_base, offs_n, NK, col0, stride_vn, DV,
                BLOCK_C: tl.constexpr, NUM_CB: tl.constexpr, RESCALE: tl.constexpr, UPCAST: tl.constexpr,
                DOT_PRECISION: tl.constexpr):
    """accs[c] <- accs[c] * alpha (RESCALE) + p @ v[offs_n, block c] for the program's NUM_CB column blocks.

    p [BLOCK_M, BLOCK_N] fp32 weights; alpha [BLOCK_M, 1]; accs a tuple of NUM_CB [BLOCK_M, BLOCK_C] fp32."""
    n_mask = offs_n < NK
    if UPCAST:
        pv = p  # [BLOCK_M, BLOCK_N] fp32
    else:
        pv = p.to(v_base.dtype.element_ty)  # [BLOCK_M, BLOCK_N]
    out = ()
    for c in tl.static_range(NUM_CB):
        acc = accs[c]  # [BLOCK_M, BLOCK_C]
        if RESCALE:
            acc = acc * alpha
        out = out + (_dot_block(acc, pv, v_base, offs_n, n_mask, col0 + c * BLOCK_C, stride_vn, DV, BLOCK_C, UPCAST,
                                DOT_PRECISION),)
    return out


@triton.jit
def _tile(base, offs_r, r_mask, stride_r, col0, C0: tl.constexpr, W: tl.constexpr, NCOLS: tl.constexpr,
          MASK_COLS: tl.constexpr, UPCAST: tl.constexpr):
    """base[offs_r, col0 + C0 : col0 + C0 + W] -> [R, W]; 0 outside the rows and (MASK_COLS) past NCOLS."""
    offs_c = col0 + C0 + tl.arange(0, W)  # [W]
    ptrs = base + offs_r[:, None] * stride_r + offs_c[None, :]  # [R, W]
    if MASK_COLS:
        tile = tl.load(ptrs, mask=r_mask[:, None] & (offs_c < NCOLS)[None, :], other=0.0)  # [R, W]
    else:
        tile = tl.load(ptrs, mask=r_mask[:, None], other=0.0)  # [R, W]
    if UPCAST:
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def _zeros(R: tl.constexpr, W: tl.constexpr):
    """An fp32 [R, W] tile of zeros (W passed as a constexpr argument: a tuple item inside `tl.zeros`'s shape
    is a plain int that Triton 3.6's frontend rejects)."""
    return tl.zeros([R, W], dtype=tl.float32)  # [R, W]


@triton.jit
def _desc_tile(desc, row0, col, UPCAST: tl.constexpr):
    """TMA load of the [R, W] block at (row0, col) of a tensor descriptor (zero outside the tensor)."""
    tile = desc.load([row0, col])  # [R, W]
    if UPCAST:
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def _scores(q_parts, k_base, k_descs, krow0, offs_n, n_mask, stride_kn,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr,
            D_STARTS: tl.constexpr, D_WIDTHS: tl.constexpr, TMA: tl.constexpr,
            UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """s = q k^T of one tile, summed over the static D pieces -> [BLOCK_M, BLOCK_N] fp32."""
    s = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)  # [BLOCK_M, BLOCK_N]
    for i in tl.static_range(len(D_WIDTHS)):
        if TMA:
            k = _desc_tile(k_descs[i], krow0, D_STARTS[i], UPCAST)  # [BLOCK_N, D_WIDTHS[i]]
        else:
            k = _tile(k_base, offs_n, n_mask, stride_kn, 0, D_STARTS[i], D_WIDTHS[i], HEAD_D,
                      D_STARTS[i] + D_WIDTHS[i] > HEAD_D, UPCAST)  # [BLOCK_N, D_WIDTHS[i]]
        s = tl.dot(q_parts[i], tl.trans(k), s, input_precision=DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
    return s


@triton.jit
def _accumulate(accs, alpha, p, v_base, v_descs, krow0, offs_n, n_mask, stride_vn, col0,
                HEAD_DV: tl.constexpr, C_STARTS: tl.constexpr, C_WIDTHS: tl.constexpr, SPLIT: tl.constexpr,
                RESCALE: tl.constexpr, TMA: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """accs[c] <- accs[c] * alpha (RESCALE) + p @ v[keys, piece c] for every Dv piece c of the program."""
    if UPCAST:
        pv = p  # [BLOCK_M, BLOCK_N] fp32
    else:
        pv = p.to(v_base.dtype.element_ty)  # [BLOCK_M, BLOCK_N]
    new = ()
    for c in tl.static_range(len(C_WIDTHS)):
        if TMA:
            v = _desc_tile(v_descs[c], krow0, col0 + C_STARTS[c], UPCAST)  # [BLOCK_N, C_WIDTHS[c]]
        else:
            v = _tile(v_base, offs_n, n_mask, stride_vn, col0, C_STARTS[c], C_WIDTHS[c], HEAD_DV,
                      SPLIT or C_STARTS[c] + C_WIDTHS[c] > HEAD_DV, UPCAST)  # [BLOCK_N, C_WIDTHS[c]]
        acc = accs[c]  # [BLOCK_M, C_WIDTHS[c]]
        if RESCALE:
            acc = acc * alpha
        new = new + (tl.dot(pv, v, acc, input_precision=DOT_PRECISION),)
    return new


@triton.jit
def _store_outputs(accs, inv_l, o_base, lo_base, offs_m, m_mask, stride_on, col0,
                   HEAD_DV: tl.constexpr, C_STARTS: tl.constexpr, C_WIDTHS: tl.constexpr, HAS_LO: tl.constexpr):
    """out[rows, piece c] = accs[c] * inv_l rounded to out's dtype; with HAS_LO the rounding residual too."""
    for c in tl.static_range(len(C_WIDTHS)):
        offs_c = col0 + C_STARTS[c] + tl.arange(0, C_WIDTHS[c])  # [W]
        mask = m_mask[:, None] & (offs_c < HEAD_DV)[None, :]  # [BLOCK_M, W]
        tile = accs[c] * inv_l  # [BLOCK_M, W] fp32
        rounded = tile.to(o_base.dtype.element_ty)  # [BLOCK_M, W]
        tl.store(o_base + offs_m[:, None] * stride_on + offs_c[None, :], rounded, mask=mask)
        if HAS_LO:
            tl.store(lo_base + offs_m[:, None] * stride_on + offs_c[None, :],
                     (tile - rounded.to(tl.float32)).to(lo_base.dtype.element_ty), mask=mask)


@triton.jit
def _descriptors(base, rows, stride_r, NCOLS: tl.constexpr, BLOCK_R: tl.constexpr, WIDTHS: tl.constexpr):
    """One TMA tensor descriptor of the [rows, NCOLS] matrix at base per piece width: [BLOCK_R, WIDTHS[i]] blocks."""
    descs = ()
    for i in tl.static_range(len(WIDTHS)):
        descs = descs + (tl.make_tensor_descriptor(base, shape=[rows, NCOLS], strides=[stride_r, 1],
                                                   block_shape=[BLOCK_R, WIDTHS[i]]),)
    return descs


@triton.jit
def _v3_rows(q_base, k_base, v_base, o_base, lo_base, VALID, m_ref, scale2, neg_lambda2, b, offs_m, m_mask, col0,
             stride_qn, stride_kn, stride_vn, stride_on, NK,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, HEAD_D: tl.constexpr,
             HEAD_DV: tl.constexpr, D_STARTS: tl.constexpr, D_WIDTHS: tl.constexpr, C_STARTS: tl.constexpr,
             C_WIDTHS: tl.constexpr, TMA: tl.constexpr, HAS_LO: tl.constexpr, BOUNDED: tl.constexpr,
             UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """The whole work of one program -> (row_max2, row_log2sum) [BLOCK_M]: q resident, one pipelined key loop,
    the output stored.

    BOUNDED: m_ref (scale2, or neg_lambda2 for an image without a valid key) stands in for every row max;
    else the running max. Everything lives inside this function so that a caller's two calls (one per
    path, under a runtime `if`) share no live registers."""
    k_descs = ()
    v_descs = ()
    if TMA:  # 16-byte aligned bases and row strides (ForwardTile / the launcher check)
        k_descs = _descriptors(k_base, NK, stride_kn, HEAD_D, BLOCK_N, D_WIDTHS)
        v_descs = _descriptors(v_base, NK, stride_vn, HEAD_DV, BLOCK_N, C_WIDTHS)
    q_parts = ()  # the q row block, resident for the whole key loop: one [BLOCK_M, D_WIDTHS[i]] tile per piece
    for i in tl.static_range(len(D_WIDTHS)):
        q_parts = q_parts + (_tile(q_base, offs_m, m_mask, stride_qn, 0, D_STARTS[i], D_WIDTHS[i], HEAD_D,
                                   D_STARTS[i] + D_WIDTHS[i] > HEAD_D, UPCAST),)
    accs = ()  # one [BLOCK_M, C_WIDTHS[c]] fp32 accumulator per Dv piece of the program
    for c in tl.static_range(len(C_WIDTHS)):
        accs = accs + (_zeros(BLOCK_M, C_WIDTHS[c]),)
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) + m_ref  # [BLOCK_M]; -inf on the running-max path
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # [BLOCK_M]
    l_tile = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)  # [BLOCK_M, BLOCK_N] elementwise sums (BOUNDED)
    offs_nb = tl.arange(0, BLOCK_N)  # [BLOCK_N]
    for n0 in range(0, NK, BLOCK_N):
        offs_n = n0 + offs_nb  # [BLOCK_N]
        n_mask = offs_n < NK
        s = _scores(q_parts, k_base, k_descs, n0, offs_n, n_mask, stride_kn, BLOCK_M, BLOCK_N, HEAD_D,
                    D_STARTS, D_WIDTHS, TMA, UPCAST, DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
        # The key mask is loaded after the score dots on purpose: loaded before them, LLVM's SLP vectoriser (on
        # for fp16, fp32 and Triton 3.6's bf16) regroups the mask loads and moves every wgmma descriptor of the
        # tile ahead of the first dot, and ptxas spills (fp16 D = 576: 352 B; kernel-notes, "Version 3").
        valid = tl.load(VALID + b * NK + offs_n, mask=n_mask, other=0) != 0  # [BLOCK_N]
        z2 = _logits2(s, valid, n_mask, scale2, neg_lambda2)  # [BLOCK_M, BLOCK_N]
        if BOUNDED:
            p = tl.exp2(z2 - m_ref)  # [BLOCK_M, BLOCK_N], <= 1: no row reduction in the loop
            l_tile += p
            accs = _accumulate(accs, 1.0, p, v_base, v_descs, n0, offs_n, n_mask, stride_vn, col0, HEAD_DV,
                               C_STARTS, C_WIDTHS, SPLIT, False, TMA, UPCAST, DOT_PRECISION)
        else:
            m_new = tl.maximum(m_i, tl.max(z2, axis=1))  # [BLOCK_M]; finite from the first tile (key 0)
            alpha = tl.exp2(m_i - m_new)  # [BLOCK_M]
            p = tl.exp2(z2 - m_new[:, None])  # [BLOCK_M, BLOCK_N]
            l_i = l_i * alpha + tl.sum(p, axis=1)  # [BLOCK_M]
            m_i = m_new
            accs = _accumulate(accs, alpha[:, None], p, v_base, v_descs, n0, offs_n, n_mask, stride_vn, col0,
                               HEAD_DV, C_STARTS, C_WIDTHS, SPLIT, True, TMA, UPCAST, DOT_PRECISION)
    if BOUNDED:
        l_i = tl.sum(l_tile, axis=1)  # [BLOCK_M], the one row reduction
    _store_outputs(accs, (1.0 / l_i)[:, None], o_base, lo_base, offs_m, m_mask, stride_on, col0, HEAD_DV,
                   C_STARTS, C_WIDTHS, HAS_LO)
    return m_i, tl.log2(l_i)


@triton.jit
def _forward_v3(Q, K, V, VALID, ANY_VALID, TEMP, OUT, OUT_LO, ROW_MAX2, ROW_LOG2SUM,
                stride_qbh, stride_qn, stride_kbh, stride_kn, stride_vbh, stride_vn, stride_obh, stride_on,
                H, NQ, NK, neg_lambda2, fixed_limit,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, COLS: tl.constexpr, HEAD_D: tl.constexpr,
                HEAD_DV: tl.constexpr, D_STARTS: tl.constexpr, D_WIDTHS: tl.constexpr, C_STARTS: tl.constexpr,
                C_WIDTHS: tl.constexpr, TMA: tl.constexpr, HAS_LO: tl.constexpr, FIXED_MAX: tl.constexpr,
                UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Grid (cdiv(Nq, BLOCK_M), B*H, cdiv(Dv, COLS)): out[bh, rows, col0 : col0 + COLS], row_max2, row_log2sum [bh, rows]."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    pid_c = tl.program_id(2)
    b = bh // H
    bh64 = bh.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    m_mask = offs_m < NQ
    col0 = pid_c * COLS
    SPLIT: tl.constexpr = COLS < HEAD_DV
    scale2 = _log2e_over(tl.load(TEMP + bh).to(tl.float32))
    bases = (Q + bh64 * stride_qbh, K + bh64 * stride_kbh, V + bh64 * stride_vbh, OUT + bh64 * stride_obh,
             OUT_LO + bh64 * stride_obh)
    # One path per launch (FIXED_MAX: heads with scale2 <= fixed_limit; else the others, which is every head
    # when fixed_limit = 0): two loops in one binary would share the register allocation and spill.
    if FIXED_MAX:
        if scale2 <= fixed_limit:
            m_ref = tl.where(tl.load(ANY_VALID + b) != 0, scale2, neg_lambda2)
            row_max2, row_log2sum = _v3_rows(
                bases[0], bases[1], bases[2], bases[3], bases[4], VALID, m_ref, scale2, neg_lambda2, b, offs_m,
                m_mask, col0, stride_qn, stride_kn, stride_vn, stride_on, NK, BLOCK_M, BLOCK_N, SPLIT, HEAD_D,
                HEAD_DV, D_STARTS, D_WIDTHS, C_STARTS, C_WIDTHS, TMA, HAS_LO, True, UPCAST, DOT_PRECISION)
            _store_stats(ROW_MAX2, ROW_LOG2SUM, bh64, NQ, offs_m, m_mask & (pid_c == 0), row_max2, row_log2sum)
    elif scale2 > fixed_limit:
        row_max2, row_log2sum = _v3_rows(
            bases[0], bases[1], bases[2], bases[3], bases[4], VALID, float("-inf"), scale2, neg_lambda2, b, offs_m,
            m_mask, col0, stride_qn, stride_kn, stride_vn, stride_on, NK, BLOCK_M, BLOCK_N, SPLIT, HEAD_D, HEAD_DV,
            D_STARTS, D_WIDTHS, C_STARTS, C_WIDTHS, TMA, HAS_LO, False, UPCAST, DOT_PRECISION)
        _store_stats(ROW_MAX2, ROW_LOG2SUM, bh64, NQ, offs_m, m_mask & (pid_c == 0), row_max2, row_log2sum)


@triton.jit
def _store_stats(ROW_MAX2, ROW_LOG2SUM, bh64, NQ, offs_m, mask, row_max2, row_log2sum):
    """Row statistics row_max2, row_log2sum [BLOCK_M] of head bh64 (column splits share them: the first one writes)."""
    tl.store(ROW_MAX2 + bh64 * NQ + offs_m, row_max2, mask=mask)
    tl.store(ROW_LOG2SUM + bh64 * NQ + offs_m, row_log2sum, mask=mask)


@triton.jit
def masked_attention_forward_kernel(
    Q, K, V, VALID, ANY_VALID, TEMP, OUT, OUT_LO, ROW_MAX2, ROW_LOG2SUM,
    stride_qbh, stride_qn, stride_kbh, stride_kn, stride_vbh, stride_vn, stride_obh, stride_on,
    H, NQ, NK, D, DV, neg_lambda2, fixed_limit,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr,
    NUM_CB: tl.constexpr, HAS_LO: tl.constexpr, FIXED_MAX: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    VERSION: tl.constexpr = 2, HEAD_D: tl.constexpr = 0, HEAD_DV: tl.constexpr = 0, D_STARTS: tl.constexpr = None,
    D_WIDTHS: tl.constexpr = None, C_STARTS: tl.constexpr = None, C_WIDTHS: tl.constexpr = None,
    TMA: tl.constexpr = False, REST_PASS: tl.constexpr = False,
):
    """Either forward: VERSION 2 (below, grid over NUM_CB*BLOCK_C column ranges) or 3 (`_forward_v3`, column
    range BLOCK_C; its head dims and pieces in the v3 constexprs).

    Version 2. Grid (cdiv(Nq, BLOCK_M), B*H, cdiv(Dv, NUM_CB*BLOCK_C)): out[bh, rows, cols], row_max2,
    row_log2sum [bh, rows].

    Online softmax over key tiles: running max m_i, running sum l_i, rescaled accumulators. With
    FIXED_MAX (unit-norm q and k, so every valid logit is <= scale2 = log2(e)/t) and scale2 <=
    fixed_limit, the bound stands in for the row max instead (-lambda_m*log2(e) for an image without a
    valid key, ANY_VALID[b] = 0): no per-tile max, no rescaling; the limit keeps exp2(z2 - scale2) >=
    2^(-2*fixed_limit), far from underflow. With HAS_LO (16-bit outputs) OUT_LO receives
    out_fp32 - out, so that the backward's delta keeps fp32 accuracy without an fp32 copy of the output.

    The launcher runs a bounded forward (fixed_limit > 0) as two launches: FIXED_MAX=True, then
    FIXED_MAX=False with REST_PASS=True. Version 3 does the heads with log2(e)/t <= fixed_limit in the first
    and the others in the second; version 2 does every head in the first (its two loops in one binary) and
    nothing in the second."""
    if VERSION == 3:
        _forward_v3(Q, K, V, VALID, ANY_VALID, TEMP, OUT, OUT_LO, ROW_MAX2, ROW_LOG2SUM,
                    stride_qbh, stride_qn, stride_kbh, stride_kn, stride_vbh, stride_vn, stride_obh, stride_on,
                    H, NQ, NK, neg_lambda2, fixed_limit, BLOCK_M, BLOCK_N, BLOCK_C, HEAD_D, HEAD_DV,
                    D_STARTS, D_WIDTHS, C_STARTS, C_WIDTHS, TMA, HAS_LO, FIXED_MAX, UPCAST, DOT_PRECISION)
    elif not REST_PASS:  # version 2
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        pid_c = tl.program_id(2)
        b = bh // H
        bh64 = bh.to(tl.int64)
        q_base = Q + bh64 * stride_qbh
        k_base = K + bh64 * stride_kbh
        v_base = V + bh64 * stride_vbh
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
        offs_nb = tl.arange(0, BLOCK_N)  # [BLOCK_N]
        m_mask = offs_m < NQ
        col0 = pid_c * (NUM_CB * BLOCK_C)
        scale2 = _log2e_over(tl.load(TEMP + bh).to(tl.float32))

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # [BLOCK_M]
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # [BLOCK_M]
        # Column block c of this program covers out[:, col0 + c*BLOCK_C : col0 + (c+1)*BLOCK_C].
        accs = _zero_blocks(BLOCK_M, BLOCK_C, NUM_CB)  # NUM_CB x [BLOCK_M, BLOCK_C] fp32
        if FIXED_MAX and scale2 <= fixed_limit:
            m_ref = tl.where(tl.load(ANY_VALID + b) != 0, scale2, neg_lambda2)
            for n0 in range(0, NK, BLOCK_N):
                offs_n = n0 + offs_nb  # [BLOCK_N]
                z2 = _tile_logits2(q_base, k_base, VALID, b, offs_m, m_mask, offs_n, NK, D, stride_qn, stride_kn,
                                   scale2, neg_lambda2, BLOCK_M, BLOCK_N, BLOCK_D, UPCAST,
                                   DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
                p = tl.exp2(z2 - m_ref)  # [BLOCK_M, BLOCK_N], <= 1 (and >= 2^(-2*fixed_limit) on valid keys)
                l_i += tl.sum(p, axis=1)  # [BLOCK_M]
                accs = _accumulate_v2(accs, 1.0, p, v_base, offs_n, NK, col0, stride_vn, DV, BLOCK_C, NUM_CB, False,
                                      UPCAST, DOT_PRECISION)
            m_i = tl.zeros([BLOCK_M], dtype=tl.float32) + m_ref
        else:
            for n0 in range(0, NK, BLOCK_N):
                offs_n = n0 + offs_nb  # [BLOCK_N]
                z2 = _tile_logits2(q_base, k_base, VALID, b, offs_m, m_mask, offs_n, NK, D, stride_qn, stride_kn,
                                   scale2, neg_lambda2, BLOCK_M, BLOCK_N, BLOCK_D, UPCAST,
                                   DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
                # The first tile always holds key 0 (finite logit), so m_new is finite from then on.
                m_new = tl.maximum(m_i, tl.max(z2, axis=1))  # [BLOCK_M]
                alpha = tl.exp2(m_i - m_new)  # [BLOCK_M]
                p = tl.exp2(z2 - m_new[:, None])  # [BLOCK_M, BLOCK_N]
                l_i = l_i * alpha + tl.sum(p, axis=1)  # [BLOCK_M]
                m_i = m_new
                accs = _accumulate_v2(accs, alpha[:, None], p, v_base, offs_n, NK, col0, stride_vn, DV, BLOCK_C,
                                      NUM_CB, True, UPCAST, DOT_PRECISION)

        inv_l = (1.0 / l_i)[:, None]  # [BLOCK_M, 1]
        o_base = OUT + bh64 * stride_obh
        lo_base = OUT_LO + bh64 * stride_obh
        for c in tl.static_range(NUM_CB):
            _store_out_block(o_base, lo_base, accs[c] * inv_l, offs_m, m_mask, col0 + c * BLOCK_C, stride_on, DV, BLOCK_C,
                             HAS_LO)
        # Every column split computes the same statistics; the first one writes them.
        tl.store(ROW_MAX2 + bh64 * NQ + offs_m, m_i, mask=m_mask & (pid_c == 0))
        tl.store(ROW_LOG2SUM + bh64 * NQ + offs_m, tl.log2(l_i), mask=m_mask & (pid_c == 0))
