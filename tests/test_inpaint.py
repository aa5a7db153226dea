"""`mhtma-inpaint` and its library `mhtma_model.inference`: mask rules, padding/window geometry, any size and mode,
known-pixel bit-identity, folder mode with broken pairs, checkpoint errors — on a real tiny checkpoint."""
import numpy as np
import pytest
import torch
from PIL import Image

from mhtma_model import images, inference, input_files
from mhtma_model.cli import inpaint
from mhtma_model.device import resolve_device
from tests.tiny_checkpoint import make_tiny_checkpoint
from mhtma_kernels.testing import assert_close

@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
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
    np.testing.assert_array_equal(images.mask_from_image(img)[0], expected)


@pytest.mark.parametrize("shape, min_size, padded_shape, mode", [
    ((217, 301), 16, (224, 304), "reflect"), ((3, 5), 16, (16, 16), "replicate"), ((16, 24), 16, (16, 24), "none"),
    ((9, 40), 24, (24, 40), "replicate"),
], ids=["odd", "tiny", "aligned", "below-min-size"])
def test_pad_to_multiple(shape, min_size, padded_shape, mode):
    x = torch.arange(float(np.prod(shape))).reshape(1, 1, *shape)
    padded, size = inference.pad_to_multiple(x, 8, min_size)
    assert size == shape
    assert tuple(padded.shape[-2:]) == padded_shape
    assert_close(padded[..., :shape[0], :shape[1]], x.double(), torch.float32, "original kept")
    if mode == "reflect":
        assert_close(padded[..., shape[0], :shape[1]], x[..., shape[0] - 2, :].double(), torch.float32, "mirror")


def test_plan_window_small_image_runs_whole():
    hole = np.zeros((217, 301), bool)
    hole[50:60, 70:90] = True
    assert inference.plan_window(hole, 512) == ((0, 217, 0, 301), (217, 301))


def test_plan_window_large_image_crops_around_the_hole_then_resizes():
    hole = np.zeros((1000, 1600), bool)
    hole[400:450, 700:760] = True  # 50 x 60 box -> margin 32
    box, net = inference.plan_window(hole, 512)
    assert box == (368, 482, 668, 792) and net == (114, 124)
    hole[100:900, 100:1500] = True  # box grows past the limit: window clipped to the image, downscaled
    box, net = inference.plan_window(hole, 512)
    assert box == (0, 1000, 0, 1600) and max(net) == 512 and net == (320, 512)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda")


# ------------------------------------------------------------------------- the network on real inputs

def test_inpaint_image_writes_the_rounded_prediction_into_the_hole_only(generator):
    image, mask = _photo(45, 61), _mask(45, 61)
    result = inference.inpaint_image(generator, image, mask)
    _known_identical(result, image, mask)
    hole = np.asarray(mask) > 127
    pred = inference.predict(generator, np.asarray(image), hole)
    expected = np.clip(np.round(pred), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(result)[hole], expected[hole])


def test_default_max_size_is_the_checkpoint_training_size(generator):
    """load_generator records data.size; without max_size the network runs at that scale."""
    assert generator.training_size == 64
    image, mask = _photo(100, 140, seed=5), _mask(100, 140)
    default = np.asarray(inference.inpaint_image(generator, image, mask))
    np.testing.assert_array_equal(default, np.asarray(inference.inpaint_image(generator, image, mask, max_size=64)))
    assert not np.array_equal(default, np.asarray(inference.inpaint_image(generator, image, mask, max_size=512)))


def test_inpaint_image_large_input_uses_a_window(generator):
    image = _photo(300, 420, seed=3)
    mask = _mask(300, 420, boxes=((0.1, 0.2, 0.1, 0.3), (0.7, 0.8, 0.6, 0.9)))
    result = inference.inpaint_image(generator, image, mask, max_size=96)
    _known_identical(result, image, mask)
    hole = np.asarray(mask) > 127
    assert (np.asarray(result)[hole] != np.asarray(image)[hole]).any()


def test_inpaint_image_rejects_bad_arguments(generator):
    image = _photo(32, 40)
    with pytest.raises(ValueError, match="differs from image size"):
        inference.inpaint_image(generator, image, _mask(32, 41))
    with pytest.raises(ValueError, match="without sketches"):
        inference.inpaint_image(generator, image, _mask(32, 40), sketch=Image.new("L", (40, 32)))
    with pytest.raises(TypeError, match="PIL"):
        inference.inpaint_image(generator, np.zeros((32, 40, 3), np.uint8), _mask(32, 40))


def test_images_smaller_than_the_network_minimum_are_padded(generator):
    image = _photo(5, 7, seed=2)
    mask = Image.fromarray(np.pad(np.full((2, 3), 255, np.uint8), ((1, 2), (2, 2))))
    result = inference.inpaint_image(generator, image, mask)
    _known_identical(result, image, mask)


def test_empty_mask_returns_the_image_unchanged(generator):
    image = _photo(24, 24)
    np.testing.assert_array_equal(np.asarray(inference.inpaint_image(generator, image, Image.new("L", (24, 24)))),
                                  np.asarray(image))


# ------------------------------------------------------------------------------------------------ CLI

@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"], ids=["rgb", "rgba", "gray"])
def test_cli_single_odd_size_image_keeps_size_mode_and_known_pixels(checkpoints, tmp_path, mode):
    image, mask = _photo(217, 301, mode=mode), _mask(217, 301)
    image.save(tmp_path / "photo.png")
    mask.convert("RGB").save(tmp_path / "photo_mask.png")
    code = inpaint.main(["--checkpoint", str(checkpoints["plain"]), "--image", str(tmp_path / "photo.png"),
                         "--mask", str(tmp_path / "photo_mask.png"), "--output", str(tmp_path / "out"),
                         "--device", "cpu"])
    assert code == 0
    with Image.open(tmp_path / "out" / "photo.png") as result:
        result.load()
        _known_identical(result, image, mask)


def test_cli_folder_mode_skips_broken_pairs_and_writes_the_rest(checkpoints, tmp_path, capsys):
    images, masks, out = tmp_path / "images", tmp_path / "masks", tmp_path / "out"
    (images / "sub").mkdir(parents=True)
    masks.mkdir()
    (masks / "sub").mkdir()
    good = {"a": (40, 48), "sub/b": (36, 52)}
    for i, (key, (h, w)) in enumerate(good.items()):
        _photo(h, w, seed=i).save(images / f"{key}.jpg", quality=95)
        _mask(h, w).save(masks / f"{key}.png")
    (images / "broken.png").write_bytes(b"not an image at all")
    _mask(40, 40).save(masks / "broken.png")
    _photo(40, 40).save(images / "nomask.png")
    _photo(40, 40).save(images / "wrongsize.png")
    _mask(41, 40).save(masks / "wrongsize.png")
    _mask(40, 40).save(masks / "orphan.png")

    code = inpaint.main(["--checkpoint", str(checkpoints["plain"]), "--image", str(images), "--mask", str(masks),
                         "--output", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["a.png", "sub/b.png"]
    for key in ("broken", "nomask", "wrongsize", "orphan"):
        assert key in err
    for key in good:
        with Image.open(out / f"{key}.png") as result, Image.open(images / f"{key}.jpg") as src, \
                Image.open(masks / f"{key}.png") as mask:
            result.load()
            _known_identical(result, src.convert("RGB"), mask)


def test_folder_sketches_pair_like_masks(tmp_path):
    """Sketches are optional per image, but a name shared by two sketches or a sketch without an image is
    reported (as for masks), never resolved by picking one silently."""
    images, masks, sketches = tmp_path / "images", tmp_path / "masks", tmp_path / "sketches"
    for folder in (images, masks, sketches):
        folder.mkdir()
    for key in ("a", "b", "c"):
        _photo(24, 24).save(images / f"{key}.png")
        _mask(24, 24).save(masks / f"{key}.png")
    _mask(24, 24).save(sketches / "a.png")
    _mask(24, 24).save(sketches / "b.png")
    _mask(24, 24).save(sketches / "b.bmp")
    _mask(24, 24).save(sketches / "orphan.png")
    pairs, problems = input_files.pair_inputs(images, masks, sketches)
    assert [(key, None if sk is None else sk.name) for key, _, _, sk in pairs] == [("a", "a.png"), ("c", None)]
    reasons = dict(problems)
    assert set(reasons) == {"b", "orphan"}
    assert "several sketches" in reasons["b"] and "sketch without an image" in reasons["orphan"]


def _run_expecting_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as info:
        inpaint.main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_cli_checkpoint_errors_are_clear(checkpoints, tmp_path, capsys):
    _photo(24, 24).save(tmp_path / "i.png")
    _mask(24, 24).save(tmp_path / "m.png")
    base = ["--image", str(tmp_path / "i.png"), "--mask", str(tmp_path / "m.png"), "--output", str(tmp_path / "o")]
    err = _run_expecting_usage_error(["--checkpoint", str(tmp_path / "missing.pt")] + base, capsys)
    assert "checkpoint not found" in err and "missing.pt" in err
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    err = _run_expecting_usage_error(["--checkpoint", str(tmp_path / "foreign.pt")] + base, capsys)
    assert "cannot use checkpoint" in err and "foreign.pt" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("image_kind, mask_kind, message", [
    ("file", "dir", "--mask must be a file"), ("dir", "file", "--mask must be a folder"),
    ("missing", "file", "--image not found"),
], ids=["file-vs-folder", "folder-vs-file", "missing-image"])
def test_cli_input_mixups_are_usage_errors(tmp_path, capsys, image_kind, mask_kind, message):
    (tmp_path / "dir").mkdir()
    _photo(16, 16).save(tmp_path / "file.png")
    paths = {"file": tmp_path / "file.png", "dir": tmp_path / "dir", "missing": tmp_path / "nothing"}
    err = _run_expecting_usage_error(["--checkpoint", str(tmp_path / "unused.pt"), "--image", str(paths[image_kind]),
                                      "--mask", str(paths[mask_kind]), "--output", str(tmp_path / "o")], capsys)
    assert message in err


def test_cli_sketch_rules(checkpoints, tmp_path, capsys):
    image, mask = _photo(40, 56), _mask(40, 56)
    image.save(tmp_path / "i.png")
    mask.save(tmp_path / "m.png")
    sketch = np.zeros((40, 56), np.uint8)
    sketch[20, 5:50] = 255
    Image.fromarray(sketch).save(tmp_path / "s.png")
    args = ["--image", str(tmp_path / "i.png"), "--mask", str(tmp_path / "m.png"), "--device", "cpu"]
    err = _run_expecting_usage_error(["--checkpoint", str(checkpoints["plain"]), "--output", str(tmp_path / "o1"),
                                      "--sketch", str(tmp_path / "s.png")] + args, capsys)
    assert "trained without sketches" in err
    assert inpaint.main(["--checkpoint", str(checkpoints["sketch"]), "--output", str(tmp_path / "o2"),
                         "--sketch", str(tmp_path / "s.png")] + args) == 0
    assert inpaint.main(["--checkpoint", str(checkpoints["sketch"]), "--output", str(tmp_path / "o3")] + args) == 0
    assert "no --sketch" in capsys.readouterr().err
    for name in ("o2", "o3"):
        with Image.open(tmp_path / name / "i.png") as result:
            result.load()
            _known_identical(result, image, mask)


def test_the_user_sketch_reaches_the_generator(checkpoints):
    """The sketch tensor the generator receives: the drawn line (skeletonised) or zeros without a sketch."""
    from mhtma_model.checkpoint import load_generator

    generator = load_generator(checkpoints["sketch"])[0]
    seen = []
    handle = generator.register_forward_pre_hook(lambda module, args: seen.append(args[2].clone()))
    try:
        image, mask = _photo(40, 56), _mask(40, 56)
        line = np.zeros((40, 56), np.uint8)
        line[20, 5:50] = 255
        for sketch in (Image.fromarray(line), None):
            _known_identical(inference.inpaint_image(generator, image, mask, sketch=sketch), image, mask)
    finally:
        handle.remove()
    guided, unguided = seen[0][0, 0, :40, :56].numpy(), seen[1].numpy()
    np.testing.assert_array_equal(guided[20, 5:50], 1.0)
    assert guided.sum() == 45 and not unguided.any()


# ------------------------------------------------------------------------ what a new user meets first

def test_cli_empty_input_folders_are_an_error_naming_what_was_searched(checkpoints, tmp_path, capsys):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    (images / "readme.txt").write_text("no pictures here")
    err = _run_expecting_usage_error(["--checkpoint", str(checkpoints["plain"]), "--image", str(images),
                                      "--mask", str(masks), "--output", str(tmp_path / "out")], capsys)
    line = [x for x in err.splitlines() if "no images" in x]
    assert len(line) == 1 and str(images) in line[0], err
    for suffix in (".jpg", ".jpeg", ".png", ".webp", ".bmp"):
        assert suffix in line[0]
    assert "wrote 0" not in err and not (tmp_path / "out").exists()


def _single(checkpoints, tmp_path, hole_value, capsys):
    image = _photo(40, 48, seed=5)
    image.save(tmp_path / "photo.png")
    Image.new("L", (48, 40), hole_value).save(tmp_path / "photo_mask.png")
    code = inpaint.main(["--checkpoint", str(checkpoints["plain"]), "--image", str(tmp_path / "photo.png"),
                         "--mask", str(tmp_path / "photo_mask.png"), "--output", str(tmp_path / "out"),
                         "--device", "cpu", "--threads", "1"])
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    with Image.open(tmp_path / "out" / "photo.png") as result:
        result.load()
    return code, notes, image, result


def test_cli_mask_without_a_hole_writes_the_image_unchanged_with_a_notice(checkpoints, tmp_path, capsys):
    code, notes, image, result = _single(checkpoints, tmp_path, 0, capsys)
    assert code == 0
    np.testing.assert_array_equal(np.asarray(result), np.asarray(image))
    assert len(notes) == 1 and "photo" in notes[0] and "no hole" in notes[0] and "unchanged" in notes[0], notes


def test_cli_all_hole_mask_is_filled_with_a_notice(checkpoints, tmp_path, capsys):
    code, notes, image, result = _single(checkpoints, tmp_path, 255, capsys)
    assert code == 0 and result.size == image.size
    assert len(notes) == 1 and "photo" in notes[0] and "whole image" in notes[0] \
        and "nothing known" in notes[0], notes


# ----------------------------------------------------------------------------------- CPU threads

def test_cli_threads_option_sets_torch_threads(checkpoints, tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        _single(checkpoints, tmp_path, 0, capsys)  # passes --threads 1
        assert torch.get_num_threads() == 1
        err = _run_expecting_usage_error(["--checkpoint", str(checkpoints["plain"]), "--image",
                                          str(tmp_path / "photo.png"), "--mask", str(tmp_path / "photo_mask.png"),
                                          "--output", str(tmp_path / "o2"), "--threads", "0"], capsys)
        assert "--threads" in err and "at least 1" in err
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("cpus, omp, expected", [
    (1, None, 1), (2, None, 1), (3, None, 1), (6, None, 3), (64, None, 4), (64, "2", 2), (2, "6", 6), (8, "x", 4),
])
def test_default_cpu_threads(monkeypatch, cpus, omp, expected):
    """Half the CPUs this process may use, 1..4, unless OMP_NUM_THREADS says otherwise (torch's own default,
    every core, spins on a busy machine)."""
    from mhtma_model import device

    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    assert device.default_cpu_threads() == expected


def test_cli_default_threads_are_not_torchs_every_core(checkpoints, tmp_path, capsys, monkeypatch):
    from mhtma_model import device

    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: set(range(2)), raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _photo(24, 24).save(tmp_path / "i.png")
        _mask(24, 24).save(tmp_path / "m.png")
        assert inpaint.main(["--checkpoint", str(checkpoints["plain"]), "--image", str(tmp_path / "i.png"), "--mask",
                             str(tmp_path / "m.png"), "--output", str(tmp_path / "o"), "--device", "cpu"]) == 0
        assert torch.get_num_threads() == 1  # 2 CPUs -> 1 thread
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("where", ["existing-file", "below-a-file"])
def test_cli_output_that_is_a_file_is_a_one_line_usage_error(checkpoints, tmp_path, capsys, where):
    _photo(24, 24).save(tmp_path / "i.png")
    _mask(24, 24).save(tmp_path / "m.png")
    (tmp_path / "taken").write_bytes(b"someone's file")  # no image suffix: --output names a folder
    output = tmp_path / "taken" if where == "existing-file" else tmp_path / "taken" / "out"
    err = _run_expecting_usage_error(["--checkpoint", str(checkpoints["plain"]), "--image", str(tmp_path / "i.png"),
                                      "--mask", str(tmp_path / "m.png"), "--output", str(output),
                                      "--device", "cpu"], capsys)
    errors = [line for line in err.splitlines() if "error:" in line]  # after argparse's usage lines
    assert len(errors) == 1 and "--output" in errors[0] and "Traceback" not in err, err
    assert (tmp_path / "taken").read_bytes() == b"someone's file"


@pytest.mark.parametrize("output, written", [
    ("result.png", "result.png"), ("result.tif", "result.tif"), ("result.png/", "result.png/i.png"),
    ("results.v2/", "results.v2/i.png"), ("out", "out/i.png"),
], ids=["image-suffix-a-file", "tiff-a-file", "slash-a-folder", "dotted-folder-with-slash", "no-suffix-a-folder"])
def test_cli_output_is_a_file_or_a_folder_as_spelled(checkpoints, tmp_path, output, written):
    _photo(24, 24).save(tmp_path / "i.png")
    _mask(24, 24).save(tmp_path / "m.png")
    assert inpaint.main(["--checkpoint", str(checkpoints["plain"]), "--image", str(tmp_path / "i.png"), "--mask",
                         str(tmp_path / "m.png"), "--output", f"{tmp_path}/{output}", "--device", "cpu"]) == 0
    assert (tmp_path / written).is_file()


def test_cli_takes_a_save_pretrained_folder_as_checkpoint(checkpoints, tmp_path):
    from mhtma_model import Inpainter

    folder = Inpainter.from_checkpoint(checkpoints["plain"], device="cpu").save_pretrained(tmp_path / "model")
    image, mask = _photo(37, 45), _mask(37, 45)
    image.save(tmp_path / "i.png")
    mask.save(tmp_path / "m.png")
    for name, checkpoint in (("from-folder", folder), ("from-file", checkpoints["plain"])):
        assert inpaint.main(["--checkpoint", str(checkpoint), "--image", str(tmp_path / "i.png"), "--mask",
                             str(tmp_path / "m.png"), "--output", str(tmp_path / name), "--device", "cpu"]) == 0
    with Image.open(tmp_path / "from-folder" / "i.png") as a, Image.open(tmp_path / "from-file" / "i.png") as b:
        _known_identical(a, image, mask)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
