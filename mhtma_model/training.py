"""Train the MHTMA inpainting GAN: :func:`train` (the command line ``mhtma-train`` is :mod:`mhtma_model.cli.train`).

With no arguments this runs the demo (``mhtma_model/configs/demo.yaml`` = the config defaults): a small
model on 64 px crops of scikit-image's sample photos, a few minutes on 2 CPU cores, into ``runs/demo``.
``--config`` takes a YAML file or a packaged name (``demo``, ``paris_streetview``, ``celeba_hq``,
``places2``); overrides such as ``data.root=/data/celeba_hq/train train.max_steps=1000`` come after.
Multi-GPU: ``torchrun --nproc_per_node N -m mhtma_model.train ...`` (DDP; ``data.batch_size`` is per process).

Each step is one GAN update, :class:`mhtma_model.gan_step.GanStep` (losses and optimisers in its docstring),
from a per-step seed; :class:`Trainer` runs the loop around it.

Validation: the held-out split with fixed masks (seeded by image index) scored by
:class:`mhtma_model.evaluator.Evaluator`, the code behind ``mhtma-eval`` (8-bit composite; MAE %, PSNR,
SSIM logged); its figure ``val_l1`` is mean |I_out − I_gt| on the [-1, 1] scale (MAE % / 50), each
epoch (or every ``train.val_every`` steps); ``best.pt`` keeps the lowest; training stops after
``train.patience`` validations without improvement, at ``train.max_steps`` or ``train.max_epochs``.

Interruption: SIGINT (Ctrl+C) or SIGTERM ends the run after the current step with ``last.pt`` written
(:class:`StopSignals`, :class:`TrainingInterrupted`); the same command resumes it.

Determinism: before step s the torch RNG is seeded from (run.seed, s, rank), the data order of epoch e
from (run.seed, e) and masks from (seed, epoch, index), so a run stopped at step k and resumed from its
``last.pt`` ends with exactly the weights of an uninterrupted run (with ``data.num_workers=0`` or any
worker count; on CPU).
"""
from __future__ import annotations

import hashlib
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed
from torch.utils.data import DataLoader, Sampler
from torch.utils.tensorboard import SummaryWriter

from .checkpoint import (CheckpointError, check_resumable, load_checkpoint, resolve_resume, restore_training,
                         save_checkpoint, training_payload)
from .config import Config, ConfigError
from .data import InpaintingDataset, demo_dataset_root, split_paths
from .device import resolve_device
from .gan_step import GanStep
from .images import UNREADABLE_HINT, UnreadableImageError, list_images, no_images_found
from .losses import PerceptualLoss
from .masks import MaskFolder, ProtocolMix, parse_protocol_mix
from .evaluator import Evaluator
from .networks import composite
from .output_files import OutputError, check_output_folder
from .pinned_backend import pinned_backend_problem
from .pixel_range import from_network, to_uint8
from .progress import progress
from .samples import save_sample_grid

__all__ = ["train", "Trainer", "EarlyStopping", "EpochSampler", "TrainingInterrupted"]


# ------------------------------------------------------------------------------------ distribution

@dataclass
class _Distribution:
    """Where this process sits in a (torchrun) DDP job; a single-process run is ``_Distribution()``."""
    enabled: bool = False
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(cfg: Config) -> _Distribution:
    """DDP when launched by torchrun (env WORLD_SIZE > 1): nccl on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Distribution()
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and cfg.train.device != "cpu"
    owns = False
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
        owns = True
    return _Distribution(True, rank, world, local_rank, owns)


def _device(cfg: Config, dist: _Distribution) -> torch.device:
    """``train.device`` resolved (one GPU per process under DDP: cuda:LOCAL_RANK) and made current."""
    try:
        device = resolve_device(cfg.train.device)
    except ValueError:
        raise ConfigError(f"train.device={cfg.train.device!r} but CUDA is not available; "
                          f"use train.device=cpu") from None
    if device.type == "cuda" and device.index is None and dist.enabled:
        device = torch.device(f"cuda:{dist.local_rank}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


# ----------------------------------------------------------------------------------------- sampling

class EpochSampler(Sampler):
    """Shuffled indices of one rank for one epoch, resumable mid-epoch.

    Epoch e's order is ``randperm(n)`` from a generator seeded with ``seed + e``; it is padded by
    wrapping around to a multiple of ``world`` and rank r takes positions r, r + world, ... (the
    DistributedSampler layout). ``set_epoch(e, skip)`` drops the first ``skip`` indices of this rank
    (the batches a resumed run already trained on).
    """

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world: int = 1):
        if n < 1:
            raise ValueError("EpochSampler: the dataset is empty")
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def epoch_indices(self) -> list[int]:
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        total = math.ceil(self.n / self.world) * self.world
        order = (order * math.ceil(total / self.n))[:total]
        return order[self.rank::self.world]

    def __iter__(self):
        return iter(self.epoch_indices()[self.skip:])

    def __len__(self) -> int:
        return max(0, math.ceil(self.n / self.world) - self.skip)


def _step_seed(seed: int, step: int, rank: int) -> int:
    return ((seed * 1_000_003 + step) * 1_009 + rank) % (2 ** 62)


# ---------------------------------------------------------------------------------- early stopping

@dataclass
class EarlyStopping:
    """Validation bookkeeping: the best value and its step, validations without improvement (``bad``),
    whether ``patience`` is used up, and the ``[step, value]`` history (saved as "early_stop")."""
    patience: int
    best: float | None = None
    best_step: int | None = None
    bad: int = 0
    stopped: bool = False
    history: list = field(default_factory=list)

    def update(self, step: int, value: float) -> bool:
        """Record a validation -> True when it improved on the best."""
        self.history.append([step, value])
        improved = self.best is None or value < self.best
        if improved:
            self.best, self.best_step, self.bad = value, step, 0
        else:
            self.bad += 1
        self.stopped = self.bad >= self.patience
        return improved

    def state(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "bad": self.bad, "stopped": self.stopped,
                "history": [list(h) for h in self.history]}

    def load(self, state: dict) -> None:
        """Continue from a saved :meth:`state` (a resumed run may raise the patience)."""
        for key in ("best", "best_step", "bad", "history"):
            if key in state:
                setattr(self, key, state[key])
        self.stopped = self.bad >= self.patience


# ------------------------------------------------------------------------------------------- helpers

def _weights_digest(*modules) -> str:
    """sha256 over every parameter and buffer (name, bytes) — equal digests = identical weights."""
    h = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _batch_to(batch: dict, device) -> tuple:
    image = batch["image"].to(device, non_blocking=True)
    mask = batch["mask"].to(device, non_blocking=True)
    sketch = batch["sketch"].to(device, non_blocking=True) if "sketch" in batch else None
    return image, mask, sketch


def _datasets(cfg: Config, dist: _Distribution):
    """The image folder (or the demo dataset) split into training and validation datasets."""
    if cfg.data.root is None:
        if dist.enabled and not dist.main:
            torch.distributed.barrier()  # rank 0 writes the demo images first
        root = demo_dataset_root()
        if dist.enabled and dist.main:
            torch.distributed.barrier()
    else:
        root = Path(cfg.data.root).expanduser()
        if root.is_file():
            raise FileNotFoundError(f"data.root {root} is a file, not a folder; give the folder that holds the "
                                    f"training images")
        if not root.is_dir():
            raise FileNotFoundError(f"data.root folder not found: {root}")
    paths = list_images(root)
    if not paths:
        raise ConfigError(no_images_found(root, "data.root"))
    if len(paths) < 2:
        raise ConfigError(f"data.root {root}: found {len(paths)} image; training needs at least 2 "
                          f"(one for validation)")
    train_paths, val_paths = split_paths(paths, cfg.data.val_fraction, cfg.run.seed)
    if not train_paths or not val_paths:
        raise ConfigError(f"data.root {root}: {len(paths)} images give {len(train_paths)} training and "
                          f"{len(val_paths)} validation images with data.val_fraction={cfg.data.val_fraction}")
    masks = _mask_folder(cfg.data.masks) if cfg.data.masks else None
    mix = ProtocolMix(parse_protocol_mix(cfg.data.mask_protocols)) if cfg.data.mask_protocols else None
    train_ds = InpaintingDataset(train_paths, cfg.data.size, masks=masks, train=True, seed=cfg.run.seed,
                                 sketch=cfg.model.sketch, protocols=mix)
    val_ds = InpaintingDataset(val_paths, cfg.data.size, masks=masks, train=False, seed=cfg.run.seed,
                               sketch=cfg.model.sketch, protocols=mix)
    for split, dataset in (("training", train_ds), ("validation", val_ds)):
        try:
            dataset.check_readable()
        except UnreadableImageError as error:
            raise ConfigError(f"data.root {root}: none of its {len(dataset)} {split} images can be read (first: "
                              f"{dataset.paths[0].name}); {UNREADABLE_HINT}") from error
    return root, train_ds, val_ds


def _mask_folder(setting) -> MaskFolder:
    """``data.masks`` as a :class:`MaskFolder`; ConfigError naming the setting when it is not a folder of masks."""
    root = Path(setting).expanduser()
    if not root.is_dir():
        raise ConfigError(f"data.masks {root} is not a folder (give a folder of mask images, > 127 = hole)")
    if not list_images(root):
        raise ConfigError(no_images_found(root, "data.masks"))
    return MaskFolder(root)


@torch.no_grad()
def _validate(generator, loader, device, amp_ctx, max_batches, dist: _Distribution) -> dict:
    """The validation split scored by :class:`mhtma_model.evaluator.Evaluator` (the code behind
    ``mhtma-eval``: 8-bit composite, MAE % / PSNR / SSIM, buckets), over every rank's share -> the
    ``{"overall", "buckets"}`` summary of all validation images."""
    was_training = generator.training
    generator.eval()
    evaluator = Evaluator()
    paths = getattr(loader.dataset, "paths", None)
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        image, mask, sketch = _batch_to(batch, device)
        with amp_ctx():
            _, refined = generator(image, mask, sketch)
        names = [paths[int(j)].stem if paths is not None else str(int(j)) for j in batch["index"]]
        evaluator.add(names, to_uint8(from_network(batch["image"])), batch["mask"][:, 0].numpy() > 0.5,
                      from_network(refined))
    generator.train(was_training)
    if not dist.enabled:
        return evaluator.summary()
    gathered: list = [None] * dist.world
    torch.distributed.all_gather_object(gathered, evaluator.records)
    return evaluator.summary([r for part in gathered for r in part])


def validation_l1(summary: dict) -> float:
    """The early-stopping figure: mean |I_out − I_gt| on the [-1, 1] scale of the 8-bit composite (= MAE % / 50)."""
    mae = summary["overall"]["mae_percent"]
    return float("inf") if mae is None else mae / 50.0


# -------------------------------------------------------------------------------------- stop signals

class TrainingFailed(RuntimeError):
    """:func:`train` could not write or read a file once the run had started (the message says which, and the
    step); the checkpoints written so far stay."""


class TrainingInterrupted(Exception):
    """:func:`train` stopped on SIGINT (Ctrl+C) or SIGTERM (e.g. a cluster's preemption) after writing
    ``last.pt`` at ``step``; running the same command again resumes from there."""

    def __init__(self, signum: int, step: int, checkpoint: Path):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        super().__init__(f"{signal.Signals(signum).name} received: saved {checkpoint} at step {step}; "
                         f"run the same command again to resume")


class StopSignals:
    """While active (a context manager, main thread only), SIGINT and SIGTERM do not kill the process:
    they set :attr:`signum`, which :class:`Trainer` checks after every step, so that it can write last.pt
    and stop. A second signal restores the previous handlers and re-raises it (stop at once)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    @property
    def active(self) -> bool:
        """Whether the handlers are installed (only in the main thread)."""
        return bool(self._previous)

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
            return
        self.__exit__()
        signal.raise_signal(signum)


# --------------------------------------------------------------------------------------------- train

class Trainer:
    """One training run: built from a :class:`Config` in named steps (:meth:`_setup_device`,
    :meth:`_setup_run_dir`, :meth:`_read_resume`, :meth:`_build_data`, :meth:`_build_networks`,
    :meth:`_restore`, DDP wrapping, :meth:`_setup_logging`), advanced by :meth:`run` or epoch by epoch with
    :meth:`run_epoch`. Plain state: ``step``, ``epoch``, ``batch_in_epoch``, ``early``
    (:class:`EarlyStopping`), ``metrics``; checkpoints are written and read by :mod:`mhtma_model.checkpoint`
    alone. With ``signals`` (:class:`StopSignals`) a SIGINT/SIGTERM ends the run after the current step:
    last.pt is written and :class:`TrainingInterrupted` raised."""

    def __init__(self, cfg: Config, dist: _Distribution | None = None, signals: StopSignals | None = None):
        self.cfg, self.dist, self.t_start = cfg, dist or _Distribution(), time.time()
        self.signals, self.stop_signum = signals, None
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.early = EarlyStopping(cfg.train.patience)
        self.metrics: dict = {}
        self.logs: dict = {}
        self._setup_device()
        self._setup_run_dir()
        # Fail fast: the perceptual loss's weights file and the resume checkpoint come before any work.
        perceptual = PerceptualLoss(cfg.loss.vgg16).to(self.device) if cfg.loss.perceptual > 0 else None
        payload = self._read_resume()
        self._build_data()
        self._build_networks(perceptual)
        if payload is not None:
            self._restore(payload)
        del payload
        if self.dist.enabled:  # after the restore: DDP starts from the restored weights
            self.gan.wrap_distributed(self.device)
        self._setup_logging()

    # ------------------------------------------------------------------------------------ building
    def _setup_device(self) -> None:
        """CPU threads (``train.threads``) and the device (one GPU per process under DDP)."""
        if self.cfg.train.threads is not None:
            torch.set_num_threads(self.cfg.train.threads)
        self.device = _device(self.cfg, self.dist)

    def _setup_run_dir(self) -> None:
        """Where the run writes, checked (OutputError) but not created: a run that fails at start leaves no
        folder, and one that cannot write fails before any work."""
        self.run_dir = Path(self.cfg.run.dir).expanduser()
        self.ckpt_dir = self.run_dir / "checkpoints"
        if self.dist.main:
            check_output_folder(self.run_dir, "run.dir")
            for part in (self.ckpt_dir, self.run_dir / "samples", self.run_dir / "tb"):
                check_output_folder(part, "run.dir's")

    def _read_resume(self) -> dict | None:
        """The checkpoint ``train.resume`` names (checked against this config), or None for a new run."""
        self.resume_path = resolve_resume(self.cfg.train.resume, self.ckpt_dir)
        if self.resume_path is None:
            return None
        payload = load_checkpoint(self.resume_path, map_location="cpu")
        check_resumable(payload, self.cfg, self.resume_path)
        return payload

    def _build_data(self) -> None:
        cfg, dist = self.cfg, self.dist
        self.root, self.train_ds, self.val_ds = _datasets(cfg, dist)
        self.sampler = EpochSampler(len(self.train_ds), seed=cfg.run.seed, rank=dist.rank, world=dist.world)
        self.batches_per_epoch = math.ceil(math.ceil(len(self.train_ds) / dist.world) / cfg.data.batch_size)
        val_indices = list(range(dist.rank, len(self.val_ds), dist.world))
        self.val_loader = DataLoader(torch.utils.data.Subset(self.val_ds, val_indices),
                                     batch_size=cfg.data.batch_size, shuffle=False, num_workers=cfg.data.num_workers)

    def _build_networks(self, perceptual) -> None:
        """Generator, discriminator, losses and optimisers (:class:`~mhtma_model.gan_step.GanStep`)."""
        self.gan = GanStep(self.cfg, self.device, perceptual)
        problem = pinned_backend_problem(self.gan.g_raw, self.device, self.gan.amp_dtype,
                                         "give model.backend=auto (or torch)")
        if problem:
            raise ConfigError(problem)

    def _restore(self, payload: dict) -> None:
        state = restore_training(payload, self.cfg, **self.gan.parts())
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.early.load(state["early_stop"])
        self.metrics = state["metrics"]

    def _setup_logging(self) -> None:
        """Rank 0: the run dir with config.yaml, TensorBoard and the start line, the sample batch; every rank:
        the progress bar and the checkpoint/validation marks (so :meth:`run_epoch` works without :meth:`run`)."""
        self.saved_at = self.step
        self.last_val_step = self.early.history[-1][0] if self.early.history else None
        self.writer, self.sample_batch = None, None
        if self.dist.main:
            self.writer = self._open_run_dir()
            self.sample_batch = next(iter(DataLoader(self.val_ds, batch_size=min(4, len(self.val_ds)),
                                                     shuffle=False)))
        self.pbar = progress(total=self.cfg.train.max_steps, initial=self.step, disable=not self.dist.main,
                             desc="mhtma-train", unit="step", file=sys.stderr, dynamic_ncols=True)

    def _open_run_dir(self) -> SummaryWriter:
        """config.yaml, the TensorBoard writer and the start line (rank 0)."""
        cfg, dist = self.cfg, self.dist
        self.run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(self.run_dir / "config.yaml")
        writer = SummaryWriter(str(self.run_dir / "tb"))
        where = (f"resumed from {self.resume_path} at step {self.step}" if self.resume_path else "new run")
        print(f"mhtma-train: {where}; run dir {self.run_dir}; data {self.root} ({len(self.train_ds)} train / "
              f"{len(self.val_ds)} val images, {cfg.data.size}px); device {self.device}"
              f"{' x' + str(dist.world) if dist.enabled else ''}, {self.gan.precision_name}"
              f"{', compiled generator' if cfg.train.compile else ''}"
              f"{'; Ctrl+C saves last.pt and stops' if self.signals is not None and self.signals.active else ''}",
              file=sys.stderr, flush=True)
        return writer

    # --------------------------------------------------------------------------------- checkpoints
    def payload(self) -> dict:
        return training_payload(self.cfg, **self.gan.parts(), step=self.step, epoch=self.epoch,
                                batch_in_epoch=self.batch_in_epoch, early_stop=self.early.state(),
                                metrics=self.metrics)

    def save_last(self, force: bool = True) -> None:
        """last.pt now (force) or only if train.checkpoint_every steps passed since the last save."""
        if force or self.step - self.saved_at >= self.cfg.train.checkpoint_every:
            self.saved_at = self.step
            if self.dist.main:
                save_checkpoint(self.ckpt_dir / "last.pt", self.payload())

    def write_samples(self) -> None:
        if not self.dist.main:
            return
        image, mask, sketch = _batch_to(self.sample_batch, self.device)
        was = self.gan.g_raw.training
        self.gan.g_raw.eval()
        with torch.no_grad(), self.gan.autocast():
            coarse, refined = self.gan.g_raw(image, mask, sketch)
        self.gan.g_raw.train(was)
        out = composite(refined.float(), image, mask)
        save_sample_grid(self.run_dir / "samples" / f"step_{self.step:07d}.png", image, mask, coarse.float(), out)

    # ------------------------------------------- validation, early stopping, checkpointing (one method each)
    def validate(self) -> float:
        """The validation split scored by the shared :class:`~mhtma_model.evaluator.Evaluator` (fixed masks; every
        rank's images) -> ``val_l1`` (:func:`validation_l1`), also ``metrics["val_l1"]``, ``metrics["val"]`` (the
        overall row: MAE %, PSNR, SSIM) and TensorBoard ``val/l1_out``, ``val/mae_percent``, ``val/psnr``, ``val/ssim``."""
        scores = _validate(self.gan.g_raw, self.val_loader, self.device, self.gan.autocast, self.cfg.train.val_batches,
                           self.dist)
        val = validation_l1(scores)
        self.metrics["val_l1"] = val
        self.metrics["val"] = {k: v for k, v in scores["overall"].items() if k != "bucket"}
        if self.writer is not None:
            self.writer.add_scalar("val/l1_out", val, self.step)
            for key in ("mae_percent", "psnr", "ssim"):
                self.writer.add_scalar(f"val/{key}", scores["overall"][key], self.step)
        return val

    def update_early_stopping(self, val: float) -> bool:
        """Record a validation value in :attr:`early` -> whether it improved on the best (``early.stopped`` says
        whether ``train.patience`` is used up)."""
        improved = self.early.update(self.step, val)
        self.metrics["best_val_l1"] = self.early.best
        if self.writer is not None:
            self.writer.add_scalar("val/best_l1_out", self.early.best, self.step)
        return improved

    def save_checkpoints(self, improved: bool) -> None:
        """best.pt when the validation ``improved``; last.pt when the run ends here, else every
        ``train.checkpoint_every`` steps."""
        if improved and self.dist.main:
            save_checkpoint(self.ckpt_dir / "best.pt", self.payload())
        self.save_last(force=self.early.stopped or self.finished())

    def validation_round(self) -> bool:
        """:meth:`validate`, :meth:`update_early_stopping`, :meth:`save_checkpoints` at this step -> True to stop."""
        self.last_val_step = self.step
        self.save_checkpoints(self.update_early_stopping(self.validate()))
        return self.early.stopped

    def finished(self) -> bool:
        t = self.cfg.train
        return (self.early.stopped or (t.max_steps is not None and self.step >= t.max_steps)
                or (t.max_epochs is not None and self.epoch >= t.max_epochs))

    # -------------------------------------------------------------------------------------- a step
    def train_step(self, batch: dict) -> None:
        """One GAN update on ``batch`` (:class:`~mhtma_model.gan_step.GanStep`) from a per-step seed, then logging."""
        torch.manual_seed(_step_seed(self.cfg.run.seed, self.step, self.dist.rank))
        named = self.gan.step(*_batch_to(batch, self.device))
        self.step += 1
        self.batch_in_epoch += 1
        if self.dist.main:
            self._log(named)

    def _log(self, named: dict) -> None:
        """Progress bar, TensorBoard every train.log_every steps, samples every train.sample_every (rank 0)."""
        # one device-to-host copy for all of them (on CUDA, not one synchronisation per value)
        self.logs = logs = dict(zip(named, torch.stack([v.detach().float() for v in named.values()]).tolist()))
        self.pbar.update(1)
        self.pbar.set_postfix(d=f"{logs['loss/d_total']:.3f}", g=f"{logs['loss/g_total']:.3f}",
                              l1=f"{logs['loss/g_l1_out']:.4f}", ep=self.epoch)
        step, writer = self.step, self.writer
        if step % self.cfg.train.log_every == 0 or step == 1:
            for k, v in logs.items():
                writer.add_scalar(k, v, step)
            writer.add_scalar("lr/generator", self.gan.opt_g.param_groups[0]["lr"], step)
            writer.add_scalar("lr/discriminator", self.gan.opt_d.param_groups[0]["lr"], step)
            temps = self.gan.g_raw.last_temperature
            if temps is not None:
                for k, t in enumerate(temps.float().mean(0).tolist()):
                    writer.add_scalar(f"temperature/head{k}", t, step)
        if step % self.cfg.train.sample_every == 0:
            self.write_samples()

    # ------------------------------------------------------------------------------------ the loop
    def _epoch_loader(self) -> DataLoader:
        cfg = self.cfg
        self.sampler.set_epoch(self.epoch, skip=self.batch_in_epoch * cfg.data.batch_size)
        loader_gen = torch.Generator()
        loader_gen.manual_seed(_step_seed(cfg.run.seed, self.epoch, 999))
        self.train_ds.set_epoch(self.epoch)
        return DataLoader(self.train_ds, batch_size=cfg.data.batch_size, sampler=self.sampler,
                          num_workers=cfg.data.num_workers, generator=loader_gen,
                          pin_memory=self.device.type == "cuda", drop_last=False)

    def run_epoch(self) -> None:
        """The rest of the current epoch, or until a stop; validates per train.val_every (or at its end)."""
        val_every = self.cfg.train.val_every
        stop = False
        self.gan.train()
        for batch in self._epoch_loader():
            self.train_step(batch)
            if val_every and self.step % val_every == 0:
                stop = self.validation_round()
            elif self.step % self.cfg.train.checkpoint_every == 0:
                self.save_last()
            if stop or self.finished() or self.interrupted():
                break
        else:  # the epoch ran to its end
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            if not val_every and self.last_val_step != self.step:
                self.validation_round()
            return
        if self.batch_in_epoch >= self.batches_per_epoch:  # max_steps hit exactly at the epoch's end
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def run(self) -> dict:
        """Train until a stop condition, end with a validation at the final step -> the summary dict."""
        while not self.finished() and not self.interrupted():
            self.run_epoch()
        self.pbar.close()
        if self.stop_signum is not None:
            self._stop_on_signal()
        # Always end with a validation at the final step (so best.pt exists and last.pt holds it).
        if self.last_val_step != self.step:
            self.validation_round()
        if self.dist.main and not (self.run_dir / "samples" / f"step_{self.step:07d}.png").exists():
            self.write_samples()
        if self.dist.main and not (self.ckpt_dir / "best.pt").exists():
            save_checkpoint(self.ckpt_dir / "best.pt", self.payload())
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
        return self.summary()

    def interrupted(self) -> bool:
        """Whether a stop signal arrived (under DDP on any rank: all ranks stop after the same step)."""
        signum = self.signals.signum if self.signals is not None and self.signals.signum is not None else 0
        if self.dist.enabled:
            flag = torch.tensor([signum], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            signum = int(flag.item())
        if signum:
            self.stop_signum = signum
        return bool(signum)

    def _stop_on_signal(self) -> None:
        """Write last.pt at the current step (atomically, like every checkpoint) and raise TrainingInterrupted."""
        self.save_last(force=True)
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
        raise TrainingInterrupted(self.stop_signum, self.step, self.ckpt_dir / "last.pt")

    def summary(self) -> dict:
        early = self.early
        return {
            "run_dir": str(self.run_dir), "step": self.step, "epoch": self.epoch, "stopped_early": bool(early.stopped),
            "val_l1": self.metrics.get("val_l1"), "val": self.metrics.get("val"), "best_val_l1": early.best,
            "best_step": early.best_step,
            "last_checkpoint": str(self.ckpt_dir / "last.pt"), "best_checkpoint": str(self.ckpt_dir / "best.pt"),
            "losses": self.logs, "rank": self.dist.rank, "world_size": self.dist.world,
            "seconds": round(time.time() - self.t_start, 1), "weights_sha256": _weights_digest(self.gan.g_raw, self.gan.d_raw),
        }


def train(config: Config) -> dict:
    """Run (or resume) the training described by ``config``; returns a summary dict.

    Files (rank 0 only) in ``config.run.dir``: config.yaml, checkpoints/{last,best}.pt, samples/*.png,
    tb/ (TensorBoard). Raises FileNotFoundError (data folder, VGG16 weights), CheckpointError (resume),
    ConfigError (a setting that cannot work: no images in data.root, CUDA absent, ...) before any work;
    TrainingFailed when a file cannot be written or read once the run has started; and
    TrainingInterrupted after SIGINT/SIGTERM (handled while it runs in the main thread; last.pt is written first).
    """
    if not isinstance(config, Config):
        raise TypeError(f"train: config must be a mhtma_model.config.Config, got {type(config).__name__}")
    cfg = config
    dist = _setup_distributed(cfg)
    try:
        with StopSignals() as signals:
            trainer = Trainer(cfg, dist, signals)
            try:
                summary = trainer.run()
            except (OSError, OutputError, CheckpointError) as exc:
                raise TrainingFailed(f"the run stopped at step {trainer.step}: {exc}") from exc
        if dist.owns_group:
            # every rank finishes its collectives before any rank tears the group down: a rank that destroys
            # gloo's group while a peer still talks to it can abort in gloo's threads on a loaded machine
            torch.distributed.barrier()
        return summary
    finally:
        if dist.owns_group:
            torch.distributed.destroy_process_group()
