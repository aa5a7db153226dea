"""Public entry point: validated masked temperature attention with backend dispatch."""
import torch

from .autocast import autocast_dtype, cast_for_autocast
from .backends import auto_backend, torch_backend, triton_backend
from .checks import BACKENDS, backend_from_env, check_backend, check_lambda_m  # noqa: F401 - BACKENDS re-exported
from .reference import masked_temperature_attention_reference
from .tracing import is_exporting, is_tracing


def _shape(name: str, x: torch.Tensor, expected: str) -> ValueError:
    return ValueError(f"{name} must have shape {expected}, got {tuple(x.shape)}")


def _validate(q, k, v, key_valid, temperature, lambda_m, backend):
    for name, x in (("q", q), ("k", k), ("v", v), ("key_valid", key_valid), ("temperature", temperature)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    for name, x in (("q", q), ("k", k), ("v", v), ("temperature", temperature)):
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor (float16/bfloat16/float32/float64), got {x.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if key_valid.dtype != torch.bool:
        raise TypeError(f"key_valid must be a bool tensor of shape [B, Nk] (True = valid key), got dtype {key_valid.dtype}")
    if q.dim() != 4:
        raise _shape("q", q, "[B, H, Nq, D]")
    B, H, Nq, D = q.shape
    if k.dim() != 4 or k.shape[0] != B or k.shape[1] != H or k.shape[3] != D:
        raise _shape("k", k, f"[B, H, Nk, D] = [{B}, {H}, Nk, {D}] to match q")
    Nk = k.shape[2]
    if Nk == 0:
        raise ValueError("k must hold at least one key (Nk >= 1), got Nk = 0")
    if v.dim() != 4 or tuple(v.shape[:3]) != (B, H, Nk):
        raise _shape("v", v, f"[B, H, Nk, Dv] = [{B}, {H}, {Nk}, Dv] to match k")
    if tuple(key_valid.shape) != (B, Nk):
        raise _shape("key_valid", key_valid, f"[B, Nk] = [{B}, {Nk}]")
    if tuple(temperature.shape) != (B, H):
        raise _shape("temperature", temperature, f"[B, H] = [{B}, {H}]")
    for name, x in (("k", k), ("v", v), ("key_valid", key_valid), ("temperature", temperature)):
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}: all inputs must share one device")
    check_lambda_m(lambda_m)
    check_backend(backend)
    _check_temperature_values(temperature)


_TEMPERATURE_MESSAGE = "temperature must be finite and strictly positive"


def _check_temperature_values(temperature: torch.Tensor) -> None:
    """temperature > 0 and finite: a ValueError in eager mode; a runtime assertion in a compiled graph.

    Reading the values needs them to exist. Compiled (torch.compile), on CPU the check becomes
    ``torch._assert_async`` (a graph node, no graph break; RuntimeError with the same message when the
    compiled code runs). It is skipped
    - compiled on CUDA: a failing device-side assertion aborts the CUDA context without the message,
      and checking on the host would synchronise the device on every call;
    - under torch.export: the assertion would be exported into every deployed graph (ONNX has no such
      operator).
    The layers' temperatures are positive by construction (Softplus + floor, or a fixed positive float
    checked when the layer is built); a NaN still shows in the output and the loss.
    """
    if temperature.numel() == 0:
        return
    if not is_tracing(temperature):
        if not bool(torch.isfinite(temperature).all() & (temperature > 0).all()):
            raise ValueError(f"{_TEMPERATURE_MESSAGE}, got min {temperature.min().item():g}")
    elif temperature.device.type == "cpu" and not is_exporting():
        torch._assert_async((torch.isfinite(temperature) & (temperature > 0)).all(), _TEMPERATURE_MESSAGE)


def resolve_backend(backend: str) -> str:
    """The backend a call runs: an explicit name as given; 'auto' -> $MHTMA_BACKEND if set, else 'auto'
    (chosen per shape by measurement, see :mod:`.backends`)."""
    if backend != "auto":
        return backend
    return backend_from_env() or "auto"


def masked_temperature_attention(q, k, v, key_valid, temperature, lambda_m=1e4, normalize=True, backend="auto",
                                 unit_norm=False):
    r"""Masked temperature attention (MHTMA, paper Eq. 7-11).

    Args:
        q: ``[B, H, Nq, D]`` query patches.
        k: ``[B, H, Nk, D]`` key patches (Nk may differ from Nq; D need not be a power of two).
        v: ``[B, H, Nk, Dv]`` value patches.
        key_valid: ``[B, Nk]`` bool, True where the key patch holds no hole pixel; shared by heads.
        temperature: ``[B, H]`` strictly positive temperature per image and head.
        lambda_m: mask penalty given to invalid keys. 1e4 makes exp(-lambda_m) underflow to exactly 0
            next to any valid key (valid logits lie in [-1/t, 1/t]), yet stays finite in fp16/bf16.
        normalize: L2-normalise q and k (eps 1e-6) first; False gives a plain scaled dot product.
        unit_norm: the caller states that the rows of q and k have norm at most 1 (it normalised them):
            with normalize=False the fused kernels and the chunked path may then use the bound 1/t of
            the logits as the row max, as they do after normalising here. Not checked; a false claim
            costs accuracy where logits exceed 1/t.
        backend: ``"reference"`` (materialised oracle), ``"torch"`` (SDPA's fused CPU kernel where it
            applies, else the query-chunked GEMM path; O(Nq*Nk) never held), ``"triton"`` (fused
            kernels) or ``"auto"`` (the fastest exact candidate for the shape, measured on the first
            call: :func:`mhtma_kernels.ops.dispatch_report`; env ``MHTMA_BACKEND`` forces a backend).

    Math::

        qn_i = q_i / max(|q_i|, eps),  kn_j = k_j / max(|k_j|, eps)
        z_ij = <qn_i, kn_j> / t  if key_valid_j  else  -lambda_m
        out_i = sum_j softmax_j(z_ij) v_j

    A row whose keys are all invalid gets uniform weights. Gradients flow to q, k, v and
    temperature (not to key_valid).

    Autocast: inside ``torch.autocast(device_type, dtype=torch.bfloat16 | torch.float16)`` on the
    inputs' device, q, k and v (unless float64) are cast to the autocast dtype, as autocast does for
    ``torch.matmul``, so the fused kernels run on tensor cores under AMP; the temperature keeps its
    dtype and accumulation stays fp32. The output is then in the autocast dtype.

    torch.compile / torch.export: the `torch` and `triton` backends are ``torch.library`` custom ops
    (``mhtma::chunked_gemm_attention``, ``mhtma::triton_attention``, see :mod:`.chunked.op`, :mod:`.triton.op`), so
    ``torch.compile(..., fullgraph=True)`` and ``torch.export`` trace through them. Checks of the
    temperature's values run in eager mode; compiled on CPU they become a runtime assertion
    (RuntimeError); compiled on CUDA or exported they are skipped (see ``_check_temperature_values``).
    Shape, dtype and device checks run everywhere.

    Returns:
        ``[B, H, Nq, Dv]`` in the dtype of ``v``.
    """
    _validate(q, k, v, key_valid, temperature, lambda_m, backend)
    backend = resolve_backend(backend)
    lambda_m = float(lambda_m)
    low_precision = autocast_dtype(q.device)
    if low_precision is None:
        return _dispatch(q, k, v, key_valid, temperature, lambda_m, normalize, backend, bool(unit_norm))
    q, k, v = cast_for_autocast(low_precision, q, k, v)
    with torch.autocast(q.device.type, enabled=False):  # the op's fp32 accumulation is not re-cast
        return _dispatch(q, k, v, key_valid, temperature, lambda_m, normalize, backend, bool(unit_norm))


def _empty_result(q, k, v, temperature):
    """The one empty-problem rule (B*H*Nq*Dv == 0; Nk >= 1 is validated): zeros [B, H, Nq, Dv], still
    connected to the inputs' graph so that backward runs and gives zero gradients."""
    B, H, Nq, _ = q.shape
    link = (q.sum() + k.sum() + v.sum() + temperature.sum()).to(v.dtype)
    return v.new_zeros(B, H, Nq, v.shape[3]) + 0 * link


def _dispatch(q, k, v, key_valid, temperature, lambda_m: float, normalize: bool, backend: str, unit_norm: bool):
    if q.shape[0] * q.shape[1] * q.shape[2] * v.shape[3] == 0:
        return _empty_result(q, k, v, temperature)
    if backend == "reference":
        return masked_temperature_attention_reference(q, k, v, key_valid, temperature, lambda_m, normalize)
    # The backends normalise q and k themselves (:mod:`.backends`): for triton and chunked a cheap
    # O((Nq + Nk) * D) PyTorch prepass that autograd differentiates exactly (the O(Nq * Nk * D) kernels
    # stay identical for normalize=True/False, and may use the bound |<q_i, k_j>| <= 1); the CPU flash
    # path folds it into its operands so that no normalised copy of k is held.
    if backend == "torch":
        return torch_backend(q, k, v, key_valid, temperature, lambda_m, normalize, unit_norm)
    if backend == "auto":
        return auto_backend(q, k, v, key_valid, temperature, lambda_m, normalize, unit_norm)
    return triton_backend(q, k, v, key_valid, temperature, lambda_m, normalize, unit_norm)
