"""Tile rows of the fused kernels per GPU family (the launcher turns them into tiles for the head dims and dtype
at hand and keeps those that fit the device, see launcher.candidates).

Families, by compute capability (`family`):

    sm80    A100 (sm_80, sm_87): 163 KB shared memory per block, mma.sync, cp.async
    sm86    RTX 3090 / 4090 (sm_86, sm_89): 99 KB, mma.sync, cp.async
    sm120   RTX 5090 (sm_120, sm_121): 99 KB, mma.sync; its ptxas needs more registers than sm_86's for the
            same row, so it has rows of its own and falls back to sm86's where it has none
    sm90    H100 / H200: 227 KB, wgmma, TMA
    sm100   B200 (sm_100, sm_103): 227 KB, tcgen05 (accumulators in 512 columns of tensor memory), TMA

Two kinds of rows:

COMPILED, for the paper's head dims (PAPER_DS, D = Dv) and a dtype group ("16": bf16/fp16, "32": fp32), with
explicit column splits; where a family has them they are the whole candidate list, first row = fixed choice:

    forward   ("v3", block_m, block_n, splits, num_warps, num_stages, c_cap, tma)   version 3 (ForwardTile)
              ("v2", block_m, block_n, block_d, block_e, block_c, num_cb, num_warps, num_stages)   version 2
    backward  (block_m, block_n, block_d, block_e, block_c, num_warps, num_stages, max_cb)
              (num_cb fitted to the columns up to max_cb; the same rows at every D of a dtype group unless
              a per-D row replaces them)

Each was compiled for its family's architecture as the launcher launches it (benchmark shape B = 16, H = 2,
Nq 4096, Nk 3844, the fixed choice and each candidate) and kept only with 0 bytes of stack, the shared memory
within the family's limit, every dot on the family's tensor-core instruction and no synchronous tile load in
the forward's key loop (`python -m benchmarks.compile_report --arch N --d D --dtype T [--candidates]`,
docs/kernel-notes.md, "Per architecture"). On mma.sync, block_m = 16 x num_warps
(a taller tile on fewer warps computes every product twice) and at most 288 output columns per program keep
ptxas at 0 stack; the rest goes to column splits, whose counts the compiler, not the count rule, decided
(sm_80 D = 432 spills with the 2 splits that fit by count).

GENERIC (TILE_ROWS), for every other D and dtype: the launcher picks the fewest column splits that fit by
count (launcher._fitted), a guess the compiler has not checked:

    "fwd_v3"           (block_m, block_n, num_warps, num_stages, tma, c_cap), in order of preference
    "fwd_v3_fallback"  one such row, used only where no "fwd_v3" row fits
    "fwd", "dkdv", "dq"  version 2 forward and the backward kernels (TileConfig):
                       (block_m, block_n, block_d, block_e, block_c, num_warps, num_stages, max_cb[, resident])
                       num_cb fitted to the columns up to max_cb (0: num_cb = 1); a 9th field 1 marks a
                       resident backward row (its own rows of k, v or q, dout loaded once per program)

The sm90 rows are the ones measured and compiled on sm_90 (docs/kernel-notes.md); sm100 uses its forward rows
(on tcgen05 where their accumulators fit tensor memory, see launcher._fits) and its streamed backward rows.
"""

PAPER_DS = (288, 432, 576, 864)

_SM90_FORWARD = dict(
    # 128-row tiles need accumulators of at most 128 columns to compile without spills (ptxas, D = 288);
    # 16-key tiles spill where 32-key tiles fit (D = 576), so they are the fallback only.
    fwd_v3=[(128, 32, 8, 2, False, 128), (64, 32, 8, 2, False, 256), (64, 32, 8, 2, True, 256)],
    fwd_v3_fallback=(64, 16, 8, 2, False, 128),
    fwd=[(64, 32, 64, 0, 64, 8, 2, 7), (64, 64, 64, 0, 64, 8, 2, 5), (64, 64, 64, 0, 32, 8, 2, 8),
         (128, 64, 64, 0, 128, 8, 3, 0)],
)
_SM90_BACKWARD = dict(
    # Backward rows (docs/kernel-notes.md, "Backward"): every dot has the program's own rows (keys in dkdv,
    # queries in dq) as its M, 64 per warpgroup, so sm_90 runs them all on wgmma.
    dkdv=[(32, 64, 32, 32, 64, 8, 2, 3), (64, 64, 32, 32, 32, 8, 2, 4), (64, 64, 32, 32, 64, 16, 2, 2),
          (16, 128, 64, 64, 64, 8, 2, 2, 1)],
    dq=[(64, 32, 32, 32, 64, 8, 2, 7), (64, 64, 32, 32, 64, 8, 2, 5), (128, 16, 64, 64, 64, 8, 2, 3, 1)],
)
# sm_100: sm_90's streamed rows; its 16-warp dk/dv row falls back to mma.sync with 1.3-1.6 KB of stack, the
# resident rows overflow shared memory (dk/dv) or spill (dq 40 B), the 64x64 dq row spills 24 B (D = 288)
_SM100_BACKWARD = dict(dkdv=_SM90_BACKWARD["dkdv"][:2], dq=_SM90_BACKWARD["dq"][:1])
# mma.sync backward rows (compiled on sm_80/86/89 for bf16/fp16 at every paper D): 128 own rows on 8 warps.
_MMA_SYNC_BACKWARD = dict(dkdv=[(16, 128, 32, 32, 64, 8, 2, 2), (32, 128, 32, 32, 64, 8, 2, 1)],
                          dq=[(128, 16, 32, 32, 64, 8, 2, 3), (64, 16, 32, 32, 64, 8, 2, 4)])
# sm_120: the 32 x 128 dk/dv row has 24 B of stack there, 32-wide D chunks in dq 8 B
_SM120_BACKWARD = dict(dkdv=_MMA_SYNC_BACKWARD["dkdv"][:1], dq=[(128, 16, 16, 16, 64, 8, 2, 3)])
# the same contractions in 16-wide D chunks, where the 99 KB family's ptxas spills with 32
_NARROW_BACKWARD = dict(dkdv=[(16, 128, 16, 16, 64, 8, 2, 2)], dq=_SM120_BACKWARD["dq"])
# version 2 forward on mma.sync: 64 rows on 4 warps, 32-wide D chunks (where no v3 row holds q; 4 column
# blocks spill 48 B on sm_120 at D = 1024)
_MMA_SYNC_V2 = [(64, 32, 32, 0, 64, 4, 2, 3)]

TILE_ROWS = {
    "sm90": dict(**_SM90_FORWARD, **_SM90_BACKWARD),
    "sm100": dict(**_SM90_FORWARD, **_SM100_BACKWARD),
    "sm80": dict(fwd_v3=[(128, 32, 8, 2, False, 128), (64, 32, 4, 2, False, 128)],
                 fwd_v3_fallback=(64, 16, 4, 2, False, 128), fwd=_MMA_SYNC_V2, **_MMA_SYNC_BACKWARD),
    "sm86": dict(fwd_v3=[(64, 32, 4, 2, False, 128), (64, 16, 4, 2, False, 128)],
                 fwd_v3_fallback=(32, 16, 2, 2, False, 128), fwd=_MMA_SYNC_V2, **_MMA_SYNC_BACKWARD),
    "sm120": dict(fwd_v3=[(64, 16, 4, 2, False, 128)], fwd_v3_fallback=(32, 16, 2, 2, False, 128),
                  fwd=_MMA_SYNC_V2, dkdv=_NARROW_BACKWARD["dkdv"], dq=_SM120_BACKWARD["dq"]),
}

_V2_FP32 = ("v2", 64, 32, 32, 0, 64, 3, 4, 2)
# family -> (dtype group, D) -> compiled forward rows
_FORWARD = {
    "sm80": {
        ("16", 288): [("v3", 128, 32, 1, 8, 2, 128, False), ("v3", 128, 32, 2, 8, 2, 128, False)],
        ("16", 432): [("v3", 64, 32, 2, 4, 2, 128, False), ("v3", 128, 32, 3, 8, 2, 128, False)],
        ("16", 576): [("v3", 64, 32, 2, 4, 2, 128, False), ("v3", 64, 32, 3, 4, 2, 128, False)],
        ("16", 864): [("v3", 64, 16, 3, 4, 2, 128, False), ("v3", 64, 16, 4, 4, 2, 128, False)],
        ("32", 288): [("v3", 64, 32, 2, 4, 2, 128, False)],
        ("32", 432): [("v3", 64, 16, 2, 4, 2, 128, False)],
        ("32", 576): [("v3", 32, 16, 3, 2, 2, 128, False), _V2_FP32],
        ("32", 864): [_V2_FP32],
    },
    "sm86": {
        ("16", 288): [("v3", 64, 32, 2, 4, 3, 256, False), ("v3", 128, 32, 2, 8, 2, 128, False)],
        ("16", 432): [("v3", 64, 32, 3, 4, 2, 128, False)],
        ("16", 576): [("v3", 64, 16, 2, 4, 2, 128, False), ("v3", 64, 16, 3, 4, 2, 128, False)],
        ("16", 864): [("v3", 32, 16, 3, 2, 2, 128, False), ("v3", 32, 16, 4, 2, 2, 128, False)],
        ("32", 288): [("v3", 32, 32, 2, 2, 2, 128, False)],
        ("32", 432): [("v3", 32, 16, 2, 2, 2, 128, False)],
        ("32", 576): [_V2_FP32],
        ("32", 864): [_V2_FP32],
    },
    "sm120": {  # fp16 spilled 24 B at D = 432 with 128-column output pieces
        ("16", 432): [("v3", 64, 16, 3, 4, 2, 64, False), ("v3", 64, 16, 4, 4, 2, 128, False)],
        ("16", 576): [("v3", 64, 16, 3, 4, 2, 128, False), ("v3", 64, 16, 4, 4, 2, 128, False)],
        ("16", 864): [("v3", 32, 16, 4, 2, 2, 128, False)],
        ("32", 432): [_V2_FP32],
    },
    "sm100": {  # 1 split needs 592 tensor-memory columns at D = 576
        ("16", 576): [("v3", 64, 32, 2, 8, 2, 256, False), ("v3", 64, 32, 2, 8, 2, 256, True)],
    },
}
# family -> dtype group -> compiled backward rows at every paper D
_BACKWARD = {
    "sm80": {"16": _MMA_SYNC_BACKWARD, "32": _MMA_SYNC_BACKWARD},  # 32-wide D chunks compile for TF32 too
    "sm86": {"16": _MMA_SYNC_BACKWARD, "32": _NARROW_BACKWARD},  # sm_89 fp32 dk/dv spilled 16 B with 32
    "sm120": {"16": _SM120_BACKWARD,
              "32": dict(dkdv=[(16, 64, 16, 16, 32, 4, 2, 2)], dq=[(128, 16, 16, 16, 32, 8, 2, 3)])},
}
# family -> (dtype group, D) -> per-D backward rows where the group's row spilled 8 B
_BACKWARD_AT = {
    "sm86": {("32", 576): dict(dkdv=[(16, 64, 16, 16, 32, 4, 2, 2)])},
    "sm120": {("16", 864): dict(dkdv=_NARROW_BACKWARD["dkdv"]), ("32", 432): dict(dq=[(64, 16, 16, 16, 32, 4, 2, 3)])},
}
# where sm120 has no row of its own, sm86's compiled the same on sm_120
_FALLBACK = {"sm120": "sm86"}


def family(arch: int) -> str:
    """The tile family of compute capability `arch` (major * 10 + minor)."""
    if arch >= 120:
        return "sm120"
    if arch >= 100:
        return "sm100"
    if arch >= 90:
        return "sm90"
    if arch in (86, 89):
        return "sm86"
    return "sm80"


def rows(arch: int) -> dict:
    """The generic tile rows (see the module docstring) for a GPU of compute capability `arch`."""
    return TILE_ROWS[family(arch)]


def compiled_rows(arch: int, kernel: str, d: int, dv: int, itemsize: int) -> list:
    """The compiled rows of `kernel` for head dims d = dv in the paper's set and inputs of `itemsize` bytes
    (dtype group "16" or "32") on compute capability `arch` (the family's own, else its fallback family's),
    [] where there are none."""
    if d != dv or d not in PAPER_DS:
        return []
    group = str(8 * itemsize)
    name = family(arch)
    while name is not None:
        if kernel == "fwd":
            found = _FORWARD.get(name, {}).get((group, d))
        else:
            found = (_BACKWARD_AT.get(name, {}).get((group, d), {}).get(kernel)
                     or _BACKWARD.get(name, {}).get(group, {}).get(kernel))
        if found:
            return list(found)
        name = _FALLBACK.get(name)
    return []
