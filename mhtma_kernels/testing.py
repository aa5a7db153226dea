"""Comparison helpers for tests and benchmarks: tolerances per dtype (the one place that holds them) and
comparisons against a float64 oracle such as :func:`mhtma_kernels.masked_temperature_attention_reference`.

    from mhtma_kernels.testing import TOLERANCE, assert_close, assert_normwise_close
"""
import torch

#: ``(atol, rtol)`` for comparing a result computed in ``dtype`` against a float64 oracle.
TOLERANCE = {
    torch.float64: (1e-9, 1e-7),
    torch.float32: (2e-4, 2e-4),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (8e-2, 5e-2),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, name: str = "") -> None:
    """Compare ``actual`` (computed in ``dtype``) with a float64 ``expected``, element-wise, with an
    absolute tolerance relative to the largest magnitude of ``expected`` (at least 1)."""
    atol, rtol = TOLERANCE[dtype]
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(
        actual.double(), expected.double(), atol=atol * scale, rtol=rtol, msg=lambda m: f"{name}: {m}"
    )


def assert_normwise_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, name: str = "") -> None:
    """Normwise relative error ``|actual - expected| / |expected| <= max(atol, rtol)`` of ``dtype``
    (for gradients and whole-network outputs, where single elements near zero carry no meaning)."""
    atol, rtol = TOLERANCE[dtype]
    err = (actual.double() - expected.double()).norm().item()
    scale = max(expected.double().norm().item(), 1e-12)
    if not err / scale <= max(atol, rtol):
        raise AssertionError(f"{name}: normwise relative error {err / scale:.3g} > {max(atol, rtol):g}")
