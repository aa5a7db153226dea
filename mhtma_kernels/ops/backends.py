"""The implementations behind the op's backends, on raw q, k and the ``normalize`` flag (the public function
validated the inputs and handled empty problems), and the measured choice of ``backend="auto"``. triton
and chunked get q, k L2-normalised here (and ``bounded = normalize or unit_norm``: |<q_i, k_j>| <= 1, which
the caller's ``unit_norm`` states for rows it normalised itself); sdpa normalises
inside its CPU op (see :mod:`.sdpa.flash_cpu`).

    name       what                                                   where
    triton     the fused Triton op (``mhtma::triton_attention``)      CUDA (or the interpreter, forced)
    chunked    the query-chunked GEMM path (``mhtma::chunked_gemm_attention``)  everywhere
    sdpa       F.scaled_dot_product_attention + the bias identity     CPU flash / CUDA fused, D == Dv

``backend="torch"``: on CPU ``sdpa`` where its fused kernel takes the inputs, else ``chunked``; on CUDA
``chunked``. ``backend="auto"``: every applicable candidate is timed on the first call per (device,
dtype, shape bucket, grad or not) by :data:`.timed_choice.AUTO`; env ``MHTMA_AUTO_CANDIDATES`` (comma-separated
names) restricts the candidates. While a graph is traced (torch.compile, torch.export) nothing is
timed: the fixed default is taken (triton on CUDA, sdpa on CPU where it applies, chunked otherwise; chunked under export,
whose ATen graph would otherwise hold SDPA's math decomposition).
"""
import os

import torch

from .chunked.op import chunked_attention
from .reference import l2_normalize
from .rules import MAX_BATCH_HEADS, triton_import_error
from .sdpa.bias import sdpa_applies, sdpa_masked_attention, sdpa_takes
from .timed_choice import AUTO, LOGGER, shape_key
from .tracing import is_exporting, is_tracing

CANDIDATES = ("triton", "chunked", "sdpa")
_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _normalized(q, k, normalize: bool):
    return (l2_normalize(q), l2_normalize(k)) if normalize else (q, k)


def triton_backend(q, k, v, key_valid, temperature, lambda_m, normalize, unit_norm=False):
    from .triton.op import triton_attention  # imported lazily: triton is optional on CPU

    q, k = _normalized(q, k, normalize)
    return triton_attention(q, k, v, key_valid, temperature, lambda_m, bounded=normalize or unit_norm)


def _chunked(q, k, v, key_valid, temperature, lambda_m, normalize, unit_norm=False):
    q, k = _normalized(q, k, normalize)
    return chunked_attention(q, k, v, key_valid, temperature, lambda_m, normalize or unit_norm)


def _sdpa(q, k, v, key_valid, temperature, lambda_m, normalize, unit_norm=False):
    return sdpa_masked_attention(q, k, v, key_valid, temperature, lambda_m, normalize)


IMPLEMENTATIONS = {"triton": triton_backend, "chunked": _chunked, "sdpa": _sdpa}


_TRITON_LOGGED: dict = {}  # (device kind, D, Dv, dtype) already logged as left out (launcher.refusal keeps the why)


def triton_applies(q, v) -> bool:
    """Whether the triton candidate may run on these inputs: dtype, B*H, triton importable, and a tile of
    every kernel that fits the GPU (else it is left out, with one INFO line per GPU kind, D, Dv and dtype)."""
    if q.dtype not in _TRITON_DTYPES or q.shape[0] * q.shape[1] > MAX_BATCH_HEADS or triton_import_error() is not None:
        return False
    from .triton import device, launcher

    gpu = device.current(q)
    why = launcher.refusal(q.shape[-1], v.shape[-1], q.dtype, gpu)
    key = (gpu.kind, q.shape[-1], v.shape[-1], q.dtype)
    if why is not None and key not in _TRITON_LOGGED:
        _TRITON_LOGGED[key] = True
        LOGGER.info("auto backend: triton left out (%s)", why)
    return why is None


def triton_refusal(head_dims, dtype: torch.dtype, device: torch.device) -> str | None:
    """Why backend='triton' cannot run problems with these head dims (D = Dv) in ``dtype`` on ``device``, in one
    line; None where it can (on a CPU only under Triton's interpreter). For callers that check before any work."""
    error = triton_import_error()
    if error is not None:
        return f"the triton package cannot be imported ({error})"
    from .triton import device as gpus, launcher

    if device.type != "cuda":
        return None if launcher.interpreting() else f"it needs a CUDA GPU and this run is on {device}"
    gpu = gpus.current(torch.empty(0, device=device))
    for d in head_dims:
        why = launcher.refusal(d, d, dtype, gpu)
        if why is not None:
            return why
    return None


def _restriction() -> tuple[str, ...] | None:
    env = os.environ.get("MHTMA_AUTO_CANDIDATES", "").strip()
    if not env:
        return None
    names = tuple(n.strip() for n in env.split(",") if n.strip())
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown or not names:
        raise ValueError(f"MHTMA_AUTO_CANDIDATES must name some of {CANDIDATES}, got {env!r}")
    return names


def applicable(q, k, v) -> list[str]:
    """The candidates that compute the op exactly on these inputs, in the order of the fixed default."""
    sdpa = sdpa_applies(q, v) and not is_exporting() and sdpa_takes(q, k, v)
    if q.device.type == "cpu":
        names = ["sdpa", "chunked"] if sdpa else ["chunked"]
    else:
        triton = q.device.type == "cuda" and triton_applies(q, v)
        names = ["triton"] * triton + ["chunked"] + ["sdpa"] * sdpa
    only = _restriction()
    if only is not None:
        names = [n for n in names if n in only]
        if not names:
            raise ValueError(f"MHTMA_AUTO_CANDIDATES={','.join(only)}: none of them applies on {q.device} "
                             f"({q.dtype}, D={q.shape[-1]}, Dv={v.shape[-1]})")
    return names


def torch_backend(q, k, v, key_valid, temperature, lambda_m, normalize, unit_norm=False):
    """``backend="torch"``: SDPA's fused CPU kernel where it takes the inputs, the chunked GEMM path otherwise."""
    if q.device.type == "cpu" and sdpa_applies(q, v) and not is_exporting():
        out = sdpa_masked_attention(q, k, v, key_valid, temperature, lambda_m, normalize)
        if out is not None:
            return out
    return _chunked(q, k, v, key_valid, temperature, lambda_m, normalize, unit_norm)


def _trial(name, args, grad: bool):
    """A callable running candidate ``name`` once on detached copies (and its backward when ``grad``)."""
    def run():
        leaves = [x.detach().requires_grad_(x.requires_grad) if x.is_floating_point() else x for x in args[:5]]
        with torch.no_grad() if not grad else torch.enable_grad():
            out = IMPLEMENTATIONS[name](*leaves, *args[5:])
            if out is None:
                raise RuntimeError(f"{name} does not take these inputs")
            if grad:
                wrt = [x for x in leaves if x.requires_grad]
                torch.autograd.grad(out, wrt, torch.ones_like(out))
        return out

    return run


def auto_backend(q, k, v, key_valid, temperature, lambda_m, normalize, unit_norm=False):
    """``backend="auto"``: the measured choice among the applicable candidates (see the module docstring)."""
    names = applicable(q, k, v)
    args = (q, k, v, key_valid, temperature, lambda_m, normalize, unit_norm)
    grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v, temperature))
    if is_tracing(q, k, v, temperature):
        name = "chunked" if is_exporting() else names[0]
    elif len(names) == 1:
        name = names[0]
    else:
        key = shape_key(q, k, v, bool(normalize or unit_norm), bool(grad))
        name = AUTO.choose(key, q.device, q.dtype, {n: _trial(n, args, grad) for n in names})
    out = IMPLEMENTATIONS[name](*args)
    return out if out is not None else _chunked(*args)
