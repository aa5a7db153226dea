"""One checking function per rule on the settings of the op, the layers, the generator and the training
config. Each returns the value in its canonical form or raises a one-line ``ValueError``; ``owner``
("MaskedTemperatureAttention", "InpaintGenerator", ...) prefixes the message as ``owner: ``.

- :func:`check_lambda_m`     the mask penalty: a finite positive number
- :func:`check_temperature`  a temperature setting: ``"learned"`` or a fixed finite positive number
- :func:`check_patch_size`   a positive odd integer (queries are patches centred on their pixel)
- :func:`check_backend`      one of :data:`BACKENDS`; :func:`backend_from_env` the one reader of ``MHTMA_BACKEND``
- :func:`check_device`       ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (whether a GPU exists is
                             the caller's question: ``mhtma_model.device.resolve_device``)

The config keeps its own ``section.key: ...`` wording around these rules; the rules themselves live here.
"""
from __future__ import annotations

import math
import os

import torch

#: The op's backends; "auto" picks one per call (see ``masked_temperature_attention``).
BACKENDS = ("auto", "reference", "torch", "triton")


def _prefix(owner: str) -> str:
    return f"{owner}: " if owner else ""


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_lambda_m(lambda_m, owner: str = "") -> float:
    """The mask penalty: a finite positive int or float -> float."""
    # `0 < lambda_m < inf` rather than math.isfinite: also holds for the symbolic float torch.compile(dynamic=True)
    # makes of a module attribute.
    if not _is_number(lambda_m) or not 0 < lambda_m < math.inf:
        raise ValueError(f"{_prefix(owner)}lambda_m must be a finite positive number, got {lambda_m!r}")
    return float(lambda_m)


def check_temperature(temperature, owner: str = "") -> str | float:
    """A temperature setting: ``"learned"`` -> ``"learned"``; a finite positive int or float -> float
    (a fixed temperature, the paper's ablation)."""
    if isinstance(temperature, str) and temperature == "learned":
        return "learned"
    if _is_number(temperature) and math.isfinite(temperature) and temperature > 0:
        return float(temperature)
    raise ValueError(f"{_prefix(owner)}temperature must be 'learned' or a finite positive float, got {temperature!r}")


def check_patch_size(patch_size, owner: str = "") -> int:
    """A positive odd int (1, 3, 5, ...): zero-padded query patches are then centred on their pixel."""
    if not isinstance(patch_size, int) or isinstance(patch_size, bool) or patch_size < 1 or patch_size % 2 == 0:
        raise ValueError(f"{_prefix(owner)}patch_size must be a positive odd integer (1, 3, 5, ...) so that "
                         f"zero-padded query patches are centred on their pixel, got {patch_size!r}")
    return patch_size


def check_backend(backend, owner: str = "") -> str:
    """One of :data:`BACKENDS`."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"{_prefix(owner)}backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def backend_from_env() -> str | None:
    """The backend forced by the environment variable ``MHTMA_BACKEND`` (read now), None when unset; a
    value other than a concrete backend -> ValueError."""
    env = os.environ.get("MHTMA_BACKEND", "").strip()
    if env and env not in BACKENDS[1:]:
        raise ValueError(f"MHTMA_BACKEND must be one of {BACKENDS[1:]}, got {env!r}")
    return env or None


def check_device(device, owner: str = "") -> str:
    """A device setting: None or ``"auto"`` -> ``"auto"``; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (or such a
    ``torch.device``) -> its string. Any other device type or spelling -> ValueError."""
    if device is None or str(device) == "auto":
        return "auto"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"{_prefix(owner)}device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    return str(parsed)
