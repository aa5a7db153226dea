"""`mhtma-export`: a trained generator as an ONNX model (dynamo exporter), checked with onnxruntime.

    mhtma-export --checkpoint runs/x/checkpoints/best.pt --output model.onnx [--size 256]
    python -m mhtma_model.export --checkpoint best.pt --output model.onnx

The exported model is :class:`InpaintingGraph`: inputs ``image [N, 3, S, S]`` float32 in [-1, 1] and
``mask [N, 1, S, S]`` float32 (1 = hole) (and ``sketch [N, 1, S, S]`` in [0, 1] for sketch-guided
models); output ``inpainted [N, 3, S, S]`` in [-1, 1] (generated pixels in the hole, the input
elsewhere). The batch N is dynamic, the side S is fixed by ``--size`` (default: the checkpoint's
training size).

How: ``torch.export`` with a dynamic batch dimension; the attention op (``mhtma::chunked_gemm_attention``, the
`torch` backend) is decomposed into aten ops (score matrix materialised: ONNX has no fused kernel for
it) and ``torch.onnx.export(..., dynamo=True)`` writes the file. Afterwards onnxruntime runs it on a
real photo (scikit-image's astronaut, or ``--image``/``--mask``) and the largest absolute difference
to PyTorch is printed; above ``--tolerance`` the command fails (exit 1).

The Triton backend cannot go to ONNX (its kernels have no ONNX equivalent): the attention is exported
with the `torch` backend whatever the checkpoint trained with (same weights, same math).

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
from torch import nn

from mhtma_kernels import MaskedTemperatureAttention
from mhtma_kernels.ops.library import EXPORT_DECOMPOSITIONS

from .cli_options import command_parser
from .images import load_mask, load_rgb
from .inpainter import Inpainter
from .masks import free_form_mask
from .output_files import OutputError, atomic_path, check_output_file
from .networks import composite

DEFAULT_TOLERANCE = 1e-3


class ExportError(ValueError):
    """The generator cannot be exported as asked (e.g. Triton attention to ONNX); the message says why."""


class CheckFailed(Exception):
    """The exported model's output differs from PyTorch's by more than ``--tolerance``."""


class InpaintingGraph(nn.Module):
    """The deployable graph: ``(image, mask[, sketch]) -> inpainted = composite(refined, image, mask)``
    (tensors in, tensors out; :class:`mhtma_model.Inpainter` is the image-level object around a generator)."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, image: torch.Tensor, mask: torch.Tensor, sketch: Optional[torch.Tensor] = None):
        _, refined = self.generator(image, mask, sketch)
        return composite(refined, image, mask)


def attention_backends(generator: nn.Module) -> set[str]:
    """Backends requested by the op-based attention layers inside ``generator`` ("auto", "torch", ...)."""
    return {m.backend for m in generator.modules() if isinstance(m, MaskedTemperatureAttention)}


def use_torch_backend(generator: nn.Module) -> nn.Module:
    """Switch every MHTMA layer of ``generator`` to the `torch` backend (in place; weights untouched)."""
    for m in generator.modules():
        if isinstance(m, MaskedTemperatureAttention) and m.backend != "reference":
            m.backend = "torch"
    return generator


def example_inputs(generator: nn.Module, size: int, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """A real photo (scikit-image's astronaut) at ``size`` in [-1, 1], a free-form + square mask and,
    for sketch models, an empty sketch: ``batch`` copies (different masks)."""
    from skimage import data

    photo = Image.fromarray(data.astronaut()).resize((size, size), Image.Resampling.BICUBIC)
    image = torch.from_numpy(np.asarray(photo, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
    rng = np.random.default_rng(seed)
    masks = [torch.from_numpy(free_form_mask(size, size, rng).astype(np.float32)) for _ in range(batch)]
    image = image[None].expand(batch, -1, -1, -1).contiguous()
    mask = torch.stack(masks).reshape(batch, 1, size, size)
    if getattr(generator, "sketch", False):
        return image, mask, torch.zeros_like(mask)
    return image, mask


def _check_exportable(generator: nn.Module, size: int) -> None:
    if "triton" in attention_backends(generator):
        raise ExportError("backend='triton' cannot be exported to ONNX (the fused Triton kernels have no ONNX "
                          "equivalent); export with backend='torch' (same weights, same math): "
                          "mhtma_model.export.use_torch_backend(generator)")
    problem = size_problem(generator, size)
    if problem:
        raise ExportError(problem)


def size_problem(generator: nn.Module, size: int) -> Optional[str]:
    """None when ``generator`` can be exported at side ``size``, else why not ("size must be ...")."""
    multiple, min_size = getattr(generator, "multiple", 8), getattr(generator, "min_size", 8)
    if size % multiple or size < min_size:
        return f"size must be a multiple of {multiple} and at least {min_size}, got {size}"
    return None


def export_program(generator: nn.Module, size: int, batch: int = 2) -> "torch.export.ExportedProgram":
    """``torch.export`` of :class:`InpaintingGraph` around ``generator`` (eval mode, CPU) with a dynamic batch.

    The attention op stays one node (``torch.ops.mhtma.chunked_gemm_attention``); inputs ``batch`` examples
    of side ``size`` (the traced batch; any batch >= 1 runs afterwards).
    """
    _check_exportable(generator, size)
    model = InpaintingGraph(generator).eval()
    inputs = example_inputs(generator, size, batch=batch)
    dim = torch.export.Dim("batch", min=1, max=1024)
    shapes = tuple({0: dim} for _ in inputs)
    with torch.no_grad():
        return torch.export.export(model, inputs, dynamic_shapes=shapes)


def export_onnx(generator: nn.Module, output, size: int) -> Path:
    """Write ``generator`` as ONNX (dynamo exporter) to ``output`` (atomically, with the umask's mode); returns
    the path.

    ExportError for what ONNX cannot hold (Triton attention, a size the generator refuses).
    """
    import inspect

    if "dynamo" not in inspect.signature(torch.onnx.export).parameters:
        raise ExportError(f"ONNX export uses torch's dynamo exporter (torch >= 2.5); this is torch {torch.__version__}")
    program = export_program(generator, size).run_decompositions(EXPORT_DECOMPOSITIONS)
    leftover = sorted({str(n.target) for n in program.graph.nodes if str(n.target).startswith("mhtma.")})
    if leftover:
        raise ExportError(f"the graph still holds mhtma ops without an ONNX form: {leftover}; "
                          "export with backend='torch'")
    names = ["image", "mask", "sketch"][:len(program.graph_signature.user_inputs)]
    onnx_program = torch.onnx.export(program, input_names=names, output_names=["inpainted"], dynamo=True,
                                     verbose=False)
    with atomic_path(output) as tmp:
        onnx_program.save(str(tmp))
    return Path(output)


def check_onnx(path, generator: nn.Module, inputs: Sequence[torch.Tensor]) -> float:
    """Run the ONNX model with onnxruntime (CPU) on ``inputs`` -> max |onnx - PyTorch| of the output."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {arg.name: x.numpy() for arg, x in zip(session.get_inputs(), inputs)}
    (onnx_out,) = session.run(None, feeds)
    with torch.no_grad():
        torch_out = InpaintingGraph(generator).eval()(*inputs).numpy()
    return float(np.abs(onnx_out - torch_out).max())


def _load_pair(image_path: str, mask_path: str, size: int, sketch: bool) -> tuple[torch.Tensor, ...]:
    """The check image and its mask from files (read by mhtma_model.images), resized to size x size."""
    image = load_rgb(image_path).resize((size, size), Image.Resampling.BICUBIC)
    hole = load_mask(mask_path, size=(size, size))
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
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
