"""Sketch pipeline (paper Sec. IV-F): edge detectors, binarise / area opening / skeleton, user drawings."""
import numpy as np
import pytest
import torch
from PIL import Image
from skimage.measure import label

from mhtma_model import sketch as sk


def white_square(size=256, lo=64, hi=192):
    img = np.zeros((size, size, 3), np.uint8)
    img[lo:hi, lo:hi] = 255
    return img


def has_2x2_block(binary):
    b = binary.astype(bool)
    return bool((b[:-1, :-1] & b[1:, :-1] & b[:-1, 1:] & b[1:, 1:]).any())


def const_detector(edge_map):
    """A detector that returns a fixed grey map (lets tests control the edge values exactly)."""
    return lambda image: edge_map


# ------------------------------------------------------------------------------------------ detectors
@pytest.mark.parametrize("detector", ["canny", "sobel", None], ids=["canny", "sobel", "default"])
def test_edges_shape_range_and_square_outline(detector):
    img = white_square()
    e = sk.edges(img, detector)
    assert e.shape == (256, 256) and e.dtype == np.float32
    assert e.min() >= 0.0 and e.max() <= 1.0
    # Strong edges lie on the square's outline, not in the flat interior or the far background.
    assert e[100:156, 100:156].max() == 0.0
    assert e[:40, :40].max() == 0.0
    assert e[128, 60:68].max() > 0.65


@pytest.mark.parametrize("detector", ["canny", "sobel"])
def test_constant_image_has_no_edges(detector):
    img = np.full((64, 80, 3), 117, np.uint8)
    assert sk.edges(img, detector).max() == 0.0
    assert sk.make_sketch(img, detector).sum() == 0.0


@pytest.mark.parametrize(
    "image, error",
    [
        pytest.param(np.zeros((32, 32, 3), np.float32), TypeError, id="float-dtype"),
        pytest.param(np.zeros((32, 32), np.uint8), ValueError, id="gray-2d"),
        pytest.param(np.zeros((32, 32, 4), np.uint8), ValueError, id="rgba"),
        pytest.param([[0, 0, 0]], TypeError, id="list"),
    ],
)
def test_edges_rejects_bad_images(image, error):
    with pytest.raises(error, match="image"):
        sk.edges(image)


def test_pil_image_is_accepted():
    img = white_square(64, 16, 48)
    np.testing.assert_array_equal(sk.make_sketch(Image.fromarray(img)), sk.make_sketch(img))


def test_unknown_detector_name():
    with pytest.raises(ValueError, match="detector"):
        sk.edges(white_square(32, 8, 24), "hed-from-the-internet")


def test_detector_returning_out_of_range_values_is_rejected():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sk.edges(white_square(32, 8, 24), const_detector(np.full((32, 32), 2.0, np.float32)))


# --------------------------------------------------------------------------------------- make_sketch
@pytest.mark.parametrize("size", [64, 128, 256], ids=lambda s: f"{s}px")
@pytest.mark.parametrize("detector", ["canny", "sobel"])
def test_square_sketch_is_one_pixel_wide_closed_outline(size, detector):
    lo, hi = size // 4, 3 * size // 4
    s = sk.make_sketch(white_square(size, lo, hi), detector)
    assert s.dtype == np.float32 and set(np.unique(s)) <= {0.0, 1.0}
    assert not has_2x2_block(s)
    ys, xs = np.nonzero(s)
    # Every sketch pixel is within 3 px of the square's boundary ...
    dist = np.minimum(np.minimum(abs(ys - lo), abs(ys - hi)), np.minimum(abs(xs - lo), abs(xs - hi)))
    assert dist.max() <= 3
    # ... the outline is one connected loop, about as long as the perimeter.
    assert label(s > 0, connectivity=2).max() == 1
    perimeter = 4 * (hi - lo)
    assert 0.85 * perimeter <= s.sum() <= 1.15 * perimeter


@pytest.mark.parametrize("size, expected", [(256, 100), (512, 400), (128, 25), (64, 6), (8, 1)])
def test_min_component_area_scales_with_image_area(size, expected):
    assert sk.min_component_area(size, size) == expected


def test_small_components_are_removed_large_kept():
    emap = np.zeros((256, 256), np.float32)
    emap[20, 10:250] = 1.0           # long line: 240 px, kept
    emap[100:109, 100:110] = 1.0     # 90-px blob (< 100): removed
    emap[200:210, 100:110] = 1.0     # 100-px blob (= threshold): kept
    # 8-connectivity: a purely diagonal chain of 120 px is one component (4-connectivity would see
    # 120 single pixels) and is kept.
    diag = np.arange(120)
    chain = np.zeros_like(emap)
    chain[diag + 120, diag + 130] = 1.0
    emap = np.maximum(emap, chain)
    s = sk.make_sketch(np.zeros((256, 256, 3), np.uint8), const_detector(emap))
    assert s[20, 10:250].sum() > 200
    assert s[95:115, 95:115].sum() == 0
    assert s[195:215, 95:115].sum() > 0
    assert s[chain > 0].sum() > 100


def test_threshold_is_respected():
    emap = np.zeros((128, 128), np.float32)
    emap[20:24, 5:120] = 0.64   # just below 0.65: dropped
    emap[60:64, 5:120] = 0.65   # at the threshold: dropped (strictly above counts)
    emap[100:104, 5:120] = 0.66  # above: kept
    s = sk.make_sketch(np.zeros((128, 128, 3), np.uint8), const_detector(emap))
    assert s[15:30].sum() == 0
    assert s[55:70].sum() == 0
    assert s[95:110].sum() >= 100
    assert not has_2x2_block(s)


def test_sketch_of_a_photo_is_sparse_and_thin():
    from skimage import data, transform

    img = (transform.resize(data.astronaut(), (256, 256), anti_aliasing=True) * 255).astype(np.uint8)
    s = sk.make_sketch(img)
    assert 0.002 < s.mean() < 0.1
    assert not has_2x2_block(s)
    sizes = np.bincount(label(s > 0, connectivity=2).ravel())[1:]
    assert sizes.size > 0


# --------------------------------------------------------------------------------- learned detector
def test_learned_detector_missing_file_names_it(tmp_path, monkeypatch):
    missing = tmp_path / "pidinet.pth"
    with pytest.raises(FileNotFoundError, match="pidinet.pth"):
        sk.LearnedEdgeDetector(missing)
    monkeypatch.delenv(sk.EDGE_WEIGHTS_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=sk.EDGE_WEIGHTS_ENV):
        sk.edges(white_square(32, 8, 24), "learned")
    monkeypatch.setenv(sk.EDGE_WEIGHTS_ENV, str(missing))
    with pytest.raises(FileNotFoundError, match="pidinet.pth"):
        sk.make_sketch(white_square(32, 8, 24), "learned")


def test_learned_detector_from_weights_file(tmp_path, monkeypatch):
    torch.manual_seed(0)
    net = sk.EdgeNet((4, 8))
    path = tmp_path / "edgenet.pt"
    torch.save(net.state_dict(), path)
    det = sk.LearnedEdgeDetector(path, widths=(4, 8))
    img = white_square(40, 10, 30)
    e = sk.edges(img, det)
    assert e.shape == (40, 40) and e.dtype == np.float32
    assert 0.0 < e.min() and e.max() < 1.0  # sigmoid output
    with torch.no_grad():
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
        expected = torch.sigmoid(net(x))[0, 0].numpy()
    np.testing.assert_allclose(e, expected, rtol=1e-5, atol=1e-6)
    # The environment variable route, and a state dict of another architecture.
    monkeypatch.setenv(sk.EDGE_WEIGHTS_ENV, str(path))
    with pytest.raises(ValueError, match="edgenet.pt"):
        sk.LearnedEdgeDetector()  # default widths do not match the saved (4, 8) network


def test_edgenet_rejects_bad_input():
    with pytest.raises(ValueError, match="x must have shape"):
        sk.EdgeNet((4,))(torch.zeros(1, 1, 8, 8))


# ------------------------------------------------------------------------------------- user sketches
def _drawing(fg, bg, mode="RGB", size=(120, 160)):
    """A thick 'L'-shaped stroke (7 px wide) drawn in colour ``fg`` on background ``bg``."""
    h, w = size
    arr = np.zeros((h, w, len(bg)), np.uint8)
    arr[:] = bg
    arr[30:37, 20:140] = fg
    arr[30:100, 20:27] = fg
    return Image.fromarray(arr.squeeze(), mode)


@pytest.mark.parametrize(
    "drawing",
    [
        pytest.param(_drawing((0, 0, 0), (255, 255, 255)), id="black-on-white"),
        pytest.param(_drawing((255, 255, 255), (0, 0, 0)), id="white-on-black"),
        pytest.param(_drawing((220, 30, 30), (128, 128, 128)), id="red-on-gray"),
        pytest.param(_drawing((40, 40, 40, 255), (0, 0, 0, 0), "RGBA"), id="transparent-layer"),
        pytest.param(_drawing((30,), (250,), "L"), id="grayscale"),
    ],
)
@pytest.mark.parametrize("size", [(120, 160), (60, 80), (240, 320)], ids=["same", "half", "double"])
def test_user_sketch_any_polarity_is_thinned(drawing, size):
    s = sk.load_user_sketch(drawing, size)
    assert s.shape == size and s.dtype == np.float32
    assert set(np.unique(s)) <= {0.0, 1.0}
    assert not has_2x2_block(s)
    fy, fx = size[0] / 120, size[1] / 160
    # The horizontal bar (rows 30..36, cols 20..139 at the original size) is found, thin.
    bar = s[int(28 * fy):int(39 * fy) + 1, int(40 * fx):int(120 * fx)]
    assert bar.sum(axis=0).min() >= 1 and bar.sum(axis=0).max() <= 2
    # Nothing away from the strokes.
    assert s[int(60 * fy):, int(60 * fx):].sum() == 0


def test_user_sketch_from_file_and_int_size(tmp_path):
    path = tmp_path / "sketch.png"
    _drawing((0, 0, 0), (255, 255, 255)).save(path)
    s = sk.load_user_sketch(path, 64)
    assert s.shape == (64, 64) and s.sum() > 20


@pytest.mark.parametrize(
    "make, error, match",
    [
        pytest.param(lambda p: p / "missing.png", FileNotFoundError, "missing.png", id="missing-file"),
        pytest.param(lambda p: (p / "notes.png").write_text("not an image") and p / "notes.png",
                     ValueError, "notes.png", id="not-an-image"),
        pytest.param(lambda p: 3.5, TypeError, "sketch", id="wrong-type"),
    ],
)
def test_user_sketch_bad_inputs(tmp_path, make, error, match):
    with pytest.raises(error, match=match):
        sk.load_user_sketch(make(tmp_path), (32, 32))


@pytest.mark.parametrize("size", [(0, 4), "big", (3,)], ids=["zero", "string", "one-value"])
def test_user_sketch_bad_size(size):
    with pytest.raises((ValueError, TypeError), match="size"):
        sk.load_user_sketch(_drawing((0, 0, 0), (255, 255, 255)), size)


# ------------------------------------------------- the 5-channel (sketch-guided) model: train, then inpaint
def test_sketch_model_trains_a_few_steps_and_inpaints(tmp_path):
    from mhtma_model.checkpoint import load_generator
    from mhtma_model.config import load_config
    from mhtma_model.data import InpaintingDataset as dataset_cls
    from mhtma_model.inference import inpaint_image
    from mhtma_model.training import train
    from skimage import data

    root = tmp_path / "images"
    root.mkdir()
    for i, name in enumerate(["astronaut", "coffee", "chelsea", "rocket"]):
        Image.fromarray(getattr(data, name)()[:160, :160]).resize((48, 48), Image.BICUBIC).save(root / f"{i}.png")

    # The dataset derives the sketch from each training crop (make_sketch): binary, one channel.
    item = dataset_cls(sorted(root.glob("*.png")), 32, train=True, seed=0, sketch=True)[0]
    assert item["sketch"].shape == (1, 32, 32) and set(item["sketch"].unique().tolist()) <= {0.0, 1.0}

    cfg = load_config(overrides=[
        f"run.dir={tmp_path / 'run'}", f"data.root={root}", "data.size=32", "data.batch_size=2",
        "data.val_fraction=0.25", "model.base_channels=4", "model.disc_channels=4", "model.sketch=true",
        "train.max_steps=3", "train.val_batches=1", "train.checkpoint_every=3", "train.device=cpu",
        "train.amp=false"])
    summary = train(cfg)
    assert summary["step"] == 3
    generator, saved = load_generator(tmp_path / "run" / "checkpoints" / "last.pt")
    assert saved.model.sketch and generator.sketch
    assert generator.coarse.encoder[0].conv.in_channels == 5  # RGB + mask + sketch*mask

    image = Image.open(root / "2.png").convert("RGB")
    hole = np.zeros((48, 48), np.uint8)
    hole[12:36, 8:40] = 255
    lines = np.full((48, 48), 255, np.uint8)  # a person's sketch: dark line on white paper
    lines[23:25, 6:42] = 0
    out = inpaint_image(generator, image, Image.fromarray(hole), sketch=Image.fromarray(lines))
    o, i, h = np.asarray(out), np.asarray(image), hole > 0
    assert out.size == image.size and np.array_equal(o[~h], i[~h])
    assert not np.array_equal(o[h], i[h])
    assert generator.last_temperature is not None and generator.last_temperature.shape == (1, 2)
