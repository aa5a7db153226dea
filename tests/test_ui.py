"""mhtma-ui: input handling, the inference function with a real tiny checkpoint, the CLI, and the real page
driven in headless Chromium (skipped with a reason when Gradio, Selenium or the browser is missing)."""
import importlib
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mhtma_model import ui

REPO = Path(__file__).resolve().parents[1]


def rgb(h=64, w=80, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def layer(h, w, box=None):
    """A transparent RGBA editor layer with an opaque painted rectangle ``box = (y0, y1, x0, x1)``."""
    arr = np.zeros((h, w, 4), np.uint8)
    if box is not None:
        y0, y1, x0, x1 = box
        arr[y0:y1, x0:x1] = (255, 255, 255, 255)
    return Image.fromarray(arr, "RGBA")


def editor_value(image, hole_box=None, sketch_box=None):
    h, w = image.size[1], image.size[0]
    return {"background": image, "layers": [layer(h, w, hole_box), layer(h, w, sketch_box)], "composite": image}


# ------------------------------------------------------------------------------------ collect_inputs
def test_painted_hole_and_sketch_layers():
    img = rgb()
    image, mask, sketch = ui.collect_inputs(editor_value(img, (10, 30, 20, 50), (18, 22, 22, 48)))
    assert image.mode == "RGB" and np.array_equal(np.asarray(image), np.asarray(img))
    m = np.asarray(mask) > 0
    assert mask.size == img.size and m.sum() == 20 * 30 and m[10:30, 20:50].all()
    s = np.asarray(sketch) > 0
    # The 4-px-wide painted line becomes a one-pixel line along row ~20.
    assert 20 <= s.sum() <= 30 and set(np.nonzero(s)[0]) <= {19, 20, 21}


def test_uploaded_mask_and_sketch_files_are_added(tmp_path):
    img = rgb()
    mask_arr = np.zeros((32, 40), np.uint8)  # half resolution: resized (nearest) to the image
    mask_arr[:8, :10] = 255
    Image.fromarray(mask_arr).save(tmp_path / "mask.png")
    drawing = np.full((64, 80, 3), 250, np.uint8)
    drawing[40:44, 10:70] = 0  # dark line on a light background
    Image.fromarray(drawing).save(tmp_path / "sketch.jpg", quality=95)
    image, mask, sketch = ui.collect_inputs(editor_value(img, (40, 50, 60, 70)), str(tmp_path / "mask.png"),
                                            str(tmp_path / "sketch.jpg"))
    m = np.asarray(mask) > 0
    assert m[:16, :20].all() and m[40:50, 60:70].all() and m.sum() == 16 * 20 + 10 * 10
    s = np.asarray(sketch) > 0
    assert s[38:46, 12:68].any(axis=0).all() and s[:36].sum() == 0


def test_transparent_background_is_flattened_on_white():
    arr = np.zeros((32, 32, 4), np.uint8)
    arr[..., 0] = 200
    arr[:, 16:, 3] = 255  # left half transparent
    image, _, sketch = ui.collect_inputs(editor_value(Image.fromarray(arr, "RGBA"), (0, 8, 0, 8)))
    out = np.asarray(image)
    assert image.mode == "RGB" and (out[:, :16] == 255).all() and (out[:, 16:] == (200, 0, 0)).all()
    assert sketch is None


def _save_text(tmp_path):
    path = tmp_path / "holiday.png"
    path.write_text("this is not a picture")
    return str(path)


def _save_huge_header(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("L", (ui.MAX_SIDE + 1, 16)).save(path)
    return str(path)


@pytest.mark.parametrize(
    "make_args, match",
    [
        pytest.param(lambda p: (None,), "upload an image", id="no-image"),
        pytest.param(lambda p: (editor_value(rgb()),), "No hole", id="no-hole"),
        pytest.param(lambda p: (editor_value(rgb(), (0, 64, 0, 80)),), "whole image", id="all-hole"),
        pytest.param(lambda p: (editor_value(Image.new("RGB", (ui.MAX_SIDE + 8, 16)), (0, 4, 0, 4)),),
                     f"at most {ui.MAX_SIDE}", id="huge-image"),
        pytest.param(lambda p: (editor_value(rgb(8, 64), (0, 4, 0, 4)),), "at least", id="tiny-image"),
        pytest.param(lambda p: (editor_value(rgb()), _save_text(p)), "holiday.png.*not a readable image",
                     id="mask-not-an-image"),
        pytest.param(lambda p: (editor_value(rgb()), _save_huge_header(p)), f"at most {ui.MAX_SIDE}",
                     id="mask-huge"),
        pytest.param(lambda p: (editor_value(rgb(), (0, 8, 0, 8)), None, _save_text(p)), "not a readable image",
                     id="sketch-not-an-image"),
    ],
)
def test_bad_uploads_give_a_message(tmp_path, make_args, match):
    with pytest.raises(ui.UploadError, match=match):
        ui.collect_inputs(*make_args(tmp_path))


# ----------------------------------------------------------------------------------- temperatures, CLI
def test_temperature_report():
    torch = pytest.importorskip("torch")

    class Holder:
        last_temperature = torch.tensor([[12.5, 0.25]])

    temps = ui.head_temperatures(Holder())
    assert temps == {"head 1": 12.5, "head 2": 0.25}
    text = ui.temperature_markdown(temps)
    assert "| head 1 | 12.5 |" in text and "| head 2 | 0.25 |" in text
    assert "no learned temperature" in ui.temperature_markdown(ui.head_temperatures(object()))


@pytest.mark.parametrize(
    "argv, match",
    [
        pytest.param([], "no checkpoint given", id="no-checkpoint"),
        pytest.param(["--checkpoint", "/nonexistent/best.pt"], "checkpoint not found: /nonexistent/best.pt",
                     id="missing-file"),
    ],
)
def test_cli_refuses_without_a_checkpoint(argv, match, capsys):
    assert ui.main(argv) == 2
    assert match in capsys.readouterr().err
