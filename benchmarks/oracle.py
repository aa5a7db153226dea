"""The one way the benchmark harnesses run an op candidate with gradients, and the float64 oracle they check
it against (``runners`` before timing a case, ``gpu_check_cases`` for its correctness rows).

Inputs are a dict with the op's argument names (q, k, v, key_valid, temperature); gradients go to
:data:`GRAD_NAMES` with the upstream gradient ``dout``.
"""
from __future__ import annotations

import torch

from mhtma_kernels import masked_temperature_attention_reference

from .cases import LAMBDA_M

GRAD_NAMES = ("q", "k", "v", "temperature")


def run_with_grads(fn, inputs: dict, dout: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """(out, {name: gradient}) of ``fn(**inputs, lambda_m=LAMBDA_M)`` on fresh leaves of the inputs."""
    leaves = {n: (x.detach().requires_grad_(True) if n in GRAD_NAMES else x) for n, x in inputs.items()}
    out = fn(**leaves, lambda_m=LAMBDA_M)
    grads = torch.autograd.grad(out, [leaves[n] for n in GRAD_NAMES], dout)
    return out.detach(), dict(zip(GRAD_NAMES, grads))


def oracle(inputs: dict, dout: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The materialised reference in float64 on the same inputs: (out, {name: gradient})."""
    as64 = {n: (x.detach().double() if x.is_floating_point() else x) for n, x in inputs.items()}
    return run_with_grads(masked_temperature_attention_reference, as64, dout.double())
