"""The attention variants of G_r's attention branch (paper ablations): the one registry that the generator,
config validation, the benchmarks and their report read.

Adding a variant = one :class:`AttentionVariant` entry in :data:`ATTENTION_VARIANTS` plus its layer (in
:mod:`mhtma_kernels.layers`). Each entry says how to build the layer from the generator's settings, whether
the layer runs the op through a chosen backend (``model.backend``; the benchmarks time it once per backend)
and whether it learns a temperature that :attr:`InpaintGenerator.last_temperature` reports.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from torch import nn

from mhtma_kernels import ATMA, ContextualAttention, MaskedTemperatureAttention
from mhtma_kernels.ops import BACKENDS

#: The op backends a layer can be pinned to ("auto" picks one of them at run time).
KERNEL_BACKENDS = tuple(b for b in BACKENDS if b != "auto")


@dataclass(frozen=True)
class AttentionVariant:
    """``build(channels, heads, temperature, patch_size, lambda_m, backend)`` -> the layer (None = no attention);
    ``layer``: its class (None for "none"); ``uses_backend``: honours ``backend``; ``learns_temperature``:
    reports ``last_temperature`` when its temperature is learned."""
    name: str
    build: Callable[..., Optional[nn.Module]]
    layer: Optional[type] = None
    uses_backend: bool = False
    learns_temperature: bool = False


def _mhtma(channels, heads, temperature, patch_size, lambda_m, backend):
    return MaskedTemperatureAttention(channels, heads=heads, patch_size=patch_size, lambda_m=lambda_m,
                                      temperature=temperature, backend=backend)


def _atma(channels, heads, temperature, patch_size, lambda_m, backend):
    return ATMA(channels, patch_size=patch_size, lambda_m=lambda_m)


def _contextual(channels, heads, temperature, patch_size, lambda_m, backend):
    return ContextualAttention(channels, patch_size=patch_size)


def _none(channels, heads, temperature, patch_size, lambda_m, backend):
    return None


ATTENTION_VARIANTS = {v.name: v for v in (
    AttentionVariant("mhtma", _mhtma, MaskedTemperatureAttention, uses_backend=True, learns_temperature=True),
    AttentionVariant("atma", _atma, ATMA, learns_temperature=True),
    AttentionVariant("contextual", _contextual, ContextualAttention),
    AttentionVariant("none", _none),
)}
#: Names accepted by ``InpaintGenerator(attention=...)`` and ``model.attention``.
ATTENTIONS = tuple(ATTENTION_VARIANTS)


def build_attention(attention: str, channels: int, heads: int, temperature, patch_size: int, lambda_m: float,
                    backend: str) -> Optional[nn.Module]:
    """The attention layer of variant ``attention`` (None for "none")."""
    return ATTENTION_VARIANTS[attention].build(channels, heads, temperature, patch_size, lambda_m, backend)
