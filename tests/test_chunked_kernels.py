"""The Triton row steps of the chunked GEMM path (ops/chunked/row_kernels.py) against their eager twins in
ops/chunked.py, and the whole chunked forward + backward with them forced (MHTMA_CHUNK_STEPS=triton) against
the float64 oracle. Under TRITON_INTERPRET=1 without a GPU (conftest); tiny shapes."""
import json
import os

import pytest
import torch

from mhtma_kernels.ops.chunked import gemm as chunked
from mhtma_kernels.testing import assert_close
from tests.test_chunked import TRITON_CASES, cuda_like_gemms, only_chunked  # noqa: F401 - the fixtures
from tests.test_chunked import check_16bit_gemm_path
from tests.test_chunked import dt_errors
from tests.test_op import NAMES, forward_and_grads, make_inputs

pytest.importorskip("triton")
from mhtma_kernels.ops.chunked import row_kernels as chunked_kernels  # noqa: E402

LAMBDA_M = 1e4
# one temperature per bh row of every problem below: the steps' whole range
TEMPERATURES = (0.01, 0.3, 100.0)

# (rows, Nk, (BLOCK_M, BLOCK_N) or None for row_blocks' choice)
GEOMETRY = [
    pytest.param(5, 37, (2, 16), id="Nk37-partial-blocks"),
    pytest.param(3, 5, (4, 16), id="Nk5-below-BLOCK_N"),
    pytest.param(1, 33, (1, 32), id="one-row-Nk33"),
    pytest.param(6, 64, (2, 32), id="Nk-multiple-of-BLOCK_N"),
    pytest.param(7, 50, None, id="default-blocks"),
]
# (compute dtype of s, dtype e / w / g are written in)
ROUNDINGS = [
    pytest.param(torch.float32, torch.float32, id="fp32"),
    pytest.param(torch.float32, torch.bfloat16, id="fp32-to-bf16"),
    pytest.param(torch.float32, torch.float16, id="fp32-to-fp16"),
    pytest.param(torch.float64, torch.float64, id="fp64"),
]


def _is_interpreted() -> bool:
    if not torch.cuda.is_available() and not chunked_kernels.interpreting():
        pytest.skip("triton on CPU needs TRITON_INTERPRET=1 before triton is imported")
    return chunked_kernels.interpreting()


def _device() -> str:
    return "cpu" if _is_interpreted() else "cuda"


def chunk(rows, nk, dtype, seed=0):
    """(s [3, rows, nk] with |s| <= 1, dp, scale = 1/t [3, 1, 1], invalid [3, 1, nk]); bh 1 has no valid key."""
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(3, rows, nk, generator=g, dtype=torch.float64) * 2 - 1
    dp = torch.randn(3, rows, nk, generator=g, dtype=torch.float64)
    invalid = torch.rand(3, 1, nk, generator=g) < 0.3
    invalid[1] = True
    scale = 1 / torch.tensor(TEMPERATURES, dtype=torch.float64).reshape(3, 1, 1)
    return [x.to(_device()) for x in (s.to(dtype), dp.to(dtype), scale.to(dtype), invalid)]


def fixed_max(scale, invalid):
    """The fixed bound as chunked._fixed_bound gives it: 1/t, or -lambda_m where the image has no valid key."""
    return torch.where(invalid.all(dim=-1, keepdim=True), torch.full_like(scale, -LAMBDA_M), scale)


@pytest.mark.parametrize("compute,rounded", ROUNDINGS)
@pytest.mark.parametrize("use_fixed", [False, True], ids=["row-max", "fixed-max"])
@pytest.mark.parametrize("rows,nk,blocks", GEOMETRY)
def test_forward_step_matches_its_eager_twin(compute, rounded, use_fixed, rows, nk, blocks):
    s, _, scale, invalid = chunk(rows, nk, compute)
    m_fixed = fixed_max(scale, invalid) if use_fixed else None
    e, m, total = chunked._forward_rows_eager(s.clone(), scale, invalid, -LAMBDA_M, m_fixed, rounded)
    s_in = s.clone()
    te, tm, ttotal = chunked_kernels.forward_rows(s_in, scale, invalid, -LAMBDA_M, m_fixed, rounded, blocks)
    assert te.dtype == rounded and tm.dtype == ttotal.dtype == compute
    assert (te.data_ptr() == s_in.data_ptr()) == (rounded == compute)  # in place exactly when no rounding
    assert torch.equal(tm.cpu(), m.expand_as(tm).cpu())  # the same maxima of the same logits
    assert_close(te.cpu(), e.cpu().double(), rounded, "e")
    assert_close(ttotal.cpu(), total.cpu().double(), compute, "sum e")
    assert (ttotal[1] == nk).all()  # no valid key: every logit is the fill, e = 1


@pytest.mark.parametrize("compute,rounded", ROUNDINGS)
@pytest.mark.parametrize("base2", [False, True], ids=["natural", "base2"])
@pytest.mark.parametrize("rows,nk,blocks", GEOMETRY)
def test_backward_step_matches_its_eager_twin(compute, rounded, base2, rows, nk, blocks):
    s, dp, scale, invalid = chunk(rows, nk, compute, seed=1)
    log2e = chunked.LOG2E if base2 else 1.0
    scale, fill = scale * log2e, -LAMBDA_M * log2e
    _, m, _ = chunked._forward_rows_eager(s.clone(), scale, invalid, fill, None, compute)  # the saved maxima
    w, g, gs = chunked._backward_rows_eager(s.clone(), dp.clone(), scale, invalid, fill, m, base2, rounded)
    s_in, dp_in = s.clone(), dp.clone()
    tw, tg, tgs = chunked_kernels.backward_rows(s_in, dp_in, scale, invalid, fill, m, base2, rounded, blocks)
    assert tw.dtype == tg.dtype == rounded and tgs.dtype == compute and tgs.shape == (3,)
    in_place = (tw.data_ptr() == s_in.data_ptr(), tg.data_ptr() == dp_in.data_ptr())
    assert in_place == ((True, True) if rounded == compute else (False, False))
    assert_close(tw.cpu(), w.cpu().double(), rounded, "w")
    assert_close(tg.cpu(), g.cpu().double(), rounded, "g")
    assert_close(tgs.cpu(), gs.cpu().double(), compute, "sum g*s")
    assert not tg[invalid.expand_as(tg)].any()  # invalid keys carry no gradient
    assert_close(tw[1].cpu(), torch.full_like(tw[1], 1 / nk).cpu().double(), rounded, "uniform w")


def test_steps_read_strided_scores():
    """s and dp as views with a row stride > Nk and a column stride 2: the kernels read them as they lie."""
    base, dpbase, scale, invalid = chunk(4, 2 * 21 + 3, torch.float32, seed=2)
    s, dp = base[:, :, 1:43:2], dpbase[:, :, 1:43:2]  # [3, 4, 21], strides (180, 45, 2)
    invalid = invalid[:, :, 1:43:2]
    expected = chunked._forward_rows_eager(s.clone(), scale, invalid, -LAMBDA_M, None, torch.float32)
    actual = chunked_kernels.forward_rows(s.clone(), scale, invalid, -LAMBDA_M, None, torch.float32, (2, 8))
    for name, a, e in zip(("e", "m", "sum"), actual, expected):
        assert_close(a.cpu(), e.cpu().double(), torch.float32, name)
    m = expected[1]
    w, g, gs = chunked._backward_rows_eager(s.clone(), dp.clone(), scale, invalid, -LAMBDA_M, m, False, torch.bfloat16)
    tw, tg, tgs = chunked_kernels.backward_rows(s, dp, scale, invalid, -LAMBDA_M, m, False, torch.bfloat16, (4, 8))
    for name, a, e in zip(("w", "g"), (tw, tg), (w, g)):
        assert_close(a.cpu(), e.cpu().double(), torch.bfloat16, name)
    assert_close(tgs.cpu(), gs.cpu().double(), torch.float32, "sum g*s")


def test_bad_step_inputs_are_one_line_errors():
    s, dp, scale, invalid = chunk(2, 9, torch.float64)
    with pytest.raises(ValueError, match="scores are written as torch.float64, not torch.bfloat16"):
        chunked_kernels.forward_rows(s, scale, invalid, -LAMBDA_M, None, torch.bfloat16)
    with pytest.raises(ValueError, match="scale must be"):
        chunked_kernels.forward_rows(s, scale.float(), invalid, -LAMBDA_M, None, torch.float64)
    with pytest.raises(ValueError, match="dp must match s"):
        chunked_kernels.backward_rows(s, dp[:, :1], scale, invalid, -LAMBDA_M, s[..., :1], False, torch.float64)


@pytest.mark.parametrize("bh,rows,nk,expected", [
    pytest.param(32, 363, 3844, (2, 1024, 4), id="64x64-map"),
    pytest.param(32, 32, 16384, (1, 1024, 4), id="128x128-map-few-rows"),
    pytest.param(1, 1, 5, (1, 8, 1), id="tiny"),
    pytest.param(2, 20, 100, (1, 128, 1), id="small-grid"),
    pytest.param(4096, 100, 100, (16, 128, 4), id="many-rows"),
])
def test_row_blocks_cover_nk_and_keep_the_grid_wide(bh, rows, nk, expected):
    assert chunked_kernels.row_blocks(bh, rows, nk, min_programs=chunked_kernels.MIN_PROGRAMS) == expected
    assert chunked_kernels.row_blocks(bh, rows, nk, blocks=(2, 16)) == (2, 16, 1)  # explicit blocks, warps by rule
    block_m, block_n, _ = chunked_kernels.row_blocks(bh, rows, nk, min_programs=1)  # the interpreter's choice
    assert block_n == expected[1] and block_m >= expected[0] and block_m * block_n <= max(2048, block_n)


# ------------------------------------------------------------------- the chunked path with Triton steps

@pytest.fixture
def triton_steps(monkeypatch):
    """MHTMA_CHUNK_STEPS=triton, a clean failure record, and the number of Triton step launches."""
    _is_interpreted()
    monkeypatch.setenv("MHTMA_CHUNK_STEPS", "triton")
    monkeypatch.setattr(chunked, "_BROKEN", set())
    calls = {"forward": 0, "backward": 0}
    for name in calls:
        real = getattr(chunked_kernels, f"{name}_rows")

        def counted(*args, _real=real, _name=name):
            calls[_name] += 1
            return _real(*args)

        monkeypatch.setattr(chunked_kernels, f"{name}_rows", counted)
    return calls


# (B, H, Nq, Nk, D, Dv, temperature, key-validity rule, dtype, chunk budget MiB)
PATH_CASES = [
    pytest.param(2, 2, 13, 11, 9, 5, 0.1, "image1-all-invalid", torch.float64, "1e-9", id="fp64-one-row-all-invalid"),
    pytest.param(2, 1, 17, 19, 12, 7, 0.02, "random", torch.float32, "0.001", id="fp32-partial-chunks-t0.02"),
    pytest.param(1, 2, 9, 23, 10, 10, 3.0, "zero-norm", torch.float32, "1e4", id="fp32-whole-t3"),
    pytest.param(2, 1, 11, 14, 8, 6, 0.05, "image1-all-invalid", torch.bfloat16, "1e4", id="bf16-fixed-bound"),
]


@pytest.mark.parametrize("B,H,Nq,Nk,D,Dv,t,rule,dtype,budget", PATH_CASES)
def test_chunked_path_with_triton_steps_matches_float64(only_chunked, triton_steps, monkeypatch,  # noqa: F811
                                                        B, H, Nq, Nk, D, Dv, t, rule, dtype, budget):
    """Output and the q, k, v, temperature gradients, every row step a Triton launch (none fell back)."""
    monkeypatch.setenv("MHTMA_CHUNK_MB", budget)
    expected = forward_and_grads("reference", *make_inputs(B, H, Nq, Nk, D, Dv, t, rule))
    inputs = [x.to(_device()) for x in make_inputs(B, H, Nq, Nk, D, Dv, t, rule, dtype)]
    actual = forward_and_grads(only_chunked, *inputs)
    for name, a, e in zip(NAMES, actual, expected):
        assert a.dtype == dtype and torch.isfinite(a).all(), name
        assert_close(a.cpu(), e, dtype, name)
    assert triton_steps["forward"] >= 1 and triton_steps["backward"] >= 1, triton_steps
    assert not chunked._BROKEN
    if budget == "1e-9":
        assert triton_steps["forward"] == Nq  # one row per chunk


@pytest.mark.parametrize("t", [0.01, 0.05, 0.5, 2.0], ids=lambda t: f"t{t}")
def test_temperature_gradient_with_triton_steps_within_twice_plain_fp32(only_chunked, triton_steps, t):  # noqa: F811
    """tests/test_chunked.py's bound on the fp32 dL/dt error, with the row steps as Triton launches."""
    errors = dt_errors(only_chunked, t, _device())
    assert errors["tested"] <= 2 * errors["plain"] + 1e-7, errors
    assert triton_steps["backward"] >= 1 and not chunked._BROKEN


@pytest.mark.parametrize("B,H,Nq,Nk,D,Dv,t,rule,dtype", TRITON_CASES)
def test_triton_op_with_the_chunked_backward_and_triton_steps_matches_float64(triton_steps, monkeypatch,
                                                                             B, H, Nq, Nk, D, Dv, t, rule, dtype):
    """The fused forward's base-2 row maxima drive the chunked backward, whose row steps are Triton launches."""
    monkeypatch.setenv("MHTMA_TRITON_BACKWARD", "chunked")
    expected = forward_and_grads("reference", *make_inputs(B, H, Nq, Nk, D, Dv, t, rule))
    inputs = [x.to(_device()) for x in make_inputs(B, H, Nq, Nk, D, Dv, t, rule, dtype)]
    actual = forward_and_grads("triton", *inputs)
    for name, a, e in zip(NAMES, actual, expected):
        assert_close(a.cpu(), e, dtype, name)
    assert triton_steps["backward"] >= 1 and triton_steps["forward"] == 0 and not chunked._BROKEN


@pytest.mark.parametrize("name", ["forward", "backward"])
def test_a_failing_triton_step_warns_once_and_runs_eagerly(only_chunked, triton_steps, monkeypatch, name):  # noqa: F811
    def broken(*args):
        raise RuntimeError("no ptxas\nhere")

    monkeypatch.setattr(chunked_kernels, f"{name}_rows", broken)
    inputs = [x.to(_device()) for x in make_inputs(2, 1, 7, 6, 5, 4, 0.2, "random", torch.float32)]
    expected = forward_and_grads("reference", *make_inputs(2, 1, 7, 6, 5, 4, 0.2, "random"))
    with pytest.warns(RuntimeWarning, match=f"the {name} Triton kernel failed .*no ptxas here") as record:
        for _ in range(2):
            actual = forward_and_grads(only_chunked, *inputs)
    assert len([r for r in record if "Triton kernel failed" in str(r.message)]) == 1
    for label, a, e in zip(NAMES, actual, expected):
        assert_close(a.cpu(), e, torch.float32, label)
    assert chunked._BROKEN == {("triton", name)}


def test_more_heads_than_the_row_grid_holds_run_the_eager_step(only_chunked, triton_steps, monkeypatch):  # noqa: F811
    """B*H past the row kernels' grid axis (rules.MAX_BATCH_HEADS, lowered to 1 here) takes the eager step
    without a launch, a warning or giving the Triton step up."""
    monkeypatch.setattr(chunked, "MAX_BATCH_HEADS", 1)
    inputs = [x.to(_device()) for x in make_inputs(2, 1, 7, 6, 5, 4, 0.2, "random", torch.float32)]
    expected = forward_and_grads("reference", *make_inputs(2, 1, 7, 6, 5, 4, 0.2, "random"))
    actual = forward_and_grads(only_chunked, *inputs)
    for label, a, e in zip(NAMES, actual, expected):
        assert_close(a.cpu(), e, torch.float32, label)
    assert triton_steps == {"forward": 0, "backward": 0} and not chunked._BROKEN


# ------------------------------------------------------------------------------ choosing the steps

@pytest.mark.parametrize("device,dtype,expected", [
    pytest.param("cpu", torch.float32, "eager", id="cpu-fp32"),
    pytest.param("cuda", torch.float32, "triton", id="cuda-fp32"),
    pytest.param("cuda", torch.float64, "eager", id="cuda-fp64"),
])
def test_default_steps_per_device(monkeypatch, device, dtype, expected):
    monkeypatch.delenv("MHTMA_CHUNK_STEPS", raising=False)
    assert chunked.steps_mode(torch.device(device), dtype) == expected


@pytest.mark.parametrize("value", ["compile", "eager", "triton"])
def test_steps_env_forces_a_mode(monkeypatch, value):
    monkeypatch.setenv("MHTMA_CHUNK_STEPS", value)
    assert chunked.steps_mode(torch.device(_device()), torch.float64) == value


@pytest.mark.parametrize("env,value,match", [
    pytest.param("MHTMA_CHUNK_STEPS", "fused", "MHTMA_CHUNK_STEPS must be one of triton, compile, eager, got 'fused'",
                 id="unknown-mode"),
])
def test_bad_steps_env_is_named(only_chunked, monkeypatch, env, value, match):  # noqa: F811
    monkeypatch.setenv(env, value)
    with pytest.raises(ValueError, match=match):
        forward_and_grads(only_chunked, *make_inputs(1, 1, 4, 5, 3, 2, 0.1, "random", torch.float32))


@pytest.mark.parametrize("ints,expected", [
    pytest.param((3844, 3844 * 363), 4, id="64x64-map"),
    pytest.param((16384, 16384 * 85), 16, id="128x128-map"),
    pytest.param((37, 37 * 5), 1, id="odd-Nk"),
    pytest.param((48, 40), 8, id="strides-decide"),
])
def test_alignment_is_the_power_of_two_dividing_nk_and_strides(ints, expected):
    assert chunked_kernels.alignment(*ints) == expected


def test_row_step_benchmark_smoke_runs_and_checks_the_triton_steps(tmp_path, monkeypatch):
    """benchmarks/chunk_steps.py --smoke: every step and variant in eager and triton mode, the Triton steps'
    values checked against the eager ones (its exit status); no time is asserted."""
    _is_interpreted()
    from benchmarks import chunk_steps

    monkeypatch.delenv("MHTMA_CHUNK_STEPS", raising=False)
    monkeypatch.setattr(chunked, "_BROKEN", set())
    assert chunk_steps.main(["--smoke", "--json", str(tmp_path / "steps.json")]) == 0
    records = json.loads((tmp_path / "steps.json").read_text())
    assert [(r["step"], r["variant"], r["mode"]) for r in records if r["mode"] == "triton"] == [
        (step, variant, "triton") for step, variant, _ in chunk_steps.STEPS]
    assert all(r["same_as_eager"] == "yes" for r in records if r["mode"] == "triton"), records
    assert "MHTMA_CHUNK_STEPS" not in os.environ and not chunked._BROKEN


@pytest.mark.parametrize("bounded", [True, False], ids=["unit-rows", "raw"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_triton_steps_with_16bit_gemm_operands_as_on_cuda(only_chunked, cuda_like_gemms, triton_steps, monkeypatch,  # noqa: F811
                                                         dtype, bounded):
    """CUDA's default chunked path as a whole: 16-bit GEMM operands with fp32 products, and the Triton row
    steps writing e, w and g in the input dtype (tests/test_chunked.py's check)."""
    check_16bit_gemm_path(monkeypatch, dtype, bounded, 2, 2, 37, 29, 45, 17, 0.1, "image1-all-invalid")
    assert cuda_like_gemms["16-bit"] >= 7 and triton_steps["forward"] >= 1 and triton_steps["backward"] >= 1
    assert not chunked._BROKEN
