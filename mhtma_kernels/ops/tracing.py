"""Is this call being traced (torch.compile, torch.export, fake tensors) or run eagerly?

Checks that read a tensor's values (``bool(temperature > 0)``) cannot run while a graph is captured:
the values do not exist yet (dynamo stops with "Could not guard on data-dependent expression", and
``torch.export`` fails the same way). The op and the layers ask :func:`is_tracing` and keep such
checks for eager mode; shape, dtype and device checks read only metadata and run everywhere.
"""
import torch

try:  # torch >= 2.1 (FakeTensor and functional wrappers around it)
    from torch._subclasses.fake_tensor import is_fake as _is_fake
except ImportError:  # pragma: no cover - very old torch
    def _is_fake(x) -> bool:
        return False


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    checks = (getattr(compiler, "is_compiling", None), getattr(compiler, "is_exporting", None))
    return any(check is not None and check() for check in checks)


def is_exporting() -> bool:
    """True while torch.export traces (torch >= 2.5 says so; older torch: False)."""
    check = getattr(torch.compiler, "is_exporting", None)
    return bool(check is not None and check())


def is_tracing(*tensors: torch.Tensor) -> bool:
    """True under torch.compile / torch.export / jit tracing, or when any tensor is a fake tensor."""
    if _compiling() or torch.jit.is_tracing():
        return True
    return any(isinstance(x, torch.Tensor) and _is_fake(x) for x in tensors)
