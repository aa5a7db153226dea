"""Training end to end with tiny real networks on real image files: learning, exact resume, crash safety,
odd/corrupt images, DDP with 2 gloo processes, and the demo command itself."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mhtma_model.checkpoint import CheckpointError, load_checkpoint, load_generator
from mhtma_model.config import load_config
from mhtma_model.networks import composite
from mhtma_model.cli.train import main
from mhtma_model.training import EarlyStopping, EpochSampler, train

REPO = Path(__file__).resolve().parents[1]

# 32 px, 4 channels, batch 2, the torch backend of MHTMA: a step takes a few hundredths of a second.
TINY = ["data.size=32", "data.batch_size=2", "model.base_channels=4", "model.disc_channels=4",
        "model.backend=torch", "model.attention=mhtma", "train.device=cpu", "train.log_every=1",
        "train.sample_every=1000", "train.checkpoint_every=1000"]


def _photos(folder: Path, count: int, size: int = 40, seed: int = 0) -> Path:
    """Real PNG crops of scikit-image's astronaut photo (a package-shipped image)."""
    from skimage import data

    photo = data.astronaut()
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        top, left = rng.integers(0, photo.shape[0] - 4 * size, size=2)
        crop = photo[top:top + 4 * size, left:left + 4 * size]
        Image.fromarray(crop).resize((size, size), Image.BICUBIC).save(folder / f"img_{i:02d}.png")
    return folder


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return _photos(tmp_path_factory.mktemp("photos"), 7)  # 6 train + 1 val with val_fraction 0.15


def _cfg(run_dir, root, *extra):
    return load_config(overrides=[*TINY, f"run.dir={run_dir}", f"data.root={root}", "data.val_fraction=0.15",
                                  *extra])


def _assert_same_tensors(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def _l1_on(generator, image, mask):
    with torch.no_grad():
        _, refined = generator(image, mask)
    return float((composite(refined, image, mask) - image).abs().mean())


def test_overfitting_one_image_lowers_l1(tmp_path):
    """One training image, one fixed mask (a mask folder holding one file), reconstruction losses only:
    a few seeded steps must lower the output L1 on that image clearly."""
    root = _photos(tmp_path / "one", 2, seed=3)  # one training image, one validation image
    masks = tmp_path / "masks"
    masks.mkdir()
    hole = np.zeros((32, 32), np.uint8)
    hole[8:22, 10:26] = 255
    Image.fromarray(hole).save(masks / "hole.png")
    run = tmp_path / "run"
    common = ["data.val_fraction=0.5", f"data.masks={masks}", "loss.adversarial=0", "train.lr_g=1e-3",
              "train.val_every=1000"]
    train(_cfg(run, root, *common, "train.max_steps=1"))
    from mhtma_model.data import InpaintingDataset, list_images, split_paths
    from mhtma_model.masks import MaskFolder

    train_paths, _ = split_paths(list_images(root), 0.5, 0)
    item = InpaintingDataset(train_paths, 32, masks=MaskFolder(masks), train=False)[0]
    image, mask = item["image"][None], item["mask"][None]
    assert float(mask.mean()) > 0.15
    before = _l1_on(load_generator(run / "checkpoints" / "last.pt")[0], image, mask)
    summary = train(_cfg(run, root, *common, "train.max_steps=30"))
    after = _l1_on(load_generator(run / "checkpoints" / "last.pt")[0], image, mask)
    assert summary["step"] == 30
    assert after < 0.7 * before, (before, after)


@pytest.mark.parametrize("gan", ["hinge", "wgan-gp"])
def test_stop_and_resume_equals_uninterrupted(tmp_path, photos, gan):
    # 6 training images, batch 2: 3 batches an epoch; stop at step 4 (inside epoch 1), finish at step 7.
    extra = [f"loss.gan={gan}", "train.val_every=0"]
    full = train(_cfg(tmp_path / "full", photos, *extra, "train.max_steps=7"))
    part = train(_cfg(tmp_path / "split", photos, *extra, "train.max_steps=4"))
    assert part["step"] == 4 and part["epoch"] == 1
    resumed = train(_cfg(tmp_path / "split", photos, *extra, "train.max_steps=7"))
    assert full["step"] == resumed["step"] == 7
    assert full["weights_sha256"] == resumed["weights_sha256"]
    a = load_checkpoint(tmp_path / "full/checkpoints/last.pt")
    b = load_checkpoint(tmp_path / "split/checkpoints/last.pt")
    for key in ("generator", "discriminator", "opt_g", "opt_d"):
        _assert_same_tensors(a[key], b[key], key)
    assert (a["step"], a["epoch"], a["batch_in_epoch"]) == (b["step"], b["epoch"], b["batch_in_epoch"]) == (7, 2, 1)
    # the epoch-end validations are the same (the split run also validated when it stopped at step 4)
    assert [h for h in a["early_stop"]["history"] if h[0] in (3, 6)] == \
        [h for h in b["early_stop"]["history"] if h[0] in (3, 6)]


def test_checkpoint_contents_and_rng_restore(tmp_path, photos):
    summary = train(_cfg(tmp_path / "r", photos, "train.max_steps=2"))
    payload = torch.load(Path(summary["last_checkpoint"]), weights_only=True)
    assert payload["format"] == "mhtma" and payload["version"] == 1 and payload["step"] == 2
    assert {"generator", "discriminator", "opt_g", "opt_d", "rng", "early_stop", "metrics", "config"} <= set(payload)
    assert set(payload["rng"]) >= {"torch", "numpy", "python"}
    assert payload["config"]["model"]["base_channels"] == 4
    assert Path(summary["best_checkpoint"]).is_file()
    assert (tmp_path / "r" / "config.yaml").is_file()
    assert load_config(tmp_path / "r" / "config.yaml") == _cfg(tmp_path / "r", photos, "train.max_steps=2")

    from mhtma_model.checkpoint import rng_state, set_rng_state
    import random

    set_rng_state(payload["rng"])
    draws = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(payload["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]
    state = rng_state()
    assert isinstance(state["numpy"][1], torch.Tensor)


def test_resume_refuses_incompatible_runs(tmp_path, photos):
    train(_cfg(tmp_path / "x", photos, "train.max_steps=1"))
    with pytest.raises(CheckpointError, match="train.resume=never"):
        train(_cfg(tmp_path / "x", photos, "train.max_steps=2", "train.resume=never"))
    with pytest.raises(CheckpointError, match="base_channels"):
        train(_cfg(tmp_path / "x", photos, "train.max_steps=2", "model.base_channels=6"))
    with pytest.raises(CheckpointError, match="data.batch_size"):  # mid-epoch: would skip 3, not 2, images
        train(_cfg(tmp_path / "x", photos, "train.max_steps=2", "data.batch_size=3"))
    with pytest.raises(CheckpointError, match="run.seed"):  # the train/validation split would change
        train(_cfg(tmp_path / "x", photos, "train.max_steps=2", "run.seed=7"))
    with pytest.raises(CheckpointError, match="data.val_fraction"):
        train(_cfg(tmp_path / "x", photos, "train.max_steps=2", "data.val_fraction=0.3"))
    with pytest.raises(CheckpointError, match="not found"):
        train(_cfg(tmp_path / "y", photos, "train.resume=" + str(tmp_path / "nope.pt")))
    from mhtma_model.checkpoint import save_checkpoint

    payload = load_checkpoint(tmp_path / "x" / "checkpoints" / "last.pt")
    only_g = save_checkpoint(tmp_path / "g.pt", {**payload, "discriminator": None, "opt_g": None, "opt_d": None})
    with pytest.raises(CheckpointError, match="generator-only"):
        train(_cfg(tmp_path / "z", photos, f"train.resume={only_g}"))


def test_missing_vgg16_fails_at_start_naming_the_file(tmp_path, photos, capsys):
    missing = tmp_path / "weights" / "vgg16.pth"
    status = main([*TINY, f"run.dir={tmp_path / 'v'}", f"data.root={photos}", "loss.perceptual=0.004",
                   f"loss.vgg16={missing}"])
    assert status == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "v").exists()  # failed before writing anything


def test_paper_config_without_vgg16_fails_at_start(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MHTMA_VGG16", raising=False)
    status = main(["--config", "celeba_hq", f"run.dir={tmp_path / 'c'}"])
    err = capsys.readouterr().err
    assert status == 2 and "MHTMA_VGG16" in err and "vgg16" in err
    assert not (tmp_path / "c").exists()


def test_perceptual_term_trains_with_a_weights_file(tmp_path, photos, monkeypatch):
    """relu1_2 weights in torchvision's key layout (random values; only features.0/2 are read)."""
    torch.manual_seed(0)
    state = {"features.0.weight": torch.randn(64, 3, 3, 3) * 0.1, "features.0.bias": torch.zeros(64),
             "features.2.weight": torch.randn(64, 64, 3, 3) * 0.05, "features.2.bias": torch.zeros(64)}
    weights = tmp_path / "vgg16.pth"
    torch.save(state, weights)
    monkeypatch.setenv("MHTMA_VGG16", str(weights))
    summary = train(_cfg(tmp_path / "p", photos, "loss.perceptual=0.004", "train.max_steps=2"))
    assert summary["losses"]["loss/g_perceptual"] > 0


def test_bad_cli_config_exits_with_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["data.size=63"])
    assert info.value.code == 2
    assert "data.size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["model.widht=3"])
    assert "valid keys of [model]" in capsys.readouterr().err


def test_odd_and_corrupt_images_do_not_stop_training(tmp_path):
    root = _photos(tmp_path / "odd", 4, size=48)
    rgb = np.asarray(Image.open(root / "img_00.png"))
    Image.fromarray(rgb).convert("L").save(root / "gray.png")
    Image.fromarray(rgb).convert("RGBA").save(root / "alpha.png")
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(root / "sixteen.png")
    Image.fromarray(rgb[:12, :20]).save(root / "tiny.bmp")  # smaller than data.size: upscaled
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    (root / "empty.jpg").write_bytes(b"")
    jpeg = root / "truncated.jpg"
    Image.fromarray(rgb).save(jpeg, quality=90)
    jpeg.write_bytes(jpeg.read_bytes()[:200])
    (root / "notes.txt").write_text("not an image")
    from mhtma_model.data import UnreadableImageWarning

    with pytest.warns(UnreadableImageWarning) as record:
        summary = train(_cfg(tmp_path / "run", root, "train.max_steps=8", "data.val_fraction=0.2"))
    warned = {name for name in ("broken.png", "empty.jpg", "truncated.jpg")
              if any(name in str(w.message) for w in record)}
    assert warned  # at least the broken files that were drawn got their warning
    assert summary["step"] == 8 and np.isfinite(summary["best_val_l1"])
    assert load_generator(summary["last_checkpoint"])[0] is not None


def test_epoch_sampler_partitions_and_resumes():
    ranks = [EpochSampler(7, seed=1, rank=r, world=2) for r in range(2)]
    for s in ranks:
        s.set_epoch(3)
    a, b = list(ranks[0]), list(ranks[1])
    assert len(a) == len(b) == 4 and set(a) | set(b) == set(range(7))
    ranks[0].set_epoch(3, skip=2)
    assert list(ranks[0]) == a[2:] and len(ranks[0]) == 2
    ranks[0].set_epoch(4)
    assert list(ranks[0]) != a


# ------------------------------------------------------------------------------- crash with SIGKILL

def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TRITON_INTERPRET", "1")
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def test_sigkill_mid_run_leaves_a_loadable_last_checkpoint(tmp_path, photos):
    run = tmp_path / "killed"
    args = [sys.executable, "-m", "mhtma_model.train", *TINY, f"run.dir={run}", f"data.root={photos}",
            "data.val_fraction=0.15", "train.checkpoint_every=1", "train.max_steps=100000"]
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
    last = run / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if last.is_file() and load_checkpoint(last)["step"] >= 3:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.3)  # kill at an arbitrary point, quite possibly inside a save
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
    payload = load_checkpoint(last)
    killed_at = payload["step"]
    assert killed_at >= 3
    generator, cfg = load_generator(last)
    assert cfg.model.base_channels == 4
    summary = train(_cfg(run, photos, f"train.max_steps={killed_at + 2}"))  # resumes from the survivor
    assert summary["step"] == killed_at + 2


# -------------------------------------------------------------------------------- DDP, 2 gloo ranks

def _ddp_worker(rank, world, port, overrides, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    summary = train(load_config(overrides=overrides))
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(summary))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_gloo_processes(tmp_path, photos):
    import torch.multiprocessing as mp

    run = tmp_path / "ddp"
    overrides = [*TINY, f"run.dir={run}", f"data.root={photos}", "data.val_fraction=0.15", "train.max_steps=4"]
    mp.spawn(_ddp_worker, args=(2, _free_port(), overrides, str(tmp_path)), nprocs=2, join=True)
    s0 = json.loads((tmp_path / "rank0.json").read_text())
    s1 = json.loads((tmp_path / "rank1.json").read_text())
    assert s0["world_size"] == s1["world_size"] == 2 and s0["step"] == s1["step"] == 4
    # 6 training images over 2 ranks with batch 2: 2 batches per rank per epoch
    assert s0["epoch"] == 2
    assert s0["weights_sha256"] == s1["weights_sha256"]  # DDP kept the replicas identical
    assert s0["best_val_l1"] == s1["best_val_l1"]  # validation reduced over both ranks
    # only rank 0 wrote: one TensorBoard event file, checkpoints, config
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 1
    payload = load_checkpoint(run / "checkpoints" / "last.pt")
    from mhtma_model.config import Config, build_discriminator, build_generator
    from mhtma_model.training import _weights_digest

    cfg = Config.from_dict(payload["config"])
    g, d = build_generator(cfg.model), build_discriminator(cfg.model, cfg.data.size)
    g.load_state_dict(payload["generator"])
    d.load_state_dict(payload["discriminator"])
    assert _weights_digest(g, d) == s0["weights_sha256"]


# ---------------------------------------------------------------------------------- the demo command

def test_demo_command_end_to_end(tmp_path):
    """`python -m mhtma_model.train` with the demo config (only max_steps shortened), from a fresh cwd."""
    proc = subprocess.run([sys.executable, "-m", "mhtma_model.train", "train.max_steps=3"], cwd=tmp_path,
                          env=_env(MHTMA_CACHE=str(tmp_path / "cache")), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "demo"
    summary = json.loads(proc.stdout)
    assert summary["step"] == 3 and Path(summary["run_dir"]) == Path("runs/demo")
    for name in ("config.yaml", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    cfg = load_config(run / "config.yaml")
    assert cfg == load_config(overrides=["train.max_steps=3"])
    grids = sorted((run / "samples").glob("*.png"))
    assert grids
    grid = Image.open(grids[-1])
    rows = 4  # the first 4 of the 5 validation images (48 demo images, val_fraction 0.1)
    from mhtma_model.samples import SAMPLE_COLUMNS, label_band

    header = label_band(SAMPLE_COLUMNS, 64).shape[0]  # the column labels above the rows
    assert grid.size[0] == 4 * 64 + 3 * 2 and grid.size[1] == header + rows * 64 + (rows - 1) * 2
    assert "tensorboard --logdir runs/demo/tb" in proc.stderr  # the closing lines name the outputs
    assert "mhtma-inpaint --checkpoint runs/demo/checkpoints/best.pt" in proc.stderr
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {"loss/g_total", "loss/g_l1_coarse", "loss/g_l1_out", "loss/g_perceptual", "loss/g_adversarial",
                "loss/d_total", "loss/d_adv", "lr/generator", "lr/discriminator", "temperature/head0",
                "temperature/head1", "val/l1_out"}
    assert expected <= tags, expected - tags
    generator, _ = load_generator(run / "checkpoints" / "best.pt")
    assert generator.last_temperature is None  # eval-mode generator, fresh from the file


def test_early_stopping_counts_validations_without_improvement_and_resumes():
    early = EarlyStopping(patience=2)
    improved = [early.update(step, value) for step, value in ((10, 0.5), (20, 0.4), (30, 0.45), (40, 0.41))]
    assert improved == [True, True, False, False]
    assert (early.best, early.best_step, early.bad, early.stopped) == (0.4, 20, 2, True)
    state = early.state()
    assert list(state) == ["best", "best_step", "bad", "stopped", "history"]  # the checkpoint's "early_stop"
    assert state["history"] == [[10, 0.5], [20, 0.4], [30, 0.45], [40, 0.41]]
    resumed = EarlyStopping(patience=3)  # a resumed run may raise the patience
    resumed.load(state)
    assert (resumed.best, resumed.bad, resumed.stopped) == (0.4, 2, False)
    assert resumed.update(50, 0.39) and resumed.bad == 0 and resumed.best_step == 50


# ------------------------------------------------------------------------------- the Trainer's parts

def test_run_epoch_works_without_run(tmp_path, photos):
    """A Trainer advanced epoch by epoch, never calling run(): 6 training images, batch 2 = 3 steps an
    epoch, one validation at each epoch's end, best.pt and the progress bar there from the start."""
    from mhtma_model.training import Trainer

    trainer = Trainer(_cfg(tmp_path / "run", photos, "train.val_every=0", "train.max_steps=100"))
    try:
        trainer.run_epoch()
        assert (trainer.step, trainer.epoch, trainer.batch_in_epoch) == (3, 1, 0)
        assert [h[0] for h in trainer.early.history] == [3] and trainer.last_val_step == 3
        assert (tmp_path / "run/checkpoints/best.pt").is_file()
        trainer.run_epoch()
        assert trainer.step == 6 and [h[0] for h in trainer.early.history] == [3, 6]
        assert trainer.pbar.n == 6
    finally:
        trainer.pbar.close()
        trainer.writer.close()


@pytest.mark.parametrize("values, stopped", [([3.0, 2.0, 2.5], False), ([3.0, 3.5, 4.0], True)],
                         ids=["improving", "patience-used-up"])
def test_validation_early_stopping_and_checkpointing_are_separate_steps(tmp_path, photos, values, stopped):
    """update_early_stopping only keeps the books; save_checkpoints writes best.pt only on an improvement."""
    from mhtma_model.training import Trainer

    trainer = Trainer(_cfg(tmp_path / "run", photos, "train.patience=2", "train.max_steps=100"))
    try:
        best = tmp_path / "run/checkpoints/best.pt"
        for step, value in enumerate(values, start=1):
            trainer.step = step
            improved = trainer.update_early_stopping(value)
            assert improved == (value == min(values[:step]))
            trainer.save_checkpoints(improved)
            if improved:
                assert load_checkpoint(best)["step"] == step
        assert trainer.early.stopped is stopped and trainer.metrics["best_val_l1"] == min(values)
        assert load_checkpoint(best)["step"] == values.index(min(values)) + 1
        assert isinstance(trainer.validate(), float) and trainer.metrics["val_l1"] >= 0
    finally:
        trainer.pbar.close()
        trainer.writer.close()
