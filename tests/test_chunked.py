"""The query-chunked GEMM path (ops/chunked.py) against the float64 oracle, its chunk budget, and the
measured choice of backend="auto" (ops/dispatch.py, ops/backends.py): cache, overrides, a failing
candidate, the report, torch.compile. Nothing here asserts a speed."""
import logging

import pytest
import torch

from mhtma_kernels import masked_temperature_attention
from mhtma_kernels.ops import backends, dispatch_report, rules
from mhtma_kernels.ops.chunked import gemm as chunked
from mhtma_kernels.ops.timed_choice import AUTO, Dispatcher
from mhtma_kernels.ops.reference import l2_normalize
from mhtma_kernels.testing import assert_close
from tests.test_op import NAMES, forward_and_grads, make_inputs

# (B, H, Nq, Nk, D, Dv, temperature, key-validity rule)
SHAPES = [
    pytest.param(2, 2, 37, 29, 45, 17, 0.1, "random", id="odd-D-Nq!=Nk"),
    pytest.param(1, 3, 23, 40, 288, 288, 0.05, "random", id="D288-square"),
    pytest.param(3, 1, 20, 50, 7, 5, 1e-2, "random", id="tiny-t"),
    pytest.param(2, 2, 30, 25, 12, 9, 0.3, "image1-all-invalid", id="all-invalid-image"),
    pytest.param(2, 1, 19, 13, 10, 10, 0.2, "zero-norm", id="zero-norm-patches"),
]
# chunk budgets (MiB): one query row per chunk, partial chunks, one chunk larger than the problem
BUDGETS = [pytest.param("1e-9", id="one-row"), pytest.param("0.01", id="partial"), pytest.param("1e4", id="whole")]


@pytest.fixture
def only_chunked(monkeypatch):
    """backend="auto" with the chunked GEMM path as its one candidate."""
    monkeypatch.setenv("MHTMA_AUTO_CANDIDATES", "chunked")
    return "auto"


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("B,H,Nq,Nk,D,Dv,t,rule", SHAPES)
def test_chunked_path_matches_float64_reference(only_chunked, monkeypatch, budget, dtype, B, H, Nq, Nk, D, Dv, t,
                                                rule):
    """Output and the q, k, v, temperature gradients; float64 exact, float32 to its tolerance."""
    monkeypatch.setenv("MHTMA_CHUNK_MB", budget)
    expected = forward_and_grads("reference", *make_inputs(B, H, Nq, Nk, D, Dv, t, rule))
    actual = forward_and_grads(only_chunked, *make_inputs(B, H, Nq, Nk, D, Dv, t, rule, dtype))
    for name, a, e in zip(NAMES, actual, expected):
        assert a.dtype == dtype and torch.isfinite(a).all(), name
        assert_close(a, e, dtype, name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_chunked_path_half_inputs_keep_their_dtype(only_chunked, dtype):
    expected = forward_and_grads("reference", *make_inputs(2, 2, 33, 21, 24, 24, 0.2, "random"))
    actual = forward_and_grads(only_chunked, *make_inputs(2, 2, 33, 21, 24, 24, 0.2, "random", dtype))
    for name, a, e in zip(NAMES, actual, expected):
        assert a.dtype == dtype, name
        assert_close(a, e, dtype, name)


@pytest.fixture
def cuda_like_gemms(monkeypatch):
    """The CUDA branch of the GEMMs on CPU: 16-bit operands stay 16-bit (gemm_dtype), products come back in
    fp32 (bmm/baddbmm with out_dtype, emulated by fp32 products of the rounded operands, which is what
    fp32 accumulation gives). Counts the GEMMs that saw 16-bit operands."""
    seen = {"16-bit": 0}

    def gemm_dtype(dtype, device):
        return dtype if dtype in (torch.float16, torch.bfloat16) else chunked.compute_dtype(dtype)

    def bmm(a, b, acc):
        assert a.dtype == b.dtype, (a.dtype, b.dtype)
        seen["16-bit"] += a.dtype != acc
        return torch.bmm(a.to(acc), b.to(acc))

    def accumulate(acc, a, b):
        acc.add_(bmm(a, b, acc.dtype))

    monkeypatch.setattr(chunked, "gemm_dtype", gemm_dtype)
    monkeypatch.setattr(chunked, "_bmm", bmm)
    monkeypatch.setattr(chunked, "_accumulate", accumulate)
    return seen


def check_16bit_gemm_path(monkeypatch, dtype, bounded, B, H, Nq, Nk, D, Dv, t, rule):
    """The chunked path (backend="auto" restricted to it) with ``dtype`` inputs against float64 on the same
    rounded inputs: within the dtype's tolerance, or within twice the error of the materialised op in that
    dtype where even that misses the tolerance (bf16 at t = 0.01); several chunks."""
    monkeypatch.setenv("MHTMA_CHUNK_MB", "0.01")
    inputs = make_inputs(B, H, Nq, Nk, D, Dv, t, rule, dtype)
    rounded = [x.double() if x.is_floating_point() else x for x in inputs]  # the oracle sees the rounded inputs
    expected = forward_and_grads("reference", *rounded, normalize=bounded)
    actual = forward_and_grads("auto", *inputs, normalize=bounded)
    plain = forward_and_grads("reference", *inputs, normalize=bounded)
    for name, a, e, p in zip(NAMES, actual, expected, plain):
        assert a.dtype == dtype and torch.isfinite(a).all(), name
        scale = e.abs().max().item()
        if (a.double() - e).abs().max().item() > 2 * (p.double() - e).abs().max().item() + 1e-7 * scale:
            assert_close(a, e, dtype, name)


@pytest.mark.parametrize("bounded", [True, False], ids=["unit-rows", "raw"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("B,H,Nq,Nk,D,Dv,t,rule", SHAPES)
def test_chunked_path_with_16bit_gemm_operands_as_on_cuda(only_chunked, cuda_like_gemms, monkeypatch, dtype, bounded,
                                                         B, H, Nq, Nk, D, Dv, t, rule):
    """The rounding CUDA's chunked path does (q, k, v, dout, p and g as 16-bit GEMM operands, fp32 scores and
    accumulators), see :func:`check_16bit_gemm_path`; every GEMM saw 16-bit operands. (The fixed bound m = 1/t
    with fp16 operands pushes weights below fp16's normal range, 0.48 of the output's scale off at D = 288,
    t = 0.05, so the chunked path does not take it with fp16 operands.)"""
    if rule == "zero-norm" and dtype == torch.float16:
        pytest.skip("a zero patch's normalisation gradient is dy / eps = 1e6 dy: past fp16's range in any path")
    check_16bit_gemm_path(monkeypatch, dtype, bounded, B, H, Nq, Nk, D, Dv, t, rule)
    assert cuda_like_gemms["16-bit"] >= 7  # forward: 2 per chunk; backward: 5 per chunk


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("t", [0.01, 0.05, 0.5], ids=["t0.01", "t0.05", "t0.5"])
def test_fixed_bound_and_chunk_max_agree(dtype, t):
    """bounded=True (unit rows) takes m = 1/t for 16-bit inputs where 1/t <= FIXED_INV_T_LIMIT (else the
    chunk max, as always for fp32/fp64); the weights are the same either way: m + l agrees."""
    q, k, v, key_valid, temperature = make_inputs(2, 2, 17, 19, 11, 6, t, "image1-all-invalid", dtype)
    q, k = l2_normalize(q), l2_normalize(k)
    plain, plain_stats = chunked.chunked_forward(q, k, v, key_valid, temperature, 1e4, bounded=False)
    bound, bound_stats = chunked.chunked_forward(q, k, v, key_valid, temperature, 1e4, bounded=True)
    assert_close(bound, plain.double(), torch.float32, "out")
    assert_close(bound_stats.m + bound_stats.l, (plain_stats.m + plain_stats.l).double(), torch.float32, "m + l")
    inv_t = 1 / temperature.float()
    uses_bound = dtype == torch.bfloat16 and bool((inv_t <= chunked.FIXED_INV_T_LIMIT).all())
    assert torch.equal(bound_stats.m[0], inv_t[0][:, None].expand(-1, 17)) == uses_bound
    assert (bound_stats.m[1] == -1e4).all()  # image 1 has no valid key: its logits are all -lambda_m


BAD_BUDGETS = ["0", "-1", "abc", "inf", "nan", ""]


@pytest.mark.parametrize("value", BAD_BUDGETS[:-1], ids=lambda v: f"env-{v}")
def test_bad_chunk_budget_in_env_is_named(monkeypatch, value):
    monkeypatch.setenv("MHTMA_CHUNK_MB", value)
    with pytest.raises(ValueError, match="MHTMA_CHUNK_MB must be a positive number"):
        chunked.chunk_budget_mb(torch.device("cpu"))


@pytest.mark.parametrize("value", [0, -2.5, "x", float("inf"), True], ids=["zero", "negative", "text", "inf", "bool"])
def test_bad_chunk_budget_keyword_is_named(value):
    q, k, v, key_valid, t = make_inputs(1, 1, 4, 5, 3, 2, 0.1, "random")
    with pytest.raises(ValueError, match="chunk_mb must be a positive number"):
        chunked.chunked_forward(q, k, v, key_valid, t, 1e4, chunk_mb=value)


def test_chunk_budget_keyword_beats_env_and_sizes_the_chunks(monkeypatch):
    monkeypatch.setenv("MHTMA_CHUNK_MB", "1")
    assert chunked.chunk_budget_mb(torch.device("cpu"), chunk_mb=3) == 3.0
    assert chunked.chunk_budget_mb(torch.device("cpu")) == 1.0
    monkeypatch.delenv("MHTMA_CHUNK_MB")
    assert chunked.chunk_budget_mb(torch.device("cpu")) == rules.DEFAULT_CHUNK_MB["cpu"]
    assert chunked.chunk_rows(4, 100, 50, 4, 1e-9) == 1
    assert chunked.chunk_rows(4, 100, 50, 4, 1e4) == 100
    assert chunked.chunk_rows(4, 100, 50, 4, 4 * 50 * 4 * 7 / 2 ** 20) == 7


# Budgets (bytes) for B*H = 2 heads, Nq 12, Nk 9, D 5, Dv 4 in float64: half holds the fp32-class dk, dv
# accumulators of a group (9 * 9 * 8 = 648 B per head), half one chunk (9 * 24 B per row and head).
GROUPINGS = [pytest.param(2 * 2 * 9 * 5 * 24, 2, 5, id="one-group-of-2-heads"),
             pytest.param(2 * 9 * 5 * 24, 1, 5, id="a-group-per-head")]


@pytest.mark.parametrize("budget_bytes,heads,rows", GROUPINGS)
def test_chunked_backward_makes_exactly_five_gemm_passes(monkeypatch, budget_bytes, heads, rows):
    """Per chunk: s = q k^T, dv += p^T dout, dout v^T, dq = g k, dk += g^T q (and nothing else D-wide), for
    every group of heads; the gradients do not depend on the grouping."""
    calls = []
    real_bmm, real_acc = chunked._bmm, chunked._accumulate
    monkeypatch.setattr(chunked, "_bmm", lambda a, b, acc: calls.append("bmm") or real_bmm(a, b, acc))
    monkeypatch.setattr(chunked, "_accumulate", lambda acc, a, b: calls.append("acc") or real_acc(acc, a, b))
    q, k, v, key_valid, t = make_inputs(2, 1, 12, 9, 5, 4, 0.2, "random")
    out, stats = chunked.chunked_forward(q, k, v, key_valid, t, 1e4)
    assert chunked.head_group(2, 9, 9, torch.float64, budget_bytes / 2 ** 20) == heads
    assert chunked.step_rows("backward", heads, 12, 9, torch.float64, torch.float64, budget_bytes / 2 ** 21) == rows
    calls.clear()
    grads = chunked.chunked_backward(q, k, v, key_valid, t, 1e4, stats, torch.ones_like(out),
                                     chunk_mb=budget_bytes / 2 ** 20)
    assert len(calls) == 5 * 3 * (2 // heads)  # 3 chunks of at most 5 rows (12 = 5 + 5 + 2) per group
    whole = chunked.chunked_backward(q, k, v, key_valid, t, 1e4, stats, torch.ones_like(out), chunk_mb=1e4)
    for got, want in zip(grads, whole):
        assert_close(got, want, torch.float64, "grouped vs one chunk")


def dt_errors(backend: str, t: float, device: str = "cpu") -> dict:
    """Largest fp32 dL/dt error (relative to the largest |dL/dt|) vs the float64 oracle over 3 seeds: of
    ``backend`` ("tested") and of the materialised fp32 op ("plain"), inputs on ``device``."""
    errors = {"tested": 0.0, "plain": 0.0}
    for seed in range(3):
        expected = forward_and_grads("reference", *make_inputs(2, 2, 40, 31, 36, 36, t, "random", seed=seed))[-1]
        inputs = [x.to(device) for x in make_inputs(2, 2, 40, 31, 36, 36, t, "random", torch.float32, seed=seed)]
        for name, chosen in (("tested", backend), ("plain", "reference")):
            dt = forward_and_grads(chosen, *inputs)[-1].cpu()
            errors[name] = max(errors[name], ((dt.double() - expected).abs() / expected.abs().max()).max().item())
    return errors


@pytest.mark.parametrize("path", ["chunked", "sdpa"])
@pytest.mark.parametrize("t", [0.01, 0.02, 0.05, 0.1, 0.5, 2.0], ids=lambda t: f"t{t}")
def test_temperature_gradient_within_twice_a_plain_fp32_implementation(monkeypatch, path, t):
    """fp32 dL/dt error vs the float64 oracle: the chunked GEMM path at most 2x that of the materialised fp32
    op. The CPU flash path (PyTorch's kernel) at most 8x: its backward recomputes the weights as
    exp(z - lse) from an fp32 log-sum-exp, so each query row's share of dL/dt carries a relative error of
    about ulp(|lse|) (~2e-6 at 1/t = 20), and the rows' shares cancel in the sum; 0.8-4.5x measured here
    on 3 seeds at t 0.01-0.07 (docs/kernel-notes.md, "The CPU flash path")."""
    bound = {"chunked": 2.0, "sdpa": 8.0}[path]
    monkeypatch.setenv("MHTMA_AUTO_CANDIDATES", path)
    errors = dt_errors("auto", t)
    assert errors["tested"] <= bound * errors["plain"] + 1e-7, errors


# ------------------------------------------------------------------------------------------ dispatch

class FakeTimer:
    """Deterministic 'timings' by candidate name; records each timed call."""

    def __init__(self, ms):
        self.ms, self.calls = ms, []

    def __call__(self, run, device):
        run()
        name = run.name
        self.calls.append(name)
        return self.ms[name]


def trials(*names, fail=()):
    def make(name):
        def run():
            if name in fail:
                raise RuntimeError(f"{name} is broken\nsecond line")

        run.name = name
        return run

    return {n: make(n) for n in names}


def test_dispatcher_times_once_per_key_and_keeps_the_fastest(caplog):
    timer = FakeTimer({"a": 3.0, "b": 1.0, "c": 2.0})
    chooser = Dispatcher("test", timer=timer)
    with caplog.at_level(logging.INFO, logger="mhtma_kernels.dispatch"):
        assert chooser.choose(("k", 1), torch.device("cpu"), torch.float32, trials("a", "b", "c")) == "b"
        assert chooser.choose(("k", 1), torch.device("cpu"), torch.float32, trials("a", "b", "c")) == "b"
    assert timer.calls == ["a", "b", "c"]  # the second call is a cache hit
    assert len([r for r in caplog.records if r.name == "mhtma_kernels.dispatch"]) == 1
    assert chooser.choose(("k", 2), torch.device("cpu"), torch.float32, trials("a", "c")) == "c"
    assert [d["chosen"] for d in chooser.decisions] == ["b", "c"]
    assert chooser.decisions[0]["candidates"] == {"a": 3.0, "b": 1.0, "c": 2.0}


def test_dispatcher_skips_a_failing_candidate_with_one_warning_line():
    chooser = Dispatcher("test", timer=FakeTimer({"a": 1.0, "b": 2.0}))
    with pytest.warns(RuntimeWarning) as record:
        assert chooser.choose("key", torch.device("cpu"), torch.float32, trials("a", "b", fail=("a",))) == "b"
    assert len(record) == 1 and "\n" not in str(record[0].message)
    assert "'a' failed" in str(record[0].message) and "a is broken second line" in str(record[0].message)
    assert chooser.decisions[0]["skipped"] == {"a": "RuntimeError: a is broken second line"}


def test_dispatcher_raises_when_every_candidate_fails():
    chooser = Dispatcher("test", timer=FakeTimer({"a": 1.0, "b": 2.0}))
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="b is broken"):
        chooser.choose("key", torch.device("cpu"), torch.float32, trials("a", "b", fail=("a", "b")))
    assert chooser.cached("key") is None


@pytest.fixture
def fresh_auto(monkeypatch):
    monkeypatch.delenv("MHTMA_BACKEND", raising=False)
    monkeypatch.delenv("MHTMA_AUTO_CANDIDATES", raising=False)
    AUTO.clear()
    yield AUTO
    AUTO.clear()


def test_auto_measures_cpu_candidates_once_and_reports(fresh_auto):
    inputs = make_inputs(2, 2, 21, 17, 10, 10, 0.3, "random", torch.float32)
    expected = masked_temperature_attention(*inputs, backend="reference")
    for _ in range(2):
        assert_close(masked_temperature_attention(*inputs), expected.double(), torch.float32, "auto")
    report = [d for d in dispatch_report() if d["op"] == "auto backend"]
    assert len(report) == 1, report  # the second call hit the cache
    decision = report[0]
    assert decision["device"] == "cpu" and decision["dtype"] == "float32"
    assert set(decision["candidates"]) == {"sdpa", "chunked"} and decision["chosen"] in decision["candidates"]
    assert all(ms >= 0 for ms in decision["candidates"].values())
    forward_and_grads("auto", *inputs)  # with gradients: a new key
    assert [d["key"][-1] for d in dispatch_report() if d["op"] == "auto backend"] == [False, True]


def test_auto_is_forced_by_env_and_by_explicit_backend(fresh_auto, monkeypatch):
    inputs = make_inputs(2, 2, 21, 17, 10, 10, 0.3, "random", torch.float32)
    monkeypatch.setenv("MHTMA_BACKEND", "torch")
    masked_temperature_attention(*inputs)
    masked_temperature_attention(*inputs, backend="reference")
    assert not fresh_auto.decisions  # nothing measured


def test_auto_skips_a_raising_candidate_and_still_returns_the_right_result(fresh_auto, monkeypatch):
    def broken(*args):
        raise RuntimeError("sdpa exploded")

    monkeypatch.setitem(backends.IMPLEMENTATIONS, "sdpa", broken)
    inputs = make_inputs(2, 2, 21, 17, 10, 10, 0.3, "random", torch.float32)
    with pytest.warns(RuntimeWarning, match="'sdpa' failed"):
        out = masked_temperature_attention(*inputs)
    assert fresh_auto.decisions[-1]["chosen"] == "chunked"
    expected = masked_temperature_attention(*inputs, backend="reference")
    assert_close(out, expected.double(), torch.float32, "auto after a failing candidate")


def test_auto_candidates_env_is_checked(fresh_auto, monkeypatch):
    monkeypatch.setenv("MHTMA_AUTO_CANDIDATES", "chunked,warp-drive")
    with pytest.raises(ValueError, match="MHTMA_AUTO_CANDIDATES must name some of"):
        masked_temperature_attention(*make_inputs(1, 1, 4, 5, 3, 3, 0.1, "random", torch.float32))
    monkeypatch.setenv("MHTMA_AUTO_CANDIDATES", "triton")
    with pytest.raises(ValueError, match="none of them applies on cpu"):
        masked_temperature_attention(*make_inputs(1, 1, 4, 5, 3, 3, 0.1, "random", torch.float32))


def test_auto_compiles_fullgraph_and_matches_eager(fresh_auto):
    inputs = make_inputs(2, 2, 12, 9, 8, 8, 0.2, "random", torch.float32)
    compiled = torch.compile(lambda *a: masked_temperature_attention(*a, backend="auto"), fullgraph=True,
                             backend="aot_eager")
    assert_close(compiled(*inputs), masked_temperature_attention(*inputs, backend="reference").double(),
                 torch.float32, "compiled auto")


# ------------------------------------------------------------------- the triton op's chunked backward

def _triton_or_skip():
    pytest.importorskip("triton")
    from mhtma_kernels.ops.triton import launcher as triton_launcher
    if not torch.cuda.is_available() and not triton_launcher.interpreting():
        pytest.skip("triton on CPU needs TRITON_INTERPRET=1 before triton is imported")
    return "cuda" if torch.cuda.is_available() else "cpu"


# (B, H, Nq, Nk, D, Dv, temperature, rule, dtype)
TRITON_CASES = [
    pytest.param(2, 2, 21, 17, 20, 9, 0.1, "image1-all-invalid", torch.float32, id="fp32-all-invalid-image"),
    pytest.param(1, 2, 18, 23, 24, 24, 0.04, "random", torch.float32, id="fp32-fixed-bound"),
    pytest.param(2, 1, 17, 19, 20, 12, 0.2, "random", torch.bfloat16, id="bf16"),
]


@pytest.mark.parametrize("B,H,Nq,Nk,D,Dv,t,rule,dtype", TRITON_CASES)
def test_triton_op_with_the_chunked_backward_matches_float64(monkeypatch, B, H, Nq, Nk, D, Dv, t, rule, dtype):
    """The fused forward's base-2 row maxima drive the chunked GEMM backward (MHTMA_TRITON_BACKWARD=chunked)."""
    device = _triton_or_skip()
    monkeypatch.setenv("MHTMA_TRITON_BACKWARD", "chunked")
    expected = forward_and_grads("reference", *make_inputs(B, H, Nq, Nk, D, Dv, t, rule))
    inputs = [x.to(device) for x in make_inputs(B, H, Nq, Nk, D, Dv, t, rule, dtype)]
    actual = forward_and_grads("triton", *inputs)
    for name, a, e in zip(NAMES, actual, expected):
        assert a.dtype == inputs[0].dtype or name == "dtemperature", name
        assert_close(a.cpu(), e, dtype, name)


def test_triton_backward_env_is_checked(monkeypatch):
    device = _triton_or_skip()
    monkeypatch.setenv("MHTMA_TRITON_BACKWARD", "sideways")
    inputs = [x.to(device) for x in make_inputs(1, 1, 5, 6, 4, 3, 0.2, "random", torch.float32)]
    with pytest.raises(ValueError, match="MHTMA_TRITON_BACKWARD must be one of"):
        forward_and_grads("triton", *inputs)


# ------------------------------------------------ the torch.compile'd elementwise steps (MHTMA_CHUNK_STEPS=compile)
# (the Triton steps, CUDA's default, and the env's checks are in tests/test_chunked_kernels.py)

@pytest.mark.parametrize("budget", ["1e-9", "1e4"], ids=["one-row", "whole"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_compiled_steps_match_float64_reference(only_chunked, monkeypatch, dtype, budget):
    """MHTMA_CHUNK_STEPS=compile runs the elementwise steps torch.compile'd (inductor on CPU here); chunks
    of 1 row and of the whole problem go through the same dynamic-shape graphs."""
    monkeypatch.setenv("MHTMA_CHUNK_STEPS", "compile")
    monkeypatch.setenv("MHTMA_CHUNK_MB", budget)
    monkeypatch.setattr(chunked, "_BROKEN", set())
    args = (2, 2, 13, 11, 9, 5, 0.1, "image1-all-invalid")
    expected = forward_and_grads("reference", *make_inputs(*args))
    actual = forward_and_grads(only_chunked, *make_inputs(*args, dtype))
    for name, a, e in zip(NAMES, actual, expected):
        assert_close(a, e, dtype, name)
    assert chunked._COMPILED.get("forward") is not None and not chunked._BROKEN


def test_a_compiled_step_that_fails_warns_once_and_runs_eagerly(only_chunked, monkeypatch):
    monkeypatch.setenv("MHTMA_CHUNK_STEPS", "compile")
    monkeypatch.setattr(chunked, "_BROKEN", set())

    def broken(*args):
        raise RuntimeError("no compiler\nhere")

    monkeypatch.setitem(chunked._COMPILED, "forward", broken)
    inputs = make_inputs(2, 1, 7, 6, 5, 4, 0.2, "random", torch.float32)
    expected = masked_temperature_attention(*inputs, backend="reference")
    with pytest.warns(RuntimeWarning, match="forward torch.compile'd step failed .*no compiler here") as record:
        for _ in range(2):
            out = masked_temperature_attention(*inputs, backend=only_chunked)
    assert len(record) == 1
    assert_close(out, expected.double(), torch.float32, "eager fallback")
    assert chunked._BROKEN == {("compile", "forward")}


# (B, H, Nq, Nk, D, Dv): the one empty-problem rule of the public function
EMPTY = [pytest.param(2, 1, 0, 5, 4, 3, id="no-queries"), pytest.param(0, 2, 4, 5, 4, 3, id="no-images"),
         pytest.param(2, 1, 4, 5, 4, 0, id="no-value-columns")]


@pytest.mark.parametrize("backend", ["reference", "torch", "auto"])
@pytest.mark.parametrize("B,H,Nq,Nk,D,Dv", EMPTY)
def test_empty_problem_returns_zeros_and_zero_gradients(backend, B, H, Nq, Nk, D, Dv):
    leaves = [x.requires_grad_() if x.is_floating_point() else x
              for x in make_inputs(B, H, Nq, Nk, D, Dv, 0.1, "random", torch.float32)]
    out = masked_temperature_attention(*leaves, backend=backend)
    assert out.shape == (B, H, Nq, Dv) and out.dtype == torch.float32
    out.sum().backward()
    for x in (leaves[0], leaves[1], leaves[2], leaves[4]):
        assert x.grad is not None and x.grad.shape == x.shape and not x.grad.any()
