"""The `triton` backend: launcher and block-size choice of the fused kernels (the op and its autograd
formula are registered with torch.library in `op`). Public: launch_forward, launch_backward, candidates,
choose_config, KernelConfig, TileConfig, ForwardTile, KERNELS.

Inputs are ALREADY L2-normalised (the public function normalises in a PyTorch prepass, so that
autograd differentiates the norm exactly and the kernels are identical for normalize=True/False):

    q [B, H, Nq, D], k [B, H, Nk, D], v [B, H, Nk, Dv], key_valid [B, Nk] bool, temperature [B, H] > 0
    -> out [B, H, Nq, Dv] in v's dtype

Forward: one entry kernel (forward.masked_attention_forward_kernel) running version 3 (q resident,
the key loop innermost and pipelined; ForwardTile) or version 2 (forward; TileConfig), whichever
tile the autotuner or the fixed choice gives; a bounded forward is two launches (fixed-max pass, then the
heads whose bound is too large). It returns the output in v's dtype and saves it, plus for fp16/bf16
the rounding residual out_lo = out_fp32 - out (same dtype), so that delta_i = <dout_i, out_i> in the
backward keeps fp32 accuracy (an fp16/bf16-rounded delta visibly biases the temperature gradient)
without an fp32 copy of the output; and per-row base-2 statistics row_max2 (max logit) and row_log2sum (log2 of the
sum), [B, H, Nq] fp32 each (kept apart, see tiles).
Backward: delta (small kernel), one kernel for dk and dv (program per key block), one for dq (program
per query block) that also writes per-program partial sums for the temperature gradient; nothing of
size Nq x Nk is ever stored. With g_ij = dL/dz_ij (zero on invalid keys) and z_ij = s_ij / t,

    dL/dt = -sum_ij g_ij s_ij / t^2 = -(1/t) * sum_i <dq_i, q_i>,   as dq_i = sum_j g_ij k_j / t.

Dtypes: fp16, bf16 and fp32 inputs, fp32 accumulation. fp32 inputs follow PyTorch's float32 matmul
precision as torch.matmul does: TF32 tensor-core dots when `torch.backends.cuda.matmul.allow_tf32`
is set (`torch.set_float32_matmul_precision("high")` or "medium"), IEEE fp32 otherwise ("highest",
PyTorch's default). float64 is refused with a TypeError (use backend="torch").

Block sizes: `config=None` lets `triton.autotune` pick per (Nq, Nk, D, Dv, dtype, precision) among a
small candidate list (`candidates`) on a GPU; set MHTMA_AUTOTUNE=0 to use the fixed heuristic
`choose_config` instead (no tuning runs on the first call). Under TRITON_INTERPRET=1 the fixed
interpreter choice is always used. The candidates are the rows of the GPU's family (`tile_table`) that fit
its shared memory by count (`shared_memory_needed`), as the device model (`device`) reports it; where a
kernel has none, the launch is refused with one RuntimeError (`refusal`).
"""
import dataclasses
import os
from dataclasses import dataclass

import torch

from ..rules import FIXED_MAX_LIMIT, LOG2E, on_device, triton_import_error
from ..rules import triton_interprets as interpreting
from . import device as devices
from . import tile_table
from .device import Device

if triton_import_error() is None:
    import triton

    from . import backward as backward_kernels
    from . import forward as forward_kernels
else:  # pragma: no cover - exercised only where triton is missing
    triton = backward_kernels = forward_kernels = None

_SUPPORTED = (torch.float16, torch.bfloat16, torch.float32)
# exp2(-lambda_m * log2(e) - m) is exactly 0 in fp32 next to any valid logit (|z| <= 1/t) once
# lambda_m exceeds ~150 + 1/t; capping the constant keeps it finite in fp32 without changing results.
LAMBDA_CAP = 1e30
KERNELS = ("fwd", "dkdv", "dq")
# Column blocks (accumulators) one program of each kernel can hold, as written out in the kernels.
MAX_COL_BLOCKS = {"fwd": 8, "dkdv": 4, "dq": 8}


@dataclass(frozen=True)
class TileConfig:
    """Launch parameters of one kernel (block sizes powers of two >= 16).

    block_m x block_n   score tile: query rows x key rows
    block_d, block_e    chunk of D (q k^T) and of Dv (dout v^T, backward only) in the contractions
    block_c, num_cb     output columns of one program: num_cb accumulators of block_c columns each
                        (out over Dv; dq over D; dk over D and dv over Dv); the rest of the columns
                        go to further programs along grid axis 2, each recomputing the scores
    num_warps, num_stages
    resident            backward only: the program's own rows of the non-streamed operands (k and v in
                        dkdv, q and dout in dq) are loaded once, before the loop (shared memory permitting)
    """

    block_m: int
    block_n: int
    block_d: int
    block_e: int
    block_c: int
    num_cb: int = 1
    num_warps: int = 4
    num_stages: int = 2
    resident: bool = False

    def column_splits(self, ncols: int) -> int:
        """Programs along grid axis 2 needed to cover ncols output columns."""
        return triton.cdiv(max(ncols, 1), self.block_c * self.num_cb)

    def constexprs(self) -> dict:
        return dict(BLOCK_M=self.block_m, BLOCK_N=self.block_n, BLOCK_D=self.block_d, BLOCK_C=self.block_c,
                    NUM_CB=self.num_cb, **({"BLOCK_E": self.block_e} if self.block_e else {}),
                    **({"RESIDENT": True} if self.resident else {}))

    def launch_options(self) -> dict:
        return dict(num_warps=self.num_warps, num_stages=self.num_stages)

    def shared_bytes(self, kernel: str, d: int, dv: int, itemsize: int) -> int:
        """Shared memory by count (see `shared_memory_needed`)."""
        if self.resident:  # held rows (keys of k and v in dkdv, queries of q and dout in dq) + streamed buffers
            cols = (triton.cdiv(d, self.block_c) + triton.cdiv(dv, self.block_c)) * self.block_c
            held, streamed = (self.block_n, self.block_m) if kernel == "dkdv" else (self.block_m, self.block_n)
            return (held + self.num_stages * streamed) * cols * itemsize
        staged = self.num_stages * (self.block_m + self.block_n) * (self.block_d + self.block_e)
        weights = self.block_m * self.block_n  # p or dz on their way to the next dot
        values = self.block_n * self.block_c if kernel == "fwd" else 0
        return (staged + weights + values) * itemsize


@dataclass(frozen=True)
class KernelConfig:
    """The tile configuration of each of the three kernels."""

    fwd: TileConfig
    dkdv: TileConfig
    dq: TileConfig

    def __getitem__(self, kernel: str) -> TileConfig:
        return getattr(self, kernel)


# The fp32 accumulator registers per thread that leave room for the scores, the weights and addressing in 255
# registers (forward v3; ptxas, docs/kernel-notes.md). Every architecture has 255 registers per thread.
_V3_ACC_REGS = 144
# Shared memory a resident backward program leaves for the compiler's scratch (its count is the least exact).
_RESIDENT_MARGIN = 11 * 1024
# Shared memory a forward v3 row not compiled for the device's family leaves for the compiler's scratch (the
# count was up to 2.3 KB short on small-key fp32 tiles for mma.sync).
_UNCOMPILED_MARGIN = 2560


def pieces(width: int, cap: int, grain: int = 16) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(starts, widths): `width` rounded up to a multiple of `grain` (a power of two >= 16) cut greedily into
    power-of-two pieces of at most `cap` (576 -> 512 + 64 at cap 512, 256 + 256 + 64 at cap 256; 45 -> 32 + 16,
    the last one masked)."""
    starts, widths, start = [], [], 0
    total = max(grain, -(-width // grain) * grain)
    while start < total:
        piece = min(cap, 1 << ((total - start).bit_length() - 1))
        starts.append(start)
        widths.append(piece)
        start += piece
    return tuple(starts), tuple(widths)


@dataclass(frozen=True)
class ForwardTile:
    """Launch parameters of forward version 3 (forward) for head dims d, dv.

    block_m x block_n   score tile: query rows x key rows (the q rows stay resident over the key loop)
    splits              programs along the output columns, each with cols = round16(cdiv(dv, splits)) of them
    tma                 k, v tiles through TMA tensor descriptors instead of cp.async of pointer tiles
    d_cap               largest piece of D in q k^T (TMA boxes hold at most 256 columns)
    c_cap               largest piece of the output columns (one accumulator each; wgmma's N is at most 256)
    """

    d: int
    dv: int
    block_m: int
    block_n: int
    splits: int = 1
    tma: bool = False
    num_warps: int = 8
    num_stages: int = 2
    d_cap: int = 512
    c_cap: int = 256

    num_cb = 1  # one column range per program (the launcher's grid and checks read these as for TileConfig)

    @property
    def grain(self) -> int:
        """Narrowest piece: a [block_n, piece] tile of at least 512 elements, which cp.async can copy (4 bytes
        or more per thread of 8 warps; a 16 x 16 bf16 tile stays a synchronous load, ptxas at D = 432, 864)."""
        return max(16, 512 // self.block_n)

    @property
    def block_c(self) -> int:
        return max(self.grain, -(-triton.cdiv(max(self.dv, 1), self.splits) // self.grain) * self.grain)

    def column_splits(self, ncols: int) -> int:
        return triton.cdiv(max(ncols, 1), self.block_c)

    def constexprs(self) -> dict:
        d_starts, d_widths = pieces(self.d, min(self.d_cap, 256) if self.tma else self.d_cap, self.grain)
        c_starts, c_widths = pieces(self.block_c, self.c_cap, self.grain)
        return dict(BLOCK_M=self.block_m, BLOCK_N=self.block_n, BLOCK_D=16, BLOCK_C=self.block_c, NUM_CB=1,
                    VERSION=3, HEAD_D=self.d, HEAD_DV=self.dv, D_STARTS=d_starts, D_WIDTHS=d_widths,
                    C_STARTS=c_starts, C_WIDTHS=c_widths, TMA=self.tma)

    def launch_options(self) -> dict:
        return dict(num_warps=self.num_warps, num_stages=self.num_stages)

    def shared_bytes(self, itemsize: int, kv_buffers: int | None = None) -> int:
        """Shared memory by count: the resident q pieces and kv_buffers (default num_stages) buffers of k and
        v tiles (see Device.kv_buffers)."""
        d_cols = sum(self.constexprs()["D_WIDTHS"])
        c_cols = sum(self.constexprs()["C_WIDTHS"])
        buffers = self.num_stages if kv_buffers is None else kv_buffers
        return itemsize * (self.block_m * d_cols + buffers * self.block_n * (d_cols + c_cols))

    def tensor_memory_columns(self) -> int:
        """Tensor-memory columns of one program on tcgen05: the fp32 output accumulators, the fp32 scores
        (block_n) and the 16-bit weights p (block_n / 2); the compiler's figures on sm_100."""
        return sum(self.constexprs()["C_WIDTHS"]) + self.block_n + self.block_n // 2

    def accumulator_registers(self) -> int:
        """fp32 registers per thread that the output accumulators take."""
        return self.block_m * sum(self.constexprs()["C_WIDTHS"]) // (32 * self.num_warps)


def _pow2(n: int, low: int, high: int) -> int:
    """Smallest power of two >= n, clamped to [low, high]."""
    return max(low, min(high, triton.next_power_of_2(max(1, n))))


def _output_columns(kernel: str, d: int, dv: int) -> int:
    return {"fwd": dv, "dkdv": max(d, dv), "dq": d}[kernel]


def _fit_columns(ncols: int, block_c: int, max_cb: int) -> int:
    """num_cb that covers ncols in the fewest programs, balanced so the last one is not mostly empty."""
    blocks = triton.cdiv(max(ncols, 1), block_c)
    splits = triton.cdiv(blocks, max_cb)
    return triton.cdiv(blocks, splits)


def shared_memory_needed(kernel: str, tile, d: int, dv: int, dtype: torch.dtype, device: Device | None = None) -> int:
    """Shared memory of one program of `tile` on `device` (default: the current one) by count, in bytes
    (itemsize = the input dtype's):

        forward v3         itemsize * (block_m * D' + buffers * block_n * (D' + C'))
                           (the resident q pieces, buffers of k and v tiles: num_stages on wgmma/tcgen05,
                           num_stages - 1 on mma.sync, Device.kv_buffers; D', C' = the pieces of D and of the
                           program's output columns rounded up to the grain)
        version 2 and the streaming backward
                           itemsize * (num_stages * (block_m + block_n) * (block_d + block_e)
                                       + block_m * block_n  [+ block_n * block_c in the forward])
                           (num_stages buffers of both operands of the D and Dv contractions, the weights
                           on their way to the next dot, and one value tile)
        resident backward  itemsize * (held + num_stages * streamed) * (cdiv(D, block_c) + cdiv(Dv, block_c)) * block_c

    The forward v3 count matches what Triton allocates for the sm_90 fixed choices at D = 576 (216 KB) and on
    all but 7 of 131 kernels compiled for mma.sync (the rest: up to 2.3 KB more, scratch of a layout conversion; wgmma
    and tcgen05 add 64 to 672 B of barriers); the others' count is an upper bound (dk/dv 28 KB on sm_90 at
    D = 576 exactly; the compiler may keep an operand in registers)."""
    if isinstance(tile, ForwardTile):
        device = device or devices.current()
        return tile.shared_bytes(dtype.itemsize, device.kv_buffers(tile.num_stages))
    return tile.shared_bytes(kernel, d, dv, dtype.itemsize)


def _margin(tile, compiled: bool = False) -> int:
    """Shared memory a tile leaves for the compiler's scratch beyond its count: resident backward tiles the
    most, forward v3 rows not compiled for the device's family a little, the rest none."""
    if getattr(tile, "resident", False):
        return _RESIDENT_MARGIN
    return _UNCOMPILED_MARGIN if isinstance(tile, ForwardTile) and not compiled else 0


def _fits(kernel: str, tile, d: int, dv: int, dtype: torch.dtype, device: Device, compiled: bool = False) -> bool:
    """Whether `tile` fits the device by count: shared memory (with a margin for the compiler's scratch unless
    the row was compiled for the device's family, tile_table) and, on tcgen05, tensor memory (a kernel over
    it compiles to a trap, not to an error)."""
    if shared_memory_needed(kernel, tile, d, dv, dtype, device) > device.shared_bytes - _margin(tile, compiled):
        return False
    columns = device.tensor_memory_columns
    return columns is None or not isinstance(tile, ForwardTile) or tile.tensor_memory_columns() <= columns


_V3_MAX_SPLITS = 4


def tma_allowed(d: int, dv: int, dtype: torch.dtype) -> bool:
    """TMA descriptors need 16-byte aligned row strides: D and Dv times the element size divisible by 16."""
    size = torch.empty(0, dtype=dtype).element_size()
    return (d * size) % 16 == 0 and (dv * size) % 16 == 0


def _tma_applies(d: int, dv: int, dtype: torch.dtype, device: Device) -> bool:
    """TMA rows only on sm_90 and later, with 16-byte aligned rows."""
    return device.arch >= 90 and tma_allowed(d, dv, dtype)


def _fitted(row, d: int, dv: int, dtype: torch.dtype, device: Device):
    """The tile of one v3 row with the fewest column splits that fits the device by count, or None. TMA rows
    only on sm_90 and later, with 16-byte aligned rows."""
    block_m, block_n, warps, stages, tma, c_cap = row
    if tma and not _tma_applies(d, dv, dtype, device):
        return None
    for splits in range(1, _V3_MAX_SPLITS + 1):
        tile = ForwardTile(d, dv, block_m, block_n, splits, tma, warps, stages, c_cap=c_cap)
        if _fits("fwd", tile, d, dv, dtype, device) and tile.accumulator_registers() <= _V3_ACC_REGS:
            return tile
    return None


def forward_v3_candidates(d: int, dv: int, dtype: torch.dtype, device: Device | None = None) -> list[ForwardTile]:
    """The v3 forward tiles that fit the device (default: the current one) for head dims d, dv, in the order
    of preference."""
    device = device or devices.current()
    table = tile_table.rows(device.arch)
    tiles = [tile for tile in (_fitted(row, d, dv, dtype, device) for row in table["fwd_v3"]) if tile is not None]
    fallback = None if tiles else _fitted(table["fwd_v3_fallback"], d, dv, dtype, device)
    return tiles + ([fallback] if fallback else [])


def candidates(kernel: str, d: int, dv: int, dtype: torch.dtype = torch.bfloat16, device: Device | None = None) -> list:
    """The autotuner's candidate tiles of one kernel for head dims d, dv on `device` (default: the current
    one; fp32: D/Dv chunks of at most 32): the rows of its family (tile_table) that fit it by count, the
    first one the fixed choice. The rows compiled for the family at the paper's head dims, where they fit,
    are the whole list; else the generic rows: the v3 tiles that fit (ForwardTile), then version 2's
    (TileConfig) in the forward, so v3 wherever a v3 tile fits (every dtype). Empty where nothing fits (see
    `refusal`)."""
    device = device or devices.current()
    compiled = [tile for tile in _compiled_tiles(kernel, d, dv, dtype, device)
                if _fits(kernel, tile, d, dv, dtype, device, compiled=True)]
    if compiled:
        return compiled
    tiles = _v2_candidates(kernel, d, dv, dtype, device)
    if kernel == "fwd":
        tiles = forward_v3_candidates(d, dv, dtype, device) + tiles
    return [tile for tile in tiles if _fits(kernel, tile, d, dv, dtype, device)]


def _compiled_tiles(kernel: str, d: int, dv: int, dtype: torch.dtype, device: Device) -> list:
    """The family's compiled rows (tile_table.compiled_rows) as tiles, TMA rows only where TMA applies."""
    tiles = []
    for row in tile_table.compiled_rows(device.arch, kernel, d, dv, dtype.itemsize):
        if kernel != "fwd":
            block_m, block_n, block_d, block_e, block_c, warps, stages, max_cb = row
            num_cb = _fit_columns(_output_columns(kernel, d, dv), block_c, max_cb)
            tiles.append(TileConfig(block_m, block_n, block_d, block_e, block_c, num_cb, warps, stages))
        elif row[0] == "v2":
            tiles.append(TileConfig(*row[1:]))
        else:
            block_m, block_n, splits, warps, stages, c_cap, tma = row[1:]
            if not tma or _tma_applies(d, dv, dtype, device):
                tiles.append(ForwardTile(d, dv, block_m, block_n, splits, tma, warps, stages, c_cap=c_cap))
    return tiles


def _v2_tiles(kernel: str, d: int, dv: int, dtype: torch.dtype, rows) -> list[TileConfig]:
    """The version 2 / backward rows as tiles for head dims d, dv (nothing removed yet)."""
    chunk = 32 if dtype == torch.float32 else 64
    ncols = _output_columns(kernel, d, dv)
    tiles = []
    for block_m, block_n, block_d, block_e, block_c, warps, stages, max_cb, *resident in rows:
        resident = bool(resident and resident[0])
        block_c = min(block_c, _pow2(ncols, 16, 128))
        if dtype == torch.float32 and max_cb > 1 and (kernel != "dkdv" or warps > 8):
            # fp32 tiles take twice the registers before they reach the tensor cores (checked with ptxas;
            # the transposed dk/dv kernel fits its 16-bit column blocks in fp32 too, except with 16 warps'
            # 128 registers: kernel-notes, "Backward")
            max_cb -= 1
        num_cb = _fit_columns(ncols, block_c, max_cb) if max_cb else 1
        if resident:  # resident backward programs contract D and Dv in chunks of their column block
            block_d = block_e = block_c
        else:
            block_d, block_e = min(block_d, chunk, _pow2(d, 16, 64)), min(block_e, chunk, _pow2(dv, 16, 64))
        tile = TileConfig(block_m, block_n, block_d, block_e, block_c, num_cb, warps, stages, resident)
        if tile not in tiles:
            tiles.append(tile)
    return tiles


def _v2_candidates(kernel: str, d: int, dv: int, dtype: torch.dtype, device: Device) -> list[TileConfig]:
    tiles = _v2_tiles(kernel, d, dv, dtype, tile_table.rows(device.arch)[kernel])
    return [tile for tile in tiles if _fits(kernel, tile, d, dv, dtype, device)]


# The oldest GPUs the fused kernels are written for: bf16 and TF32 tensor-core dots and cp.async start at sm_80.
MIN_ARCH = 80
_REFUSALS: dict = {}  # (device, D, Dv, dtype) -> refusal's answer (tests that patch tile_table clear it)


def refusal(d: int, dv: int, dtype: torch.dtype, device: Device | None = None) -> str | None:
    """None where every kernel has a tile that fits the device; else why not, in one line (the GPU, D, Dv,
    dtype and the shared memory the smallest tile needs vs what a block has, or the GPU's compute capability
    below sm_80). Worked out once per case."""
    device = device or devices.current()
    key = (device, d, dv, dtype)
    if key not in _REFUSALS:
        _REFUSALS[key] = _refusal(d, dv, dtype, device)
    return _REFUSALS[key]


def _refuse(why: str):
    raise RuntimeError(f"{why}; use backend='torch' or 'auto'")


def _least_shared_memory(kernel: str, d: int, dv: int, dtype: torch.dtype, device: Device) -> int:
    """The shared memory by count on `device` that the smallest of `kernel`'s generic rows needs, with the
    margin each keeps (`_margin`), over every column split the v3 forward may use."""
    table = tile_table.rows(device.arch)
    tiles = _v2_tiles(kernel, d, dv, dtype, table[kernel])
    if kernel == "fwd":
        rows = table["fwd_v3"] + [table["fwd_v3_fallback"]]
        tiles += [ForwardTile(d, dv, *row[:2], splits, *row[2:4], c_cap=row[5])
                  for row in rows for splits in range(1, _V3_MAX_SPLITS + 1)]

    def need(tile) -> int:
        return shared_memory_needed(kernel, tile, d, dv, dtype, device) + _margin(tile)

    return min(need(tile) for tile in tiles)


def _refusal(d: int, dv: int, dtype: torch.dtype, device: Device) -> str | None:
    if device.arch < MIN_ARCH:
        return (f"backend='triton' does not run on {device.name}: compute capability sm_{device.arch}, the fused "
                f"kernels need sm_{MIN_ARCH} or newer")
    for kernel in KERNELS:
        if candidates(kernel, d, dv, dtype, device):
            continue
        case = f"backend='triton' has no {kernel} tile for {device.describe()}: D={d}, Dv={dv}, " \
               f"{str(dtype).replace('torch.', '')}"
        need = _least_shared_memory(kernel, d, dv, dtype, device)
        if need > device.shared_bytes:  # KB rounded up for the need, down for the GPU: never reads as fitting
            return (f"{case} needs at least {-(-need // 1024)} KB of shared memory, the GPU has "
                    f"{device.shared_bytes // 1024} KB per block")
        return f"{case}: the tiles that fit its shared memory need more registers (or tensor memory) than it has"
    return None


def choose_config(nq: int, nk: int, d: int, dv: int, dtype: torch.dtype, interpret: bool,
                  device: Device | None = None) -> KernelConfig:
    """Fixed block sizes for one problem shape (used under the interpreter, with MHTMA_AUTOTUNE=0,
    and as the documented default): the first candidate of each kernel on a GPU (`device`, default the
    current one; a RuntimeError saying why where a kernel has no tile that fits it).

    Interpreter (CPU): cost grows with the number of tile iterations, not tile size, so tiles are as
    large as the problem (up to 64 rows, 512 columns, one column block; the v3 forward).
    """
    if interpret:
        rows_q, rows_k = _pow2(nq, 16, 64), _pow2(nk, 16, 64)
        cols_d, cols_dv = _pow2(d, 16, 512), _pow2(dv, 16, 512)
        return KernelConfig(
            fwd=ForwardTile(d, dv, rows_q, rows_k),
            dkdv=TileConfig(rows_q, rows_k, cols_d, cols_dv, max(cols_d, cols_dv)),
            dq=TileConfig(rows_q, rows_k, cols_d, cols_dv, cols_d),
        )
    why = refusal(d, dv, dtype, device)
    if why is not None:
        _refuse(why)
    return KernelConfig(*(candidates(kernel, d, dv, dtype, device)[0] for kernel in KERNELS))


def _autotune_enabled() -> bool:
    return os.environ.get("MHTMA_AUTOTUNE", "1").strip() not in ("0", "false", "off", "")


def dot_precision(dtype: torch.dtype) -> str:
    """Triton dot precision for an input dtype: fp32 follows torch's float32 matmul precision."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"  # TF32 for fp32 inputs; ignored by tl.dot for fp16/bf16 tiles


def check_inputs(q, k, v, temperature):
    if q.dtype not in _SUPPORTED:
        raise TypeError(
            f"q, k, v must be float16, bfloat16 or float32 for backend='triton', got {q.dtype}; "
            "use backend='torch' or backend='reference' for float64"
        )
    if temperature.dtype not in _SUPPORTED + (torch.float64,):
        raise TypeError(f"temperature must be a floating-point tensor, got {temperature.dtype}")
    if q.device.type != "cuda" and not interpreting():
        raise ValueError(
            f"backend='triton' needs CUDA tensors (got tensors on {q.device}); set TRITON_INTERPRET=1 before "
            "importing triton to run the kernels on CPU, or use backend='torch'"
        )


def _kernel(kernel: str):
    return {
        "fwd": forward_kernels.masked_attention_forward_kernel,
        "dkdv": backward_kernels.masked_attention_bwd_dkdv_kernel,
        "dq": backward_kernels.masked_attention_bwd_dq_kernel,
    }[kernel]


_AUTOTUNED = {}


def _autotuned(kernel: str, device: Device):
    """`kernel` wrapped in triton.autotune, one per device kind (its results are kept apart by device kind
    too). The candidates depend on D and Dv, so the prune hook builds them for the shape at hand (the
    static list only holds those of D = Dv = 576, or 64, to make tuning run); tiles that do not fit the
    device never reach the tuner."""
    if (kernel, device.kind) not in _AUTOTUNED:
        def as_configs(tiles):
            return [triton.Config(t.constexprs(), **t.launch_options()) for t in tiles]

        def prune(configs, named_args, **kwargs):
            tiles = candidates(kernel, named_args["D"], named_args["DV"], named_args["Q"].dtype, device)
            if kernel == "fwd" and not _tma_aligned(named_args["K"], named_args["V"]):
                tiles = [tile for tile in tiles if not getattr(tile, "tma", False)]
            return as_configs(tiles)

        static = candidates(kernel, 576, 576, device=device) or candidates(kernel, 64, 64, device=device)
        _AUTOTUNED[kernel, device.kind] = triton.autotune(
            configs=as_configs(static), key=["NQ", "NK", "D", "DV", "DOT_PRECISION"],
            prune_configs_by={"early_config_prune": prune},
            # dq programs write one partial temperature-gradient sum each, at slots that depend on the tile.
            reset_to_zero=["DT_PART"] if kernel == "dq" else None,
        )(_kernel(kernel))
    return _AUTOTUNED[kernel, device.kind]


def _tma_aligned(*tensors) -> bool:
    """Whether TMA descriptors can address these [B, H, N, C] tensors: 16-byte aligned base, head and row strides."""
    return all(t.data_ptr() % 16 == 0 and (t.stride(1) * t.element_size()) % 16 == 0
               and (t.stride(2) * t.element_size()) % 16 == 0 for t in tensors)


def _descriptor_scratch(size: int, alignment: int, stream):
    """Global memory in which TMA kernels build their tensor descriptors (triton.set_allocator)."""
    return torch.empty(size, dtype=torch.int8, device="cpu" if interpreting() else "cuda")


def _launch(kernel: str, rows: int, bh: int, ncols: int, args, flags: dict, config: KernelConfig | None,
            device: Device):
    """The one place that sizes grids and launches: grid (cdiv(rows, tile rows), B*H, column splits).

    rows = Nq for fwd/dq (tile rows block_m), Nk for dkdv (tile rows block_n)."""
    if kernel == "fwd":
        triton.set_allocator(_descriptor_scratch)  # for the v3 forward's TMA candidates
        fwd, d, dv = None if config is None else config.fwd, args[0].shape[3], args[2].shape[3]
        if isinstance(fwd, ForwardTile) and (fwd.d, fwd.dv) != (d, dv):
            raise ValueError(f"forward tile built for D={fwd.d}, Dv={fwd.dv} used with D={d}, Dv={dv}")
    row_key = "BLOCK_N" if kernel == "dkdv" else "BLOCK_M"
    if config is None:
        def grid(meta):
            return (triton.cdiv(rows, meta[row_key]), bh, triton.cdiv(max(ncols, 1), meta["BLOCK_C"] * meta["NUM_CB"]))

        _autotuned(kernel, device)[grid](*args, **flags)
        return
    tile = config[kernel]
    if getattr(tile, "tma", False) and not _tma_aligned(args[1], args[2]):
        tile = dataclasses.replace(tile, tma=False)  # the same tile with cp.async loads
    if not 1 <= tile.num_cb <= MAX_COL_BLOCKS[kernel]:
        raise ValueError(f"{kernel} kernel holds 1 to {MAX_COL_BLOCKS[kernel]} column blocks, got num_cb={tile.num_cb}")
    tile_rows = tile.block_n if kernel == "dkdv" else tile.block_m
    grid = (triton.cdiv(rows, tile_rows), bh, tile.column_splits(ncols))
    _kernel(kernel)[grid](*args, **tile.constexprs(), **flags, **tile.launch_options())


def _flags(dtype: torch.dtype) -> dict:
    return dict(UPCAST=dtype == torch.bfloat16 and interpreting(),  # Triton 3.8 interpreter: bf16 tl.dot is wrong
                DOT_PRECISION=dot_precision(dtype))


def _resolve(config: KernelConfig | None, nq, nk, d, dv, dtype, device: Device) -> KernelConfig | None:
    """None means "autotune" on a GPU; the fixed choice under the interpreter or with MHTMA_AUTOTUNE=0. A
    RuntimeError saying why where no tile of some kernel fits the device."""
    if config is not None:
        return config
    why = refusal(d, dv, dtype, device)
    if why is not None:
        _refuse(why)
    if interpreting() or not _autotune_enabled():
        return choose_config(nq, nk, d, dv, dtype, interpreting(), device)
    return None


def launch_forward(q, k, v, key_valid_u8, temp, lambda_m, config, bounded: bool = False):
    """Launch the forward kernel on contiguous inputs -> (out [B,H,Nq,Dv] in v's dtype, stats).

    stats = (row_max2, row_log2sum [B,H,Nq] fp32, out_lo [B,H,Nq,Dv] in v's dtype or None for fp32): what the
    backward needs besides the inputs and the output. bounded: q and k rows have norm <= 1 (the public
    function normalised them), which lets the kernel skip the running max (see the kernel's docstring)."""
    B, H, Nq, D = q.shape
    Nk, Dv = k.shape[2], v.shape[3]
    device = devices.current(q)
    config = _resolve(config, Nq, Nk, D, Dv, q.dtype, device)
    out = torch.empty(B, H, Nq, Dv, dtype=v.dtype, device=q.device)
    has_lo = v.dtype != torch.float32
    out_lo = torch.empty_like(out) if has_lo else None
    row_max2 = torch.empty(B, H, Nq, dtype=torch.float32, device=q.device)
    row_log2sum = torch.empty_like(row_max2)
    fixed_max = bounded and q.dtype in (torch.bfloat16, torch.float32)
    # [B] 1 where the image has a valid key (read only by the fixed-max path; else any uint8 pointer does)
    any_valid = (key_valid_u8 != 0).any(dim=1).to(torch.uint8) if fixed_max else key_valid_u8
    args = (q, k, v, key_valid_u8, any_valid, temp, out, out_lo if has_lo else out, row_max2, row_log2sum,
            q.stride(1), q.stride(2), k.stride(1), k.stride(2), v.stride(1), v.stride(2), out.stride(1), out.stride(2),
            H, Nq, Nk, D, Dv, -lambda_m * LOG2E, FIXED_MAX_LIMIT if fixed_max else 0.0)
    flags = dict(HAS_LO=has_lo, **_flags(q.dtype))
    with on_device(q):  # the launches, the TMA scratch and the autotuner's timing
        _launch("fwd", Nq, B * H, Dv, args, dict(flags, FIXED_MAX=fixed_max), config, device)
        if fixed_max:  # the heads whose bound is too large for the fixed max (see forward's entry kernel)
            _launch("fwd", Nq, B * H, Dv, args, dict(flags, FIXED_MAX=False, REST_PASS=True), config, device)
    return out, (row_max2, row_log2sum, out_lo)


def _delta(out, out_lo, dout):
    """delta [B, H, Nq] fp32 = <dout_i, out_i> with out in fp32 accuracy (out + out_lo)."""
    rows, dv = out.numel() // max(out.shape[-1], 1), out.shape[-1]
    delta = torch.empty(out.shape[:-1], dtype=torch.float32, device=out.device)
    block_r = _pow2(rows, 16, 64)
    block_e = _pow2(dv, 16, 512 if interpreting() else 64)
    backward_kernels.masked_attention_bwd_delta_kernel[(triton.cdiv(rows, block_r),)](
        out, out if out_lo is None else out_lo, dout, delta, rows, dv,
        HAS_LO=out_lo is not None, BLOCK_R=block_r, BLOCK_E=block_e, num_warps=4)
    return delta


def launch_backward(q, k, v, key_valid_u8, temp, lambda_m, config, out, stats, dout, need_dq, need_dkdv, need_dt):
    """Launch the backward kernels -> (dq, dk, dv, dt): each None unless asked for; dq, dk, dv in the inputs'
    dtype, dt [B, H] fp32 (the gradient to the temperature)."""
    with on_device(q):
        return _backward(q, k, v, key_valid_u8, temp, lambda_m, config, out, stats, dout,
                         need_dq, need_dkdv, need_dt)


def _backward(q, k, v, key_valid_u8, temp, lambda_m, config, out, stats, dout, need_dq, need_dkdv, need_dt):
    B, H, Nq, D = q.shape
    Nk, Dv = k.shape[2], v.shape[3]
    device = devices.current(q)
    config = _resolve(config, Nq, Nk, D, Dv, q.dtype, device)
    row_max2, row_log2sum, out_lo = stats
    delta = _delta(out, out_lo, dout)
    tail = (q.stride(1), q.stride(2), k.stride(1), k.stride(2), v.stride(1), v.stride(2),
            dout.stride(1), dout.stride(2), H, Nq, Nk, D, Dv, -lambda_m * LOG2E)
    flags = _flags(q.dtype)
    dq = dk = dv = dt = None
    if need_dkdv:
        dk, dv = torch.empty_like(k), torch.empty_like(v)
        args = (q, k, v, key_valid_u8, temp, dout, row_max2, row_log2sum, delta, dk, dv) + tail
        _launch("dkdv", Nk, B * H, max(D, Dv), args, flags, config, device)
    if need_dq or need_dt:
        dq = torch.empty_like(q)
        # One partial sum per program, [B*H, programs per (b, h)], sized for 16 x 16 tiles (the smallest).
        dt_part = torch.zeros(B * H, triton.cdiv(Nq, 16) * triton.cdiv(D, 16), dtype=torch.float32, device=q.device)
        args = (q, k, v, key_valid_u8, temp, dout, row_max2, row_log2sum, delta, dq, dt_part) + tail + (dt_part.stride(0),)
        _launch("dq", Nq, B * H, D, args, flags, config, device)
        if need_dt:
            dt = -dt_part.view(B, H, -1).sum(-1) / temp
    return (dq if need_dq else None), dk, dv, dt
