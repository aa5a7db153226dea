"""The layers and generators every benchmark times, built one way (weights seeded) from the registry of
attention variants (:mod:`mhtma_model.networks.attention`).

- :func:`make_layer` ``(provider, channels, heads, device)``: provider "<variant>-<backend>" for variants
  that run the op through a backend (``"mhtma-triton"``), else the variant's name (``"contextual"``).
- :func:`make_generator` ``(attention, base_channels, device, backend=None)``: ``InpaintGenerator``.
"""
from __future__ import annotations

import inspect

import torch

from mhtma_model.networks import ATTENTION_VARIANTS, ATTENTIONS, KERNEL_BACKENDS, InpaintGenerator

from .providers import triton_runs_here

#: "<variant>-<backend>" for variants that run the op through a backend, else the variant's name.
LAYER_PROVIDERS = tuple(f"{v.name}-{b}" if v.uses_backend else v.name
                        for v in ATTENTION_VARIANTS.values() if v.layer is not None
                        for b in (KERNEL_BACKENDS if v.uses_backend else ("",)))
MODEL_PROVIDERS = ATTENTIONS


def _construct(cls, in_channels: int, heads: int | None, backend: str | None):
    """Instantiate a layer class from its signature (baselines may not take every argument)."""
    params = inspect.signature(cls).parameters
    kwargs = {}
    if "in_channels" in params:
        kwargs["in_channels"] = in_channels
    if "heads" in params and heads is not None:
        kwargs["heads"] = heads
    if backend is not None and "backend" in params:
        kwargs["backend"] = backend
    return cls(**kwargs)


def make_layer(provider: str, channels: int, heads: int, device: str) -> torch.nn.Module:
    """The attention layer of ``provider`` (one of :data:`LAYER_PROVIDERS`), seeded, fp32, on ``device``."""
    if provider not in LAYER_PROVIDERS:
        raise ValueError(f"layer provider must be one of {LAYER_PROVIDERS}, got {provider!r}")
    name, _, backend = provider.partition("-")
    if backend == "triton":
        triton_runs_here(device)
    variant = ATTENTION_VARIANTS[name]
    torch.manual_seed(0)
    if variant.uses_backend:
        layer = _construct(variant.layer, channels, heads, backend)
    else:
        layer = _construct(variant.layer, channels, None, "auto")
    return layer.to(device)


def make_generator(attention: str, base_channels: int, device: str, backend: str | None = None) -> InpaintGenerator:
    """``InpaintGenerator(base_channels, attention[, backend])``, seeded, fp32, on ``device``."""
    if attention not in MODEL_PROVIDERS:
        raise ValueError(f"model provider must be one of {MODEL_PROVIDERS}, got {attention!r}")
    torch.manual_seed(0)
    kwargs = {} if backend is None else {"backend": backend}
    return InpaintGenerator(base_channels=base_channels, attention=attention, **kwargs).to(device)
