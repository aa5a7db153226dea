"""The math of the Triton kernels (forward and backward) and the tile helpers they share.

All kernels work on ALREADY L2-normalised q, k (the public function does that O(N*D) prepass) and on
contiguous tensors whose last axis has stride 1, flattened over batch*heads ("bh"):

    q [BH, Nq, D], k [BH, Nk, D], v [BH, Nk, Dv], key_valid [B, Nk] (uint8), temperature [BH] (fp32)

Scores are kept in base 2 so that one multiplier turns a dot product into an exponent:

    z2_ij = <q_i, k_j> * (log2(e) / t)   if key j is valid
          = -lambda_m * log2(e)           if key j is invalid
          = -inf                          if j >= Nk (padding of a partial tile: never counts)
    p_ij  = exp2((z2_ij - m2_i) - l2_i),   m2_i = max_j z2_ij,   l2_i = log2 sum_j exp2(z2_ij - m2_i)
    out_i = sum_j p_ij v_j

The row statistics are kept as two fp32 numbers, not one log-sum-exp row_max2 + row_log2sum: in a row whose keys
are all invalid row_max2 = -lambda_m*log2(e) ~ -1.4e4, where one fp32 step is ~1e-3, so a summed lse would
bias every recomputed weight of that row by ~1e-3 relative; z2 - row_max2 is exact (0) there instead.
A row whose keys are all invalid has every z2 equal to the same constant, hence uniform weights,
without any special case. Backward (delta_i = <dout_i, out_i>, its own small kernel):

    dv_j = sum_i p_ij dout_i
    dz_ij = p_ij (<dout_i, v_j> - delta_i), set to 0 on invalid keys (their logit is a constant)
    dq_i = sum_j dz_ij k_j / t,      dk_j = sum_i dz_ij q_i / t
    dL/dt = -(1/t) sum_i (<dq_i, q_i> - (sum_j dz_ij) (sum_j p_ij s_ij) / t)   (partial sums by the dq kernel)

The second term is 0 in exact arithmetic (a softmax's dz rows sum to 0). In floating point the weights
recomputed here differ from the forward's by ~ulp(s)/t elementwise while delta_i comes from the forward's
output, so sum_j dz_ij is not 0, and its share sum_j dz_ij s_ij ~ (sum_j dz_ij) * s_bar_i grows as 1/t next
to a true term that does not: at t = 0.01 up to 5.6x a plain fp32 implementation's error in dL/dt. The
centring term cancels it to first order (0.1-0.9x that error after it).

Tiling. The head dims D and Dv are arbitrary (45, 288, 576, 864): nothing is padded in memory.
Products that contract over D (q k^T) or over Dv (dout v^T) walk that axis in chunks of BLOCK_D /
BLOCK_E with masked loads (`_dot_abt`). Output columns (out over Dv; dq, dk over D; dv over Dv) are
held as NUM_CB column blocks of BLOCK_C columns in ONE program: a Triton tuple of NUM_CB fp32
tiles built in `tl.static_range` (`_zero_blocks`), in the forward and in the backward kernels (see the
backward section below). The scores of a tile are computed once and feed every column block
of that program. Only when NUM_CB * BLOCK_C < Dv is the column range split over a grid axis (and
the scores recomputed per split); the launcher's autotuner chooses between register pressure
(wide programs) and recomputation (narrow programs) per shape.

bf16 under TRITON_INTERPRET=1: `tl.dot` on bf16 tiles is wrong in Triton 3.8's interpreter, so the
launcher sets UPCAST=True there and every loaded tile is converted to fp32 before it reaches tl.dot.
On a GPU UPCAST is False and the tensor cores see the input dtype (fp32 accumulation throughout);
fp32 inputs use DOT_PRECISION "tf32" or "ieee" as torch.matmul would (see launcher).
"""
import triton
import triton.language as tl

from ..rules import LOG2E as _LOG2E

LOG2E = tl.constexpr(_LOG2E)  # jit functions read module globals only as constexpr


@triton.jit
def _log2e_over(t):
    """log2(e) / t in fp32: the base-2 score scale of temperature t."""
    return tl.full([], LOG2E, tl.float32) / t


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
def _dot_block(acc, p, b_base, offs_r, r_mask, col0, stride_r, NCOLS,
               BLOCK_C: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """acc + p @ b[offs_r, col0 : col0 + BLOCK_C]: p [A, R] (already in b's dtype) -> [A, BLOCK_C] fp32."""
    offs_c = col0 + tl.arange(0, BLOCK_C)  # [BLOCK_C]
    b = _load_rows(b_base, offs_r, offs_c, r_mask, offs_c < NCOLS, stride_r, UPCAST)  # [R, BLOCK_C]
    return tl.dot(p, b, acc, input_precision=DOT_PRECISION)  # [A, BLOCK_C]


@triton.jit
def _store_block(base, tile, offs_r, r_mask, col0, stride_r, NCOLS, BLOCK_C: tl.constexpr):
    """base[offs_r, col0 : col0 + BLOCK_C] = tile [R, BLOCK_C] (cast to base's dtype), masked to NCOLS."""
    offs_c = col0 + tl.arange(0, BLOCK_C)  # [BLOCK_C]
    tl.store(base + offs_r[:, None] * stride_r + offs_c[None, :], tile.to(base.dtype.element_ty),
             mask=r_mask[:, None] & (offs_c < NCOLS)[None, :])


@triton.jit
def _logits2(s, valid, n_mask, scale2, neg_lambda2):
    """Base-2 logits from similarities s [M, N]: s*scale2 (valid), neg_lambda2 (invalid), -inf (j >= Nk)."""
    z2 = tl.where(valid[None, :], s * scale2, neg_lambda2)  # [M, N]
    return tl.where(n_mask[None, :], z2, float("-inf"))  # [M, N]


@triton.jit
def _zero_blocks(ROWS: tl.constexpr, BLOCK_C: tl.constexpr, NUM_CB: tl.constexpr):
    """NUM_CB fp32 accumulators -> tuple of NUM_CB [ROWS, BLOCK_C] zeros."""
    blocks = ()
    for j in tl.static_range(NUM_CB):
        blocks = blocks + (tl.zeros([ROWS, BLOCK_C], dtype=tl.float32),)
    return blocks
