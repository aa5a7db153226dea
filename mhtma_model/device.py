"""Where networks run: the one resolver of a device setting ("auto", "cpu", "cuda", "cuda:N"), and the CPU
thread count of the inference commands."""
from __future__ import annotations

import os
from typing import Optional, Union

import torch

from mhtma_kernels.ops.checks import check_device


def resolve_device(device: Union[str, torch.device, None] = "auto") -> torch.device:
    """"auto" (or None) -> CUDA when available, else CPU; "cuda[:N]" without a GPU, or any other
    device type -> ValueError saying what is accepted."""
    name = check_device(device)  # the one rule of device settings (mhtma_kernels.ops.checks)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
    return dev


#: Most threads :func:`default_cpu_threads` picks.
MAX_DEFAULT_THREADS = 4


def default_cpu_threads() -> int:
    """CPU threads for inference when ``--threads`` is not given: ``OMP_NUM_THREADS`` when set, else half of
    the CPUs this process may use, at least 1 and at most :data:`MAX_DEFAULT_THREADS`.

    Why not torch's default (every core): OpenMP threads that wait for a busy core spin. On a shared
    2-core machine one 256 px image took 1.05 s with torch's default and 0.03 s with one thread;
    leaving half the cores free keeps a busy machine usable, and ``--threads N`` overrides it.
    """
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env)
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_THREADS, cpus // 2))


def set_cpu_threads(threads: Optional[int] = None) -> int:
    """``torch.set_num_threads(threads or default_cpu_threads())`` -> the number set; ValueError below 1."""
    if threads is None:
        threads = default_cpu_threads()
    if threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)
    return threads
