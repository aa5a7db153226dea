"""Which cases each suite runs: ``gpu`` (the full picture), ``cpu`` (a subset for a small CPU), ``tiny`` (smoke).

GPU (``bash benchmarks/run_gpu.sh``)
  op:    providers triton, torch, reference, sdpa, flex x fwd, fwd+bwd x
         bf16 on every shape B in {2, 4, 8, 16} x feature map {32, 64} x D in {288, 576, 864};
         fp16 and fp32 on B = 16, D = 576, both feature maps (``BENCH_FULL=1``: every shape in every dtype)
  layer: mhtma-triton, mhtma-torch, atma, contextual x B in {2, 4, 8, 16} on a 64x64 map with 128
         channels (2 heads -> D = 576 per head), fwd and fwd+bwd, fp32
  model: generator (base_channels 32) at 256x256, attention mhtma / atma / contextual / none,
         inference at batch 1 and 16; one training step (G + D) at batch 16, mhtma and contextual
CPU (``bash benchmarks/run_cpu.sh``; sized to finish in about ten minutes on a shared 2-core machine)
  op:    torch, reference, sdpa x fwd, fwd+bwd x fp32; B in {2, 4, 8} on 32x32 and B = 2 on 64x64, D = 288
         (triton and flex are GPU providers: the Triton interpreter and unfused eager FlexAttention
         on CPU measure Python, not the kernels)
  layer: mhtma-torch, atma, contextual x B in {2, 4, 8, 16}, 32x32 map, 64 channels (D = 288), fwd, fp32
         (B = 16 is the CPU target shape of the issue on the model's speed: mhtma >= 0.8x the for-loop baseline)
  model: generator (base_channels 24) at 256x256, mhtma, contextual and none, inference at batch 1; one
         training step at 128x128, batch 1, mhtma (base_channels 32)
tiny (the CI smoke, ``--benchmark-disable``): every provider once on a tiny shape.
"""
from __future__ import annotations

import itertools
import os

from .cases import Case
from .providers import OP_PROVIDERS
from .builders import LAYER_PROVIDERS, MODEL_PROVIDERS

#: Every layer provider but the reference-backend ones (those are the correctness oracle, not timed).
LAYER_TIMED = tuple(p for p in LAYER_PROVIDERS if not p.endswith("-reference"))

PROFILES = ("gpu", "cpu", "tiny")


def _grid(level: str, providers, shapes, d: int, modes=("fwd", "fwdbwd"), dtype: str = "fp32",
          device: str = "cpu", extra: dict | None = None) -> list[Case]:
    """Every (mode, (batch, size), provider) of ``level`` with head dim / channels / base ``d``, in that order."""
    return [Case(level, p, mode, dtype, b, size, d, device=device, extra=dict(extra or {}))
            for mode, (b, size), p in itertools.product(modes, shapes, providers)]


def _for_profile(profile: str, **cases) -> list[Case]:
    """``cases[profile]()``: the case list of one profile (each given as a function of no arguments)."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    return cases[profile]()


def _op_gpu() -> list[Case]:
    full = os.environ.get("BENCH_FULL") == "1"
    return [Case("op", p, mode, dtype, b, size, d, device="cuda")
            for dtype in ("bf16", "fp16", "fp32")
            for mode, b, size, d, p in itertools.product(("fwd", "fwdbwd"), (2, 4, 8, 16), (32, 64),
                                                         (288, 576, 864), OP_PROVIDERS)
            if dtype == "bf16" or full or (b == 16 and d == 576)]


def op_cases(profile: str) -> list[Case]:
    return _for_profile(
        profile, gpu=_op_gpu,
        cpu=lambda: _grid("op", ("torch", "reference", "sdpa"), [(2, 32), (4, 32), (8, 32), (2, 64)], 288),
        tiny=lambda: _grid("op", OP_PROVIDERS, [(1, 6)], 16))


def layer_cases(profile: str) -> list[Case]:
    batches = (2, 4, 8, 16)
    return _for_profile(
        profile,
        gpu=lambda: _grid("layer", LAYER_TIMED, [(b, 64) for b in batches], 128, device="cuda"),
        cpu=lambda: _grid("layer", ("mhtma-torch", "atma", "contextual"), [(b, 32) for b in batches], 64,
                          modes=("fwd",)),
        tiny=lambda: _grid("layer", LAYER_TIMED, [(2, 8)], 8))


def model_cases(profile: str) -> list[Case]:
    # tiny at 64x64: the attention runs at 16x16, where the centred hole leaves valid keys (at 32x32 every
    # 3x3 key window touches the hole: the degenerate all-invalid case, not what a smoke run is for).
    return _for_profile(
        profile,
        gpu=lambda: (_grid("model", MODEL_PROVIDERS, [(1, 256), (16, 256)], 32, modes=("fwd",), device="cuda")
                     + _grid("model", ("mhtma", "contextual"), [(16, 256)], 32, modes=("train",), device="cuda")),
        cpu=lambda: (_grid("model", ("mhtma", "contextual", "none"), [(1, 256)], 24, modes=("fwd",))
                     + _grid("model", ("mhtma",), [(1, 128)], 32, modes=("train",))),
        tiny=lambda: (_grid("model", ("mhtma", "contextual"), [(1, 64)], 4, modes=("fwd",))
                      + _grid("model", ("mhtma",), [(1, 64)], 4, modes=("train",), extra={"disc_channels": 4})))


def timing(profile: str) -> dict:
    """pytest-benchmark pedantic settings per profile (rounds of one iteration each); ``BENCH_ROUNDS=N``
    overrides the number of timed rounds (more rounds on a shared, noisy machine)."""
    settings = {"gpu": {"rounds": 20, "warmup_rounds": 3},
                "cpu": {"rounds": 3, "warmup_rounds": 1},
                "tiny": {"rounds": 1, "warmup_rounds": 0}}[profile]
    if os.environ.get("BENCH_ROUNDS"):
        settings = {**settings, "rounds": max(1, int(os.environ["BENCH_ROUNDS"]))}
    return settings
