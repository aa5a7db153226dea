"""Candidate tile rows of the fused kernels per GPU family (the launcher turns them into tiles for the head dims
at hand and keeps those that fit the device, see launcher.candidates).

Families, by compute capability (`family`):

    sm80    A100 (sm_80, sm_87): 163 KB shared memory per block, mma.sync, cp.async
    sm86    RTX 3090 / 4090 / 5090 (sm_86, sm_89, sm_120): 99 KB, mma.sync, cp.async
    sm90    H100 / H200: 227 KB, wgmma, TMA
    sm100   B200 (sm_100): 227 KB, tcgen05, TMA

Row formats (each family has all five keys; the first row that fits a kernel is its fixed choice):

    "fwd_v3"           forward version 3 (ForwardTile), in order of preference:
                       (block_m, block_n, num_warps, num_stages, tma, c_cap)
    "fwd_v3_fallback"  one such row, used only where no "fwd_v3" row fits
    "fwd", "dkdv", "dq"  version 2 forward and the backward kernels (TileConfig):
                       (block_m, block_n, block_d, block_e, block_c, num_warps, num_stages, max_cb[, resident])
                       num_cb is fitted to the columns up to max_cb (0: num_cb = 1 fixed); a 9th field 1 marks a
                       resident backward row (its own rows of k, v or q, dout loaded once per program)

The sm90 rows are the ones measured and compiled on sm_90 (docs/kernel-notes.md). The other families' rows are
PLACEHOLDERS sized by shared-memory count only (smaller q blocks and more column splits where 99 KB or 163 KB
must hold the resident q rows and two stages of k and v); the rows chosen by compiling them for each
architecture (spill-free, on its tensor-core instruction) replace them here.
"""

_V2_AND_BACKWARD = {
    "fwd": [(64, 32, 64, 0, 64, 8, 2, 7), (64, 64, 64, 0, 64, 8, 2, 5), (64, 64, 64, 0, 32, 8, 2, 8),
            (128, 64, 64, 0, 128, 8, 3, 0)],
    # Backward rows (docs/kernel-notes.md, "Backward"): every dot has the program's own rows (keys in dkdv,
    # queries in dq) as its M, 64 per warpgroup, so sm_90 runs them all on wgmma.
    "dkdv": [(32, 64, 32, 32, 64, 8, 2, 3), (64, 64, 32, 32, 32, 8, 2, 4), (64, 64, 32, 32, 64, 16, 2, 2),
             (16, 128, 64, 64, 64, 8, 2, 2, 1)],
    "dq": [(64, 32, 32, 32, 64, 8, 2, 7), (64, 64, 32, 32, 64, 8, 2, 5), (128, 16, 64, 64, 64, 8, 2, 3, 1)],
}

TILE_ROWS = {
    # 128-row tiles need accumulators of at most 128 columns to compile without spills (ptxas, D = 288);
    # 16-key tiles spill where 32-key tiles fit (D = 576), so they are the fallback only.
    "sm90": dict(fwd_v3=[(128, 32, 8, 2, False, 128), (64, 32, 8, 2, False, 256), (64, 32, 8, 2, True, 256)],
                 fwd_v3_fallback=(64, 16, 8, 2, False, 128), **_V2_AND_BACKWARD),
    # placeholders: the sm_90 rows (same shared memory; tcgen05 is the compiler's choice)
    "sm100": dict(fwd_v3=[(128, 32, 8, 2, False, 128), (64, 32, 8, 2, False, 256), (64, 32, 8, 2, True, 256)],
                  fwd_v3_fallback=(64, 16, 8, 2, False, 128), **_V2_AND_BACKWARD),
    # placeholders: no TMA; 163 KB holds a 64-row q block of D = 576 with four column splits
    "sm80": dict(fwd_v3=[(128, 32, 8, 2, False, 128), (64, 32, 8, 2, False, 256)],
                 fwd_v3_fallback=(64, 16, 8, 2, False, 128), **_V2_AND_BACKWARD),
    # placeholders: 99 KB holds a 64-row q block up to D = 288, a 32-row one with 16-key tiles at D = 576
    "sm86": dict(fwd_v3=[(64, 32, 4, 2, False, 128), (32, 16, 4, 2, False, 128)],
                 fwd_v3_fallback=(16, 16, 4, 2, False, 64), **_V2_AND_BACKWARD),
}


def family(arch: int) -> str:
    """The tile family of compute capability `arch` (major * 10 + minor)."""
    if arch in (86, 89) or arch >= 120:
        return "sm86"
    if arch >= 100:
        return "sm100"
    if arch >= 90:
        return "sm90"
    return "sm80"


def rows(arch: int) -> dict:
    """The tile rows (see the module docstring) for a GPU of compute capability `arch`."""
    return TILE_ROWS[family(arch)]
