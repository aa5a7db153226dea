"""CI for ``python -m benchmarks.gpu_check``: the ``--smoke`` run (CPU, Triton interpreter, tiny shapes) runs
every part and writes sane records, and the driver records failures, timeouts and spent budgets instead of
stopping. No timing is asserted."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = ("level", "provider", "mode", "dtype", "batch", "d", "ms", "peak_mb", "status", "error")
# Normwise relative error bounds for the smoke shapes (D=18): about 3-10x what the kernels give there, far
# below the O(1) error of a wrong result.
MAX_ERR = {"bf16": 5e-2, "fp16": 1e-2, "fp32": 1e-5}
# PyTorch's CPU SDPA (the comparison, not ours) gives ~3e-4 for dv of the all-invalid image in fp32.
SDPA_MAX_ERR = dict(MAX_ERR, fp32=1e-3)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    results = ROOT / "benchmarks" / "results"
    before = sorted(results.iterdir()) if results.exists() else []
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    # A generous budget: on a loaded machine the default 100 s could skip measurements and flake the test.
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--smoke", "--out", str(out), "--budget", "900"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    after = sorted(results.iterdir()) if results.exists() else []
    files = sorted(out.glob("gpu-check-*-smoke.json"))
    records = json.loads(files[0].read_text()) if len(files) == 1 else None
    return done, records, before == after


def test_smoke_run_finishes_and_prints_the_table(smoke):
    done, records, results_untouched = smoke
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert records is not None, "expected exactly one gpu-check-*-smoke.json in --out"
    assert results_untouched, "the smoke run wrote into benchmarks/results"
    for title in ("warm-up", "correctness:", "op:", "layer:", "model:", "=== json:"):
        assert title in done.stdout


def test_header_and_required_fields(smoke):
    _, records, _ = smoke
    header, rest = records[0], records[1:]
    assert header["level"] == "header" and header["smoke"] is True
    assert header["torch"] and header["triton"] and header["gpu"].startswith("cpu")
    assert header["capability"] is None and header["device_model"] is None  # no GPU: nothing sized for one
    assert {r["level"] for r in rest} == {"warmup", "correct", "op", "layer", "model"}
    for r in rest:
        assert all(key in r for key in REQUIRED), r
        assert r["mode"] in ("fwd", "fwdbwd", "train") and r["dtype"] in ("bf16", "fp16", "fp32"), r
        assert r["status"] in ("ok", "failed", "skipped"), r


def test_every_measurement_ran_except_flex_backward_on_cpu(smoke):
    _, records, _ = smoke
    for r in records[1:]:
        if r["provider"] == "flex" and r["mode"] == "fwdbwd":
            assert r["status"] == "skipped" and "backward" in r["error"], r
        else:
            assert r["status"] == "ok", r
            assert r["level"] in ("warmup", "correct") or r["ms"] > 0, r
            assert r["finite"] is True, r
    providers = {(r["level"], r["provider"]) for r in records[1:] if r["status"] == "ok"}
    assert {("op", p) for p in ("triton", "sdpa", "reference", "flex", "chunked", "auto", "triton-chunked-bwd")} <= providers
    auto = [r for r in records[1:] if r["level"] == "op" and r["provider"] == "auto" and r["status"] == "ok"]
    assert auto and all(r["auto_chosen"] in r["auto_candidates_ms"] for r in auto), auto
    assert {("layer", "mhtma-triton"), ("layer", "contextual")} <= providers
    assert {("model", a) for a in ("mhtma", "contextual", "none")} <= providers


def test_correctness_errors_are_small_for_both_images(smoke):
    _, records, _ = smoke
    correct = [r for r in records if r["level"] == "correct"]
    assert {(r["provider"], r["dtype"], r["precision"]) for r in correct} == {
        (p, dt, prec) for p in ("triton", "sdpa")
        for dt, prec in (("bf16", None), ("fp16", None), ("fp32", "highest"), ("fp32", "high"))} | {
        ("chunked", "bf16", None), ("triton-chunked-bwd", "bf16", None)}
    for r in correct:
        # image 0 has valid keys (gradients to q, k, t are non-trivial), image 1 none
        assert (r["valid_keys"] > 0) == (r["case"] == "mixed"), r
        for key in ("err_out", "err_dq", "err_dk", "err_dv", "err_dtemperature"):
            bound = (SDPA_MAX_ERR if r["provider"] == "sdpa" else MAX_ERR)[r["dtype"]]
            assert 0 <= r[key] <= bound, (key, r)


def test_op_records_carry_flops_and_model_records_per_image_time(smoke):
    _, records, _ = smoke
    for r in records[1:]:
        if r["level"] == "op" and r["status"] == "ok":
            flops = 4 * r["batch"] * r["heads"] * r["nq"] * r["nk"] * r["d"] * (3.5 if r["mode"] == "fwdbwd" else 1)
            assert r["tflops"] == pytest.approx(flops / (r["ms"] * 1e-3) / 1e12)
        if r["level"] == "model":
            assert r["ms_per_image"] == pytest.approx(r["ms"] / r["batch"])


# ------------------------------------------------------------------------------------ the driver itself


def _recorder(tmp_path):
    from benchmarks.gpu_check import Recorder

    return Recorder(tmp_path / "x.json", {"level": "header"})


def _record():
    return {"level": "op", "provider": "p", "mode": "fwd", "dtype": "fp32", "batch": 1, "d": 8}


def test_a_failing_measurement_is_recorded_and_written(tmp_path):
    from benchmarks.gpu_check import run_one

    recorder = _recorder(tmp_path)

    def boom():
        raise RuntimeError("kernel exploded")

    (rec,) = run_one(recorder, _record(), boom, time.monotonic() + 60, 60, "cpu")
    assert rec["status"] == "failed" and "RuntimeError: kernel exploded" in rec["error"] and rec["ms"] is None
    assert json.loads((tmp_path / "x.json").read_text())[1]["error"] == rec["error"]
    (ok,) = run_one(recorder, _record(), lambda: {"ms": 1.5, "peak_mb": 2.0}, time.monotonic() + 60, 60, "cpu")
    assert ok["status"] == "ok" and ok["ms"] == 1.5 and ok["error"] is None


def test_a_measurement_past_its_cap_is_stopped(tmp_path):
    from benchmarks.gpu_check import run_one

    start = time.monotonic()
    (rec,) = run_one(_recorder(tmp_path), _record(), lambda: time.sleep(30), start + 60, 0.5, "cpu")
    assert rec["status"] == "failed" and "MeasureTimeout" in rec["error"]
    assert time.monotonic() - start < 10


def test_a_spent_budget_skips_without_running(tmp_path):
    from benchmarks.gpu_check import run_one

    ran = []
    (rec,) = run_one(_recorder(tmp_path), _record(), lambda: ran.append(1), time.monotonic() - 1, 60, "cpu")
    assert rec["status"] == "skipped" and "budget" in rec["error"] and not ran


def test_deadlines_are_cumulative_shares_and_only_is_checked():
    from benchmarks.gpu_check import PART_SHARES, deadlines, parse_args

    ends = deadlines(["op", "model"], 100.0, 0.0)
    assert ends["model"] == pytest.approx(100.0)
    assert ends["op"] == pytest.approx(100.0 * PART_SHARES["op"] / (PART_SHARES["op"] + PART_SHARES["model"]))
    assert parse_args(["--only", "layer,op"]).only == ["layer", "op"]
    with pytest.raises(SystemExit):
        parse_args(["--only", "op,bogus"])


@pytest.mark.timeout(120)
def test_warm_up_records_each_worker_and_a_chatty_worker_does_not_block(monkeypatch):
    from benchmarks import gpu_check_cases as cases

    monkeypatch.setattr(cases, "warm_combos", lambda setup: [("bf16", None, 8), ("fp32", "high", 8)])

    def command(setup, combo):  # stand-ins for the real worker: one succeeds, one fails after 200 kB of stderr
        if combo[0] == "bf16":
            return [sys.executable, "-c", "print('{\"first_call_ms\": 1.5, \"finite\": true}')"]
        return [sys.executable, "-c", "import sys; sys.stderr.write('x' * 200000 + 'the end'); sys.exit(3)"]

    monkeypatch.setattr(cases, "_worker_command", command)
    good, bad = cases.warm_all(cases.make_setup(smoke=True))
    assert good["first_call_ms"] == 1.5 and good["finite"] is True and good["dtype"] == "bf16"
    assert bad["status"] == "failed" and "rc 3" in bad["error"] and bad["error"].endswith("the end")
    assert (bad["dtype"], bad["precision"], bad["d"]) == ("fp32", "high", 8)


def test_gpu_plan_covers_the_target_grid():
    from benchmarks import gpu_check_cases as cases

    setup = cases.make_setup(smoke=False)
    assert (setup.batch, setup.heads, setup.nq, setup.nk) == (16, 2, 4096, 3844)
    op = [r for r, _ in cases.op_plan(setup)]
    for d in (288, 432, 576, 864):
        for mode in ("fwd", "fwdbwd"):
            for provider in ("triton", "sdpa", "reference", "flex"):
                assert sum((r["provider"], r["mode"], r["dtype"], r["d"]) == (provider, mode, "bf16", d)
                           for r in op) == 1
    fp32 = {(r["provider"], r["mode"], r["precision"]) for r in op if r["dtype"] == "fp32"}
    assert fp32 == {(p, m, prec) for p in ("triton", "sdpa") for m in ("fwd", "fwdbwd") for prec in ("highest", "high")}
    layer = {(r["provider"], r["mode"], r["dtype"], r["batch"], r["d"]) for r, _ in cases.layer_plan(setup)}
    assert layer == {(p, m, dt, 16, 128) for p in ("mhtma-triton", "contextual") for m in ("fwd", "fwdbwd")
                     for dt in ("bf16", "fp32")}
    model = {(r["provider"], r["dtype"], r["batch"], r["d"]) for r, _ in cases.model_plan(setup)}
    assert model == {(a, dt, b, 24) for a in ("mhtma", "contextual", "none") for dt in ("bf16", "fp32")
                     for b in (1, 16)}
    correct = {(r["provider"], r["dtype"], r["precision"], r["d"]) for r, _ in cases.correct_plan(setup)}
    assert ("triton", "fp32", "high", 576) in correct and ("triton", "bf16", None, 864) in correct
    # every triton shape the later parts run is warmed: the generator's attention has D = 9 * 4 * 24 / 2
    assert set(cases.warm_combos(setup)) == {(dt, prec, d) for _, dt, prec, d in correct} | {("fp32", "highest", 432)}


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message shown without a GPU")
def test_without_a_gpu_the_full_run_refuses_and_points_to_smoke(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--smoke" in done.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.timeout(120)
def test_warm_up_stopped_by_its_cap_keeps_finished_workers(monkeypatch, tmp_path):
    from benchmarks import gpu_check_cases as cases
    from benchmarks.gpu_check import run_one

    monkeypatch.setattr(cases, "warm_combos", lambda setup: [("bf16", None, 8), ("fp16", None, 8)])

    def command(setup, combo):  # the first worker answers at once, the second never finishes in time
        if combo[0] == "bf16":
            return [sys.executable, "-c", "print('{\"first_call_ms\": 2.0, \"finite\": true}')"]
        return [sys.executable, "-c", "import time; time.sleep(60)"]

    monkeypatch.setattr(cases, "_worker_command", command)
    (record, thunk), = cases.warm_plan(cases.make_setup(smoke=True))
    start = time.monotonic()
    done, stopped = run_one(_recorder(tmp_path), record, thunk, start + 60, 3.0, "cpu")
    assert time.monotonic() - start < 30
    assert done["status"] == "ok" and done["first_call_ms"] == 2.0 and done["dtype"] == "bf16"
    assert stopped["status"] == "failed" and "MeasureTimeout" in stopped["error"] and stopped["dtype"] == "fp16"


def test_graph_break_count_of_the_generator_is_zero_on_cpu():
    """The model rows with --compile record torch._dynamo.explain's graph-break count; for the generator with
    the torch backend on CPU it is 0 (the attention op is one traceable node)."""
    import torch

    from benchmarks import gpu_check_cases as cases
    from mhtma_model.networks import InpaintGenerator

    setup = cases.make_setup(smoke=True)
    torch.manual_seed(0)
    generator = InpaintGenerator(base_channels=4, attention="mhtma", backend="torch").eval()
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    mask = cases.square_hole(1, 32, "cpu")
    assert cases.graph_breaks(generator, image, mask, setup, "fp32") == 0


def test_model_table_reports_graph_breaks_of_compiled_rows():
    from benchmarks import gpu_check

    base = dict(level="model", mode="fwd", batch=16, d=24, size=256, status="ok", ms=32.0, ms_per_image=2.0,
                peak_mb=100.0, error=None, timer="do_bench")
    records = [dict(base, provider="mhtma", dtype="bf16"),
               dict(base, provider="mhtma+compile", dtype="bf16", graph_breaks=0),
               dict(base, provider="mhtma+compile", dtype="fp32", graph_breaks=2)]
    lines = gpu_check.table_model(records)
    assert lines[-1] == "torch.compile graph breaks (mhtma, triton): bf16 0, fp32 2"
    assert not any("graph breaks" in line for line in gpu_check.table_model(records[:1]))


def test_an_added_op_row_is_measured_and_gets_its_own_table_column(monkeypatch, tmp_path):
    """What benchmarks/README.md tells a contributor to do: one OpRow with its own provider label and function."""
    import torch

    from benchmarks import gpu_check, gpu_check_cases as cases
    from benchmarks.gpu_check import run_one

    calls = []

    def mine(q, k, v, key_valid, temperature, lambda_m):
        calls.append(q.shape)
        return torch.zeros(q.shape[:3] + v.shape[-1:], dtype=q.dtype)

    row = cases.OpRow("mine", "fwd", "fp32", 8, fn=mine, fields={"variant": "zeros"})
    monkeypatch.setattr(cases, "op_rows", lambda setup: [row])
    setup = cases.make_setup(smoke=True)
    (record, thunk), = cases.op_plan(setup)
    assert record["provider"] == "mine" and record["variant"] == "zeros" and record["d"] == 8
    (rec,) = run_one(_recorder(tmp_path), record, thunk, time.monotonic() + 60, 60, "cpu")
    assert rec["status"] == "ok" and rec["ms"] > 0 and rec["finite"] is True and calls
    assert calls[0] == (setup.batch, setup.heads, setup.nq, 8)
    lines = gpu_check.table_op([rec])
    assert "mine" in lines[1] and "ms" in lines[2]
