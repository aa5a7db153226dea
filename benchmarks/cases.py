"""Benchmark cases: one serialisable spec per (level, provider, shape, dtype, mode), and how to build it.

A :class:`Case` is plain data (it round-trips through JSON) so that the same case can be rebuilt in a
fresh process to measure its peak resident memory (:mod:`benchmarks.memory_probe`).

Op-level problem for a feature map of ``size x size`` with 3x3 patches (as in the MHTMA layer)::

    Nq = size**2                 (zero-padded query patches, one per pixel)
    Nk = (size - 2)**2           (unpadded key/value patches)
    q [B, H, Nq, D], k [B, H, Nk, D], v [B, H, Nk, D], key_valid [B, Nk], temperature [B, H]
    FLOPs (forward) = 4 * B * H * Nq * Nk * D;  forward+backward = 2.5x that

The hole is a centred square covering a quarter of the feature map; key j is valid iff its 3x3
window holds no hole pixel. Temperatures are drawn uniformly from [0.05, 1].
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LEVELS = ("op", "layer", "model")
MODES = ("fwd", "fwdbwd", "train")
LAMBDA_M = 1e4
PATCH = 3


@dataclass(frozen=True)
class Case:
    """One benchmark case.

    level     "op" | "layer" | "model"
    provider  op: "triton" | "torch" | "reference" | "sdpa" | "flex";
              layer: "mhtma-triton" | "mhtma-torch" | "mhtma-reference" | "atma" | "contextual";
              model: "mhtma" | "atma" | "contextual" | "none" (the generator's attention)
    mode      "fwd" (inference, no autograd) | "fwdbwd" (forward + backward) | "train" (model: one G+D step)
    dtype     "fp32" | "bf16" | "fp16" (layer and model cases run in fp32)
    batch     B
    size      op/layer: feature map side (H = W = size); model: image side
    d         op: head dimension D (= Dv); layer: input channels C; model: generator base_channels
    heads     attention heads
    device    "cpu" | "cuda"
    extra     optional knobs, e.g. {"disc_channels": 4} (the discriminator's base_channels in a train case)
    """

    level: str
    provider: str
    mode: str
    dtype: str
    batch: int
    size: int
    d: int
    heads: int = 2
    device: str = "cpu"
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        if self.level not in LEVELS:
            raise ValueError(f"Case.level must be one of {LEVELS}, got {self.level!r}")
        if self.mode not in MODES:
            raise ValueError(f"Case.mode must be one of {MODES}, got {self.mode!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"Case.dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")

    @property
    def id(self) -> str:
        """Readable pytest id, e.g. ``op-sdpa-fwd-bf16-B16-64x64-D576``."""
        dim = {"op": "D", "layer": "C", "model": "base"}[self.level]
        return (f"{self.level}-{self.provider}-{self.mode}-{self.dtype}-B{self.batch}-{self.size}x{self.size}"
                f"-{dim}{self.d}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def nq(self) -> int:
        return self.size * self.size

    @property
    def nk(self) -> int:
        return (self.size - PATCH + 1) ** 2

    def flops(self) -> float | None:
        """Attention FLOPs of an op case (4*B*H*Nq*Nk*D forward, 2.5x forward+backward); None otherwise."""
        if self.level != "op":
            return None
        fwd = 4.0 * self.batch * self.heads * self.nq * self.nk * self.d
        return fwd * (2.5 if self.mode == "fwdbwd" else 1.0)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Case":
        return cls(**json.loads(text))


def square_hole(batch: int, size: int, device="cpu") -> torch.Tensor:
    """Hole map ``[B, 1, size, size]`` float: 1 inside a centred square of side size // 2."""
    mask = torch.zeros(batch, 1, size, size, device=device)
    lo, hi = size // 4, size // 4 + size // 2
    mask[:, :, lo:hi, lo:hi] = 1.0
    return mask


def key_valid_from_hole(hole: torch.Tensor) -> torch.Tensor:
    """``[B, 1, H, W]`` hole map -> ``[B, (H-2)(W-2)]`` bool: True iff the 3x3 window holds no hole."""
    window_has_hole = torch.nn.functional.max_pool2d(hole, PATCH, stride=1) > 0
    return ~window_has_hole.flatten(1)


def op_tensors(batch: int, heads: int, size: int, d: int, dtype: str, device: str = "cpu", seed: int = 0,
               random_invalid: float = 0.0) -> dict:
    """Random op inputs for a ``size x size`` map with 3x3 patches: q ``[B, H, size**2, d]``, k, v
    ``[B, H, (size-2)**2, d]`` in ``dtype``, temperature ``[B, H]`` fp32 in [0.05, 1], key_valid ``[B, Nk]``:
    outside the centred square hole and (``random_invalid`` > 0) not among that seeded share of keys."""
    gen = torch.Generator().manual_seed(seed)
    nq, nk = size * size, (size - PATCH + 1) ** 2
    cast = dict(device=device, dtype=DTYPES[dtype])
    q = torch.randn(batch, heads, nq, d, generator=gen).to(**cast)
    k = torch.randn(batch, heads, nk, d, generator=gen).to(**cast)
    v = torch.randn(batch, heads, nk, d, generator=gen).to(**cast)
    temperature = (0.05 + 0.95 * torch.rand(batch, heads, generator=gen)).to(device)
    key_valid = key_valid_from_hole(square_hole(batch, size))
    if random_invalid > 0:
        key_valid &= torch.rand(key_valid.shape, generator=gen) >= random_invalid
    return {"q": q, "k": k, "v": v, "key_valid": key_valid.to(device), "temperature": temperature}


def op_inputs(case: Case, seed: int = 0) -> dict:
    """Random op inputs for ``case`` on its device (q, k, v in the case dtype; temperature fp32)."""
    return op_tensors(case.batch, case.heads, case.size, case.d, case.dtype, case.device, seed)


def layer_inputs(case: Case, seed: int = 0) -> dict:
    """Feature map ``x [B, C, size, size]`` and hole mask ``[B, 1, size, size]`` for a layer case."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(case.batch, case.d, case.size, case.size, generator=gen).to(case.device)
    return {"x": x, "mask": square_hole(case.batch, case.size, case.device)}


def model_inputs(case: Case, seed: int = 0) -> dict:
    """Image in [-1, 1] ``[B, 3, S, S]`` and a square hole mask ``[B, 1, S, S]`` for a model case."""
    gen = torch.Generator().manual_seed(seed)
    image = (torch.rand(case.batch, 3, case.size, case.size, generator=gen) * 2 - 1).to(case.device)
    return {"image": image, "mask": square_hole(case.batch, case.size, case.device)}
