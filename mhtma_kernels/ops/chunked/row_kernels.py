"""Triton kernels for the elementwise row steps of the query-chunked GEMM path (:mod:`.gemm`): the work
between its GEMMs, one chunk of query rows at a time. They compute exactly what the eager steps
``gemm._forward_rows_eager`` and ``gemm._backward_rows_eager`` compute, in one or two reads of the
chunk's scores instead of several torch kernels.

Shapes (per chunk of c query rows, flattened over batch*heads "bh"): s, dp [BH, c, Nk] in the compute dtype
(fp32, or fp64), any strides; scale [BH, 1, 1] compute dtype; invalid [BH, 1, Nk] bool; m [BH, c, 1].

Forward row step, per row i:

    z_ij = s_ij * scale (valid key j),  fill (invalid key j)
    m_i  = m_fixed (given: the bound 1/t, or -lambda_m for an image without a valid key) or max_j z_ij
    e_ij = exp(z_ij - m_i)          written rounded to p_dtype (in place into s when p_dtype is s's dtype)
    rowsum_i = sum_j e_ij           the UNROUNDED e summed, in the compute dtype (chunked takes l = log of it)

Two passes over the row when m is the row's own max (pass 1 the max, pass 2 e and its sum), one with m_fixed.

Backward row step (``BASE2``: exp2 instead of exp; the caller pre-multiplies scale and fill by log2(e)):

    e_ij = exp(z_ij - m_i),  w_ij = e_ij / sum_j e_ij
    delta_i = (sum_j e_ij dp_ij) / sum_j e_ij       (= sum_j w_ij dp_ij)
    g_ij = w_ij (dp_ij - delta_i), 0 on invalid keys
    w, g written rounded to op_dtype (in place into s and dp when op_dtype is their dtype)
    gs_bh = sum_ij g_ij s_ij                        (unrounded g; one partial per program, summed by torch)

Pass 1 accumulates sum e and sum e*dp, pass 2 writes w and g: two reads of s and dp per chunk.

Grid: (row blocks of BLOCK_M rows, BH); each program walks Nk in BLOCK_N columns ([BLOCK_M, BLOCK_N] tiles).
Padding columns (j >= Nk) get z = -inf (e = 0) and are never stored; padding rows read s = 0 and are never
stored. Row and bh offsets are int64, column offsets int32 (checked by the launcher). Nk and the row / bh
strides enter as multiples of ALIGN (the power of two <= 16 dividing them all), which lets the tiles load
as 16-byte vectors where Nk is not a multiple of 16 (3844 at 64x64 maps). fill is read from a one-element
tensor so that it has the compute dtype (a Python float argument would be fp32 in the kernel).

Rounding to fp16/bf16 is round-to-nearest-even on a GPU (as torch's .to); Triton's CPU interpreter (3.8)
truncates fp32 -> bf16 instead, so under TRITON_INTERPRET=1 a bf16 e, w or g can be one bf16 step below
torch's rounding.

fp64: the kernels take fp64 scores (exact to rounding under the interpreter, where the tests run them), but
on CUDA the chunked path runs fp64 with its eager steps unless MHTMA_CHUNK_STEPS=triton forces these kernels
(libdevice exp; not run on a GPU so far): fp64 is the oracle's dtype there, not a speed path.
"""
import torch
import triton
import triton.language as tl

from ..rules import triton_interprets as interpreting


@triton.jit
def _row_logits(s_rows, inv_rows, offs_n, r_mask, NK, stride_sn, stride_in, scale, fill):
    """One tile of logits and its scores: s [BLOCK_M, BLOCK_N] (0 outside), z = s*scale | fill | -inf (j >= Nk),
    valid [1, BLOCK_N] (False outside)."""
    n_mask = offs_n < NK  # [BLOCK_N]
    tile_mask = r_mask[:, None] & n_mask[None, :]  # [BLOCK_M, BLOCK_N]
    s = tl.load(s_rows + offs_n[None, :] * stride_sn, mask=tile_mask, other=0.0)  # [BLOCK_M, BLOCK_N]
    invalid = tl.load(inv_rows + offs_n * stride_in, mask=n_mask, other=1) != 0  # [BLOCK_N]
    z = tl.where(invalid[None, :], fill, s * scale)  # [BLOCK_M, BLOCK_N]
    z = tl.where(n_mask[None, :], z, float("-inf"))  # [BLOCK_M, BLOCK_N]
    valid = n_mask[None, :] & (invalid == 0)[None, :]  # [1, BLOCK_N]
    return s, z, valid, tile_mask


@triton.jit
def _aligned(x, ALIGN: tl.constexpr):
    """x itself, known to the compiler as a multiple of ALIGN (the launcher checked that it is one): lets
    the tile loads and stores of a row vectorise where Nk and the row strides are not multiples of 16."""
    if ALIGN > 1:
        x = (x // ALIGN) * ALIGN
    return x


@triton.jit
def _exp(x, BASE2: tl.constexpr):
    if BASE2:
        return tl.exp2(x)
    return tl.exp(x)


@triton.jit
def _program_rows(ROWS, BLOCK_M: tl.constexpr):
    """This program's bh (int64), its rows [BLOCK_M] (int64) and their mask (rows < ROWS)."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    return tl.program_id(1).to(tl.int64), offs_m.to(tl.int64), offs_m < ROWS


@triton.jit
def _rows_at(base, bh, rows64, stride_b, stride_r):
    """[BLOCK_M, 1] pointers (or offsets, base 0) to the first column of the program's rows."""
    return base + bh * stride_b + rows64[:, None] * stride_r


# The chunk's row count and per-bh strides change with the last (partial) chunk: not specialised on (the
# alignment they would prove is ALIGN's job), so a call of the same shape never compiles a second binary.
@triton.jit(do_not_specialize=["ROWS", "stride_sb", "stride_eb"])
def chunk_forward_rows_kernel(S, SCALE, INVALID, FILL, M_FIXED, E, M_OUT, SUM_OUT, ROWS, NK,
                              stride_sb, stride_sr, stride_sn, stride_eb, stride_er, stride_en,
                              stride_ib, stride_in, stride_scale, stride_fixed,
                              HAS_FIXED: tl.constexpr, ALIGN: tl.constexpr,
                              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """e = exp(z - m) rounded to E's dtype, m and sum_j e per row (see the module docstring). NK and the bh /
    row strides are multiples of ALIGN."""
    nk_a = _aligned(NK, ALIGN)  # NK as the masks see it; the loops run to NK itself
    stride_sb, stride_sr = _aligned(stride_sb, ALIGN), _aligned(stride_sr, ALIGN)
    stride_eb, stride_er, stride_ib = _aligned(stride_eb, ALIGN), _aligned(stride_er, ALIGN), _aligned(stride_ib, ALIGN)
    bh, rows64, r_mask = _program_rows(ROWS, BLOCK_M)  # scalar, [BLOCK_M], [BLOCK_M]
    s_rows = _rows_at(S, bh, rows64, stride_sb, stride_sr)  # [BLOCK_M, 1] pointers
    e_rows = _rows_at(E, bh, rows64, stride_eb, stride_er)  # [BLOCK_M, 1] pointers
    inv_rows = INVALID + bh * stride_ib
    scale = tl.load(SCALE + bh * stride_scale)
    fill = tl.load(FILL)
    offs_nb = tl.arange(0, BLOCK_N)  # [BLOCK_N]
    if HAS_FIXED:
        m = tl.zeros([BLOCK_M], dtype=scale.dtype) + tl.load(M_FIXED + bh * stride_fixed)  # [BLOCK_M]
    else:
        m = tl.full([BLOCK_M], float("-inf"), dtype=scale.dtype)  # [BLOCK_M]
        for n0 in range(0, NK, BLOCK_N):
            _, z, _, _ = _row_logits(s_rows, inv_rows, n0 + offs_nb, r_mask, nk_a, stride_sn, stride_in, scale, fill)
            m = tl.maximum(m, tl.max(z, axis=1))  # [BLOCK_M]
    total = tl.zeros([BLOCK_M], dtype=scale.dtype)  # [BLOCK_M]
    for n0 in range(0, NK, BLOCK_N):
        offs_n = n0 + offs_nb  # [BLOCK_N]
        _, z, _, tile_mask = _row_logits(s_rows, inv_rows, offs_n, r_mask, nk_a, stride_sn, stride_in, scale, fill)
        e = tl.exp(z - m[:, None])  # [BLOCK_M, BLOCK_N], 0 on padding columns
        tl.store(e_rows + offs_n[None, :] * stride_en, e.to(E.dtype.element_ty), mask=tile_mask)
        total += tl.sum(e, axis=1)  # [BLOCK_M]
    out_rows = bh * ROWS + rows64  # [BLOCK_M]: M_OUT, SUM_OUT are contiguous [BH, ROWS]
    tl.store(M_OUT + out_rows, m, mask=r_mask)
    tl.store(SUM_OUT + out_rows, total, mask=r_mask)


@triton.jit(do_not_specialize=["ROWS", "stride_sb", "stride_db", "stride_wb"])
def chunk_backward_rows_kernel(S, DP, SCALE, INVALID, FILL, M, W, G, GS_PART, ROWS, NK,
                               stride_sb, stride_sr, stride_sn, stride_db, stride_dr, stride_dn,
                               stride_wb, stride_wr, stride_wn, stride_ib, stride_in, stride_scale,
                               stride_mb, stride_mr, stride_gsb,
                               BASE2: tl.constexpr, ALIGN: tl.constexpr,
                               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """w, g rounded to W's dtype and one partial sum of g*s per program (see the module docstring).
    W and G share their strides (both fresh, or s's and dp's buffers when written in place: checked by the
    launcher). NK and the bh / row strides are multiples of ALIGN."""
    nk_a = _aligned(NK, ALIGN)  # NK as the masks see it; the loops run to NK itself
    stride_sb, stride_sr = _aligned(stride_sb, ALIGN), _aligned(stride_sr, ALIGN)
    stride_db, stride_dr = _aligned(stride_db, ALIGN), _aligned(stride_dr, ALIGN)
    stride_wb, stride_wr, stride_ib = _aligned(stride_wb, ALIGN), _aligned(stride_wr, ALIGN), _aligned(stride_ib, ALIGN)
    bh, rows64, r_mask = _program_rows(ROWS, BLOCK_M)  # scalar, [BLOCK_M], [BLOCK_M]
    s_rows = _rows_at(S, bh, rows64, stride_sb, stride_sr)  # [BLOCK_M, 1] pointers
    dp_rows = _rows_at(DP, bh, rows64, stride_db, stride_dr)  # [BLOCK_M, 1] pointers
    w_rows = _rows_at(0, bh, rows64, stride_wb, stride_wr)  # [BLOCK_M, 1] offsets into W and G
    inv_rows = INVALID + bh * stride_ib
    scale = tl.load(SCALE + bh * stride_scale)
    fill = tl.load(FILL)
    m = tl.load(M + bh * stride_mb + rows64 * stride_mr, mask=r_mask, other=0.0)  # [BLOCK_M]
    offs_nb = tl.arange(0, BLOCK_N)  # [BLOCK_N]
    total = tl.zeros([BLOCK_M], dtype=scale.dtype)  # [BLOCK_M]
    e_dp = tl.zeros([BLOCK_M], dtype=scale.dtype)  # [BLOCK_M]
    for n0 in range(0, NK, BLOCK_N):
        offs_n = n0 + offs_nb  # [BLOCK_N]
        _, z, _, tile_mask = _row_logits(s_rows, inv_rows, offs_n, r_mask, nk_a, stride_sn, stride_in, scale, fill)
        dp = tl.load(dp_rows + offs_n[None, :] * stride_dn, mask=tile_mask, other=0.0)  # [BLOCK_M, BLOCK_N]
        e = _exp(z - m[:, None], BASE2)  # [BLOCK_M, BLOCK_N]
        total += tl.sum(e, axis=1)  # [BLOCK_M]
        e_dp += tl.sum(e * dp, axis=1)  # [BLOCK_M]
    total = tl.where(r_mask, total, 1.0)  # [BLOCK_M]; padding rows of an all-invalid image would be 0
    delta = e_dp / total  # [BLOCK_M]
    gs = tl.zeros([BLOCK_M, BLOCK_N], dtype=scale.dtype)  # [BLOCK_M, BLOCK_N]
    for n0 in range(0, NK, BLOCK_N):
        offs_n = n0 + offs_nb  # [BLOCK_N]
        s, z, valid, tile_mask = _row_logits(s_rows, inv_rows, offs_n, r_mask, nk_a, stride_sn, stride_in, scale, fill)
        dp = tl.load(dp_rows + offs_n[None, :] * stride_dn, mask=tile_mask, other=0.0)  # [BLOCK_M, BLOCK_N]
        w = _exp(z - m[:, None], BASE2) / total[:, None]  # [BLOCK_M, BLOCK_N]
        g = tl.where(valid & tile_mask, (dp - delta[:, None]) * w, 0.0)  # [BLOCK_M, BLOCK_N]
        w_at = w_rows + offs_n[None, :] * stride_wn  # [BLOCK_M, BLOCK_N] offsets
        tl.store(W + w_at, w.to(W.dtype.element_ty), mask=tile_mask)
        tl.store(G + w_at, g.to(G.dtype.element_ty), mask=tile_mask)
        gs += g * s  # [BLOCK_M, BLOCK_N]
    tl.store(GS_PART + bh * stride_gsb + tl.program_id(0), tl.sum(tl.sum(gs, axis=1), axis=0))


# ------------------------------------------------------------------------------------------- launchers

#: Elements of one [BLOCK_M, BLOCK_N] tile and the widest BLOCK_N (predictions for an H100/H200: 16 fp32
#: values per thread of 4 warps, 16-byte vector loads; not measured).
TILE_ELEMENTS = 2048
MAX_BLOCK_N = 1024
#: Fewest programs worth keeping before the row blocks are made narrower (about 8 per SM of a 132-SM GPU).
MIN_PROGRAMS = 1024
#: Tile elements per warp (4 fp32 per thread: one 16-byte vector) and the most warps per program.
WARP_ELEMENTS = 128
MAX_WARPS = 4


def row_blocks(bh: int, rows: int, nk: int, blocks=None, min_programs: int | None = None) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) of a launch: BLOCK_N the power of two covering Nk up to MAX_BLOCK_N;
    BLOCK_M rows filling TILE_ELEMENTS, halved while the grid would have fewer than ``min_programs`` programs
    (default MIN_PROGRAMS; 1 under the interpreter, which runs programs one by one); ``blocks`` = (BLOCK_M,
    BLOCK_N) overrides both; warps: one per WARP_ELEMENTS of the tile, 1 to MAX_WARPS."""
    if min_programs is None:
        min_programs = 1 if interpreting() else MIN_PROGRAMS
    if blocks is None:
        block_n = min(MAX_BLOCK_N, triton.next_power_of_2(max(nk, 1)))
        block_m = min(max(TILE_ELEMENTS // block_n, 1), triton.next_power_of_2(max(rows, 1)))
        while block_m > 1 and bh * triton.cdiv(rows, block_m) < min_programs:
            block_m //= 2
    else:
        block_m, block_n = blocks
    return block_m, block_n, max(1, min(MAX_WARPS, block_m * block_n // WARP_ELEMENTS))


def alignment(*ints: int) -> int:
    """The largest power of two up to 16 that divides every one of ``ints`` (Nk and the bh / row strides)."""
    align = 16
    while align > 1 and any(n % align for n in ints):
        align //= 2
    return align


def _check(s: torch.Tensor, invalid: torch.Tensor, scale: torch.Tensor, *others: torch.Tensor) -> None:
    if s.dim() != 3 or s.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"chunk row step: s must be [BH, rows, Nk] fp32/fp64, got {tuple(s.shape)} {s.dtype}")
    BH, _, nk = s.shape
    if any(x.dim() == 3 and (nk - 1) * abs(x.stride(2)) >= 2 ** 31 for x in (s, invalid) + others):
        raise ValueError("chunk row step: column offsets (Nk - 1) * stride must fit in int32")
    if invalid.shape != (BH, 1, nk) or invalid.dtype != torch.bool:
        raise ValueError(f"chunk row step: invalid must be bool [{BH}, 1, {nk}], "
                         f"got {tuple(invalid.shape)} {invalid.dtype}")
    if scale.shape != (BH, 1, 1) or scale.dtype != s.dtype:
        raise ValueError(f"chunk row step: scale must be [{BH}, 1, 1] {s.dtype}, "
                         f"got {tuple(scale.shape)} {scale.dtype}")
    if any(x.device != s.device for x in (invalid, scale) + others):
        raise ValueError("chunk row step: every tensor must be on s's device")


def _check_rounding(s: torch.Tensor, dtype: torch.dtype) -> None:
    if dtype != s.dtype and not (s.dtype == torch.float32 and dtype in (torch.float16, torch.bfloat16)):
        raise ValueError(f"chunk row step: {s.dtype} scores are written as {s.dtype}"
                         f"{' or fp16/bf16' if s.dtype == torch.float32 else ''}, not {dtype}")


def _fill(value: float, like: torch.Tensor) -> torch.Tensor:
    return torch.full((1,), value, dtype=like.dtype, device=like.device)


def forward_rows(s, scale, invalid, fill: float, m_fixed, p_dtype, blocks=None):
    """The forward row step (``gemm._forward_rows_eager``'s twin) -> (e [BH, c, Nk] in p_dtype, m, sum_j e
    [BH, c, 1] in s's dtype); consumes s. blocks: (BLOCK_M, BLOCK_N), default :func:`row_blocks`'s choice."""
    _check(s, invalid, scale, *([] if m_fixed is None else [m_fixed]))
    _check_rounding(s, p_dtype)
    BH, rows, nk = s.shape
    e = s if p_dtype == s.dtype else torch.empty(s.shape, dtype=p_dtype, device=s.device)  # in place or fresh
    m = torch.empty(BH, rows, 1, dtype=s.dtype, device=s.device)
    total = torch.empty_like(m)
    if BH * rows == 0:
        return e, m, total
    if m_fixed is not None and m_fixed.shape != (BH, 1, 1):
        raise ValueError(f"chunk row step: m_fixed must be [{BH}, 1, 1], got {tuple(m_fixed.shape)}")
    block_m, block_n, warps = row_blocks(BH, rows, nk, blocks)
    fixed = scale if m_fixed is None else m_fixed.to(s.dtype)
    inv = invalid.view(torch.uint8)
    chunk_forward_rows_kernel[(triton.cdiv(rows, block_m), BH)](
        s, scale, inv, _fill(fill, s), fixed, e, m, total, rows, nk,
        *s.stride(), *e.stride(), inv.stride(0), inv.stride(2), scale.stride(0), fixed.stride(0),
        HAS_FIXED=m_fixed is not None, ALIGN=alignment(nk, *s.stride()[:2], *e.stride()[:2], inv.stride(0)),
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps)
    return e, m, total


def backward_rows(s, dp, scale, invalid, fill: float, m, base2: bool, op_dtype, blocks=None):
    """The backward row step (``gemm._backward_rows_eager``'s twin) -> (w, g [BH, c, Nk] in op_dtype,
    sum_ij g_ij s_ij [BH] in s's dtype); consumes s and dp. m [BH, c, 1] the saved row maxima (base 2 with
    ``base2``, scale and fill then pre-multiplied by log2(e)). blocks as in :func:`forward_rows`."""
    _check(s, invalid, scale, dp, m)
    _check_rounding(s, op_dtype)
    BH, rows, nk = s.shape
    if dp.shape != s.shape or dp.dtype != s.dtype or m.shape != (BH, rows, 1):
        raise ValueError(f"chunk row step: dp must match s {tuple(s.shape)} {s.dtype} and m be [{BH}, {rows}, 1], "
                         f"got {tuple(dp.shape)} {dp.dtype}, {tuple(m.shape)}")
    if op_dtype == s.dtype and s.stride() == dp.stride():
        w, g = s, dp  # in place: every element is read (both passes) before its program writes it
    else:
        w, g = (torch.empty(s.shape, dtype=op_dtype, device=s.device) for _ in range(2))
    block_m, block_n, warps = row_blocks(BH, rows, nk, blocks)
    parts = torch.zeros(BH, max(triton.cdiv(rows, block_m), 1), dtype=s.dtype, device=s.device)
    if BH * rows == 0:
        return w, g, parts.sum(dim=1)
    inv, m = invalid.view(torch.uint8), m.to(s.dtype)
    chunk_backward_rows_kernel[(triton.cdiv(rows, block_m), BH)](
        s, dp, scale, inv, _fill(fill, s), m, w, g, parts, rows, nk,
        *s.stride(), *dp.stride(), *w.stride(), inv.stride(0), inv.stride(2), scale.stride(0),
        m.stride(0), m.stride(1), parts.stride(0), BASE2=bool(base2),
        ALIGN=alignment(nk, *s.stride()[:2], *dp.stride()[:2], *w.stride()[:2], inv.stride(0)),
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps)
    return w, g, parts.sum(dim=1)
