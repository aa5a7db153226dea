"""`mhtma-inpaint` and its core `inpaint_image`: mask rules, padding/window geometry, any size and mode,
known-pixel bit-identity, folder mode with broken pairs, checkpoint errors — on a real tiny checkpoint."""
import numpy as np
import pytest
import torch
from PIL import Image

from mhtma_model import inpaint
from tests.tolerance import assert_close

TINY = dict(base_channels=4, heads=2, patch_size=3)


def make_tiny_checkpoint(path, sketch=False, seed=0):
    """A real (untrained) generator with 4 base channels saved in the documented checkpoint payload."""
    from mhtma_model.checkpoint import save_checkpoint
    from mhtma_model.config import Config, build_generator

    config = Config.from_dict({"model": {**TINY, "sketch": sketch}})
    torch.manual_seed(seed)
    generator = build_generator(config.model)
    payload = {
        "format": "mhtma", "version": 1, "config": config.to_dict(), "generator": generator.state_dict(),
        "discriminator": None, "opt_g": None, "opt_d": None, "step": 0, "epoch": 0, "rng": None,
        "early_stop": None, "metrics": {},
    }
    save_checkpoint(path, payload)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    pytest.importorskip("mhtma_model.checkpoint", reason="checkpoint module (train helper) not there yet")
    root = tmp_path_factory.mktemp("ckpt")
    return {"plain": make_tiny_checkpoint(root / "plain.pt"),
            "sketch": make_tiny_checkpoint(root / "sketch.pt", sketch=True, seed=1)}


@pytest.fixture(scope="module")
def generator(checkpoints):
    from mhtma_model.checkpoint import load_generator

    return load_generator(checkpoints["plain"])[0]


def _photo(height, width, mode="RGB", seed=0):
    """A smooth random colour image (so inpainting has structure to continue) in the given PIL mode."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    rgb = Image.fromarray(small).resize((width, height), Image.BICUBIC)
    if mode == "RGBA":
        alpha = Image.fromarray(rng.integers(0, 256, size=(height, width), dtype=np.uint8))
        rgb.putalpha(alpha)
        return rgb
    return rgb.convert(mode)


def _mask(height, width, boxes=((0.3, 0.6, 0.2, 0.5),)):
    arr = np.zeros((height, width), np.uint8)
    for t, b, l, r in boxes:
        arr[int(t * height):int(b * height), int(l * width):int(r * width)] = 255
    return Image.fromarray(arr)


def _known_identical(result: Image.Image, image: Image.Image, mask: Image.Image):
    known = np.asarray(mask) <= 127
    out, src = np.asarray(result), np.asarray(image)
    assert result.size == image.size and result.mode == image.mode
    np.testing.assert_array_equal(out[known], src[known])


# -------------------------------------------------------------------------------------- pure geometry

@pytest.mark.parametrize("mode, make, expected", [
    pytest.param("L", lambda: np.array([[0, 127, 128, 255]], np.uint8), [False, False, True, True], id="gray"),
    pytest.param("RGB", lambda: np.array([[[200, 0, 0], [0, 0, 0], [0, 0, 128], [127, 127, 127]]], np.uint8),
                 [True, False, True, False], id="rgb-any-channel"),
    pytest.param("RGBA", lambda: np.array([[[0, 0, 0, 255], [255, 255, 255, 0], [0, 0, 0, 200], [9, 9, 9, 100]]],
                                           np.uint8), [True, False, True, False], id="rgba-painted-layer"),
    pytest.param("RGBA", lambda: np.array([[[0, 0, 0, 255], [255, 255, 255, 255], [200, 0, 0, 255],
                                            [9, 9, 9, 255]]], np.uint8), [False, True, True, False],
                 id="rgba-opaque-uses-colour"),
    pytest.param("I;16", lambda: np.array([[0, 30000, 40000, 65535]], np.uint16), [False, False, True, True],
                 id="16-bit"),
])
def test_mask_rules(mode, make, expected):
    img = Image.fromarray(make())
    if mode == "I;16":
        assert img.mode.startswith("I;16")
    else:
        img = img.convert(mode)
    np.testing.assert_array_equal(inpaint.mask_from_image(img)[0], expected)


@pytest.mark.parametrize("shape, multiple, mode", [
    ((217, 301), 8, "reflect"), ((3, 5), 8, "replicate"), ((16, 24), 8, "none"),
], ids=["odd", "tiny", "aligned"])
def test_pad_to_multiple(shape, multiple, mode):
    x = torch.arange(float(np.prod(shape))).reshape(1, 1, *shape)
    padded, size = inpaint.pad_to_multiple(x, multiple)
    assert size == shape
    assert padded.shape[-2] % multiple == 0 and padded.shape[-1] % multiple == 0
    assert_close(padded[..., :shape[0], :shape[1]], x.double(), torch.float32, "original kept")
    if mode == "reflect":
        assert_close(padded[..., shape[0], :shape[1]], x[..., shape[0] - 2, :].double(), torch.float32, "mirror")


def test_plan_window_small_image_runs_whole():
    hole = np.zeros((217, 301), bool)
    hole[50:60, 70:90] = True
    assert inpaint.plan_window(hole, 512) == ((0, 217, 0, 301), (217, 301))


def test_plan_window_large_image_crops_around_the_hole_then_resizes():
    hole = np.zeros((1000, 1600), bool)
    hole[400:450, 700:760] = True  # 50 x 60 box -> margin 32
    box, net = inpaint.plan_window(hole, 512)
    assert box == (368, 482, 668, 792) and net == (114, 124)
    hole[100:900, 100:1500] = True  # box grows past the limit: window clipped to the image, downscaled
    box, net = inpaint.plan_window(hole, 512)
    assert box == (0, 1000, 0, 1600) and max(net) == 512 and net == (320, 512)


def test_resolve_device():
    assert inpaint.resolve_device("cpu") == torch.device("cpu")
    assert inpaint.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device"):
        inpaint.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            inpaint.resolve_device("cuda")
