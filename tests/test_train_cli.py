"""What a person sees from `mhtma-train` / `python -m mhtma_model.train`: data errors as one line with exit 2,
Ctrl+C / SIGTERM saving last.pt before exiting (a real process and a real signal), the closing lines that
say where everything went and what to run next, and labelled sample grids."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mhtma_model.checkpoint import load_checkpoint, load_generator
from mhtma_model.cli.train import main

REPO = Path(__file__).resolve().parents[1]
TINY = ["data.size=32", "data.batch_size=2", "model.base_channels=4", "model.disc_channels=4",
        "model.backend=torch", "train.device=cpu", "train.threads=1", "train.log_every=1",
        "train.sample_every=1000", "train.checkpoint_every=1000", "data.val_fraction=0.25"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Four real PNG crops of scikit-image's astronaut (3 train + 1 validation image)."""
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    photo = data.astronaut()
    for i in range(4):
        Image.fromarray(photo[i * 100:i * 100 + 160, 50:210]).resize((40, 40), Image.BICUBIC) \
            .save(folder / f"img_{i}.png")
    return folder


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                OMP_NUM_THREADS="1", TRITON_INTERPRET=os.environ.get("TRITON_INTERPRET", "1"))


# ----------------------------------------------------------------------------------- data errors
def _one_line_usage_error(argv, capsys):
    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_empty_data_root_is_one_line_and_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    err = _one_line_usage_error([*TINY, f"run.dir={tmp_path / 'run'}", f"data.root={empty}"], capsys)
    assert "data.root" in err and str(empty) in err and "found no images" in err
    assert ".jpg" in err and ".png" in err  # what was searched for
    assert not (tmp_path / "run").exists()  # nothing written


def test_too_few_images_for_a_validation_split_is_one_line(tmp_path, photos, capsys):
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.png").write_bytes((photos / "img_0.png").read_bytes())
    err = _one_line_usage_error([*TINY, f"run.dir={tmp_path / 'run'}", f"data.root={one}"], capsys)
    assert "found 1 image" in err and "at least 2" in err


def test_empty_mask_folder_is_one_line(tmp_path, photos, capsys):
    masks = tmp_path / "masks"
    masks.mkdir()
    err = _one_line_usage_error([*TINY, f"run.dir={tmp_path / 'run'}", f"data.root={photos}", f"data.masks={masks}"],
                                capsys)
    assert "data.masks" in err and str(masks) in err and ".png" in err


def test_missing_data_root_is_one_line(tmp_path, capsys):
    err = _one_line_usage_error([*TINY, f"run.dir={tmp_path / 'run'}", f"data.root={tmp_path / 'nope'}"], capsys)
    assert "data.root" in err and str(tmp_path / "nope") in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_requested_without_a_gpu_is_one_line(tmp_path, photos, capsys):
    err = _one_line_usage_error([*TINY, f"run.dir={tmp_path / 'run'}", f"data.root={photos}", "train.device=cuda"],
                                capsys)
    assert "train.device='cuda'" in err and "train.device=cpu" in err


# ------------------------------------------------------------------------- what a finished run says
def test_finished_run_says_where_everything_went_and_what_to_run_next(tmp_path, photos, capsys):
    run = tmp_path / "run"
    assert main([*TINY, f"run.dir={run}", f"data.root={photos}", "train.max_steps=2"]) == 0
    err = capsys.readouterr().err
    best = run / "checkpoints" / "best.pt"
    assert best.is_file() and str(best) in err
    samples = sorted((run / "samples").glob("step_*.png"))
    assert samples and str(run / "samples") in err
    assert list((run / "tb").glob("events.out.tfevents.*")) and f"tensorboard --logdir {run / 'tb'}" in err
    next_line = [line for line in err.splitlines() if "mhtma-inpaint" in line]
    assert next_line and f"--checkpoint {best}" in next_line[0] and "--image" in next_line[0] \
        and "--mask" in next_line[0] and "--output" in next_line[0]


def test_sample_grid_columns_are_labelled(tmp_path):
    """The grid starts with a header band naming the columns input | coarse | output | truth: ink in each
    column's header, centred on that column, and nothing else changed below it."""
    from mhtma_model.samples import SAMPLE_COLUMNS, save_sample_grid

    assert SAMPLE_COLUMNS == ("input", "coarse", "output", "truth")
    torch.manual_seed(0)
    b, h, w = 2, 48, 48
    image = torch.rand(b, 3, h, w) * 2 - 1
    mask = torch.zeros(b, 1, h, w)
    mask[:, :, 10:30, 10:30] = 1
    coarse, output = torch.rand(b, 3, h, w) * 2 - 1, torch.rand(b, 3, h, w) * 2 - 1
    path = save_sample_grid(tmp_path / "grid.png", image, mask, coarse, output)
    grid = np.asarray(Image.open(path).convert("RGB")).astype(int)
    gap = 2
    header = grid.shape[0] - (b * h + (b - 1) * gap)
    assert grid.shape[1] == 4 * w + 3 * gap and 8 <= header <= 40, grid.shape
    ink = (grid[:header] < 128).any(axis=2)
    for j in range(4):
        cols = np.nonzero(ink[:, j * (w + gap):j * (w + gap) + w].any(axis=0))[0]
        assert cols.size, f"no label over column {j}"
        centre = (cols.min() + cols.max()) / 2
        assert abs(centre - w / 2) <= 4, (j, centre)
    truth = ((image[0].permute(1, 2, 0) + 1) * 127.5).round().numpy()
    np.testing.assert_array_equal(grid[header:header + h, 3 * (w + gap):3 * (w + gap) + w], truth)


# ---------------------------------------------------------------------- Ctrl+C and SIGTERM save last.pt
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_last_checkpoint_then_exits(tmp_path, photos, signum):
    """A real training process gets Ctrl+C (SIGINT) or a cluster's SIGTERM after a few steps: it writes
    last.pt at the step it reached (no step lost, though train.checkpoint_every is far away), says so in
    one line, exits with 128 + the signal number, and the run resumes from there."""
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "mhtma_model.train", *TINY, f"run.dir={run}", f"data.root={photos}",
            "train.max_steps=100000", "train.sample_every=1", "train.val_every=1000"]
    proc = subprocess.Popen(argv, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not (run / "samples" / "step_0000003.png").exists():
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signum, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    payload = load_checkpoint(run / "checkpoints" / "last.pt")
    step = payload["step"]
    assert step >= 3
    assert max(int(p.stem.split("_")[1]) for p in (run / "samples").glob("step_*.png")) <= step  # nothing lost
    said = [line for line in err.splitlines() if "last.pt" in line and signal.Signals(signum).name in line]
    assert len(said) == 1 and f"step {step}" in said[0] and str(run / "checkpoints" / "last.pt") in said[0], err
    assert not list((run / "checkpoints").glob(".*tmp*")) and not list((run / "checkpoints").glob("*.tmp"))
    assert load_generator(run / "checkpoints" / "last.pt")[0] is not None
    # the same command resumes from that step
    resumed = subprocess.run([a if not a.startswith("train.max_steps=") else f"train.max_steps={step + 1}"
                              for a in argv], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {run / 'checkpoints' / 'last.pt'} at step {step}" in resumed.stderr
