"""The triton backend's device model: per-architecture candidate tiles that fit the GPU's shared memory by count,
TMA only on sm_90 and later, sm_90's choice unchanged, and one clear refusal (auto: triton left out) where
nothing fits. Everything here is sizing: no kernel runs."""
import dataclasses
import logging
import re
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("triton")

from benchmarks.compile_report import ARCHS, _GpuStub, emulated_devices  # noqa: E402
from mhtma_kernels import masked_temperature_attention  # noqa: E402
from mhtma_kernels.ops import backends  # noqa: E402
from mhtma_kernels.ops.triton import device as devices  # noqa: E402
from mhtma_kernels.ops.triton import launcher, tile_table  # noqa: E402
from mhtma_kernels.ops.triton.device import Device  # noqa: E402
from mhtma_kernels.ops.triton.launcher import ForwardTile, TileConfig  # noqa: E402

DEVICES = emulated_devices()
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# A GPU with the 99 KB of an RTX 3090 whose tile table (patched in) holds only rows too large for it.
RTX_99KB = Device("NVIDIA GeForce RTX 3090 (mocked)", 86, 101376, 82)
TOO_LARGE = dict(fwd_v3=[(128, 64, 8, 3, False, 256)], fwd_v3_fallback=(128, 64, 8, 3, False, 256),
                 fwd=[(128, 128, 128, 0, 128, 8, 4, 0)], dkdv=[(128, 128, 128, 128, 128, 8, 4, 0)],
                 dq=[(128, 128, 128, 128, 128, 8, 4, 0)])


@pytest.mark.parametrize("dtype", DTYPES, ids=list(DTYPES))
@pytest.mark.parametrize("d", [45, 288, 432, 576, 864])
@pytest.mark.parametrize("arch", sorted(ARCHS), ids=lambda a: f"sm{a}")
def test_every_architecture_has_candidates_that_fit_its_shared_memory(arch, d, dtype):
    device, dtype = DEVICES[arch], DTYPES[dtype]
    for kernel in launcher.KERNELS:
        tiles = launcher.candidates(kernel, d, d, dtype, device)
        assert tiles, f"no {kernel} tile on sm_{arch} at D={d}"
        for tile in tiles:
            need = launcher.shared_memory_needed(kernel, tile, d, d, dtype, device)
            assert need <= device.shared_bytes, (kernel, tile, need)
            assert not getattr(tile, "tma", False) or arch >= 90, tile
            if arch == 100 and isinstance(tile, ForwardTile):  # over 512 columns compiles to a trap
                assert tile.tensor_memory_columns() <= 512, tile
    assert launcher.refusal(d, d, dtype, device) is None
    assert launcher.choose_config(4096, 3844, d, d, dtype, False, device).fwd == launcher.candidates(
        "fwd", d, d, dtype, device)[0]


@pytest.mark.parametrize("arch, family", [(80, "sm80"), (86, "sm86"), (89, "sm86"), (90, "sm90"), (100, "sm100"),
                                          (120, "sm120"), (87, "sm80"), (103, "sm100"), (121, "sm120")])
def test_architecture_families(arch, family):
    assert tile_table.family(arch) == family
    assert set(tile_table.rows(arch)) == {"fwd_v3", "fwd_v3_fallback", "fwd", "dkdv", "dq"}


# The forward's fixed choice at the paper's D, bf16, as compiled for each architecture (tile_table's compiled
# rows): (block_m, block_n, column splits, warps, stages, c_cap).
COMPILED_FIXED_CHOICE = {
    80: {288: (128, 32, 1, 8, 2, 128), 432: (64, 32, 2, 4, 2, 128), 576: (64, 32, 2, 4, 2, 128),
         864: (64, 16, 3, 4, 2, 128)},
    86: {288: (64, 32, 2, 4, 3, 256), 432: (64, 32, 3, 4, 2, 128), 576: (64, 16, 2, 4, 2, 128),
         864: (32, 16, 3, 2, 2, 128)},
    120: {288: (64, 32, 2, 4, 3, 256), 432: (64, 16, 3, 4, 2, 64), 576: (64, 16, 3, 4, 2, 128),
          864: (32, 16, 4, 2, 2, 128)},
    100: {288: (128, 32, 1, 8, 2, 128), 432: (128, 32, 2, 8, 2, 128), 576: (64, 32, 2, 8, 2, 256),
          864: (64, 16, 2, 8, 2, 128)},
}
COMPILED_FIXED_CHOICE[89] = COMPILED_FIXED_CHOICE[86]


@pytest.fixture
def emulated(monkeypatch):
    """Point the launcher's device model at one emulated GPU (no device argument anywhere below)."""
    def use(arch):
        monkeypatch.setattr(devices, "current", lambda tensor=None: DEVICES[arch])
    return use


@pytest.mark.parametrize("d", [288, 432, 576, 864])
@pytest.mark.parametrize("arch", sorted(COMPILED_FIXED_CHOICE), ids=lambda a: f"sm{a}")
def test_the_fixed_choice_is_the_row_compiled_for_the_architecture(arch, d, emulated):
    emulated(arch)
    config = launcher.choose_config(4096, 3844, d, d, torch.bfloat16, False)
    fwd = config.fwd
    assert (fwd.block_m, fwd.block_n, fwd.splits, fwd.num_warps, fwd.num_stages, fwd.c_cap) == \
        COMPILED_FIXED_CHOICE[arch][d]
    assert not fwd.tma
    if arch != 100:  # mma.sync: 16 rows per warp, the compiled backward rows
        assert fwd.block_m == 16 * fwd.num_warps
        assert (config.dkdv.block_m, config.dkdv.block_n, config.dq.block_m, config.dq.block_n) == (16, 128, 128, 16)


@pytest.mark.parametrize("arch, d, fixed", [
    (80, 864, "v2"), (86, 576, "v2"), (89, 864, "v2"), (120, 432, "v2"), (120, 288, (32, 32, 2)),
    (80, 576, (32, 16, 3)), (86, 432, (32, 16, 2))], ids=lambda x: str(x))
def test_fp32_fixed_choice_is_the_compiled_row(arch, d, fixed, emulated):
    """TF32: version 2 where no v3 row holds a 4-byte q block and one k/v stage."""
    emulated(arch)
    fwd = launcher.choose_config(4096, 3844, d, d, torch.float32, False).fwd
    if fixed == "v2":
        assert fwd == TileConfig(64, 32, 32, 0, 64, 3, 4, 2)
    else:
        assert isinstance(fwd, ForwardTile) and (fwd.block_m, fwd.block_n, fwd.splits) == fixed


def test_sm120_keeps_its_own_backward_rows_and_falls_back_to_sm86_for_the_forward(emulated):
    emulated(120)
    config = launcher.choose_config(4096, 3844, 288, 288, torch.bfloat16, False)
    assert config.fwd == launcher.candidates("fwd", 288, 288, torch.bfloat16, DEVICES[86])[0]
    assert config.dq.block_d == 16  # 32-wide chunks spill 8 B on sm_120's ptxas
    assert launcher.candidates("dq", 288, 288, torch.bfloat16, DEVICES[86])[0].block_d == 32


def test_shared_memory_count_per_target_kind():
    """mma.sync pipelines keep num_stages - 1 k/v buffers, wgmma and tcgen05 num_stages (compiler figures:
    sm_86 D = 576 64x16 2 splits 101376 B, sm_100 D = 576 64x32 2 splits 184320 B)."""
    sm86 = ForwardTile(576, 576, 64, 16, 2, False, 4, 2, c_cap=128)
    assert launcher.shared_memory_needed("fwd", sm86, 576, 576, torch.bfloat16, DEVICES[86]) == 101376
    assert launcher.shared_memory_needed("fwd", sm86, 576, 576, torch.bfloat16, DEVICES[90]) == 101376 + 2 * 16 * 864
    sm100 = ForwardTile(576, 576, 64, 32, 2, False, 8, 2, c_cap=256)
    assert launcher.shared_memory_needed("fwd", sm100, 576, 576, torch.bfloat16, DEVICES[100]) == 184320


def test_sm100_leaves_out_tiles_over_its_tensor_memory():
    """One split at D = 576 needs 576 + 48 columns (the compiler emits a trapping kernel); two need 336."""
    one_split = ForwardTile(576, 576, 64, 32, 1, False, 8, 2, c_cap=256)
    assert one_split.tensor_memory_columns() == 624
    assert one_split in launcher.candidates("fwd", 576, 576, torch.bfloat16, DEVICES[90])
    for d in (576, 640):  # compiled row, and the count rule of the generic rows
        tiles = launcher.candidates("fwd", d, d, torch.bfloat16, DEVICES[100])
        assert tiles and all(t.tensor_memory_columns() <= 512 for t in tiles if isinstance(t, ForwardTile))


@pytest.mark.parametrize("d", [45, 288, 576])
def test_sm100_offers_no_backward_row_that_spills_there(d):
    """On sm_100 the 16-warp dk/dv row falls back to mma.sync with spills, the resident rows overflow or spill
    and the 64x64 dq row spills; sm_90 keeps them."""
    for kernel in ("dkdv", "dq"):
        tiles = launcher.candidates(kernel, d, d, torch.bfloat16, DEVICES[100])
        assert tiles and not any(t.resident or t.num_warps > 8 or (kernel, t.block_m, t.block_n) == ("dq", 64, 64)
                                 for t in tiles), tiles
    assert any(t.resident for t in launcher.candidates("dkdv", 288, 288, torch.bfloat16, DEVICES[90]))


def test_rows_not_compiled_for_the_device_keep_a_margin():
    """A generic row counted exactly at the 99 KB limit (D = 560, 64x16, 2 splits) is left out for the next
    split count (the count was up to 2.3 KB short where it was not compiled); the compiled sm_86 D = 576 row
    at exactly the limit is kept."""
    at_limit = ForwardTile(560, 560, 64, 16, 2, False, 4, 2, c_cap=128)
    assert launcher.shared_memory_needed("fwd", at_limit, 560, 560, torch.bfloat16, DEVICES[86]) == 101376
    tiles = launcher.candidates("fwd", 560, 560, torch.bfloat16, DEVICES[86])
    assert at_limit not in tiles and dataclasses.replace(at_limit, splits=3) in tiles
    compiled = launcher.candidates("fwd", 576, 576, torch.bfloat16, DEVICES[86])[0]
    assert launcher.shared_memory_needed("fwd", compiled, 576, 576, torch.bfloat16, DEVICES[86]) == 101376


def test_sm90_keeps_its_fixed_choice():
    """The tiles the launcher chose for an H100 before it asked the device (the sm_90 rows)."""
    h100 = DEVICES[90]
    bf16 = launcher.choose_config(4096, 3844, 576, 576, torch.bfloat16, False, h100)
    assert bf16.fwd == ForwardTile(576, 576, 64, 32, 1, False, 8, 2, c_cap=256)
    assert bf16.dkdv == TileConfig(32, 64, 32, 32, 64, 3, 8, 2)
    assert bf16.dq == TileConfig(64, 32, 32, 32, 64, 5, 8, 2)
    assert launcher.choose_config(4096, 3844, 288, 288, torch.bfloat16, False, h100).fwd == ForwardTile(
        288, 288, 128, 32, 1, False, 8, 2, c_cap=128)
    assert isinstance(launcher.choose_config(4096, 3844, 576, 576, torch.float32, False, h100).fwd, TileConfig)


def test_shared_memory_count_matches_what_triton_allocates_on_sm90():
    """Triton's own figures for the sm_90 fixed choice at D = 576 bf16 (kernel report): forward 221184 B,
    dk/dv 28672 B."""
    config = launcher.choose_config(4096, 3844, 576, 576, torch.bfloat16, False, DEVICES[90])
    assert launcher.shared_memory_needed("fwd", config.fwd, 576, 576, torch.bfloat16) == 221184
    assert launcher.shared_memory_needed("dkdv", config.dkdv, 576, 576, torch.bfloat16) == 28672


def test_device_model_reads_the_driver(monkeypatch):
    """Compute capability from the driver's target, shared memory and SMs from its device properties."""
    from triton.runtime import driver

    previous = driver._active
    driver.set_active(_GpuStub(86))
    devices.forget()
    try:
        model = devices.current()
    finally:
        driver.set_active(previous)
        devices.forget()
    assert (model.arch, model.shared_bytes, model.sms) == (86, 101376, 82)
    assert model.kind != DEVICES[90].kind


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device answers for itself")
def test_without_a_driver_the_reference_sizes_apply():
    devices.forget()
    assert devices.current() == devices.REFERENCE  # CPU, the interpreter: an H100's tiles


class _Properties:
    """torch.cuda.get_device_properties' answer for an RTX 3090 (the fields the device model reads)."""

    name, major, minor = "NVIDIA GeForce RTX 3090", 8, 6
    shared_memory_per_block_optin, multi_processor_count = 101376, 82


class _NoDriver:
    """A Triton driver whose device query fails (an API it does not have)."""

    def get_current_target(self):
        raise AttributeError("no get_current_target in this triton")


@pytest.mark.parametrize("case", ["cuda-tensor", "driver-query-fails"])
def test_a_cuda_device_is_never_sized_as_the_reference(monkeypatch, case):
    """With CUDA, the figures come from torch's properties of that one device, not the H100 reference."""
    from triton.runtime import driver

    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: asked.append(index) or _Properties())
    previous = driver._active
    driver.set_active(_NoDriver())
    devices.forget()
    try:
        if case == "cuda-tensor":
            model = devices.current(SimpleNamespace(device=torch.device("cuda", 1)))  # all it reads of a tensor
        else:
            model = devices.current()
    finally:
        driver.set_active(previous)
        devices.forget()
    assert (model.name, model.arch, model.shared_bytes, model.sms) == ("NVIDIA GeForce RTX 3090", 86, 101376, 82)
    assert asked == [1]


@pytest.mark.parametrize("arch", [70, 75], ids=lambda a: f"sm{a}")
def test_gpus_before_sm80_are_refused_in_one_error(arch):
    old_gpu = Device(f"Tesla sm_{arch} (mocked)", arch, 65536, 40)
    launcher._REFUSALS.clear()
    why = launcher.refusal(64, 64, torch.float16, old_gpu)
    assert f"Tesla sm_{arch} (mocked)" in why and f"sm_{arch}" in why and "sm_80 or newer" in why
    with pytest.raises(RuntimeError, match="sm_80 or newer"):
        launcher.choose_config(256, 256, 64, 64, torch.float16, False, old_gpu)


@pytest.fixture
def mocked_99kb_gpu(monkeypatch):
    monkeypatch.setattr(devices, "current", lambda tensor=None: RTX_99KB)
    monkeypatch.setitem(tile_table.TILE_ROWS, "sm86", TOO_LARGE)
    launcher._REFUSALS.clear()
    backends._TRITON_LOGGED.clear()
    yield RTX_99KB
    launcher._REFUSALS.clear()
    backends._TRITON_LOGGED.clear()


def _inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 20, 24, generator=g).to(dtype) for _ in range(3))
    return q, k, v, torch.ones(1, 20, dtype=torch.bool), torch.full((1, 2), 0.5)


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_triton_where_nothing_fits_says_why_in_one_error(mocked_99kb_gpu, dtype):
    q, k, v, key_valid, t = _inputs(DTYPES[dtype])
    with pytest.raises(RuntimeError) as error:
        masked_temperature_attention(q, k, v, key_valid, t, backend="triton")
    text = str(error.value)
    assert "NVIDIA GeForce RTX 3090 (mocked)" in text and "sm_86" in text
    assert f"D=24, Dv=24, {str(DTYPES[dtype])[6:]}" in text
    assert "KB of shared memory" in text and "the GPU has 99 KB per block" in text
    assert "\n" not in text


# Small forward and dk/dv rows; dq only one resident row, whose count alone would fit: its margin decides.
RESIDENT_ONLY = dict(fwd_v3=[(16, 16, 4, 2, False, 64)], fwd_v3_fallback=(16, 16, 4, 2, False, 64),
                     fwd=[(16, 16, 16, 0, 16, 4, 2, 0)], dkdv=[(16, 16, 16, 16, 16, 4, 2, 0)],
                     dq=[(64, 32, 64, 64, 64, 8, 2, 0, 1)])


@pytest.mark.parametrize("short_by", [1, 512, 5 * 1024], ids=lambda b: f"short-by-{b}B")
def test_the_refusal_never_reads_as_fitting(monkeypatch, short_by):
    """The need it names counts what the candidates count (the resident margin too), in KB rounded up,
    against the GPU's KB rounded down."""
    monkeypatch.setitem(tile_table.TILE_ROWS, "sm86", RESIDENT_ONLY)
    launcher._REFUSALS.clear()
    resident = launcher._v2_tiles("dq", 24, 24, torch.bfloat16, RESIDENT_ONLY["dq"])[0]
    count = launcher.shared_memory_needed("dq", resident, 24, 24, torch.bfloat16)
    shared = count + launcher._RESIDENT_MARGIN - short_by
    gpu = Device("RTX (mocked)", 86, shared, 82)
    why = launcher.refusal(24, 24, torch.bfloat16, gpu)
    launcher._REFUSALS.clear()
    need, has = (int(n) for n in re.search(r"needs at least (\d+) KB .* the GPU has (\d+) KB per block", why).groups())
    assert "no dq tile" in why and need > has == shared // 1024, why


def test_auto_leaves_triton_out_with_one_info_line(mocked_99kb_gpu, caplog):
    q, k, v, _, _ = _inputs()
    with caplog.at_level(logging.INFO, logger="mhtma_kernels.dispatch"):
        assert not backends.triton_applies(q, v)
        assert not backends.triton_applies(q, v)
    lines = [r.getMessage() for r in caplog.records if "triton left out" in r.getMessage()]
    assert len(lines) == 1 and "D=24, Dv=24" in lines[0], lines


def test_auto_keeps_triton_where_a_tile_fits():
    launcher._REFUSALS.clear()
    q, k, v, _, _ = _inputs()
    assert backends.triton_applies(q, v)
