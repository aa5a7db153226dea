"""Op-level providers: the same masked temperature attention computed five ways.

Every provider takes the raw (un-normalised) inputs of the public op and returns ``[B, H, Nq, Dv]``::

    fn(q [B,H,Nq,D], k [B,H,Nk,D], v [B,H,Nk,Dv], key_valid [B,Nk] bool, temperature [B,H], lambda_m)

- ``triton``    ``masked_temperature_attention(..., backend="triton")`` (fused kernels; CUDA, or the CPU
                interpreter under ``TRITON_INTERPRET=1`` for smoke runs only)
- ``torch``     ``backend="torch"`` (chunked over queries; never holds Nq x Nk)
- ``reference`` ``backend="reference"`` (materialises the scores)
- ``sdpa``      PyTorch ``scaled_dot_product_attention`` with the exactly equivalent additive-bias
                formulation (docs/design.md §1.1): ``sdpa(qn / t, kn', v, attn_mask=bias, scale=1)`` with kn' = kn
                where the key is valid and 0 elsewhere, bias = 0 (valid) / -lambda_m (invalid)
- ``flex``      ``torch.nn.attention.flex_attention`` with a ``score_mod`` that applies the temperature
                and the mask: ``where(valid[b, j], score / t[b, h], -lambda_m)``, ``scale=1``. q, k and v are
                zero-padded along D to the next power of two (FlexAttention's supported head sizes; zero
                columns leave every dot product unchanged) and the output is sliced back. Compiled with
                ``torch.compile`` on CUDA; on CPU only the unfused eager forward exists (smoke runs).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from mhtma_kernels import masked_temperature_attention
from mhtma_kernels.ops.reference import EPS
from mhtma_model.networks import KERNEL_BACKENDS

#: The op's own backends (the registry mhtma_kernels.ops.BACKENDS, "auto" aside), then PyTorch's attentions.
OP_PROVIDERS = KERNEL_BACKENDS + ("sdpa", "flex")


class Unavailable(Exception):
    """A provider cannot run here; the message says why (benchmarks skip with it)."""


def triton_runs_here(device: str) -> None:
    """Raise :class:`Unavailable` unless triton can run on ``device`` (CUDA, or CPU under the interpreter)."""
    if device != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise Unavailable("triton runs on CUDA (or on CPU only under TRITON_INTERPRET=1)")


def _mhtma(backend: str):
    def run(q, k, v, key_valid, temperature, lambda_m):
        return masked_temperature_attention(q, k, v, key_valid, temperature, lambda_m=lambda_m, backend=backend)

    run.__name__ = f"mhtma_{backend}"
    return run


def sdpa_attention(q, k, v, key_valid, temperature, lambda_m):
    """Masked temperature attention through ``F.scaled_dot_product_attention`` (additive-bias identity)."""
    qn = F.normalize(q, dim=-1, eps=EPS) / temperature.to(q.dtype)[:, :, None, None]
    kn = F.normalize(k, dim=-1, eps=EPS) * key_valid[:, None, :, None].to(k.dtype)
    bias = torch.zeros(key_valid.shape, dtype=q.dtype, device=q.device).masked_fill(~key_valid, -lambda_m)
    return F.scaled_dot_product_attention(qn, kn, v, attn_mask=bias[:, None, None, :], scale=1.0)


def flex_padded_dim(d: int) -> int:
    """Head size FlexAttention is given for D: the next power of two, at least 16."""
    return max(16, 1 << (max(1, d) - 1).bit_length())


#: FlexAttention's default tiles need more shared memory than Hopper has at padded D >= 512; smaller tiles,
#: as large-head users pass them. Backward static asserts: BLOCK_N1 % BLOCK_M1 == 0, BLOCK_M2 % BLOCK_N2 == 0.
FLEX_KERNEL_OPTIONS = {"BLOCK_M": 32, "BLOCK_N": 32, "num_stages": 1, "num_warps": 4,
                       "BLOCK_M1": 16, "BLOCK_N1": 32, "BLOCK_M2": 32, "BLOCK_N2": 16}

_FLEX_COMPILED = None


def _flex_kernel(device_type: str):
    """``flex_attention``, compiled once per process on CUDA (eager, unfused, on CPU)."""
    global _FLEX_COMPILED
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError as error:  # pragma: no cover - old torch
        raise Unavailable(f"torch.nn.attention.flex_attention is not importable: {error}") from error
    if device_type != "cuda":
        return flex_attention
    if _FLEX_COMPILED is None:
        import torch._dynamo

        # One compiled graph per shape; the suite has dozens of shapes.
        for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                     "accumulated_cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 4096)
        _FLEX_COMPILED = torch.compile(flex_attention, dynamic=False)
    return _FLEX_COMPILED


def make_flex_attention(device_type: str, fold_temperature: bool = False, kernel_options: dict | None = None):
    """FlexAttention provider (the one builder both drivers use).

    ``fold_temperature=False``: score_mod = ``where(valid[b, j], score * (1/t)[b, h], -lambda_m)``.
    ``fold_temperature=True``: the temperature is folded into the query (q' = qn / t) and score_mod only
    applies the mask -- the fallback where gradients to a captured tensor are not supported.
    ``kernel_options``: passed to ``flex_attention`` (tile sizes, e.g. :data:`FLEX_KERNEL_OPTIONS`).
    """
    kernel = _flex_kernel(device_type)
    extra = {} if kernel_options is None else {"kernel_options": dict(kernel_options)}

    def flex(q, k, v, key_valid, temperature, lambda_m):
        d, dv = q.shape[-1], v.shape[-1]
        pd, pdv = flex_padded_dim(d), flex_padded_dim(dv)
        qn, kn = F.normalize(q, dim=-1, eps=EPS), F.normalize(k, dim=-1, eps=EPS)
        inv_t = 1.0 / temperature.float()
        if fold_temperature:
            qn = qn * inv_t.to(q.dtype)[:, :, None, None]
        qn, kn, vp = F.pad(qn, (0, pd - d)), F.pad(kn, (0, pd - d)), F.pad(v, (0, pdv - dv))
        neg = -float(lambda_m)

        if fold_temperature:
            def score_mod(score, b, h, q_idx, kv_idx):
                return torch.where(key_valid[b, kv_idx], score, neg)
        else:
            def score_mod(score, b, h, q_idx, kv_idx):
                return torch.where(key_valid[b, kv_idx], score * inv_t[b, h], neg)

        out = kernel(qn, kn, vp, score_mod=score_mod, scale=1.0, **extra)
        return out[..., :dv]

    flex.__name__ = "flex_folded" if fold_temperature else "flex"
    return flex


def op_provider(provider: str, device_type: str, mode: str, fold_temperature: bool = False,
                kernel_options: dict | None = None):
    """The callable for ``provider`` on ``device_type`` ("cpu" | "cuda") and ``mode`` ("fwd" | "fwdbwd");
    raises :class:`Unavailable` with a reason. ``fold_temperature`` and ``kernel_options`` are flex's
    (:func:`make_flex_attention`)."""
    if provider not in OP_PROVIDERS:
        raise ValueError(f"provider must be one of {OP_PROVIDERS}, got {provider!r}")
    if provider == "triton":
        triton_runs_here(device_type)
        try:
            from mhtma_kernels.ops.rules import triton_import_error
        except ImportError as error:
            raise Unavailable(f"the triton backend is not importable yet: {error}") from error
        if triton_import_error() is not None:
            raise Unavailable("the triton package is not installed")
        return _mhtma("triton")
    if provider in KERNEL_BACKENDS:
        return _mhtma(provider)
    if provider == "sdpa":
        return sdpa_attention
    if device_type != "cuda" and mode != "fwd":
        raise Unavailable("FlexAttention has no backward on CPU")
    return make_flex_attention(device_type, fold_temperature, kernel_options)
