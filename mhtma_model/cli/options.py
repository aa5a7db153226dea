"""What the command lines share: the parser with its ``--checkpoint`` option (``mhtma-inpaint``, ``mhtma-eval``,
``mhtma-export``), and the options every inference command shares (``mhtma-inpaint``, ``mhtma-eval``,
``mhtma-ui``), with one set of defaults, and their check: ``--device`` (auto), ``--threads`` (see
:func:`mhtma_model.device.default_cpu_threads`), ``--precision`` (auto, :mod:`mhtma_model.precision`) and
``--compile`` (off)."""
from __future__ import annotations

import argparse

import torch

from ..device import default_cpu_threads, resolve_device, set_cpu_threads
from ..precision import PRECISIONS, inference_dtype

DEFAULT_DEVICE = "auto"
DEFAULT_PRECISION = "auto"
#: ``--checkpoint`` of the commands that run a trained generator.
CHECKPOINT_HELP = ("generator checkpoint (.pt) written by mhtma-train, or a folder written by "
                   "Inpainter.save_pretrained")


def command_parser(prog: str, doc: str, checkpoint_help: str = CHECKPOINT_HELP,
                   checkpoint_required: bool = True) -> argparse.ArgumentParser:
    """The parser of command ``prog`` with its ``--checkpoint`` option: the first paragraph of ``doc`` (the
    command module's docstring) is the description, kept as written."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    if checkpoint_required:
        parser.add_argument("--checkpoint", required=True, help=checkpoint_help)
    else:
        parser.add_argument("--checkpoint", default=None, help=checkpoint_help)
    return parser



def add_inference_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--device``, ``--threads``, ``--precision`` and ``--compile`` to ``parser``."""
    parser.add_argument("--device", default=DEFAULT_DEVICE,
                        help="auto, cpu or cuda[:N] (default auto: cuda if available, else cpu)")
    parser.add_argument("--threads", type=int, default=None,
                        help=f"CPU threads (default: $OMP_NUM_THREADS, else half the CPUs, at most 4; "
                             f"here {default_cpu_threads()})")
    parser.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION,
                        help="auto (default: bf16 autocast on CUDA GPUs with bf16, else fp32 with TF32 on CUDA, "
                             "fp32 on CPU), bf16, fp16 (CUDA), tf32, fp32 (IEEE, TF32 off)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the generator (faster repeated calls; the first image of each "
                             "size compiles)")


def apply_inference_options(args: argparse.Namespace) -> torch.device:
    """Resolve ``args.device``, set the CPU threads and check that ``args.precision`` can run there -> the
    device. ValueError (one line, for ``parser.error``) on a bad device, thread count or precision."""
    device = resolve_device(args.device)
    set_cpu_threads(args.threads)
    check_precision(args.precision, device)
    return device


def check_precision(precision: str, device: torch.device | str) -> None:
    """ValueError (one line) unless ``precision`` is known and can run on ``device``."""
    inference_dtype(precision, resolve_device(device))
