"""Synchronisation, timing and memory release shared by every benchmark (the pytest-benchmark suites and
``python -m benchmarks.gpu_check``).

- :func:`synchronize` waits for the GPU (no-op on CPU): every timed call of both drivers ends with it.
- :func:`first_call` times one call, compilation and autotuning included when it is the process's first.
- :func:`median_ms` is gpu_check's timer: ``triton.testing.do_bench`` on CUDA (calls slower than
  :data:`SLOW_CALL_MS` get the median of 3 synchronised runs instead), the median of a few wall-clock runs on CPU.
- :func:`timed` = first call + median + CUDA peak: what one gpu_check measurement records.

The pytest-benchmark suites time with ``benchmark.pedantic`` (rounds from :mod:`benchmarks.profiles`) around
a ``run()`` that ends with :func:`synchronize`.
"""
from __future__ import annotations

import contextlib
import time

import torch

from .cases import DTYPES
from .memory import cuda_peak

#: Calls slower than this (ms) are not given to do_bench, which would run them 8+ times.
SLOW_CALL_MS = 250.0


def synchronize(device: str) -> None:
    """Wait for the GPU's queued work when ``device`` is "cuda"."""
    if device == "cuda":
        torch.cuda.synchronize()


def release_memory(device: str) -> None:
    """After a measurement (also a failed one): drop cached CUDA blocks so the next peak starts clean."""
    if device == "cuda":
        with contextlib.suppress(Exception):
            torch.cuda.synchronize()
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()


@contextlib.contextmanager
def matmul_precision(precision: str | None):
    """``torch.set_float32_matmul_precision(precision)`` for the block ("highest" = IEEE, "high" = TF32)."""
    if precision is None:
        yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def autocast(device: str, dtype: str):
    """bf16 / fp16: ``torch.autocast`` on ``device``; fp32: nothing."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=DTYPES[dtype])


def first_call(fn, device: str) -> tuple[float, object]:
    """(wall ms, result) of one synchronised call; includes compilation / autotuning when it is the first."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return (time.perf_counter() - start) * 1e3, result


def median_of_runs(fn, device: str, runs: int) -> float:
    """Median wall ms of ``runs`` synchronised calls."""
    times = [first_call(fn, device)[0] for _ in range(runs)]
    return sorted(times)[len(times) // 2]


def median_ms(fn, device: str, cpu_reps: int = 2, warmup_ms: float = 25.0, rep_ms: float = 100.0) -> tuple[float, str]:
    """(median ms, timer name): ``do_bench`` on CUDA, except for calls slower than :data:`SLOW_CALL_MS`
    ("wall_median3"); on CPU the median of ``cpu_reps`` wall-clock runs ("wall_median")."""
    if device != "cuda":
        return median_of_runs(fn, device, cpu_reps), "wall_median"
    if median_of_runs(fn, device, 1) > SLOW_CALL_MS:
        return median_of_runs(fn, device, 3), "wall_median3"
    from triton.testing import do_bench

    try:
        return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")), "do_bench"
    except TypeError:  # a do_bench without return_mode
        return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5])), "do_bench"


def peak_mb(fn, device: str) -> float | None:
    """CUDA allocator peak of one call above what was allocated before it (the inputs); None on CPU."""
    if device != "cuda":
        return None
    return cuda_peak(fn)["work_mem_bytes"] / 2**20


def finite(result) -> bool:
    """All tensors in ``result`` (a tensor or a tuple / list of them) are finite."""
    tensors = result if isinstance(result, (tuple, list)) else (result,)
    return all(bool(torch.isfinite(t).all()) for t in tensors if isinstance(t, torch.Tensor))


def timed(fn, device: str, **timer) -> dict:
    """First call (its result checked finite), median (``timer``: :func:`median_ms`'s knobs) and peak memory."""
    first, result = first_call(fn, device)
    ok = finite(result)
    del result
    ms, name = median_ms(fn, device, **timer)
    return {"first_call_ms": first, "finite": ok, "ms": ms, "timer": name, "peak_mb": peak_mb(fn, device)}
