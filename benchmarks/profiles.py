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


def op_cases(profile: str) -> list[Case]:
    if profile == "gpu":
        providers = OP_PROVIDERS
        full = os.environ.get("BENCH_FULL") == "1"
        cases = []
        for dtype in ("bf16", "fp16", "fp32"):
            for mode, b, size, d, p in itertools.product(("fwd", "fwdbwd"), (2, 4, 8, 16), (32, 64),
                                                         (288, 576, 864), providers):
                if dtype == "bf16" or full or (b == 16 and d == 576):
                    cases.append(Case("op", p, mode, dtype, b, size, d, device="cuda"))
        return cases
    if profile == "cpu":
        shapes = [(2, 32), (4, 32), (8, 32), (2, 64)]
        return [Case("op", p, mode, "fp32", b, size, 288)
                for mode in ("fwd", "fwdbwd") for b, size in shapes for p in ("torch", "reference", "sdpa")]
    if profile == "tiny":
        return [Case("op", p, mode, "fp32", 1, 6, 16)
                for mode in ("fwd", "fwdbwd") for p in OP_PROVIDERS]
    raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")


def layer_cases(profile: str) -> list[Case]:
    if profile == "gpu":
        return [Case("layer", p, mode, "fp32", b, 64, 128, device="cuda")
                for mode in ("fwd", "fwdbwd") for b in (2, 4, 8, 16)
                for p in LAYER_TIMED]
    if profile == "cpu":
        return [Case("layer", p, "fwd", "fp32", b, 32, 64)
                for b in (2, 4, 8, 16) for p in ("mhtma-torch", "atma", "contextual")]
    if profile == "tiny":
        return [Case("layer", p, mode, "fp32", 2, 8, 8)
                for mode in ("fwd", "fwdbwd") for p in LAYER_TIMED]
    raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")


def model_cases(profile: str) -> list[Case]:
    if profile == "gpu":
        cases = [Case("model", p, "fwd", "fp32", b, 256, 32, device="cuda")
                 for b in (1, 16) for p in MODEL_PROVIDERS]
        return cases + [Case("model", p, "train", "fp32", 16, 256, 32, device="cuda") for p in ("mhtma", "contextual")]
    if profile == "cpu":
        return ([Case("model", p, "fwd", "fp32", 1, 256, 24) for p in ("mhtma", "contextual", "none")]
                + [Case("model", "mhtma", "train", "fp32", 1, 128, 32)])
    if profile == "tiny":
        # 64x64: the attention runs at 16x16, where the centred hole leaves valid keys (at 32x32 every
        # 3x3 key window touches the hole: the degenerate all-invalid case, not what a smoke run is for).
        return ([Case("model", p, "fwd", "fp32", 1, 64, 4) for p in ("mhtma", "contextual")]
                + [Case("model", "mhtma", "train", "fp32", 1, 64, 4, extra={"disc_channels": 4})])
    raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")


def timing(profile: str) -> dict:
    """pytest-benchmark pedantic settings per profile (rounds of one iteration each); ``BENCH_ROUNDS=N``
    overrides the number of timed rounds (more rounds on a shared, noisy machine)."""
    settings = {"gpu": {"rounds": 20, "warmup_rounds": 3},
                "cpu": {"rounds": 3, "warmup_rounds": 1},
                "tiny": {"rounds": 1, "warmup_rounds": 0}}[profile]
    if os.environ.get("BENCH_ROUNDS"):
        settings = {**settings, "rounds": max(1, int(os.environ["BENCH_ROUNDS"]))}
    return settings
