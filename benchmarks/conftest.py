"""pytest configuration of the benchmark suites (collected only when asked: files are ``bench_*.py``).

Run from the repository root, e.g.::

    python -m pytest benchmarks -p no:cacheprovider -o python_files='bench_*.py' --bench-profile cpu \
        --benchmark-json benchmarks/results/cpu.json

Options: ``--bench-profile {gpu,cpu,tiny}`` (default: gpu when CUDA is available, else cpu; see
:mod:`benchmarks.profiles`), ``--bench-memory {on,off}`` (CPU memory probes spawn one process per case).
"""
import gc
import os

import pytest
import torch

# fp32 means IEEE fp32 everywhere (the Triton kernels use IEEE dots in fp32): no TF32 in cuDNN convs or
# matmuls, so the baselines' convolutions and the checks against float64 compare like with like.
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False

if not torch.cuda.is_available():
    # The triton provider can only run under the interpreter here (tiny smoke runs); set before import.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from benchmarks import profiles  # noqa: E402
from benchmarks.cases import Case  # noqa: E402
from benchmarks.memory import cpu_peak, cuda_peak  # noqa: E402
from benchmarks.providers import Unavailable  # noqa: E402
from benchmarks.runners import build  # noqa: E402


def pytest_addoption(parser):
    group = parser.getgroup("mhtma benchmarks")
    group.addoption("--bench-profile", choices=profiles.PROFILES, default=None,
                    help="which cases to run (default: gpu with CUDA, else cpu)")
    group.addoption("--bench-memory", choices=("on", "off"), default="on",
                    help="measure peak memory per case (CPU: one fresh process per case)")


def _profile(config) -> str:
    return config.getoption("--bench-profile") or ("gpu" if torch.cuda.is_available() else "cpu")


def pytest_generate_tests(metafunc):
    profile = _profile(metafunc.config)
    for fixture, cases in (("op_case", profiles.op_cases), ("layer_case", profiles.layer_cases),
                           ("model_case", profiles.model_cases)):
        if fixture in metafunc.fixturenames:
            chosen = cases(profile)
            metafunc.parametrize(fixture, chosen, ids=[c.id for c in chosen])


@pytest.fixture
def measure(benchmark, request):
    """``measure(case)``: check against the reference, warm up, time, then record FLOPs and memory."""
    profile = _profile(request.config)
    memory_on = request.config.getoption("--bench-memory") == "on"

    def go(case: Case):
        if case.device == "cuda" and not torch.cuda.is_available():
            pytest.skip("CUDA is not available")
        gc.collect()  # drop the previous case's tensors before this one allocates
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        try:
            bench = build(case)
            bench.check()
        except Unavailable as reason:
            pytest.skip(str(reason))
        except torch.OutOfMemoryError as error:
            pytest.skip(f"out of memory: {str(error).splitlines()[0][:200]}")
        benchmark.group = f"{case.level}-{case.mode}-{case.dtype}"
        benchmark.extra_info.update(case=case.to_json(), level=case.level, provider=case.provider,
                                    mode=case.mode, dtype=case.dtype, batch=case.batch, size=case.size,
                                    d=case.d, heads=case.heads, device=case.device, profile=profile,
                                    checked_against_reference=True, **bench.info)
        if case.level == "op":
            benchmark.extra_info.update(nq=case.nq, nk=case.nk, flops=case.flops())
        benchmark.pedantic(bench.run, iterations=1, **profiles.timing(profile))
        stats = getattr(benchmark, "stats", None)
        if stats is not None and case.flops():
            benchmark.extra_info["tflops"] = case.flops() / stats.stats.median / 1e12
        if stats is not None and "images_per_step" in bench.info:
            benchmark.extra_info["images_per_s"] = bench.info["images_per_step"] / stats.stats.median
        if memory_on:
            mem = cuda_peak(bench.run) if case.device == "cuda" else cpu_peak(case)
            benchmark.extra_info.update(mem)

    return go


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record what the numbers depend on: torch/triton versions, GPU and CPU model, and BENCH_NOTE."""
    machine_info["torch"] = torch.__version__
    try:
        import triton

        machine_info["triton"] = triton.__version__
    except ImportError:
        machine_info["triton"] = "not installed"
    machine_info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    machine_info["cpu_model"] = _cpu_model()
    machine_info["cpu_count"] = os.cpu_count()
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["note"] = os.environ.get("BENCH_NOTE", "")
    machine_info["tf32"] = "off (cuDNN and matmul)"
