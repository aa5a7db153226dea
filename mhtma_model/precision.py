"""The arithmetic the networks run in: which autocast dtype on which device, the TF32 switch, torch.compile.

Training (``train.amp``, ``train.tf32``, ``train.compile``)::

    amp   "auto"  bf16 autocast on a CUDA GPU that supports bf16 (compute capability >= 8.0), fp16 with a
                  GradScaler on older GPUs, off on CPU   (the default; old configs' ``true`` means "auto")
          "bf16"  bf16 autocast (CUDA, or CPU autocast on a CPU device), no GradScaler
          "fp16"  fp16 autocast with one GradScaler per network (CUDA only)
          "off"   fp32                                   (old configs' ``false``)
    tf32  true (default): fp32 matmuls and convolutions on CUDA may use TF32 tensor cores
          (``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32``); false: IEEE fp32.
          Set once when training starts (CUDA only: CPUs have no TF32).

Inference (``--precision`` of ``mhtma-inpaint``/``mhtma-eval``/``mhtma-ui``, ``precision=`` of
:mod:`mhtma_model.inference`), one setting from fast to exact::

    "auto"  bf16 autocast on a CUDA GPU that supports it, else TF32 on CUDA, fp32 on CPU (the default)
    "bf16"  bf16 autocast (CUDA or CPU)      "fp16"  fp16 autocast (CUDA only)
    "tf32"  fp32 tensors, TF32 matmuls/convolutions on CUDA (= "fp32" on CPU)
    "fp32"  IEEE fp32 everywhere (TF32 off)

bf16/fp16 also allow TF32 for what autocast keeps in fp32. Inference sets the TF32 flags only for the
duration of a forward (:func:`inference_precision` restores them). What stays in fp32 under autocast: the
discriminator's spectral norm (``networks.discriminator``), the losses and the composite (``gan_step``),
and the prediction handed back (``predict``).

Known issue (CPU bf16 only, torch 2.14): oneDNN's bf16 convolution weight gradient returns NaN in about
15% of calls when the conv's input is 1x1 (5x5 kernel, stride 2, padding 2) — the discriminator's last convs
at ``data.size=32``; from 64 px on they see >= 2x2 inputs, clean in 100 of 100 calls. "auto" never picks
bf16 on CPU.

``torch.compile`` (``train.compile``, ``--compile``): :func:`compile_module` compiles a module in place
(``nn.Module.compile``: its state dict, attributes and checkpoints are unchanged) with the backend named
by the environment variable ``MHTMA_COMPILE_BACKEND`` (default ``inductor``; the tests use ``aot_eager``).
"""
from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch

__all__ = ["PrecisionError", "AMP_SETTINGS", "PRECISIONS", "LEGACY_AMP", "bf16_supported", "training_dtype", "inference_dtype",
           "autocast", "set_tf32", "inference_precision", "compile_module", "compile_backend"]

AMP_SETTINGS = ("auto", "bf16", "fp16", "off")
PRECISIONS = ("auto", "bf16", "fp16", "tf32", "fp32")
#: What the old boolean ``train.amp`` means today.
LEGACY_AMP = {True: "auto", False: "off"}
COMPILE_BACKEND_ENV = "MHTMA_COMPILE_BACKEND"


class PrecisionError(ValueError):
    """A precision setting that is unknown or cannot run on the device (fp16 on CPU, bf16 on an old GPU)."""


def bf16_supported(device: torch.device) -> bool:
    """True for a CUDA device with native bf16 (compute capability >= 8.0: Ampere and later)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device)[0] >= 8


def _low(name: str, device: torch.device, where: str) -> torch.dtype:
    """The dtype of an explicit "bf16"/"fp16" on ``device``; ValueError where it cannot run."""
    if name == "fp16":
        if device.type != "cuda":
            raise PrecisionError(f"{where}=fp16 needs a CUDA device (this run is on {device}); use bf16 or "
                             f"{'off' if where == 'train.amp' else 'fp32'} on CPU")
        return torch.float16
    if device.type == "cuda" and not bf16_supported(device):
        raise PrecisionError(f"{where}=bf16: {torch.cuda.get_device_name(device)} has no native bf16 "
                         f"(compute capability < 8.0); use fp16 or auto")
    return torch.bfloat16


def training_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``train.amp`` on ``device`` (None = fp32); PrecisionError for fp16 on CPU or bf16 on
    a GPU without it."""
    if amp not in AMP_SETTINGS:
        raise PrecisionError(f"train.amp must be one of {list(AMP_SETTINGS)}, got {amp!r}")
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if bf16_supported(device) else torch.float16
    return _low(amp, device, "train.amp")


def inference_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of an inference ``precision`` on ``device`` (None = fp32/TF32)."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return torch.bfloat16 if bf16_supported(device) else None
    if precision in ("tf32", "fp32"):
        return None
    return _low(precision, device, "precision")


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """``torch.autocast(device.type, dtype)``, or a no-op context when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def set_tf32(enabled: bool) -> None:
    """Let (or forbid) fp32 matmuls and cuDNN convolutions use TF32 on CUDA (process-wide)."""
    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    torch.backends.cudnn.allow_tf32 = bool(enabled)


@contextlib.contextmanager
def inference_precision(precision: str, device: torch.device):
    """Autocast and TF32 flags of an inference ``precision`` for the ``with`` block (flags restored after;
    they are only touched on CUDA) -> yields the autocast dtype or None."""
    dtype = inference_dtype(precision, device)
    if device.type != "cuda":
        with autocast(device, dtype):
            yield dtype
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    set_tf32(precision != "fp32")
    try:
        with autocast(device, dtype):
            yield dtype
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def compile_backend() -> str:
    """The torch.compile backend: env ``MHTMA_COMPILE_BACKEND``, default "inductor"."""
    return os.environ.get(COMPILE_BACKEND_ENV, "").strip() or "inductor"


def compile_module(module: torch.nn.Module, backend: Optional[str] = None) -> torch.nn.Module:
    """Compile ``module`` in place (``nn.Module.compile``) and return it; its parameters, state dict keys
    and attributes are unchanged, so checkpoints written from it load into an eager one."""
    module.compile(backend=backend or compile_backend())
    module.compiled_with = backend or compile_backend()
    return module
