"""Precision end to end, on CPU: which autocast dtype each setting gives on which device, a GAN step at
bf16 (CPU autocast) with fp32 losses, bf16 inference close to fp32, the TF32 flags set and restored,
torch.compile of the generator for training and inference (``aot_eager`` backend: inductor's compile of
the generator takes minutes on 2 cores), and the command lines' ``--precision`` errors."""
import numpy as np
import pytest
import torch
import yaml

from mhtma_kernels.layers import MaskedTemperatureAttention
from mhtma_kernels.testing import TOLERANCE, assert_normwise_close
from mhtma_model import precision as P
from mhtma_model.config import Config, load_config
from mhtma_model.gan_step import GanStep
from mhtma_model.networks import InpaintGenerator
from mhtma_model.inference import predict_batch, prepare_generator
from mhtma_model.precision import PrecisionError, inference_dtype, inference_precision, training_dtype

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
TINY = {"data": {"size": 32, "batch_size": 2}, "model": {"base_channels": 4, "disc_channels": 4, "backend": "torch"},
        "train": {"device": "cpu"}}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def aot_eager(monkeypatch):
    monkeypatch.setenv(P.COMPILE_BACKEND_ENV, "aot_eager")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# ------------------------------------------------------------------------------------ resolution

@pytest.mark.parametrize("amp, bf16_gpu, cpu, cuda", [
    pytest.param("auto", True, None, torch.bfloat16, id="auto-ampere"),
    pytest.param("auto", False, None, torch.float16, id="auto-old-gpu"),
    pytest.param("bf16", True, torch.bfloat16, torch.bfloat16, id="bf16"),
    pytest.param("fp16", True, "error", torch.float16, id="fp16"),
    pytest.param("off", True, None, None, id="off"),
])
def test_training_dtype(monkeypatch, amp, bf16_gpu, cpu, cuda):
    monkeypatch.setattr(P, "bf16_supported", lambda device: device.type == "cuda" and bf16_gpu)
    if cpu == "error":
        with pytest.raises(PrecisionError, match="train.amp=fp16 needs a CUDA device"):
            training_dtype(amp, CPU)
    else:
        assert training_dtype(amp, CPU) == cpu
    assert training_dtype(amp, CUDA) == cuda


@pytest.mark.parametrize("precision, bf16_gpu, cpu, cuda", [
    pytest.param("auto", True, None, torch.bfloat16, id="auto-ampere"),
    pytest.param("auto", False, None, None, id="auto-old-gpu-is-fp32"),
    pytest.param("bf16", True, torch.bfloat16, torch.bfloat16, id="bf16"),
    pytest.param("tf32", True, None, None, id="tf32"),
    pytest.param("fp32", True, None, None, id="fp32"),
])
def test_inference_dtype(monkeypatch, precision, bf16_gpu, cpu, cuda):
    monkeypatch.setattr(P, "bf16_supported", lambda device: device.type == "cuda" and bf16_gpu)
    assert inference_dtype(precision, CPU) == cpu
    assert inference_dtype(precision, CUDA) == cuda


def test_unknown_or_impossible_precisions_are_one_line_errors():
    with pytest.raises(PrecisionError, match=r"precision must be one of .*'fp32'.*got 'fp8'"):
        inference_dtype("fp8", CPU)
    with pytest.raises(PrecisionError, match="precision=fp16 needs a CUDA device.*use bf16 or fp32"):
        inference_dtype("fp16", CPU)


@pytest.mark.parametrize("precision, inside", [("fp32", False), ("tf32", True), ("bf16", True)])
def test_inference_sets_tf32_for_the_forward_only(monkeypatch, precision, inside):
    """The TF32 flags are plain process globals (no GPU needed to read them): set inside, restored after."""
    monkeypatch.setattr(P, "autocast", lambda device, dtype: __import__("contextlib").nullcontext())
    monkeypatch.setattr(P, "bf16_supported", lambda device: True)
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        P.set_tf32(not inside)
        with inference_precision(precision, CUDA):
            assert torch.backends.cuda.matmul.allow_tf32 is inside
            assert torch.backends.cudnn.allow_tf32 is inside
        assert torch.backends.cuda.matmul.allow_tf32 is (not inside)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


# -------------------------------------------------------------------------------------- training

def _batch(seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(2, 3, size, size, generator=g) * 2 - 1
    mask = torch.zeros(2, 1, size, size)
    mask[:, :, size // 4: size * 5 // 8, size // 3: size * 3 // 4] = 1
    return image, mask, None


#: bf16 training on CPU at 64 px: at 32 px the discriminator's last convs see 1x1 inputs, where oneDNN's
#: bf16 conv weight gradient (torch 2.14, CPU) returns NaN in about 15% of calls (a torch/oneDNN bug; see
#: mhtma_model.precision). 64 px gives 2x2 inputs there, which were clean in 100 of 100 calls.
BF16_CPU = {**TINY, "data": {"size": 64, "batch_size": 2}}


def _conv_output_dtypes(module):
    seen = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
             for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    return seen, hooks


def test_gan_step_at_bf16_on_cpu_runs_in_bf16_with_fp32_losses():
    cfg = Config.from_dict({**BF16_CPU, "train": {"device": "cpu", "amp": "bf16"}})
    gan = GanStep(cfg, CPU)
    assert gan.amp_dtype == torch.bfloat16 and gan.precision_name == "bf16"
    assert not gan.scaler_g.is_enabled() and not gan.scaler_d.is_enabled()  # bf16 needs no loss scaling
    seen, hooks = _conv_output_dtypes(gan.g_raw)
    before = [p.detach().clone() for p in gan.g_raw.parameters()]
    terms = gan.step(*_batch(size=64))
    for h in hooks:
        h.remove()
    assert seen and all(d == torch.bfloat16 for d in seen)  # the generator's convs ran in bf16
    for name, value in terms.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), name
    assert all(p.dtype == torch.float32 for p in gan.g_raw.parameters())  # fp32 master weights
    assert any(not torch.equal(a, b) for a, b in zip(before, gan.g_raw.parameters()))


def test_training_records_precision_settings_and_refuses_fp16_on_cpu(tmp_path, capsys):
    from mhtma_model.cli.train import main
    from mhtma_model.training import train
    from tests.test_train import TINY as TRAIN_TINY
    from tests.test_train import _photos

    root = _photos(tmp_path / "photos", 4, size=64)
    common = [*TRAIN_TINY, f"data.root={root}", "data.val_fraction=0.25", "data.size=64"]  # 64: see BF16_CPU
    summary = train(load_config(overrides=[*common, f"run.dir={tmp_path / 'run'}", "train.amp=bf16",
                                           "train.tf32=false", "train.max_steps=2"]))
    assert summary["step"] == 2 and np.isfinite(summary["val_l1"])
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["amp"] == "bf16" and saved["train"]["tf32"] is False and saved["train"]["compile"] is False
    assert "bf16" in capsys.readouterr().err  # the start line names the precision
    code = main([*common, f"run.dir={tmp_path / 'cpu16'}", "train.amp=fp16", "train.max_steps=1"])
    err = capsys.readouterr().err
    assert code == 2 and "train.amp=fp16 needs a CUDA device" in err and "Traceback" not in err


def test_old_checkpoint_with_boolean_amp_loads(tmp_path):
    """A checkpoint written before amp took a dtype (``amp: true``, no tf32/compile keys) still loads."""
    from mhtma_model.checkpoint import load_generator, save_checkpoint
    from mhtma_model.config import build_generator

    cfg = Config.from_dict(TINY)
    old = cfg.to_dict()
    old["train"]["amp"] = True
    del old["train"]["tf32"], old["train"]["compile"]
    payload = {"format": "mhtma", "version": 1, "config": old, "generator": build_generator(cfg.model).state_dict(),
               "discriminator": None, "opt_g": None, "opt_d": None, "step": 1, "epoch": 0}
    _gen, loaded = load_generator(save_checkpoint(tmp_path / "old.pt", payload))
    assert loaded.train.amp == "auto" and loaded.train.tf32 is True and loaded.train.compile is False


def test_training_with_a_compiled_generator(tmp_path, aot_eager):
    cfg = Config.from_dict({**TINY, "train": {"device": "cpu", "compile": True}})
    gan = GanStep(cfg, CPU)
    assert gan.g_raw.compiled_with == "aot_eager"
    assert all(not k.startswith("_orig_mod") for k in gan.g_raw.state_dict())  # checkpoints keep their keys
    for seed in range(2):
        terms = gan.step(*_batch(seed))
        assert all(torch.isfinite(v) for v in terms.values())
    from mhtma_model.config import build_generator
    build_generator(cfg.model).load_state_dict(gan.g_raw.state_dict(), strict=True)  # an eager one loads them


# ------------------------------------------------------------------------------------- inference

def _inference_case():
    torch.manual_seed(0)
    generator = InpaintGenerator(base_channels=8, attention="mhtma", heads=2, backend="torch").eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    holes = np.zeros((2, 32, 32), bool)
    holes[0, 6:20, 8:24] = True
    holes[1, 14:30, 2:18] = True
    return generator, images, holes


def test_bf16_inference_on_cpu_matches_fp32():
    generator, images, holes = _inference_case()
    fp32 = predict_batch(generator, images, holes, precision="fp32")
    seen, hooks = _conv_output_dtypes(generator)
    attention = []
    hooks += [m.register_forward_hook(lambda _m, _i, out: attention.append(out.dtype))
              for m in generator.modules() if isinstance(m, MaskedTemperatureAttention)]
    bf16 = predict_batch(generator, images, holes, precision="bf16")
    for h in hooks:
        h.remove()
    assert seen and all(d == torch.bfloat16 for d in seen)
    assert attention == [torch.bfloat16]  # the MHTMA layer (and its op) ran in bf16 too
    assert bf16.dtype == np.float32
    assert_normwise_close(torch.from_numpy(bf16), torch.from_numpy(fp32).double(), torch.bfloat16, "bf16 vs fp32")
    assert np.abs(bf16 - fp32).max() / 255.0 < 2 * TOLERANCE[torch.bfloat16][0]
    assert not np.array_equal(bf16, fp32)  # bf16 really ran (not silently fp32)


def test_prepare_generator_checks_the_precision_and_hangs_nothing_on_the_module():
    generator, images, holes = _inference_case()
    prepare_generator(generator, "cpu", "bf16")
    assert not hasattr(generator, "inference_precision") and not generator.training
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        prepare_generator(generator, "cpu", "fp16")


def test_compiled_inference_matches_eager(aot_eager):
    generator, images, holes = _inference_case()
    eager = predict_batch(generator, images, holes, precision="fp32")
    prepare_generator(generator, "cpu", "fp32", compile=True)
    assert generator.compiled_with == "aot_eager"
    compiled = predict_batch(generator, images, holes, precision="fp32")
    assert_normwise_close(torch.from_numpy(compiled), torch.from_numpy(eager).double(), torch.float32, "compiled")


def test_inpaint_cli_rejects_fp16_on_cpu(tmp_path):
    from PIL import Image

    from mhtma_model.cli.inpaint import main
    from tests.tiny_checkpoint import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "g.pt")
    image = tmp_path / "a.png"
    Image.new("RGB", (32, 32)).save(image)
    Image.new("L", (32, 32), 255).save(tmp_path / "m.png")
    with pytest.raises(SystemExit) as info:
        main(["--checkpoint", str(ckpt), "--image", str(image), "--mask", str(tmp_path / "m.png"),
              "--output", str(tmp_path / "out"), "--device", "cpu", "--precision", "fp16"])
    assert info.value.code == 2


def test_eval_and_ui_pass_the_precision_through(tmp_path, capsys):
    """mhtma-eval runs the generator at --precision and records it; mhtma-ui's cache makes its Inpainter
    with the precision it was started with."""
    from PIL import Image
    from skimage import data as skdata

    from mhtma_model.cli import evaluate, ui
    from tests.tiny_checkpoint import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "g.pt")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut", "coffee"):
        Image.fromarray(getattr(skdata, name)()).resize((48, 32), Image.BICUBIC).save(photos / f"{name}.png")
    results = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        code = evaluate.main(["--checkpoint", str(ckpt), "--data", str(photos), "--output", str(out), "--size",
                              "32", "--device", "cpu", "--precision", precision])
        assert code == 0
        assert "FID skipped" in capsys.readouterr().err  # the one-line note (no weights in tests)
        results[precision] = __import__("json").loads((out / "metrics.json").read_text())
        assert results[precision]["precision"] == precision
    mae = {p: [r["mae_percent"] for r in results[p]["per_image"]] for p in results}
    assert mae["bf16"] != mae["fp32"]  # the bf16 run really ran in bf16
    np.testing.assert_allclose(mae["bf16"], mae["fp32"], rtol=0.1, atol=0.5)
    inpainter = ui.InpainterCache("cpu", "bf16").get(ckpt)
    assert inpainter.precision == "bf16" and not inpainter.generator.training
