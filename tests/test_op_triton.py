"""The `triton` backend (fused kernels, run by Triton's CPU interpreter here) against a float64 oracle.

Every case goes through the public `masked_temperature_attention(..., backend="triton")` and compares
the output and the gradients of q, k, v and temperature with the reference computed in float64 on
the same inputs. Shapes are small: the interpreter's cost grows with the number of tile iterations.
"""
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from mhtma_kernels import masked_temperature_attention, masked_temperature_attention_reference  # noqa: E402
from benchmarks.compile_report import emulated_devices as gpu_devices  # noqa: E402
from mhtma_kernels.ops.triton import launcher as triton_launcher  # noqa: E402
from mhtma_kernels.ops.triton.launcher import KernelConfig, TileConfig  # noqa: E402

from mhtma_kernels.testing import TOLERANCE, assert_close  # noqa: E402

NAMES = ("out", "dq", "dk", "dv", "dtemperature")

# Under the interpreter (no GPU; conftest sets TRITON_INTERPRET=1) the kernels take CPU tensors.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# 16-wide tiles everywhere: several D chunks, several Dv column blocks and partial tiles on both axes;
# one column block per program, so the columns are split over the grid.
SMALL_TILES = KernelConfig(fwd=TileConfig(16, 16, 16, 0, 16), dkdv=TileConfig(16, 16, 16, 16, 16),
                           dq=TileConfig(16, 16, 16, 16, 16))
# Several column blocks per program (the GPU's layout), and still more than one program along the columns
# for Dv, D > 48 (fwd, dq) or > 32 (dkdv).
MULTI_BLOCK_TILES = KernelConfig(fwd=TileConfig(16, 16, 16, 0, 16, num_cb=3), dkdv=TileConfig(16, 16, 16, 16, 16, 2),
                                 dq=TileConfig(32, 16, 16, 16, 16, num_cb=3))
# The most column blocks the kernels hold: 8 (fwd, dq) and 4 (dkdv) accumulators, all of them used.
WIDEST_TILES = KernelConfig(fwd=TileConfig(16, 16, 16, 0, 16, num_cb=8), dkdv=TileConfig(16, 16, 16, 16, 16, 4),
                            dq=TileConfig(16, 16, 16, 16, 16, num_cb=8))
TILES = {"small": SMALL_TILES, "multi-block": MULTI_BLOCK_TILES, "widest": WIDEST_TILES}


def make_inputs(B, H, Nq, Nk, D, Dv, t, rule, dtype=torch.float32, seed=0, device=DEVICE):
    """q, k, v (in `dtype`), a different random key mask per image, temperatures around t (float64 first)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Nq, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, H, Nk, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, H, Nk, Dv, generator=g, dtype=torch.float64)
    key_valid = torch.rand(B, Nk, generator=g) > 0.4
    if rule == "image1-all-invalid":
        key_valid[1] = False
    elif rule == "one-valid-key":
        key_valid[:] = False
        key_valid[:, Nk // 2] = True
    elif rule == "zero-norm":
        q[:, :, ::3] = 0.0
        k[:, :, ::4] = 0.0
    temperature = t * (1.0 + 0.5 * torch.rand(B, H, generator=g, dtype=torch.float64))
    return [x.to(device, dtype) for x in (q, k, v)] + [key_valid.to(device), temperature.to(device, dtype)]


def forward_and_grads(backend, q, k, v, key_valid, temperature, normalize=True):
    """Output and gradients of (out * weight).sum() w.r.t. q, k, v, temperature."""
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v, temperature)]
    q, k, v, temperature = leaves
    if backend == "reference":
        out = masked_temperature_attention_reference(q, k, v, key_valid, temperature, normalize=normalize)
    else:
        out = masked_temperature_attention(q, k, v, key_valid, temperature, normalize=normalize, backend=backend)
    weight = torch.linspace(-1.0, 2.0, out.numel(), dtype=torch.float64, device=out.device)
    weight = weight.reshape(out.shape).to(out.dtype)
    (out * weight).sum().backward()
    return [out.detach()] + [x.grad for x in leaves]


def check_against_float64(case, dtype, normalize=True):
    expected = forward_and_grads("reference", *make_inputs(*case, dtype=torch.float64), normalize=normalize)
    actual = forward_and_grads("triton", *make_inputs(*case, dtype=dtype), normalize=normalize)
    for name, a, e in zip(NAMES, actual, expected):
        assert a.dtype == dtype, name
        assert torch.isfinite(a).all(), f"{name} is not finite"
        assert_close(a, e, dtype, name)


# (B, H, Nq, Nk, D, Dv, temperature, key-validity rule)
CASES = [
    pytest.param((2, 2, 37, 29, 45, 17, 0.1, "random"), id="D45-Nq!=Nk"),
    pytest.param((1, 2, 24, 20, 288, 288, 0.5, "random"), id="D288-Dv288"),
    pytest.param((1, 1, 70, 67, 20, 12, 0.2, "random"), id="partial-tiles-70x67"),
    pytest.param((3, 1, 20, 50, 7, 5, 1e-2, "random"), id="batch3-t1e-2"),
    pytest.param((2, 2, 19, 23, 16, 16, 1e2, "random"), id="t1e2"),
    pytest.param((2, 2, 30, 25, 12, 9, 0.3, "image1-all-invalid"), id="image-all-invalid"),
    pytest.param((2, 2, 18, 15, 9, 4, 0.1, "zero-norm"), id="zero-norm-patches"),
]


@pytest.mark.parametrize("case", CASES)
def test_triton_matches_float64_reference(case):
    check_against_float64(case, torch.float32)


def test_triton_without_normalization():
    check_against_float64((2, 2, 21, 17, 10, 6, 0.7, "random"), torch.float32, normalize=False)


@pytest.mark.parametrize("case", [
    pytest.param((2, 2, 37, 29, 45, 40, 0.1, "random"), id="D45-Dv40"),
    pytest.param((2, 1, 20, 33, 19, 17, 1e-2, "zero-norm"), id="zero-norm-t1e-2"),
    pytest.param((2, 2, 17, 18, 12, 20, 0.3, "image1-all-invalid"), id="image-all-invalid"),
])
@pytest.mark.parametrize("tiles", list(TILES))
def test_small_tiles_cover_d_chunks_and_dv_blocks(case, tiles, monkeypatch):
    """16-wide tiles: D walked in chunks, columns in several blocks per program and over the grid,
    several partial query/key tiles."""
    monkeypatch.setattr(triton_launcher, "choose_config", lambda *args: TILES[tiles])
    check_against_float64(case, torch.float32)


@pytest.mark.parametrize("dv", [16, 48, 130], ids=lambda dv: f"Dv{dv}")
def test_every_column_block_of_the_widest_program(dv, monkeypatch):
    """Dv = 130 needs 9 blocks of 16: 8 accumulators of the first program and one of a second."""
    monkeypatch.setattr(triton_launcher, "choose_config", lambda *args: WIDEST_TILES)
    check_against_float64((1, 1, 18, 17, 70, dv, 0.3, "random"), torch.float32)


@pytest.mark.parametrize("tiles", ["default", "small", "multi-block"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_triton_half_inputs(dtype, tiles, monkeypatch):
    if tiles != "default":
        monkeypatch.setattr(triton_launcher, "choose_config", lambda *args: TILES[tiles])
    check_against_float64((2, 2, 33, 21, 24, 20, 0.2, "random"), dtype)


def test_all_invalid_rows_get_uniform_weights_and_finite_grads():
    q, k, v, key_valid, t = make_inputs(2, 2, 9, 13, 6, 5, 0.05, "random")
    key_valid[:] = False
    out, dq, dk, dv, dt = forward_and_grads("triton", q, k, v, key_valid, t)
    assert_close(out, v.double().mean(dim=2, keepdim=True).expand_as(out), torch.float32, "uniform weights")
    for name, grad in zip(NAMES[1:], (dq, dk, dv, dt)):
        assert torch.isfinite(grad).all(), name
    # Every logit is the constant -lambda_m: nothing depends on q, k or t.
    assert dq.abs().max() == 0 and dk.abs().max() == 0 and dt.abs().max() == 0


def test_tiny_temperature_one_matching_key_returns_its_value():
    """Property: with t -> 0 and one key equal to the query, the output is that key's value."""
    g = torch.Generator().manual_seed(3)
    k = torch.randn(1, 1, 10, 16, generator=g).to(DEVICE)
    v = torch.randn(1, 1, 10, 5, generator=g).to(DEVICE)
    q = k[:, :, [4, 7]] * torch.tensor([3.0, 0.5], device=DEVICE)[:, None]  # same directions as keys 4 and 7
    key_valid = torch.ones(1, 10, dtype=torch.bool, device=DEVICE)
    t = torch.full((1, 1), 1e-4, device=DEVICE)
    out = masked_temperature_attention(q, k, v, key_valid, t, backend="triton")
    torch.testing.assert_close(out[0, 0], v[0, 0, [4, 7]])


def test_backward_saves_no_score_matrix():
    """The autograd node keeps O(N * D) tensors and per-row statistics, nothing Nq x Nk sized."""
    B, H, Nq, Nk, D, Dv = 2, 2, 40, 36, 5, 3
    q, k, v, key_valid, t = (x.requires_grad_() if x.is_floating_point() else x
                             for x in make_inputs(B, H, Nq, Nk, D, Dv, 0.1, "random"))
    out = masked_temperature_attention(q, k, v, key_valid, t, backend="triton")
    node = out.grad_fn
    assert "triton_attention" in type(node).__name__  # the mhtma::triton_attention custom op (ops/triton/op.py)
    saved = node.saved_tensors
    assert len(saved) > 0
    largest = max(s.numel() for s in saved if s is not None)
    assert largest < B * H * Nq * Nk, f"backward saved a tensor of {largest} elements"
    assert largest == B * H * Nq * D  # q itself
    assert any(s is not None and tuple(s.shape) == (B, H, Nq) and s.dtype == torch.float32 for s in saved), "row stats"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
def test_output_is_saved_in_the_input_dtype_with_a_rounding_residual(dtype):
    """No fp32 copy of the output is kept: 16-bit inputs save out and out_fp32 - out, both 16-bit. The
    residual is below one unit in the last place of out, and out + out_lo is closer to the result of
    fp32 inputs than out alone (not equal to it: the weights meet v in the input dtype)."""
    q, k, v, key_valid, t = make_inputs(1, 2, 20, 18, 8, 6, 0.2, "random", dtype=dtype)
    q, k = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1)
    valid_u8, temp = key_valid.view(torch.uint8), t.float()
    out, (row_max2, row_log2sum, out_lo) = triton_launcher.launch_forward(q, k, v, valid_u8, temp, 1e4, None)
    out32, _ = triton_launcher.launch_forward(q.float(), k.float(), v.float(), valid_u8, temp, 1e4, None)
    assert out.dtype == dtype and row_max2.dtype == row_log2sum.dtype == torch.float32
    if dtype == torch.float32:
        assert out_lo is None
        return
    assert out_lo.dtype == dtype
    error_rounded = (out.float() - out32).abs().max()
    error_with_residual = (out.float() + out_lo.float() - out32).abs().max()
    assert error_rounded > 0
    assert error_with_residual < error_rounded
    ulp = out.float().abs() * torch.finfo(dtype).eps + torch.finfo(dtype).tiny  # (the interpreter truncates)
    assert (out_lo.float().abs() <= ulp * 1.0001).all()
    assert out_lo.float().abs().max() > 0


def test_delta_kernel_matches_a_float64_row_dot():
    g = torch.Generator().manual_seed(5)
    out, lo, dout = (torch.randn(2, 3, 7, 37, generator=g, dtype=torch.float64) for _ in range(3))
    delta = triton_launcher._delta(out.float().to(DEVICE), lo.float().to(DEVICE), dout.float().to(DEVICE))
    assert_close(delta.cpu(), (dout * (out + lo)).sum(-1), torch.float32, "delta")
    delta = triton_launcher._delta(out.float().to(DEVICE), None, dout.float().to(DEVICE))
    assert_close(delta.cpu(), (dout * out).sum(-1), torch.float32, "delta without residual")


@pytest.mark.parametrize("precision, expected", [("highest", "ieee"), ("high", "tf32"), ("medium", "tf32")])
def test_fp32_dots_follow_torch_matmul_precision(precision, expected):
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision(precision)
        assert triton_launcher.dot_precision(torch.float32) == expected
        assert triton_launcher.dot_precision(torch.bfloat16) == "tf32"  # ignored by tl.dot for 16-bit tiles
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize("d", [45, 288, 432, 576, 864, 1000])
@pytest.mark.parametrize("kernel", triton_launcher.KERNELS)
def test_autotune_candidates_cover_every_column(kernel, d):
    """Each candidate holds at most the accumulators the kernel has, and its programs cover all columns
    with less than one program's worth of padding."""
    for dtype in (torch.bfloat16, torch.float32):
        tiles = triton_launcher.candidates(kernel, d, d, dtype)
        assert tiles and len(set(tiles)) == len(tiles)
        for tile in tiles:
            assert 1 <= tile.num_cb <= triton_launcher.MAX_COL_BLOCKS[kernel], tile
            width = tile.block_c * tile.num_cb
            assert 0 <= tile.column_splits(d) * width - d < width, tile


def test_gradient_to_a_subset_of_inputs():
    """Only v and temperature require grad: the other gradients are skipped, these stay exact."""
    case = (1, 2, 14, 11, 8, 6, 0.2, "random")
    expected = forward_and_grads("reference", *make_inputs(*case, dtype=torch.float64))
    q, k, v, key_valid, t = make_inputs(*case)
    v.requires_grad_()
    t.requires_grad_()
    out = masked_temperature_attention(q, k, v, key_valid, t, backend="triton")
    weight = torch.linspace(-1.0, 2.0, out.numel(), device=out.device).reshape(out.shape)
    (out * weight).sum().backward()
    assert_close(v.grad, expected[3], torch.float32, "dv")
    assert_close(t.grad, expected[4], torch.float32, "dtemperature")


def test_noncontiguous_inputs():
    q, k, v, key_valid, t = make_inputs(2, 3, 12, 10, 6, 4, 0.3, "random")
    qt, kt, vt = (x.transpose(0, 1).contiguous().transpose(0, 1) for x in (q, k, v))  # same values, other strides
    assert not qt.is_contiguous()
    out = masked_temperature_attention(qt, kt, vt, key_valid, t, backend="triton")
    expected = masked_temperature_attention_reference(q.double(), k.double(), v.double(), key_valid, t.double())
    assert_close(out, expected, torch.float32, "out")


def test_float64_is_refused_with_a_clear_error():
    q, k, v, key_valid, t = make_inputs(1, 1, 4, 4, 3, 2, 0.2, "random", dtype=torch.float64)
    with pytest.raises(TypeError, match=r"backend='triton'.*float64"):
        masked_temperature_attention(q, k, v, key_valid, t, backend="triton")


def test_cpu_tensors_without_interpreter_are_refused(monkeypatch):
    monkeypatch.setattr(triton_launcher, "interpreting", lambda: False)
    q, k, v, key_valid, t = make_inputs(1, 1, 4, 4, 3, 2, 0.2, "random", device="cpu")
    with pytest.raises(ValueError, match=r"backend='triton' needs CUDA tensors.*backend='torch'"):
        masked_temperature_attention(q, k, v, key_valid, t, backend="triton")


def test_empty_value_dim_returns_empty_output():
    q, k, v, key_valid, t = make_inputs(2, 1, 5, 4, 3, 0, 0.2, "random")
    out = masked_temperature_attention(q, k, v, key_valid, t, backend="triton")
    assert out.shape == (2, 1, 5, 0)


def test_gpu_kernels_compile_for_sm90_without_a_gpu(tmp_path):
    """The GPU code path (no bf16 upcast, tensor-core dots, the default block sizes) compiles with ptxas
    for an H100 without register spills and fits its shared memory. Run in a subprocess: this process
    interprets the kernels."""
    script = (
        "import torch\n"
        "from benchmarks.compile_report import compile_for_gpu, resource_usage\n"
        "torch.backends.cuda.matmul.allow_tf32 = True  # fp32 as TF32 (IEEE fp32 dots are the slow exact path)\n"
        "for d in (45, 576):\n"
        "    for dtype in (torch.float16, torch.bfloat16, torch.float32):\n"
        "        for name, kernel in compile_for_gpu(d, d, dtype, arch=90).items():\n"
        "            use = resource_usage(kernel)\n"
        "            print(d, str(dtype)[6:], name, len(kernel.asm['cubin']), use['stack_bytes'], use['shared_bytes'])\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile for real, not from a cache
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root)] + [p for p in [env.get("PYTHONPATH")] if p])
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0 and "ptxas" in result.stderr and "not found" in result.stderr.lower():
        pytest.skip("this triton build ships no ptxas")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines()]
    assert len(rows) == 18, result.stdout
    for d, dtype, name, cubin_bytes, stack, shared in rows:
        assert int(cubin_bytes) > 0, (d, dtype, name)
        assert int(stack) == 0, f"D={d} {dtype} {name} spills registers ({stack} stack bytes)"
        assert int(shared) <= 227 * 1024, f"D={d} {dtype} {name} needs {shared} bytes of shared memory"


@pytest.mark.parametrize("fastest", [0, -1], ids=["first-candidate-fastest", "last-candidate-fastest"])
def test_autotuner_measures_the_shapes_candidates_and_runs_the_fastest(fastest, monkeypatch):
    """config=None (a GPU without MHTMA_AUTOTUNE=0): the forward times every candidate of its shape
    (v3 and version 2 tiles), runs the one measured fastest (here a stand-in timer decides) for both of
    its launches, and its result is right. The kernels themselves run in the interpreter."""
    d, dv, dtype = 40, 24, torch.float32
    expected_tiles = triton_launcher.candidates("fwd", d, dv, dtype)
    tuner = triton_launcher._autotuned("fwd", triton_launcher.devices.current())
    timed, runs = [], []

    def stand_in_timer(*args, config, **meta):
        timed.append(config.kwargs)
        rank = [t.constexprs() for t in expected_tiles].index(config.kwargs)
        return [0.0 if rank == fastest % len(expected_tiles) else 1.0 + rank]

    monkeypatch.setattr(tuner, "_bench", stand_in_timer)
    monkeypatch.setattr(triton_launcher, "_resolve", lambda config, *shape: config)  # autotune although interpreting
    original_run = tuner.fn.run
    monkeypatch.setattr(tuner.fn, "run", lambda *a, **kw: runs.append(kw) or original_run(*a, **kw))
    nq = 20 + fastest % 7  # a shape of its own: the tuner caches per shape
    q, k, v, key_valid, temp = make_inputs(2, 1, nq, 17, d, dv, 0.2, "random", dtype=dtype)
    q, k = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1)
    out, _ = triton_launcher.launch_forward(q, k, v, key_valid.view(torch.uint8), temp.float(), 1e4, None, bounded=True)

    assert [t.constexprs() for t in expected_tiles] == timed  # each candidate of the shape, once
    chosen = expected_tiles[fastest].constexprs()
    assert len(runs) == 2 and all(all(run[name] == value for name, value in chosen.items()) for run in runs)
    assert_close(out, reference_forward(q, k, v, key_valid, temp)[0], dtype, "out")


@pytest.mark.parametrize("autotune", ["0", "1"], ids=["MHTMA_AUTOTUNE=0", "MHTMA_AUTOTUNE=1"])
def test_fixed_tiles_without_autotuning(autotune, monkeypatch):
    """As on a GPU (the launcher told it does not interpret): MHTMA_AUTOTUNE=0 launches the fixed first
    candidate without timing anything, MHTMA_AUTOTUNE=1 times the candidates; the result is right either way."""
    d, dv, dtype = 40, 24, torch.float32
    monkeypatch.setattr(triton_launcher, "interpreting", lambda: False)
    monkeypatch.setenv("MHTMA_AUTOTUNE", autotune)
    tuner = triton_launcher._autotuned("fwd", triton_launcher.devices.current())
    timed, launched = [], []
    monkeypatch.setattr(tuner, "_bench", lambda *a, config, **kw: timed.append(config) or [1.0])
    kernel = triton_launcher._kernel("fwd")
    original_run = kernel.run
    monkeypatch.setattr(kernel, "run", lambda *a, **kw: launched.append(kw) or original_run(*a, **kw))
    q, k, v, key_valid, temp = make_inputs(1, 2, 23 + int(autotune), 17, d, dv, 0.2, "random", dtype=dtype)
    q, k = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1)
    out, _ = triton_launcher.launch_forward(q, k, v, key_valid.view(torch.uint8), temp.float(), 1e4, None, bounded=True)
    first = triton_launcher.candidates("fwd", d, dv, dtype)[0].constexprs()
    assert bool(timed) == (autotune == "1")
    if autotune == "0":
        assert len(launched) == 2 and all(all(run[n] == value for n, value in first.items()) for run in launched)
    assert_close(out, reference_forward(q, k, v, key_valid, temp)[0], dtype, "out")


def test_a_column_block_count_the_kernel_lacks_is_refused(monkeypatch):
    too_wide = KernelConfig(fwd=TileConfig(16, 16, 16, 0, 16, num_cb=9), dkdv=SMALL_TILES.dkdv, dq=SMALL_TILES.dq)
    monkeypatch.setattr(triton_launcher, "choose_config", lambda *args: too_wide)
    q, k, v, key_valid, t = make_inputs(1, 1, 4, 4, 3, 2, 0.2, "random")
    with pytest.raises(ValueError, match=r"fwd kernel holds 1 to 8 column blocks, got num_cb=9"):
        masked_temperature_attention(q, k, v, key_valid, t, backend="triton")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("t", [0.1, 0.01], ids=["t0.1", "t0.01"])
def test_bound_of_unit_vectors_replaces_the_running_max(dtype, t):
    """bounded=True (q, k normalised): for bf16/fp32 and log2(e)/t <= FIXED_MAX_LIMIT the forward uses
    log2(e)/t as every row's max (-lambda_m*log2(e) for an image without a valid key), otherwise the
    running max; both give the same output and the same weights exp2(z2 - row_max2 - row_log2sum)."""
    q, k, v, key_valid, temp = make_inputs(2, 2, 21, 19, 10, 6, t, "image1-all-invalid", dtype=dtype)
    q, k = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1)
    valid_u8, temp = key_valid.view(torch.uint8), temp.float()
    fixed_out, (row_max2, row_log2sum, _) = triton_launcher.launch_forward(q, k, v, valid_u8, temp, 1e4, None, bounded=True)
    online_out, (m2_online, l2_online, _) = triton_launcher.launch_forward(q, k, v, valid_u8, temp, 1e4, None, bounded=False)
    scale2 = triton_launcher.LOG2E / temp  # [B, H]
    uses_bound = dtype != torch.float16 and bool((scale2 <= triton_launcher.FIXED_MAX_LIMIT).all())
    assert uses_bound == (t == 0.1 and dtype != torch.float16)
    if uses_bound:
        torch.testing.assert_close(row_max2[0], scale2[0, :, None].expand_as(row_max2[0]), rtol=1e-6, atol=0)
        assert (row_max2[1] == -1e4 * triton_launcher.LOG2E).all()  # image 1 has no valid key
    else:
        assert torch.equal(row_max2, m2_online)
    assert (m2_online[0] < scale2[0, :, None] - 1e-3).all()  # a running max sits below the bound
    torch.testing.assert_close(row_max2 + row_log2sum, m2_online + l2_online, rtol=1e-5, atol=1e-4)  # the same log-sum-exp
    atol, rtol = TOLERANCE[dtype]
    torch.testing.assert_close(fixed_out.double(), online_out.double(), atol=atol, rtol=rtol)


# ---- forward version 3 (ops/triton/forward.py): every candidate family and the small-tile paths ----

# (B, H, Nq, Nk, D, Dv, temperature, key-validity rule). With normalize=True the launcher runs the fixed-max
# pass for heads with log2(e)/t <= FIXED_MAX_LIMIT (t >= 0.036) and the running-max pass for the others:
# t 0.03 (x 1..1.5) straddles the limit; t 0.01 is all running max; t 100 all fixed max.
V3_CASES = [
    pytest.param((2, 2, 21, 18, 45, 17, 0.1, "image1-all-invalid"), id="D45-Nq!=Nk-image-all-invalid"),
    pytest.param((1, 2, 20, 17, 288, 288, 0.5, "random"), id="D288"),
    pytest.param((1, 1, 18, 20, 576, 576, 0.05, "random"), id="D576"),
    pytest.param((2, 2, 19, 23, 45, 40, 1e-2, "random"), id="D45-t1e-2-running-max"),
    pytest.param((2, 2, 17, 16, 45, 20, 1e2, "random"), id="D45-t1e2"),
    pytest.param((2, 2, 20, 19, 45, 24, 0.03, "random"), id="D45-t0.03"),
    pytest.param((2, 1, 18, 21, 45, 16, 0.2, "one-valid-key"), id="D45-one-valid-key"),
    # the other paper head dims: the rows compiled for them (column splits of 3 and 4, 64-column pieces)
    pytest.param((1, 1, 17, 19, 432, 432, 0.5, "random"), id="D432"),
    pytest.param((2, 1, 18, 17, 864, 864, 2.0, "image1-all-invalid"), id="D864-image-all-invalid"),
]


def v3_tiles(d, dv, dtype):
    """The GPU candidates of the shape (v3 rows of every architecture's family, the sm_90 ones first) and small
    tiles: 16 x 16 (several query and key tiles), column splits over the grid, TMA descriptors where the row
    strides allow them."""
    tiles = {}
    for arch, device in sorted(gpu_devices().items(), key=lambda item: item[0] != 90):
        for t in triton_launcher.candidates("fwd", d, dv, dtype, device):
            if isinstance(t, triton_launcher.ForwardTile):
                name = f"gpu{t.block_m}x{t.block_n}{'-tma' if t.tma else ''}-s{t.splits}-w{t.num_warps}"
                tiles.setdefault(f"{name}-st{t.num_stages}-c{t.c_cap}", t)
    tiles["16x16"] = triton_launcher.ForwardTile(d, dv, 16, 16)
    tiles["16x16-split3"] = triton_launcher.ForwardTile(d, dv, 16, 16, splits=3)
    tiles["16x32-tma"] = triton_launcher.ForwardTile(d, dv, 16, 32, tma=True)  # falls back to cp.async when unaligned
    return tiles


def reference_forward(q, k, v, key_valid, temperature, lambda_m=1e4):
    """float64 output and base-2 log-sum-exp per row [B, H, Nq] of unit q, k (the kernels' row_max2 + row_log2sum)."""
    q, k, v, temperature = (x.double() for x in (q, k, v, temperature))
    z = torch.where(key_valid[:, None, None, :], q @ k.transpose(-1, -2) / temperature[..., None, None], -lambda_m)
    lse2 = torch.logsumexp(z, dim=-1) / torch.log(torch.tensor(2.0, dtype=torch.float64))
    return torch.softmax(z, dim=-1) @ v, lse2


@pytest.mark.parametrize("bounded", [True, False], ids=["bounded", "running-max"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", V3_CASES)
def test_forward_v3_matches_float64_reference(case, dtype, bounded):
    """Every v3 tile of the shape, forward only: the output and the row statistics row_max2 + row_log2sum (what the
    backward reads) against float64, on unit q, k (bounded: the fixed-max pass where the bound allows)."""
    q, k, v, key_valid, temp = make_inputs(*case, dtype=dtype)
    q, k = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1)
    expected, lse2 = reference_forward(q, k, v, key_valid, temp)
    d, dv = case[4], case[5]
    for name, tile in v3_tiles(d, dv, dtype).items():
        config = KernelConfig(fwd=tile, dkdv=SMALL_TILES.dkdv, dq=SMALL_TILES.dq)
        out, (row_max2, row_log2sum, out_lo) = triton_launcher.launch_forward(
            q, k, v, key_valid.view(torch.uint8), temp.float(), 1e4, config, bounded=bounded)
        assert out.dtype == dtype and torch.isfinite(out).all(), name
        full = out.double() + (0 if out_lo is None else out_lo.double())
        assert_close(full, expected, dtype, f"{name} out")
        assert_close(row_max2.double() + row_log2sum.double(), lse2, torch.float32, f"{name} row_max2 + row_log2sum")


# bf16 at t = 0.01 is left out: the inputs' bf16 rounding, amplified by 1/t, exceeds bf16's tolerance against
# float64 of the unrounded inputs whichever kernel runs (version 2 gives the same errors).
V3_GRADIENT_CASES = [(V3_CASES[i], dtype) for i in (0, 2, 3, 5) for dtype in (torch.float32, torch.bfloat16)
                     if not (i == 3 and dtype == torch.bfloat16)]


@pytest.mark.parametrize("case, dtype", V3_GRADIENT_CASES,
                         ids=[f"{c.id}-{str(t)[6:]}" for c, t in V3_GRADIENT_CASES])
@pytest.mark.parametrize("tile", ["gpu-first", "gpu-last", "16x16-split3"])
def test_forward_v3_gradients_match_float64_reference(case, dtype, tile, monkeypatch):
    """Through the public function (normalize=True): the output and every gradient, the backward reading
    the statistics of a v3 forward (the backward at the interpreter's fixed tiles); gpu-first is sm_90's
    first tile, gpu-last the last v3 row of the other families' (the smallest)."""
    case = case.values[0]
    d, dv = case[4], case[5]
    tiles = v3_tiles(d, dv, dtype)
    gpu = [t for name, t in tiles.items() if name.startswith("gpu")] or list(tiles.values())[:1]  # none: 16 x 16
    fwd = {"gpu-first": gpu[0], "gpu-last": gpu[-1]}.get(tile) or tiles[tile]
    base = triton_launcher.choose_config
    monkeypatch.setattr(triton_launcher, "choose_config", lambda *args: dataclasses.replace(base(*args), fwd=fwd))
    check_against_float64(case, dtype)


def test_mma_sync_version_2_row_matches_float64(monkeypatch):
    """The version 2 forward row compiled for fp32 on the mma.sync GPUs where no v3 row fits (sm_86, D = 576:
    64 x 32, 32-wide D chunks, 3 column blocks of 64 on 4 warps): the output and every gradient, with
    two column programs and a partial block."""
    fwd = triton_launcher.candidates("fwd", 576, 576, torch.float32, gpu_devices()[86])[0]
    assert isinstance(fwd, triton_launcher.TileConfig) and fwd.num_warps == 4
    base = triton_launcher.choose_config
    monkeypatch.setattr(triton_launcher, "choose_config", lambda *args: dataclasses.replace(base(*args), fwd=fwd))
    check_against_float64((2, 2, 70, 37, 200, 200, 0.3, "image1-all-invalid"), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_forward_v3_row_statistics_and_paths(dtype):
    """v3's saved statistics: the bound (fixed max) where log2(e)/t <= FIXED_MAX_LIMIT, the running max
    elsewhere, and the same log-sum-exp either way; one launch pair covers heads of both kinds."""
    q, k, v, key_valid, _ = make_inputs(2, 2, 21, 19, 48, 16, 0.1, "image1-all-invalid", dtype=dtype)
    q, k = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1)
    temp = torch.tensor([[0.02, 0.1], [0.5, 0.03]], device=q.device)  # fixed max for log2(e)/t <= 40: t >= 0.036
    valid_u8 = key_valid.view(torch.uint8)
    config = KernelConfig(fwd=triton_launcher.ForwardTile(48, 16, 16, 16, splits=1), dkdv=SMALL_TILES.dkdv, dq=SMALL_TILES.dq)
    _, (row_max2, row_log2sum, _) = triton_launcher.launch_forward(q, k, v, valid_u8, temp, 1e4, config, bounded=True)
    _, (m2_online, l2_online, _) = triton_launcher.launch_forward(q, k, v, valid_u8, temp, 1e4, config, bounded=False)
    scale2 = triton_launcher.LOG2E / temp  # [B, H]
    fixed = scale2 <= triton_launcher.FIXED_MAX_LIMIT
    assert fixed.any() and (~fixed).any(), "the case should mix both paths"
    for b in range(2):
        for h in range(2):
            if not fixed[b, h]:
                assert torch.equal(row_max2[b, h], m2_online[b, h])
            elif b == 1:  # no valid key in image 1
                assert (row_max2[b, h] == -1e4 * triton_launcher.LOG2E).all()
            else:
                torch.testing.assert_close(row_max2[b, h], scale2[b, h].expand_as(row_max2[b, h]), rtol=1e-6, atol=0)
    torch.testing.assert_close(row_max2 + row_log2sum, m2_online + l2_online, rtol=1e-5, atol=1e-4)


def test_forward_tile_for_other_head_dims_is_refused():
    q, k, v, key_valid, t = make_inputs(1, 1, 4, 4, 8, 8, 0.2, "random")
    config = KernelConfig(fwd=triton_launcher.ForwardTile(16, 8, 16, 16), dkdv=SMALL_TILES.dkdv, dq=SMALL_TILES.dq)
    with pytest.raises(ValueError, match=r"forward tile built for D=16, Dv=8 used with D=8, Dv=8"):
        triton_launcher.launch_forward(q, k, v, key_valid.view(torch.uint8), t.float(), 1e4, config)


@pytest.mark.parametrize("width, cap, grain, expected", [
    (576, 512, 16, (512, 64)), (576, 256, 16, (256, 256, 64)), (45, 512, 16, (32, 16)),
    (432, 512, 16, (256, 128, 32, 16)), (432, 256, 32, (256, 128, 64)), (1, 512, 16, (16,)),
], ids=lambda x: str(x))
def test_power_of_two_pieces_cover_the_head_dim(width, cap, grain, expected):
    starts, widths = triton_launcher.pieces(width, cap, grain)
    assert widths == expected
    assert starts == tuple(sum(expected[:i]) for i in range(len(expected)))
    assert sum(widths) >= width > sum(widths) - grain


@pytest.mark.parametrize("d", [45, 288, 432, 576, 864])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
def test_forward_v3_candidates_fit_an_sm90_block(d, dtype):
    """By count: shared memory within 227 KB, accumulators within the register budget; TMA only with 16-byte
    aligned rows; every dtype defaults to v3 wherever a v3 tile fits (fp16 too since its spill was fixed)."""
    tiles = triton_launcher.forward_v3_candidates(d, d, dtype, gpu_devices()[90])
    for tile in tiles:
        assert tile.shared_bytes(dtype.itemsize) <= 227 * 1024, tile
        assert tile.accumulator_registers() <= 144, tile
        assert not tile.tma or triton_launcher.tma_allowed(d, d, dtype), tile
    first = triton_launcher.candidates("fwd", d, d, dtype, gpu_devices()[90])[0]
    assert isinstance(first, triton_launcher.ForwardTile) == bool(tiles)
    if dtype != torch.float32:
        assert tiles, "16-bit inputs have a v3 tile at every benchmark D"
    if dtype == torch.bfloat16 and d == 288:
        assert first.block_m == 128 and first.splits == 1  # 128-row tiles where registers allow


def test_forward_tile_overrides_the_forward_choice_only():
    """Inside benchmarks.forward_tile.forward_tile(tile) the forward runs that tile (here one built for other head dims,
    which the launcher refuses), the backward keeps its own choice; outside, the usual choice again."""
    from benchmarks.forward_tile import forward_tile

    q, k, v, key_valid, t = make_inputs(1, 1, 9, 7, 8, 8, 0.2, "random")
    with forward_tile(triton_launcher.ForwardTile(16, 8, 16, 16)):
        with pytest.raises(ValueError, match=r"forward tile built for D=16, Dv=8 used with D=8, Dv=8"):
            masked_temperature_attention(q, k, v, key_valid, t, backend="triton")
    with forward_tile(triton_launcher.ForwardTile(8, 8, 16, 16, splits=2)):
        inside = masked_temperature_attention(q, k, v, key_valid, t, backend="triton")
    outside = masked_temperature_attention(q, k, v, key_valid, t, backend="triton")
    expected = masked_temperature_attention_reference(q.double(), k.double(), v.double(), key_valid, t.double())
    assert_close(inside, expected, torch.float32, "inside")
    assert_close(outside, expected, torch.float32, "outside")
