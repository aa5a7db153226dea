"""Constants and rules that more than one backend follows (each written here once).

    LOG2E              log2(e): the Triton kernels and the chunked path's base-2 statistics
    FIXED_MAX_LIMIT    largest log2(e)/t for which a bounded forward takes the bound as its row max
    MAX_BATCH_HEADS    B*H a Triton launch can address (CUDA grid axis 1)
    chunk_budget_mb    memory budget of one chunk (env MHTMA_CHUNK_MB) of the chunked and CPU flash paths
    compute_dtype      dtype of the elementwise work and accumulation
    triton_import_error  None where the `triton` package imports, else the ImportError
    triton_interprets  whether Triton kernels run on its CPU interpreter (TRITON_INTERPRET=1)
    on_device          the tensor's GPU as the current device, around Triton launches
    NAMESPACE          of the torch.library custom ops
"""
import contextlib
import math
import os

import torch

NAMESPACE = "mhtma"
LOG2E = 1.4426950408889634
# Largest log2(e)/t for which a forward uses the bound of unit-norm logits as its row max: every valid
# weight exp2(z2 - log2(e)/t) is then >= 2^-80 (bf16 and fp32 share fp32's exponent range; fp16's is too
# narrow, so fp16 keeps the running max). t >= log2(e)/40 = 0.036; learned temperatures start at 0.1.
FIXED_MAX_LIMIT = 40.0
MAX_BATCH_HEADS = 65535
#: Default budget (MiB) for one chunk's buffers, per device type (predictions, not measurements: large
#: enough for full-speed GEMMs, small next to the [B, H, Nq, Nk] matrix at 64x64 maps).
DEFAULT_CHUNK_MB = {"cuda": 256.0, "cpu": 8.0}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The elementwise work and accumulation run in float64 for float64 inputs and float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _positive_mb(value, name: str) -> float:
    try:
        mb = float(value)
    except (TypeError, ValueError):
        mb = math.nan
    if isinstance(value, bool) or not 0 < mb < math.inf:
        raise ValueError(f"{name} must be a positive number of MiB, got {value!r}")
    return mb


def chunk_budget_mb(device: torch.device, chunk_mb=None) -> float:
    """The chunk budget in MiB: the keyword, else env MHTMA_CHUNK_MB, else DEFAULT_CHUNK_MB[device type]."""
    if chunk_mb is not None:
        return _positive_mb(chunk_mb, "chunk_mb")
    env = os.environ.get("MHTMA_CHUNK_MB", "").strip()
    if env:
        return _positive_mb(env, "MHTMA_CHUNK_MB")
    return DEFAULT_CHUNK_MB.get(device.type, DEFAULT_CHUNK_MB["cuda"])


_TRITON_IMPORT: list = []  # [None] or [ImportError] once tried (a plain list: torch.compile traces the call)


def triton_import_error() -> ImportError | None:
    """None where `import triton` works (tried once, on first use), else its ImportError."""
    if not _TRITON_IMPORT:
        try:
            import triton  # noqa: F401
        except ImportError as error:  # pragma: no cover - exercised only where triton is missing
            _TRITON_IMPORT.append(error)
        else:
            _TRITON_IMPORT.append(None)
    return _TRITON_IMPORT[0]


def on_device(tensor: torch.Tensor):
    """A context in which `tensor`'s GPU is the current CUDA device (Triton launches on the current device, not
    on its arguments'), nothing for a CPU tensor."""
    return torch.cuda.device(tensor.device) if tensor.device.type == "cuda" else contextlib.nullcontext()


_INTERPRETS: list = []  # [bool] once read


def triton_interprets() -> bool:
    """True when Triton builds kernels for its CPU interpreter (TRITON_INTERPRET=1, as Triton parses it). Read
    once, on first use: the kernels read it when they are defined, at import."""
    if not _INTERPRETS:
        interprets = False
        if triton_import_error() is None:
            from triton import knobs

            interprets = bool(knobs.runtime.interpret)
        _INTERPRETS.append(interprets)
    return _INTERPRETS[0]
