"""CI smoke for benchmarks/: the suites import, and every provider that can run here runs once on a tiny shape.

Runs the real pytest-benchmark suites in a subprocess with ``--bench-profile tiny --benchmark-disable``
(each case is still checked against the float64 reference before its single run), plus one CPU
memory probe, one report over a tiny saved result, and the SDPA / FlexAttention formulations against
the reference directly. No timings are asserted.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mhtma_kernels.testing import assert_close

ROOT = Path(__file__).resolve().parent.parent


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"  # triton provider only under the interpreter, tiny shape
    return env


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Run all three suites once (tiny profile, benchmarks disabled, memory probes off)."""
    out = tmp_path_factory.mktemp("bench")
    cmd = [sys.executable, "-m", "pytest", "benchmarks", "-p", "no:cacheprovider", "-o", "python_files=bench_*.py",
           "--bench-profile", "tiny", "--benchmark-disable", "--bench-memory", "off", "-q", "-rs",
           f"--junitxml={out / 'junit.xml'}"]
    done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    return done, (out / "junit.xml").read_text() if (out / "junit.xml").exists() else ""


def test_suites_run_every_available_provider(tiny_run):
    done, junit = tiny_run
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    for provider in ("torch", "reference", "sdpa"):
        assert f"op-{provider}-fwdbwd-fp32" in junit, f"op provider {provider} did not run"
    assert "failures=\"0\"" in junit and "errors=\"0\"" in junit


@pytest.mark.parametrize("name", ["op-triton-fwd", "op-triton-fwdbwd", "layer-mhtma-torch-fwd",
                                  "layer-atma-fwd", "layer-contextual-fwd", "model-mhtma-fwd",
                                  "model-contextual-fwd", "model-mhtma-train"])
def test_named_providers_ran_or_skipped_with_reason(tiny_run, name):
    done, junit = tiny_run
    assert name in junit, f"{name} was not collected"
    # A skipped case carries its reason into the junit report; a run case has no <skipped> element.
    start = junit.index(name)
    case_xml = junit[start:junit.find("</testcase>", start)] if "</testcase>" in junit[start:] else junit[start:]
    if "<skipped" in case_xml:
        assert "message=" in case_xml


def test_memory_probe_reports_rss():
    case = {"level": "op", "provider": "torch", "mode": "fwd", "dtype": "fp32", "batch": 1, "size": 6, "d": 16,
            "heads": 2, "device": "cpu", "extra": {}}
    done = subprocess.run([sys.executable, "-m", "benchmarks.memory_probe", json.dumps(case)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["maxrss_kib"] >= result["inputs_maxrss_kib"] > 0


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("provider", ["sdpa", "flex"])
def test_formulations_match_reference(provider):
    from benchmarks.cases import LAMBDA_M, Case, op_inputs
    from benchmarks.providers import op_provider
    from mhtma_kernels import masked_temperature_attention_reference

    case = Case("op", provider, "fwd", "fp32", 2, 7, 24)  # D = 24: flex pads it to 32
    inputs = op_inputs(case)
    inputs["key_valid"][1] = False  # a batch element with every key in the hole: uniform weights
    fn = op_provider(provider, "cpu", "fwd")
    with torch.no_grad():
        out = fn(**inputs, lambda_m=LAMBDA_M)
    ref_in = {n: (x.double() if x.is_floating_point() else x) for n, x in inputs.items()}
    expected = masked_temperature_attention_reference(**ref_in, lambda_m=LAMBDA_M)
    assert out.shape == expected.shape
    assert_close(out, expected, torch.float32, name=provider)


def test_report_writes_tables_and_plots(tmp_path):
    from benchmarks import report

    def entry(provider, batch, median, peak, level="op", mode="fwd"):
        info = {"level": level, "provider": provider, "mode": mode, "dtype": "fp32", "batch": batch, "size": 8,
                "d": 16, "heads": 2, "device": "cpu", "nq": 64, "nk": 36, "flops": 1e6, "tflops": 1e6 / median / 1e12,
                "peak_mem_bytes": peak, "work_mem_bytes": peak // 2}
        return {"name": f"{level}-{provider}-{batch}", "extra_info": info, "stats": {"median": median}}

    data = {"machine_info": {"cpu": {"brand_raw": "test cpu"}}, "datetime": "2026-01-01T00:00:00",
            "benchmarks": [entry(p, b, t * b, m * b) for b in (2, 4) for p, t, m in
                           (("torch", 1.0, 100), ("reference", 2.0, 800), ("sdpa", 1.5, 300))]
            + [entry(p, b, t * b, 10, level="layer") for b in (2, 4) for p, t in
               (("mhtma-torch", 1.0), ("contextual", 5.0), ("atma", 2.0))]
            + [entry("mhtma", 4, 2.0, 10, level="model")]}
    results = tmp_path / "cpu-test.json"
    results.write_text(json.dumps(data))
    readme = tmp_path / "README.md"
    readme.write_text("# hand-written\n\n<!-- BEGIN RESULTS cpu -->\nold\n<!-- END RESULTS cpu -->\n\ntail\n")
    report.main([str(results), "--readme", str(readme), "--out", str(tmp_path / "plots"), "--section", "cpu"])
    text = readme.read_text()
    assert text.startswith("# hand-written") and text.rstrip().endswith("tail") and "old" not in text
    assert "| 2 |" in text or "| B=2" in text or "2 |" in text
    assert "5.00×" in text  # contextual / mhtma-torch layer speedup at both batches
    assert "8.00×" in text  # reference / torch peak-memory ratio
    assert "| inference | mhtma | 8² | 16 | 4 | 2e+03 | 500 | 2 |" in text  # base, B, ms, ms per image, images/s
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # plots need the optional matplotlib; the tables above do not
        return
    assert list((tmp_path / "plots").glob("*.png"))


# ------------------------------------------------------------------------------ the shared harness itself


def test_timing_runs_the_call_as_asked_and_restores_matmul_precision():
    from benchmarks import timing

    calls = []
    ms = timing.median_of_runs(lambda: calls.append(1), "cpu", runs=3)
    assert len(calls) == 3 and ms >= 0
    first, result = timing.first_call(lambda: torch.ones(2), "cpu")
    assert first >= 0 and torch.equal(result, torch.ones(2))
    assert timing.finite((torch.ones(1), "not a tensor")) and not timing.finite(torch.tensor([float("nan")]))
    before = torch.get_float32_matmul_precision()
    with pytest.raises(RuntimeError, match="inside"):
        with timing.matmul_precision("medium" if before != "medium" else "high"):
            assert torch.get_float32_matmul_precision() != before
            raise RuntimeError("inside")
    assert torch.get_float32_matmul_precision() == before


def test_builders_make_registered_layers_and_refuse_what_cannot_run(monkeypatch):
    from benchmarks import builders
    from benchmarks.providers import Unavailable

    layer = builders.make_layer("mhtma-torch", 8, 2, "cpu")
    assert layer.heads == 2 and layer.backend == "torch"
    assert type(builders.make_layer("contextual", 8, 2, "cpu")).__name__ == "ContextualAttention"
    with pytest.raises(ValueError, match="layer provider must be one of"):
        builders.make_layer("mhtma-cuda", 8, 2, "cpu")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(Unavailable, match="triton runs on CUDA"):
        builders.make_layer("mhtma-triton", 8, 2, "cpu")
    generator = builders.make_generator("none", 4, "cpu")
    assert generator.refine.attention is None
