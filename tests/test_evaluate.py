"""`mhtma-eval` end to end on a real tiny checkpoint and with the classical methods: generated and user
masks, bucket rows, reproducibility, FID from a weights file, usage errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from mhtma_model import fid
from mhtma_model.cli import evaluate
from mhtma_model.classical import CLASSICAL_METHODS, OPENCV_METHODS, opencv_available
from mhtma_model.metrics import BUCKETS
from tests.tiny_checkpoint import make_tiny_checkpoint
from mhtma_kernels.testing import assert_close

SIZE = 32
SAMPLES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Six scikit-image sample photos (one gray, mixed aspect ratios) as JPG/PNG, some in a sub-folder."""
    root = tmp_path_factory.mktemp("data")
    (root / "more").mkdir()
    for i, name in enumerate(SAMPLES):
        img = Image.fromarray(getattr(skdata, name)())
        img = img.resize((img.width // 8, img.height // 8), Image.BICUBIC)
        target = root / ("more" if i % 2 else ".") / f"{name}.{'jpg' if i % 3 == 0 else 'png'}"
        img.save(target)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(autouse=True)
def _no_inception_env(monkeypatch):
    monkeypatch.delenv(fid.INCEPTION_ENV, raising=False)


def _run(args, out):
    code = evaluate.main(list(args) + ["--output", str(out), "--size", str(SIZE), "--device", "cpu"])
    assert code == 0
    return json.loads((out / "metrics.json").read_text())


def _check_rows(result, expected_images):
    assert result["images"] == expected_images == result["overall"]["count"] == len(result["per_image"])
    assert sum(row["count"] for row in result["buckets"]) == expected_images
    labels = [row["bucket"] for row in result["buckets"]]
    assert labels[:6] == [label for label, _, _ in BUCKETS[:6]]
    for row in [result["overall"]] + result["buckets"]:
        if row["count"]:
            assert 0 <= row["mae_percent"] <= 100 and 0 < row["psnr"] <= 100 and -1 <= row["ssim"] <= 1


def test_eval_generated_masks_end_to_end(checkpoint, dataset, tmp_path):
    result = _run(["--checkpoint", str(checkpoint), "--data", str(dataset), "--batch-size", "4"], tmp_path / "a")
    _check_rows(result, len(SAMPLES))
    assert result["mask_seed"] == 0 and result["fid_weights"] is None
    md = (tmp_path / "a" / "metrics.md").read_text()
    assert "| overall | 6 |" in md and "| 0.0-0.1 |" in md and "FID" in md
    with Image.open(tmp_path / "a" / "examples.png") as grid:
        assert grid.size == (3 * SIZE + 8, 6 * SIZE + 5 * 4)
    # Same seed, other batch size: same masks (hole ratios) and the same metrics.
    again = _run(["--checkpoint", str(checkpoint), "--data", str(dataset), "--batch-size", "1"], tmp_path / "b")
    assert [r["hole_ratio"] for r in again["per_image"]] == [r["hole_ratio"] for r in result["per_image"]]
    for key in ("mae_percent", "ssim"):
        assert_close(torch.tensor([r[key] for r in again["per_image"]]),
                     torch.tensor([r[key] for r in result["per_image"]], dtype=torch.float64), torch.float32, key)
    other = _run(["--checkpoint", str(checkpoint), "--data", str(dataset), "--mask-seed", "7"], tmp_path / "c")
    assert [r["hole_ratio"] for r in other["per_image"]] != [r["hole_ratio"] for r in result["per_image"]]


def test_generated_masks_depend_only_on_seed_and_index():
    a = evaluate.generated_mask(64, 3, 5)
    np.testing.assert_array_equal(a, evaluate.generated_mask(64, 3, 5))
    assert not np.array_equal(a, evaluate.generated_mask(64, 3, 6))
    assert a.dtype == bool and a.shape == (64, 64) and a.any()


def test_eval_user_masks_paired_by_name(checkpoint, dataset, tmp_path):
    masks = tmp_path / "masks"
    (masks / "more").mkdir(parents=True)
    expected = {}
    for i, path in enumerate(sorted(dataset.rglob("*.*"))):
        key = path.relative_to(dataset).with_suffix("").as_posix()
        if key.endswith("rocket"):
            continue  # one image without a mask: reported and skipped
        with Image.open(path) as img:
            width, height = img.size
        hole = np.zeros((height, width), np.uint8)
        # A box of the full height and a known fraction of the width survives resize + centre crop exactly.
        if not key.endswith("chelsea"):  # chelsea's mask is empty: nothing to inpaint, skipped
            hole[:, : (width * (i + 1)) // 8] = 255
            expected[key] = True
        Image.fromarray(hole).save(masks / f"{key}.png")
    result = _run(["--checkpoint", str(checkpoint), "--data", str(dataset), "--masks", str(masks)], tmp_path / "o")
    _check_rows(result, len(SAMPLES) - 2)
    assert sorted(s["name"] for s in result["skipped"]) == ["chelsea", "more/rocket"]
    assert "no hole pixels" in str(result["skipped"])
    assert sorted(r["name"] for r in result["per_image"]) == sorted(expected)
    assert "rocket" in (tmp_path / "o" / "metrics.md").read_text()
    assert result["mask_seed"] is None


@pytest.mark.parametrize("method", [
    pytest.param(m, id=m, marks=pytest.mark.skipif(m in OPENCV_METHODS and not opencv_available(),
                                                    reason="opencv-python-headless not installed"))
    for m in CLASSICAL_METHODS
])
def test_eval_classical_methods_need_no_checkpoint(dataset, tmp_path, method):
    result = _run(["--method", method, "--data", str(dataset)], tmp_path)
    _check_rows(result, len(SAMPLES))
    assert result["checkpoint"] is None and result["method"] == method
    assert np.isfinite([r["psnr"] for r in result["per_image"]]).all()


def test_eval_reports_fid_with_a_weights_file(checkpoint, dataset, tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "inception.pt"
    torch.save(fid.build_inception("torchvision").state_dict(), weights)
    data = tmp_path / "two"
    data.mkdir()
    for name in SAMPLES[:2]:
        Image.fromarray(getattr(skdata, name)()).resize((40, 40)).save(data / f"{name}.png")
    result = _run(["--checkpoint", str(checkpoint), "--data", str(data), "--fid-weights", str(weights)], tmp_path / "o")
    assert result["overall"]["fid"] is not None and result["overall"]["fid"] >= 0
    assert "torchvision" in result["fid_note"]
    assert "| FID |" in (tmp_path / "o" / "metrics.md").read_text()


@pytest.mark.parametrize("args, message", [
    pytest.param(["--method", "model"], "--checkpoint is required", id="model-without-checkpoint"),
    pytest.param(["--checkpoint", "/nonexistent/x.pt"], "checkpoint not found", id="missing-checkpoint"),
    pytest.param(["--method", "telea", "--fid-weights", "/nonexistent/inc.pt"], "Inception-v3 weights file not found",
                 id="missing-fid-weights"),
    pytest.param(["--method", "telea", "--size", "8"], "--size", id="tiny-size"),
])
def test_eval_usage_errors(dataset, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as info:
        evaluate.main(args + ["--data", str(dataset), "--output", str(tmp_path / "o")])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_resize_center_crop_geometry():
    img = Image.fromarray(np.arange(60 * 90, dtype=np.uint32).reshape(60, 90).astype(np.uint8))
    out = evaluate.resize_center_crop(img, 30, Image.NEAREST)
    assert out.size == (30, 30)
    # 90x60 -> 45x30, central 30 columns start at 7
    np.testing.assert_array_equal(np.asarray(out), np.asarray(img.resize((45, 30), Image.NEAREST))[:, 7:37])


def test_eval_sketch_model_gets_the_ground_truth_sketch(dataset, tmp_path):
    from mhtma_model.checkpoint import load_generator

    ckpt = make_tiny_checkpoint(tmp_path / "sketch.pt", sketch=True)
    assert load_generator(ckpt)[0].sketch
    data = tmp_path / "two"
    data.mkdir()
    for name in SAMPLES[:2]:
        Image.fromarray(getattr(skdata, name)()).resize((48, 40)).save(data / f"{name}.png")
    result = _run(["--checkpoint", str(ckpt), "--data", str(data)], tmp_path / "o")
    _check_rows(result, 2)


def test_fid_skipped_is_one_plain_line(dataset, tmp_path):
    """`python -m mhtma_model.evaluate` without Inception weights, in a real process: the skip is reported in
    one plain line on stderr (no Python warning with its class and source line), and the rest still runs."""
    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != fid.INCEPTION_ENV}
    env.update(PYTHONPATH=str(repo) + os.pathsep + env.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "mhtma_model.evaluate", "--method", "biharmonic", "--data",
                           str(dataset), "--output", str(tmp_path / "out"), "--size", str(SIZE), "--examples", "0"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    fid_lines = [line for line in proc.stderr.splitlines() if "FID" in line]
    assert fid_lines == [f"note: {fid.FID_SKIPPED}"], proc.stderr
    assert "Warning" not in proc.stderr and "warn(" not in proc.stderr, proc.stderr
    assert "--fid-weights FILE" in fid_lines[0] and fid.INCEPTION_ENV in fid_lines[0]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["fid_note"].startswith("skipped")


@pytest.mark.parametrize("which", ["data", "masks"])
def test_eval_folders_without_images_name_what_was_searched(dataset, tmp_path, capsys, which):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "list.txt").write_text("no pictures")
    args = ["--method", "biharmonic", "--data", str(empty if which == "data" else dataset), "--output",
            str(tmp_path / "o")] + (["--masks", str(empty)] if which == "masks" else [])
    with pytest.raises(SystemExit) as info:
        evaluate.main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    line = [x for x in err.splitlines() if "found no images" in x]
    assert len(line) == 1 and str(empty) in line[0] and ".jpg" in line[0] and ".png" in line[0], err
    assert f"--{which} folder" in line[0]
    assert "FID skipped" not in err  # the usage error comes before any model or FID set-up


def test_eval_threads_option(dataset, tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        _run(["--method", "biharmonic", "--data", str(dataset), "--threads", "1", "--examples", "0"], tmp_path / "o")
        assert torch.get_num_threads() == 1
        with pytest.raises(SystemExit) as info:
            evaluate.main(["--method", "biharmonic", "--data", str(dataset), "--output", str(tmp_path / "p"),
                           "--threads", "0"])
        assert info.value.code == 2 and "--threads must be at least 1" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------- protocols, predictions, LPIPS, IDS

from mhtma_model import ids as idsmod  # noqa: E402
from mhtma_model import lpips_metric  # noqa: E402
from mhtma_model.masks import seeded_mask  # noqa: E402


@pytest.fixture(autouse=True)
def _no_lpips_env(monkeypatch):
    monkeypatch.delenv(lpips_metric.LPIPS_ENV, raising=False)


@pytest.mark.parametrize("protocol", ["box", "lama-thin"])
def test_eval_mask_protocol_generates_the_seeded_masks(dataset, tmp_path, protocol):
    result = _run(["--method", "biharmonic", "--data", str(dataset), "--mask-protocol", protocol, "--mask-seed", "3",
                   "--examples", "0"], tmp_path / "o")
    want = [float((seeded_mask(protocol, SIZE, 3, i) > 0.5).mean()) for i in range(len(SAMPLES))]
    assert [r["hole_ratio"] for r in result["per_image"]] == want
    assert result["mask_protocol"] == protocol and protocol in result["mask_source"]


def test_saved_outputs_scored_as_predictions_give_the_same_figures(checkpoint, dataset, tmp_path):
    first = _run(["--checkpoint", str(checkpoint), "--data", str(dataset), "--save-outputs"], tmp_path / "a")
    saved = sorted(p.relative_to(tmp_path / "a" / "outputs").as_posix() for p in (tmp_path / "a" / "outputs").rglob("*.png"))
    assert saved == sorted(f"{r['name']}.png" for r in first["per_image"])
    again = _run(["--predictions", str(tmp_path / "a" / "outputs"), "--data", str(dataset)], tmp_path / "b")
    assert again["method"] == "predictions" and again["checkpoint"] is None
    assert again["per_image"] == first["per_image"]
    assert again["overall"] == first["overall"]


def test_eval_predictions_missing_and_extra_files_are_reported(dataset, tmp_path, capsys):
    preds = tmp_path / "preds"
    keys = sorted(p.relative_to(dataset).with_suffix("").as_posix() for p in dataset.rglob("*.*"))
    for key in keys[:-2]:  # the last two have no prediction
        (preds / key).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((SIZE, SIZE, 3), 128, np.uint8)).save(preds / f"{key}.png")
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(preds / "stranger.png")
    Image.fromarray(np.zeros((SIZE + 8, SIZE, 3), np.uint8)).save(preds / f"{keys[0]}.jpg")  # two files: skipped
    result = _run(["--predictions", str(preds), "--data", str(dataset)], tmp_path / "o")
    assert result["images"] == len(keys) - 3
    reasons = {s["name"]: s["reason"] for s in result["skipped"]}
    assert set(reasons) == {keys[0], keys[-2], keys[-1]}
    assert "no prediction named" in reasons[keys[-1]] and "several predictions" in reasons[keys[0]]
    assert result["unmatched_predictions"] == ["stranger"]
    err = capsys.readouterr().err
    assert "1 prediction(s) have no image in --data" in err and "stranger" in err
    assert "stranger" in (tmp_path / "o" / "metrics.md").read_text()


def test_eval_predictions_of_a_wrong_size_are_skipped_and_nothing_scored_is_exit_1(dataset, tmp_path, capsys):
    preds = tmp_path / "preds"
    for path in dataset.rglob("*.*"):
        key = path.relative_to(dataset).with_suffix("").as_posix()
        (preds / key).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((SIZE + 8, SIZE + 8, 3), np.uint8)).save(preds / f"{key}.png")
    code = evaluate.main(["--predictions", str(preds), "--data", str(dataset), "--output", str(tmp_path / "o"),
                          "--size", str(SIZE)])
    assert code == 1
    err = capsys.readouterr().err
    assert "no image could be evaluated" in err and "expected the image's" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, message", [
    pytest.param(["--predictions", "PRED", "--checkpoint", "x.pt"], "takes no --checkpoint", id="predictions+checkpoint"),
    pytest.param(["--predictions", "/nonexistent/p"], "--predictions folder not found", id="missing-predictions"),
    pytest.param(["--method", "telea", "--mask-protocol", "stars"], "invalid choice: 'stars'", id="unknown-protocol"),
    pytest.param(["--method", "telea", "--mask-protocol", "box", "--masks", "PRED"], "cannot be combined with --masks",
                 id="protocol+masks"),
    pytest.param(["--method", "telea", "--lpips-backbone", "/nonexistent/a.pt"], "LPIPS backbone file not found",
                 id="missing-lpips-backbone"),
])
def test_eval_new_usage_errors(dataset, tmp_path, capsys, args, message):
    args = [str(dataset) if a == "PRED" else a for a in args]
    with pytest.raises(SystemExit) as info:
        evaluate.main(args + ["--data", str(dataset), "--output", str(tmp_path / "o")])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_eval_lpips_skipped_is_one_line(dataset, tmp_path, capsys):
    result = _run(["--method", "biharmonic", "--data", str(dataset), "--examples", "0"], tmp_path / "o")
    lines = [x for x in capsys.readouterr().err.splitlines() if "LPIPS" in x]
    assert len(lines) == 1 and lines[0].startswith("note: LPIPS skipped") and "lpips" in lines[0]
    assert "lpips" not in result["overall"] and result["lpips_backbone"] is None


@pytest.mark.skipif(not (lpips_metric.lpips_available() and idsmod.sklearn_available()),
                    reason="needs the [eval] extra (lpips, scikit-learn)")
def test_eval_of_the_ground_truth_itself_has_known_lpips_and_ids(tmp_path):
    """Predictions equal to the ground truth: LPIPS 0 per image, U-IDS 0.5 and P-IDS 0 over ≥ 10 images."""
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), tmp_path / "alex.pt")
    torch.save(fid.build_inception("torchvision").state_dict(), tmp_path / "inception.pt")
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(idsmod.IDS_MIN_IMAGES):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(data / f"{i:02d}.png")
    result = _run(["--predictions", str(data), "--data", str(data), "--lpips-backbone", str(tmp_path / "alex.pt"),
                   "--fid-weights", str(tmp_path / "inception.pt"), "--examples", "0"], tmp_path / "o")
    overall = result["overall"]
    assert all(r["lpips"] == pytest.approx(0.0, abs=1e-6) for r in result["per_image"])
    assert overall["u_ids"] == pytest.approx(0.5) and overall["p_ids"] == 0.0
    assert all(row.get("p_ids") is None for row in result["buckets"])  # no bucket holds 10 images
    md = (tmp_path / "o" / "metrics.md").read_text()
    assert "| LPIPS |" in md and "| P-IDS % |" in md and "| U-IDS % |" in md and "| 50.00 |" in md


def test_training_validation_and_eval_report_the_same_figures(checkpoint, tmp_path):
    """One evaluator: train's validation and mhtma-eval on the same images, masks (seed) and generator."""
    from contextlib import nullcontext

    from torch.utils.data import DataLoader

    from mhtma_model import training
    from mhtma_model.checkpoint import load_generator
    from mhtma_model.data import InpaintingDataset
    from mhtma_model.images import list_images

    data = tmp_path / "val"
    data.mkdir()
    for name in SAMPLES[:3]:
        image = Image.fromarray(getattr(skdata, name)()).convert("RGB")
        evaluate.resize_center_crop(image, SIZE).save(data / f"{name}.png")  # already S×S: no resampling in either
    dataset = InpaintingDataset(list_images(data), SIZE, train=False, seed=5)
    generator = load_generator(checkpoint)[0].eval()
    scores = training._validate(generator, DataLoader(dataset, batch_size=2), torch.device("cpu"), nullcontext, None,
                             training._Distribution())
    result = _run(["--checkpoint", str(checkpoint), "--data", str(data), "--mask-seed", "5", "--examples", "0"],
                  tmp_path / "o")
    assert [r["name"] for r in result["per_image"]] == sorted(SAMPLES[:3])
    assert result["overall"]["count"] == scores["overall"]["count"] == 3
    assert [row["count"] for row in scores["buckets"]] == [row["count"] for row in result["buckets"]]
    for ours, theirs in zip([scores["overall"]] + scores["buckets"], [result["overall"]] + result["buckets"]):
        for key in ("mae_percent", "psnr", "ssim"):
            if theirs["count"]:
                assert_close(torch.tensor([ours[key]], dtype=torch.float64),
                             torch.tensor([theirs[key]], dtype=torch.float64), torch.float32, f"{theirs['bucket']} {key}")
    assert training.validation_l1(scores) == pytest.approx(scores["overall"]["mae_percent"] / 50)


def test_eval_takes_a_saved_inpainter_folder_as_checkpoint(checkpoint, dataset, tmp_path):
    from mhtma_model import Inpainter

    folder = Inpainter.from_checkpoint(checkpoint, device="cpu").save_pretrained(tmp_path / "saved")
    from_pt = _run(["--checkpoint", str(checkpoint), "--data", str(dataset), "--examples", "0"], tmp_path / "a")
    from_dir = _run(["--checkpoint", str(folder), "--data", str(dataset), "--examples", "0"], tmp_path / "b")
    assert from_dir["per_image"] == from_pt["per_image"]
