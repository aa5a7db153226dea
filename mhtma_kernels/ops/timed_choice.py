"""Choice by measurement: the first call for a new (device, dtype, shape bucket, grad or not) times the
candidates that compute exactly the same function once, and keeps the fastest for later calls, in
memory (like ``torch.backends.cudnn.benchmark`` or ``triton.autotune``).

Used by ``backend="auto"`` (candidates: the Triton op, the query-chunked GEMM path and SDPA with the
bias identity on CUDA; SDPA flash attention and the chunked path on CPU) and by the Triton op's choice
of backward (fused kernels or the chunked GEMM backward from the forward's row statistics).

- A candidate that raises while it is timed is skipped with one warning line; if every candidate
  raises, the last error propagates (never a silently wrong or missing result).
- Each decision is logged once at INFO (logger ``mhtma_kernels.dispatch``) and recorded for
  :func:`dispatch_report`.
- Timing runs each candidate once to warm up (compilation, autotuning) and then ``REPEATS`` times,
  keeping the fastest (milliseconds, CUDA synchronised around each run).
- Nothing is timed while a graph is traced (torch.compile / torch.export): the callers then take a
  fixed choice (``ops.backends``), or decide inside a custom op's implementation, which runs outside
  the graph (the Triton op's backward, ``ops.triton.op``).
- One key rule for both (:func:`shape_key`): device, dtype, B*H, Nq and Nk bucketed, D and Dv exact.
"""
import logging
import math
import time
import warnings
from typing import Callable

import torch

LOGGER = logging.getLogger("mhtma_kernels.dispatch")
REPEATS = 2


def bucket(n: int) -> int:
    """Shape bucket of a size: the next power of two (0 stays 0)."""
    return 0 if n <= 0 else 1 << (int(n) - 1).bit_length()


def shape_key(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *flags) -> tuple:
    """(device, dtype, B*H, Nq, Nk bucketed; D, Dv exact; flags): the calls that share one choice."""
    B, H, Nq, D = q.shape
    return (str(q.device), str(q.dtype).replace("torch.", ""), bucket(B * H), bucket(Nq), bucket(k.shape[2]), D,
            v.shape[3], *flags)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(run: Callable[[], object], device: torch.device, repeats: int = REPEATS) -> float:
    """Milliseconds of the fastest of ``repeats`` runs of ``run`` after one warm-up run."""
    run()
    best = math.inf
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        run()
        _synchronize(device)
        best = min(best, (time.perf_counter() - start) * 1e3)
    return best


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:200]}"


class Dispatcher:
    """Chooses among named candidates per key by timing them once; the choices stay in memory.

    ``timer(run, device) -> ms`` is :func:`time_ms` unless given (tests inject a deterministic one)."""

    def __init__(self, name: str, timer: Callable = time_ms):
        self.name = name
        self.timer = timer
        self.choices: dict = {}
        self.decisions: list[dict] = []

    def cached(self, key) -> str | None:
        """The choice already made for ``key``, or None."""
        return self.choices.get(key)

    def choose(self, key, device: torch.device, dtype: torch.dtype, trials: dict) -> str:
        """The name of the fastest candidate for ``key``; ``trials`` maps each name to a callable that runs
        the candidate once on the real inputs. Timed only on the first call for a key."""
        if key in self.choices:
            return self.choices[key]
        if not trials:
            raise ValueError(f"{self.name}: no candidate applies to {key}")
        times, skipped, last_error = {}, {}, None
        for name, trial in trials.items():
            if len(trials) == 1:  # nothing to choose: not timed
                times[name] = None
                continue
            try:
                times[name] = self.timer(trial, device)
            except Exception as error:  # noqa: BLE001 - any failure of a candidate means "not this one"
                skipped[name], last_error = _one_line(error), error
                warnings.warn(f"mhtma {self.name}: candidate {name!r} failed on {key} and is skipped "
                              f"({skipped[name]})", RuntimeWarning, stacklevel=3)
        if not times:
            raise last_error
        chosen = min(times, key=lambda n: math.inf if times[n] is None else times[n])
        self.choices[key] = chosen
        self.decisions.append(dict(op=self.name, device=str(device), dtype=str(dtype).replace("torch.", ""),
                                   key=key, candidates=times, skipped=skipped, chosen=chosen))
        LOGGER.info("%s: %s for %s (ms: %s)", self.name, chosen, key,
                    ", ".join(f"{n} {'-' if t is None else f'{t:.3f}'}" for n, t in times.items()))
        return chosen

    def clear(self) -> None:
        """Forget every choice (the next call per key measures again)."""
        self.choices.clear()
        self.decisions.clear()


#: The op's ``backend="auto"`` choice and the Triton op's choice of backward.
AUTO = Dispatcher("auto backend")
TRITON_BACKWARD = Dispatcher("triton backward")


def dispatch_report() -> list[dict]:
    """Every decision made so far in this process, one dict each: ``op`` (which choice), ``device``,
    ``dtype``, ``key`` (the shape bucket and grad flag), ``candidates`` ({name: ms, None when there was
    only one}), ``skipped`` ({name: error}) and ``chosen``."""
    return [dict(d, candidates=dict(d["candidates"]), skipped=dict(d["skipped"]))
            for d in AUTO.decisions + TRITON_BACKWARD.decisions]
