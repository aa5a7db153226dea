"""Peak memory of one benchmark case.

Two numbers per case, in bytes:

- ``peak_mem_bytes``: the high-water mark while the case runs once, inputs (and weights) included (both
  processes first run the op once on a tiny problem: `memory_probe.warm_up`, the one-time imports of
  PyTorch's custom-op machinery are not the op's memory).
  CUDA: ``torch.cuda.max_memory_allocated()`` after a reset. CPU: the peak resident set size
  (``VmHWM``) of a fresh process that builds the case and runs it once, minus that of an idle
  process that imported torch and the benchmark modules (``python -m benchmarks.memory_probe``).
- ``work_mem_bytes``: the same peak minus what was already held once the inputs were built, i.e. the
  memory the computation itself needs (CUDA: minus ``memory_allocated()`` before the call; CPU: minus
  the probe's ``VmHWM`` after building the inputs).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import torch

from .cases import Case

ROOT = Path(__file__).resolve().parent.parent


def cuda_peak(run) -> dict:
    """Run ``run()`` once on CUDA and read the allocator's high-water mark."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return {"peak_mem_bytes": int(peak), "work_mem_bytes": int(peak - before), "mem_method": "cuda_max_allocated"}


def _probe(argument: str, timeout: float) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "benchmarks.memory_probe", argument], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe for {argument[:80]} failed (rc {done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@lru_cache(maxsize=None)
def idle_baseline_kib() -> int:
    """Peak RSS (KiB) of a fresh process that imported torch and the benchmark modules, then stopped."""
    return int(_probe("idle", timeout=600)["maxrss_kib"])


def cpu_peak(case: Case, timeout: float = 1800) -> dict:
    """Peak RSS of a fresh process running ``case`` once (see the module docstring)."""
    probe = _probe(case.to_json(), timeout=timeout)
    base = idle_baseline_kib()
    return {
        "peak_mem_bytes": int((probe["maxrss_kib"] - base) * 1024),
        "work_mem_bytes": int((probe["maxrss_kib"] - probe["inputs_maxrss_kib"]) * 1024),
        "idle_maxrss_bytes": int(base * 1024),
        "mem_method": "subprocess_vmhwm",
    }
