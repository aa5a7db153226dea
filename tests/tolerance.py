"""The one place that holds comparison tolerances per dtype (every numeric test uses these)."""
import torch

# (atol, rtol) for comparing a result computed in `dtype` against a float64 oracle.
TOLERANCE = {
    torch.float64: (1e-9, 1e-7),
    torch.float32: (2e-4, 2e-4),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (8e-2, 5e-2),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, name: str = "") -> None:
    """Compare `actual` (computed in `dtype`) with a float64 `expected`, relative to its scale."""
    atol, rtol = TOLERANCE[dtype]
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(
        actual.double(), expected.double(), atol=atol * scale, rtol=rtol, msg=lambda m: f"{name}: {m}"
    )
