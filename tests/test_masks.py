"""Free-form masks (seeded, reproducible, scaled with size; hole-ratio distribution reported) and masks
read from files of any mode.

Hole-ratio distribution at 256×256, 200 masks with ``default_rng([0, i])`` (printed by
``pytest -s tests/test_masks.py``): mean 0.263; min 0.151, 5 % 0.165, 25 % 0.214, median 0.261,
75 % 0.302, 95 % 0.372, max 0.551. The 96×96 square alone covers 0.141, so every mask exceeds that.
"""
import numpy as np
import pytest
import torch
from PIL import Image

from mhtma_model.images import load_mask
from mhtma_model.masks import MaskFolder, free_form_mask, hole_ratio


def _mask(seed, size=(256, 256)):
    return free_form_mask(size[0], size[1], np.random.default_rng(seed))


def test_free_form_mask_reproducible_and_seed_dependent():
    a, b = _mask([3, 7]), _mask([3, 7])
    assert a.dtype == np.float32 and a.shape == (256, 256)
    assert set(np.unique(a).tolist()) <= {0.0, 1.0}
    assert np.array_equal(a, b)
    assert not np.array_equal(a, _mask([3, 8]))
    assert not np.array_equal(a, _mask([4, 7]))


def test_hole_ratio_distribution_at_256(capsys):
    ratios = np.array([hole_ratio(_mask([0, i])) for i in range(200)])
    quantiles = np.quantile(ratios, [0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0])
    with capsys.disabled():
        print(f"\nfree_form_mask hole ratio at 256x256 over 200 masks: mean {ratios.mean():.3f}; "
              + ", ".join(f"q{int(q * 100)} {v:.3f}" for q, v in zip([0, .05, .25, .5, .75, .95, 1], quantiles)))
    assert np.all(ratios > 0) and np.all(ratios < 1)
    square_only = 96 * 96 / 256 ** 2
    assert np.all(ratios >= square_only - 1e-9), "the 96x96 square must always be part of the mask"
    assert 0.1 <= ratios.mean() <= 0.5
    assert ratios.std() > 0.02, "masks should vary in size"


@pytest.mark.parametrize("height, width", [
    pytest.param(128, 128, id="128px"), pytest.param(512, 512, id="512px"), pytest.param(96, 160, id="96x160"),
])
def test_free_form_mask_scales_with_size(height, width):
    ratios = [hole_ratio(_mask([1, i], (height, width))) for i in range(30)]
    assert 0.1 <= float(np.mean(ratios)) <= 0.5
    mask = _mask([1, 0], (height, width))
    assert mask.shape == (height, width)
    # the square hole is scaled: side round(96 * min(H, W) / 256) -> at least that many hole pixels
    side = round(96 * min(height, width) / 256)
    assert mask.sum() >= side * side


def test_free_form_mask_rejects_bad_arguments():
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        free_form_mask(64, 64, 0)
    with pytest.raises(ValueError, match="height"):
        free_form_mask(0, 64, np.random.default_rng(0))


def test_hole_ratio_numpy_and_torch():
    m = np.zeros((4, 4), np.float32)
    m[:2, :1] = 1
    assert hole_ratio(m) == pytest.approx(2 / 16)
    assert hole_ratio(torch.from_numpy(m)[None, None]) == pytest.approx(2 / 16)


def _pattern(height=40, width=60):
    """Left third hole (255), rest known (0), plus a mid-grey (127, known) and a 128 (hole) band."""
    a = np.zeros((height, width), np.uint8)
    a[:, : width // 3] = 255
    a[:5, width // 3:] = 127
    a[5:10, width // 3:] = 128
    return a


@pytest.mark.parametrize("mode", [pytest.param(m, id=m) for m in ("L", "1", "RGB", "RGBA", "P", "I;16")])
def test_load_mask_any_mode(tmp_path, mode):
    gray = _pattern()
    if mode == "1":
        image = Image.fromarray(gray).point(lambda v: 255 if v > 127 else 0).convert("1")
    elif mode == "RGBA":
        # A layer painted in an editor: black strokes, opaque where painted, transparent elsewhere.
        # With transparency the alpha channel decides (whatever the colour).
        rgba = np.dstack([np.zeros_like(gray)] * 3 + [gray])
        image = Image.fromarray(rgba, "RGBA")
    elif mode == "I;16":
        image = Image.fromarray(gray.astype(np.uint16) * 257)
    else:
        image = Image.fromarray(gray).convert(mode)
    path = tmp_path / f"mask_{mode.replace(';', '')}.png"
    image.save(path)
    mask = load_mask(path)
    expected = (gray > 127).astype(np.float32)
    assert mask.dtype == np.float32 and mask.shape == (40, 60)
    assert np.array_equal(mask, expected)


def test_load_mask_resizes_nearest(tmp_path):
    a = np.zeros((10, 20), np.uint8)
    a[:, :10] = 255
    Image.fromarray(a).save(tmp_path / "m.png")
    mask = load_mask(tmp_path / "m.png", size=(20, 40))
    assert mask.shape == (20, 40)
    assert mask[:, :20].all() and not mask[:, 20:].any()
    with pytest.raises(ValueError, match="size must be"):
        load_mask(tmp_path / "m.png", size=20)


def test_mask_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    for i, name in enumerate(["b.png", "a.jpg", "sub/c.PNG"]):
        a = np.zeros((32, 32), np.uint8)
        a[: 8 * (i + 1)] = 255
        Image.fromarray(a).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not a mask")
    folder = MaskFolder(tmp_path)
    assert len(folder) == 3
    assert [p.name for p in folder.paths] == ["a.jpg", "b.png", "c.PNG"]
    m = folder.mask(1, (16, 16))  # b.png: top 8 of 32 rows -> top 4 of 16
    assert m.shape == (16, 16) and m[:4].all() and not m[4:].any()
    assert np.array_equal(folder.mask(4, (16, 16)), m)  # index wraps around
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no mask images"):
        MaskFolder(empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MaskFolder(tmp_path / "missing")


# ------------------------------------------------------------------------------------------- protocols

from scipy import ndimage  # noqa: E402

from mhtma_model.cli import masks as masks_cli  # noqa: E402
from mhtma_model.masks import (LAMA_RULES, MASK_PROTOCOLS, MAX_HOLE_RATIO, ProtocolMix, lama_rule,  # noqa: E402
                               protocol_mask, seeded_mask)

LAMA = [p for p in MASK_PROTOCOLS if p.startswith("lama-")]


@pytest.mark.parametrize("protocol", MASK_PROTOCOLS)
def test_protocol_masks_reproduce_by_seed_and_index(protocol):
    a = seeded_mask(protocol, 64, 3, 5)
    assert a.dtype == np.float32 and a.shape == (64, 64) and set(np.unique(a).tolist()) <= {0.0, 1.0}
    np.testing.assert_array_equal(a, seeded_mask(protocol, 64, 3, 5))
    others = [seeded_mask(protocol, 64, 3, i) for i in range(6, 10)] + [seeded_mask(protocol, 64, 4, 5)]
    assert not any(np.array_equal(a, b) for b in others)


def test_free_form_protocol_is_the_free_form_mask():
    np.testing.assert_array_equal(seeded_mask("free-form", 96, 2, 4), _mask([2, 4], (96, 96)))


@pytest.mark.parametrize("size", [256, 512, 40], ids=["256px", "512px", "40px-scaled"])
@pytest.mark.parametrize("protocol", LAMA)
def test_lama_hole_ratios_at_most_half(protocol, size):
    ratios = [hole_ratio(seeded_mask(protocol, size, 0, i)) for i in range(12)]
    assert all(0 < r <= MAX_HOLE_RATIO for r in ratios), ratios


def test_lama_rules_are_the_published_ones_at_256_and_512():
    thin = LAMA_RULES[("lama-thin", 256)].strokes
    assert (thin.min_times, thin.max_times, thin.max_width, thin.max_len) == (4, 50, 10, 40)
    thick = LAMA_RULES[("lama-thick", 256)]
    assert (thick.strokes.max_width, thick.strokes.max_len, thick.box_weight) == (100, 200, 0.3)
    assert (thick.boxes.min_size, thick.boxes.max_size) == (30, 150)
    assert lama_rule("lama-medium", 512) is LAMA_RULES[("lama-medium", 512)]
    assert lama_rule("lama-thin", 128).strokes.max_width == 5  # the 256 set, halved


def _surviving_share(mask, radius):
    """Share of hole pixels that survive an erosion by a (2r+1)² square: ~0 for strokes thinner than 2r+1."""
    hole = mask > 0.5
    return ndimage.binary_erosion(hole, np.ones((2 * radius + 1,) * 2)).sum() / max(1, hole.sum())


def test_thin_strokes_are_thinner_than_thick_ones():
    thin = np.mean([_surviving_share(seeded_mask("lama-thin", 256, 0, i), 8) for i in range(10)])
    thick = np.mean([_surviving_share(seeded_mask("lama-thick", 256, 0, i), 8) for i in range(10)])
    assert thin < 0.05 < 0.3 < thick, (thin, thick)


def test_box_protocol_is_one_rectangle():
    mask = seeded_mask("box", 64, 1, 2) > 0.5
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    assert mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
    assert 16 <= len(rows) <= 32 and 16 <= len(cols) <= 32


def test_protocol_mix_draws_every_listed_protocol_and_nothing_else():
    mix = ProtocolMix({"box": 1, "lama-thin": 1})
    masks = [mix.mask(64, np.random.default_rng([0, i])) for i in range(12)]
    boxes = sum(int(_surviving_share(m, 3) > 0.5) for m in masks)
    assert 0 < boxes < 12
    np.testing.assert_array_equal(ProtocolMix({"box": 2}).mask(64, np.random.default_rng(1)),
                                  protocol_mask("box", 64, np.random.default_rng(1)))


@pytest.mark.parametrize("weights, message", [
    pytest.param({}, "at least one", id="empty"),
    pytest.param({"stars": 1}, "unknown mask protocol", id="unknown"),
    pytest.param({"box": 0}, "finite number > 0", id="zero-weight"),
])
def test_protocol_mix_rejects_bad_weights(weights, message):
    with pytest.raises(ValueError, match=message):
        ProtocolMix(weights)


def test_mask_set_cli_writes_identical_files_and_a_histogram(tmp_path, capsys):
    args = ["--protocol", "lama-medium", "--size", "32", "--count", "6", "--seed", "4"]
    assert masks_cli.main(args + ["--output", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "0.0-0.1" in out and "0.5-0.6" in out and "6 lama-medium masks" in out
    assert masks_cli.main(args + ["--output", str(tmp_path / "b")]) == 0
    files = sorted(p.name for p in (tmp_path / "a").glob("*.png"))
    assert files == [f"{i:05d}.png" for i in range(6)]
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        with Image.open(tmp_path / "a" / name) as img:
            np.testing.assert_array_equal(load_mask(tmp_path / "a" / name),
                                          seeded_mask("lama-medium", 32, 4, int(name[:5])) > 0.5)
            assert img.mode == "L"
    manifest = (tmp_path / "a" / masks_cli.MANIFEST).read_text()
    assert '"seed": 4' in manifest and '"protocol": "lama-medium"' in manifest


@pytest.mark.parametrize("args, message", [
    pytest.param(["--protocol", "box", "--count", "0"], "--count must be at least 1", id="count-0"),
    pytest.param(["--protocol", "stars", "--count", "2"], "unknown --protocol 'stars'", id="unknown-protocol"),
    pytest.param(["--protocol", "box", "--count", "2", "--size", "100"], "multiple of 8", id="size-100"),
])
def test_mask_set_cli_bad_values_are_one_line_exit_2(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as info:
        masks_cli.main(args + ["--output", str(tmp_path / "o")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("text, weights", [
    pytest.param("lama-thick", {"lama-thick": 1.0}, id="one-name"),
    pytest.param("lama-thick:2, free-form:1", {"lama-thick": 2.0, "free-form": 1.0}, id="weighted"),
])
def test_parse_protocol_mix(text, weights):
    from mhtma_model.masks import parse_protocol_mix

    assert parse_protocol_mix(text) == weights


def test_training_config_takes_a_protocol_mix_and_the_dataset_draws_it(tmp_path):
    from mhtma_model.config import ConfigError, load_config
    from mhtma_model.data import InpaintingDataset

    cfg = load_config(None, ["data.mask_protocols=box:1, lama-thin:1"])
    assert cfg.data.mask_protocols == "box:1, lama-thin:1"
    with pytest.raises(ConfigError, match="data.mask_protocols: unknown mask protocol 'stars'"):
        load_config(None, ["data.mask_protocols=stars"])
    with pytest.raises(ConfigError, match="data.masks must be null"):
        load_config(None, ["data.mask_protocols=box", f"data.masks={tmp_path}"])
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "a.png")
    val = InpaintingDataset([tmp_path / "a.png"] * 3, 32, train=False, seed=2, protocols=ProtocolMix({"box": 1}))
    np.testing.assert_array_equal(val[1]["mask"][0].numpy(), seeded_mask("box", 32, 2, 1))


def test_mask_set_runs_as_a_module(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "mhtma_model.mask_set", "--protocol", "box", "--size", "16",
                           "--count", "2", "--output", str(tmp_path / "m")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 box masks" in proc.stdout and sorted(p.name for p in (tmp_path / "m").glob("*.png")) == [
        "00000.png", "00001.png"]
