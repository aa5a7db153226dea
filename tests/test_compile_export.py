"""The op, the layer and the generator in the PyTorch 2 stack (CPU): torch.library registration,
torch.compile(fullgraph=True) against eager, autocast, torch.export with a dynamic batch, ONNX + onnxruntime.

Compilation is slow on a small CPU: the op and the layer go through inductor (the real compiler), the
generator through "aot_eager" (the same graph capture and autograd tracing, without code generation).
The Triton op runs under TRITON_INTERPRET=1 here (conftest); it is an opaque ``torch.library.custom_op``
(torch.compile calls it as is).
"""
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from mhtma_kernels import MaskedTemperatureAttention, masked_temperature_attention
from mhtma_model.networks import InpaintGenerator
from mhtma_model.onnx_export import InpaintingGraph

from mhtma_kernels.testing import TOLERANCE, assert_close

REPO = Path(__file__).resolve().parents[1]
BACKENDS = [pytest.param("torch", id="torch"), pytest.param("triton", id="triton-interpreter")]


def device_for(backend) -> str:
    """CPU for the torch backend; for triton CUDA when present, else CPU under the interpreter (or skip)."""
    if backend != "triton":
        return "cpu"
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        return "cuda"
    from mhtma_kernels.ops.triton import launcher as triton_launcher
    if not triton_launcher.interpreting():
        pytest.skip("triton on CPU needs TRITON_INTERPRET=1 before triton is imported")
    return "cpu"


def op_inputs(dtype=torch.float32, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 2, 10, 12, generator=g)
    k = torch.randn(2, 2, 9, 12, generator=g)
    v = torch.randn(2, 2, 9, 5, generator=g)
    key_valid = torch.rand(2, 9, generator=g) > 0.3
    key_valid[1] = False  # image 1: every key is a hole (uniform weights)
    temperature = torch.rand(2, 2, generator=g) + 0.1
    return [x.to(device, dtype) for x in (q, k, v)] + [key_valid.to(device), temperature.to(device)]


def output_and_grads(fn, q, k, v, key_valid, temperature):
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v, temperature)]
    out = fn(leaves[0], leaves[1], leaves[2], key_valid, leaves[3])
    weight = torch.linspace(-1.0, 2.0, out.numel(), device=out.device).reshape(out.shape).to(out.dtype)
    (out * weight).sum().backward()
    return [out.detach()] + [x.grad for x in leaves]


# ------------------------------------------------------------------------------------- registration

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_custom_op_passes_opcheck(backend, dtype):
    """Schema, fake (shape) implementation, autograd registration and dynamic-shape tracing of the op."""
    device = device_for(backend)
    if backend == "torch":
        op = torch.ops.mhtma.chunked_gemm_attention.default
    else:
        import mhtma_kernels.ops.triton.op  # noqa: F401  (registers the op)
        op = torch.ops.mhtma.triton_attention.default
    q, k, v, key_valid, t = op_inputs(device=device)
    q, k = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1)
    args = [x.to(dtype).requires_grad_() for x in (q, k, v)] + [key_valid, t.requires_grad_(), 1e4]
    if backend == "triton":
        args.append(True)  # bounded: q, k are unit vectors
    result = torch.library.opcheck(op, args)
    assert set(result.values()) == {"SUCCESS"}, result


def test_fake_tensor_shapes_of_the_op():
    """Under FakeTensorMode (what compile/export trace with) the op yields the output's shape and dtype."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q, k = torch.empty(3, 2, 7, 18), torch.empty(3, 2, 5, 18)
        v, key_valid, t = torch.empty(3, 2, 5, 4, dtype=torch.bfloat16), torch.ones(3, 5, dtype=torch.bool), torch.ones(3, 2)
        out = masked_temperature_attention(q.bfloat16(), k.bfloat16(), v, key_valid, t, backend="torch")
        assert tuple(out.shape) == (3, 2, 7, 4) and out.dtype == torch.bfloat16


def test_without_triton_the_package_works_and_the_triton_backend_says_what_to_do():
    """In a process where `import triton` fails: mhtma_kernels imports, the torch backend (and "auto" on CPU)
    run, and backend="triton" raises one ImportError that names the package and the alternative."""
    script = (
        "import sys\n"
        "sys.modules['triton'] = None  # any `import triton` now raises ImportError\n"
        "import torch\n"
        "from mhtma_kernels import masked_temperature_attention\n"
        "q, k, v = torch.randn(1, 1, 3, 4), torch.randn(1, 1, 2, 4), torch.randn(1, 1, 2, 4)\n"
        "args = (q, k, v, torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 1))\n"
        "for backend in ('torch', 'auto'):\n"
        "    assert masked_temperature_attention(*args, backend=backend).shape == (1, 1, 3, 4)\n"
        "try:\n"
        "    masked_temperature_attention(*args, backend='triton')\n"
        "except ImportError as error:\n"
        "    print('ImportError:', error)\n"
    )
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO))
    env.pop("MHTMA_BACKEND", None)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = done.stdout.strip().splitlines()
    assert re.fullmatch(r"ImportError: backend='triton' needs the `triton` package.*use backend='torch'", line), line


# ------------------------------------------------------------------------------------------ compile

@pytest.mark.parametrize("backend", BACKENDS)
def test_op_compiles_fullgraph_and_matches_eager(backend):
    device = device_for(backend)
    inputs = op_inputs(device=device)

    def op(q, k, v, key_valid, t):
        return masked_temperature_attention(q, k, v, key_valid, t, backend=backend)

    # inductor for the torch op and on CUDA; the interpreted Triton op is opaque to inductor, aot_eager traces
    # the same graph
    compiler = "aot_eager" if backend == "triton" and device == "cpu" else "inductor"
    compiled = torch.compile(op, fullgraph=True, backend=compiler)
    expected = output_and_grads(op, *inputs)
    actual = output_and_grads(compiled, *inputs)
    for name, a, e in zip(("out", "dq", "dk", "dv", "dtemperature"), actual, expected):
        assert_close(a, e.double(), torch.float32, name)


def test_compiled_op_still_refuses_a_non_positive_temperature():
    """In a compiled graph the value check is a runtime assertion (RuntimeError) with the eager message."""
    q, k, v, key_valid, t = op_inputs()
    compiled = torch.compile(lambda *a: masked_temperature_attention(*a, backend="torch"), fullgraph=True,
                             backend="aot_eager")
    with pytest.raises(RuntimeError, match="temperature must be finite and strictly positive"):
        compiled(q, k, v, key_valid, -t)
    with pytest.raises(ValueError, match="temperature must be finite and strictly positive"):
        masked_temperature_attention(q, k, v, key_valid, -t, backend="torch")  # eager: the same ValueError


def feature_and_mask(batch=2, channels=16, size=8):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, channels, size, size, generator=g)
    mask = torch.zeros(batch, 1, 2 * size, 2 * size)
    mask[0, :, 4:10, 3:12] = 1
    mask[1, :, 6:16, 0:5] = 1
    return x, mask


def test_layer_compiles_fullgraph_and_matches_eager():
    """fullgraph capture of the layer, forward and backward ("aot_eager": inductor itself is checked on the op)."""
    torch.manual_seed(0)
    layer = MaskedTemperatureAttention(16, heads=2, backend="torch")
    x, mask = feature_and_mask()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    grads = []
    for run in (layer, compiled):
        layer.zero_grad()
        xi = x.clone().requires_grad_()
        out = run(xi, mask)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        grads.append([out.detach(), xi.grad] + [p.grad.clone() for p in layer.parameters()])
    for i, (e, a) in enumerate(zip(*grads)):
        assert_close(a, e.double(), torch.float32, f"output/grad #{i}")
    assert layer.last_temperature is not None and layer.last_temperature.shape == (2, 2)


def test_layer_compiles_with_dynamic_shapes():
    """dynamic=True: batch and feature size symbolic (module floats such as lambda_m become symbolic too)."""
    torch.manual_seed(0)
    layer = MaskedTemperatureAttention(16, heads=2, backend="torch")
    compiled = torch.compile(layer, fullgraph=True, dynamic=True, backend="aot_eager")
    for batch, size in ((2, 8), (3, 10)):
        x, mask = feature_and_mask(batch=batch, size=size)
        with torch.no_grad():
            assert_close(compiled(x, mask), layer(x, mask).double(), torch.float32, f"batch {batch}, {size}x{size}")


def test_generator_traces_fullgraph():
    """The whole generator is captured as one graph (no break at the op or the layers), forward and backward."""
    torch.manual_seed(0)
    generator = InpaintGenerator(base_channels=4, backend="torch")
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:20, 10:24] = 1
    compiled = torch.compile(generator, fullgraph=True, backend="aot_eager")
    expected = generator(image, mask)[1]
    actual = compiled(image, mask)[1]
    assert_close(actual, expected.detach().double(), torch.float32, "refined")
    actual.sum().backward()
    assert all(p.grad is not None for p in generator.parameters())


def test_contextual_attention_batched_form_equals_its_loop():
    """What tracing runs instead of the per-image loop (a loop over a symbolic batch cannot be exported)."""
    from mhtma_kernels import ContextualAttention
    from mhtma_kernels.layers.patches import resize_mask

    layer = ContextualAttention(6)
    x = torch.randn(3, 6, 9, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(3, 1, 18, 14)
    mask[0, :, 4:10, 2:8] = 1
    mask[2] = 1  # every key a hole
    batched = layer.batched_forward(x, resize_mask(mask, (9, 7)).double())
    assert_close(batched, layer(x, mask), torch.float64, "batched vs loop")


# ----------------------------------------------------------------------------------------- autocast

@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_cpu_autocast_computes_in_bfloat16(backend):
    q, k, v, key_valid, t = op_inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = masked_temperature_attention(q, k, v, key_valid, t, backend=backend)
    assert out.dtype == torch.bfloat16
    expected = masked_temperature_attention(q.double(), k.double(), v.double(), key_valid, t.double(),
                                            backend="reference")
    assert_close(out, expected, torch.bfloat16, "out under autocast")
    # the result is the op on bf16-rounded inputs, not an fp32 computation
    rounded = masked_temperature_attention(*(x.bfloat16() for x in (q, k, v)), key_valid, t, backend=backend)
    torch.testing.assert_close(out, rounded, atol=0, rtol=0)


def test_autocast_leaves_float64_alone_and_does_not_cast_temperature():
    q, k, v, key_valid, t = op_inputs(torch.float64)
    t = t.double().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = masked_temperature_attention(q, k, v, key_valid, t, backend="torch")
    assert out.dtype == torch.float64
    out.sum().backward()
    assert t.grad.dtype == torch.float64


def test_layer_under_cpu_autocast_is_close_to_fp32():
    torch.manual_seed(0)
    layer = MaskedTemperatureAttention(16, heads=2, backend="torch")
    x, mask = feature_and_mask()
    with torch.no_grad():
        expected = layer(x, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x, mask)
    assert out.dtype == torch.bfloat16
    atol, rtol = TOLERANCE[torch.bfloat16]
    torch.testing.assert_close(out.float(), expected, atol=atol * expected.abs().max().item(), rtol=rtol)


# ------------------------------------------------------------------------------------------- export

def tiny_inputs(batch, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    mask = torch.zeros(batch, 1, size, size)
    mask[:, :, 8:20, 10:24] = 1
    mask[-1, :, 2:6, 2:30] = 1
    return image, mask


@pytest.mark.parametrize("attention", ["mhtma", "atma", "contextual", "none"])
def test_generator_exports_with_a_dynamic_batch(attention):
    torch.manual_seed(0)
    generator = InpaintGenerator(base_channels=4, attention=attention, backend="torch").eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. a Python attribute set during export
        program = torch.export.export(generator, tiny_inputs(2), dynamic_shapes=({0: batch}, {0: batch}))
    ops = {str(n.target) for n in program.graph.nodes}
    assert ("mhtma.chunked_gemm_attention.default" in ops) == (attention == "mhtma")  # one node, not a graph break
    image, mask = tiny_inputs(3, seed=1)  # another batch size than the traced one
    with torch.no_grad():
        expected = generator(image, mask)
        actual = program.module()(image, mask)
    for name, a, e in zip(("coarse", "refined"), actual, expected):
        assert_close(a, e.double(), torch.float32, name)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_mhtma_export_cli_writes_an_onnx_model_that_onnxruntime_runs(tmp_path, capsys, monkeypatch):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from mhtma_model.cli import export

    from .tiny_checkpoint import make_tiny_checkpoint

    checkpoint = make_tiny_checkpoint(tmp_path / "tiny.pt")
    output = tmp_path / "model.onnx"
    assert export.main(["--checkpoint", str(checkpoint), "--output", str(output), "--size", "32"]) == 0
    line = capsys.readouterr().out
    difference = float(re.search(r"max abs difference (\S+)", line).group(1))
    assert difference <= export.DEFAULT_TOLERANCE

    # Run the file as a deployment would (onnxruntime only), at a batch size the export did not trace.
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "mask"]
    image, mask = tiny_inputs(3, seed=2)
    (inpainted,) = session.run(None, {"image": image.numpy(), "mask": mask.numpy()})
    from mhtma_model.checkpoint import load_generator

    generator, _ = load_generator(checkpoint)
    with torch.no_grad():
        expected = InpaintingGraph(generator)(image, mask)
    assert inpainted.shape == (3, 3, 32, 32)
    assert_close(torch.from_numpy(inpainted), expected.double(), torch.float32, "onnxruntime vs PyTorch")
    known = mask.expand_as(image) == 0
    assert torch.equal(torch.from_numpy(inpainted)[known], image[known])  # known pixels pass through

    # Above the tolerance the command fails loudly (exit 1) and leaves no file (the model is reused here, not
    # re-exported).
    monkeypatch.setattr(export, "export_onnx", lambda generator, path, size: Path(shutil.copyfile(output, path)))
    refused = tmp_path / "refused.onnx"
    assert export.main(["--checkpoint", str(checkpoint), "--output", str(refused), "--size", "32",
                        "--tolerance", "0"]) == 1
    assert "differs from PyTorch" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "tiny.pt"]
    assert oct(output.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def test_triton_backend_to_onnx_is_a_clear_error(tmp_path):
    from mhtma_model.onnx_export import ExportError, export_onnx

    generator = InpaintGenerator(base_channels=4, backend="triton").eval()
    with pytest.raises(ExportError, match="backend='triton' cannot be exported to ONNX.*backend='torch'"):
        export_onnx(generator, tmp_path / "model.onnx", size=32)
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.parametrize("argv, message", [
    pytest.param(["--checkpoint", "missing.pt"], "checkpoint not found", id="missing-checkpoint"),
    pytest.param(["--checkpoint", "CKPT", "--size", "30"], "size must be a multiple of 8", id="bad-size"),
    pytest.param(["--checkpoint", "CKPT", "--image", "a.png"], "--image and --mask go together", id="image-without-mask"),
    pytest.param(["--checkpoint", "CKPT", "--image", "nope.png", "--mask", "nope.png"], "nope.png", id="missing-image"),
])
def test_mhtma_export_user_errors_exit_2_with_one_line(tmp_path, capsys, argv, message):
    from mhtma_model.cli import export

    from .tiny_checkpoint import make_tiny_checkpoint

    checkpoint = make_tiny_checkpoint(tmp_path / "tiny.pt")
    argv = [str(checkpoint) if a == "CKPT" else a for a in argv] + ["--output", str(tmp_path / "m.onnx")]
    with pytest.raises(SystemExit) as exit_info:
        export.main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in error and error.startswith("mhtma-export: error:")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled Triton kernels need a CUDA GPU")
def test_generator_compiles_on_cuda_with_the_triton_backend_without_graph_breaks():
    """GPU check: the generator with the fused op, inductor, fullgraph, forward and backward vs eager."""
    torch.manual_seed(0)
    generator = InpaintGenerator(base_channels=8, backend="triton").cuda()
    image, mask = (x.cuda() for x in tiny_inputs(2, size=64))
    explanation = torch._dynamo.explain(generator)(image, mask)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(generator, fullgraph=True)
    expected, actual = generator(image, mask)[1], compiled(image, mask)[1]
    assert_close(actual, expected.detach().double(), torch.float32, "refined (triton, compiled)")
    actual.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in generator.parameters())
