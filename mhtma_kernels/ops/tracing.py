"""Is this call being traced (torch.compile, torch.export, fake tensors) or run eagerly?

Checks that read a tensor's values (``bool(temperature > 0)``) cannot run while a graph is captured:
the values do not exist yet (dynamo stops with "Could not guard on data-dependent expression", and
``torch.export`` fails the same way). The op and the layers ask :func:`is_tracing` and keep such
checks for eager mode; shape, dtype and device checks read only metadata and run everywhere.
"""
import torch

from torch._subclasses.fake_tensor import is_fake


def is_exporting() -> bool:
    """True while torch.export traces."""
    return torch.compiler.is_exporting()


def is_tracing(*tensors: torch.Tensor) -> bool:
    """True under torch.compile / torch.export / jit tracing, or when any tensor is a fake tensor."""
    if torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing():
        return True
    return any(isinstance(x, torch.Tensor) and is_fake(x) for x in tensors)
