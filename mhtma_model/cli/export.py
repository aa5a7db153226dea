"""`mhtma-export`: a trained generator as an ONNX model (dynamo exporter), checked with onnxruntime.

    mhtma-export --checkpoint runs/x/checkpoints/best.pt --output model.onnx [--size 256]
    python -m mhtma_model.export --checkpoint best.pt --output model.onnx

What is exported (inputs, outputs, the dynamic batch), how, and why the attention goes with the `torch`
backend: :mod:`mhtma_model.onnx_export`.

Exit status: 0 exported and checked, 1 the check failed, 2 usage errors (missing or incompatible
checkpoint, bad size, onnx/onnxruntime not installed: ``pip install -e ".[export]"``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..images import load_mask, load_rgb
from ..inpainter import Inpainter
from ..pixel_range import to_network
from ..onnx_export import (DEFAULT_TOLERANCE, ExportError, attention_backends, check_onnx, example_inputs,
                           export_onnx, size_problem, use_torch_backend)
from ..output_files import OutputError, atomic_path, check_output_file
from .options import command_parser


class CheckFailed(Exception):
    """The exported model's output differs from PyTorch's by more than ``--tolerance``."""


def _load_pair(image_path: str, mask_path: str, size: int, sketch: bool) -> tuple[torch.Tensor, ...]:
    """The check image and its mask from files (read by mhtma_model.images), resized to size x size."""
    image = load_rgb(image_path).resize((size, size), Image.Resampling.BICUBIC)
    hole = load_mask(mask_path, size=(size, size))
    x = to_network(np.asarray(image))[None]
    mask = torch.from_numpy(hole).reshape(1, 1, size, size)
    return (x, mask, torch.zeros_like(mask)) if sketch else (x, mask)


def build_parser() -> argparse.ArgumentParser:
    p = command_parser("mhtma-export", __doc__)
    p.add_argument("--output", required=True, help="the .onnx file to write")
    p.add_argument("--size", type=int, default=None,
                   help="square input side of the exported model (default: the checkpoint's training size)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help=f"largest accepted |onnxruntime - PyTorch| on the check image (default {DEFAULT_TOLERANCE})")
    p.add_argument("--image", default=None, help="check image (default: scikit-image's astronaut photo)")
    p.add_argument("--mask", default=None, help="mask for --image (pixel > 127 = hole)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.image is None) != (args.mask is None):
        parser.error("--image and --mask go together")
    for option, value in (("--image", args.image), ("--mask", args.mask)):
        if value is not None and not Path(value).is_file():
            parser.error(f"{option} file not found: {value}")
    if not args.tolerance >= 0:  # NaN too
        parser.error(f"--tolerance must be a number >= 0 (the largest accepted difference), got {args.tolerance}")
    try:
        check_output_file(args.output, example="model.onnx")
    except OutputError as exc:
        parser.error(str(exc))
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        parser.error(f"ONNX export needs onnx and onnxruntime ({exc}); pip install -e \".[export]\"")
    try:  # the export traces on the CPU in fp32
        inpainter = Inpainter.load(args.checkpoint, device="cpu", precision="fp32")
    except ValueError as exc:
        parser.error(str(exc))
    generator, config = inpainter.generator, inpainter.config
    size = args.size if args.size is not None else config.data.size
    if size_problem(generator, size):
        parser.error(f"--{size_problem(generator, size)}")
    if "triton" in attention_backends(generator):
        print("note: the checkpoint's attention uses backend='triton'; exporting the `torch` backend "
              "(same weights, same math)", file=sys.stderr)
    use_torch_backend(generator)
    try:
        inputs = (_load_pair(args.image, args.mask, size, generator.sketch) if args.image
                  else example_inputs(generator, size))  # read first: a bad file fails before the export
        with atomic_path(args.output) as tmp:  # in place only once checked: a failed check leaves no file
            difference = check_onnx(export_onnx(generator, tmp, size), generator, inputs)
            if not difference <= args.tolerance:
                raise CheckFailed(difference)
    except CheckFailed:
        print(f"mhtma-export: error: the ONNX model differs from PyTorch by {difference:.3g} > --tolerance "
              f"{args.tolerance:g}; nothing written (raise --tolerance to accept it)", file=sys.stderr)
        return 1
    except (ExportError, OSError, ValueError) as exc:
        parser.error(str(exc))
    print(f"wrote {args.output} (inputs {', '.join(n for n in ('image', 'mask', 'sketch')[:len(inputs)])}, "
          f"{size}x{size}, dynamic batch); onnxruntime vs PyTorch max abs difference {difference:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
