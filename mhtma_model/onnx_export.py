"""A trained generator as an ONNX model (dynamo exporter), checked with onnxruntime; the command line
``mhtma-export`` is :mod:`mhtma_model.cli.export`.

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
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from mhtma_kernels import MaskedTemperatureAttention
from mhtma_kernels.ops import EXPORT_DECOMPOSITIONS

from .masks import free_form_mask
from .output_files import atomic_path
from .networks import composite
from .pixel_range import to_network

DEFAULT_TOLERANCE = 1e-3


class ExportError(ValueError):
    """The generator cannot be exported as asked (e.g. Triton attention to ONNX); the message says why."""


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
    image = to_network(np.asarray(photo))
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
                          "mhtma_model.onnx_export.use_torch_backend(generator)")
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
