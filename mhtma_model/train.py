"""Train the MHTMA inpainting GAN: ``python -m mhtma_model.train [--config FILE.yaml] [section.key=value ...]``.

With no arguments this runs the demo (``mhtma_model/configs/demo.yaml`` = the config defaults): a small
model on 64 px crops of scikit-image's sample photos, a few minutes on 2 CPU cores, into ``runs/demo``.
``--config`` takes a YAML file or a packaged name (``demo``, ``paris_streetview``, ``celeba_hq``,
``places2``); overrides such as ``data.root=/data/celeba_hq/train train.max_steps=1000`` come after.
Multi-GPU: ``torchrun --nproc_per_node N -m mhtma_model.train ...`` (DDP; ``data.batch_size`` is per process).

One training step (paper Sec. III-B, IV-A), on a batch (I_gt, M[, S]):

    I_c, I_r = G(I_gt, M[, S])                     I_out = I_r ⊙ M + I_gt ⊙ (1 − M)
    D step:  L_D = hinge(D(I_gt, M), D(I_out.detach(), M))   [+ gp_weight · GP  for wgan-gp]
    G step:  L_G = 1.2·|I_c − I_gt|₁ + 1.0·|I_out − I_gt|₁ + λp·L_perc(I_c, I_gt) + 0.01·(−D(I_out, M))

|·|₁ is the mean absolute error over the WHOLE image (all pixels, all channels), as the paper's Eq. 2
writes ‖I_c − I_gt‖₁ and DeepFill v2 does; for I_out the known pixels are exact, so its term only
counts hole pixels but is normalised by the image size. Real and fake are scored on the same local
crop. Adam(β = 0.5, 0.9), lr 1e-4 for both.

Validation: mean |I_out − I_gt| over the held-out split with fixed masks (seeded by image index), each
epoch (or every ``train.val_every`` steps); ``best.pt`` keeps the lowest; training stops after
``train.patience`` validations without improvement, at ``train.max_steps`` or ``train.max_epochs``.

Determinism: before step s the torch RNG is seeded from (run.seed, s, rank), the data order of epoch e
from (run.seed, e) and masks from (seed, epoch, index), so a run stopped at step k and resumed from its
``last.pt`` ends with exactly the weights of an uninterrupted run (with ``data.num_workers=0`` or any
worker count; on CPU).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from .checkpoint import FORMAT, VERSION, CheckpointError, load_checkpoint, save_checkpoint
from .config import Config, ConfigError, build_discriminator, build_generator, load_config
from .networks import composite

__all__ = ["main", "train", "EpochSampler"]


# ------------------------------------------------------------------------------------ distribution

@dataclass
class _Dist:
    enabled: bool = False
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(cfg: Config) -> _Dist:
    """DDP when launched by torchrun (env WORLD_SIZE > 1): nccl on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and cfg.train.device != "cpu"
    owns = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
        owns = True
    return _Dist(True, rank, world, local_rank, owns)


def _device(cfg: Config, d: _Dist) -> torch.device:
    want = cfg.train.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={cfg.train.device!r} but CUDA is not available; use train.device=cpu")
    if want == "cuda":
        want = f"cuda:{d.local_rank}" if d.enabled else "cuda"
    device = torch.device(want)
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


# ----------------------------------------------------------------------------------------- RNG state

def _rng_state() -> dict:
    """Every RNG as tensors / plain lists (loadable with weights_only=True)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": [py_version, list(py_state), py_gauss],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict | None) -> None:
    if not state:
        return
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------- samples

def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """``[B, 3, H, W]`` in [-1, 1] -> ``[B, H, W, 3]`` uint8."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def save_sample_grid(path: Path, image, mask, coarse, output) -> Path:
    """PNG grid, one row per image, columns: input (holes white) | coarse | output | truth."""
    from PIL import Image

    shown_input = image * (1 - mask) + mask  # holes drawn white
    cols = [_to_uint8(t) for t in (shown_input, coarse, output, image)]
    b, h, w, _ = cols[0].shape
    gap = 2
    grid = np.full((b * h + (b - 1) * gap, 4 * w + 3 * gap, 3), 255, np.uint8)
    for i in range(b):
        for j, col in enumerate(cols):
            grid[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = col[i]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(grid).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


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


def _unwrap(module):
    return module.module if hasattr(module, "module") else module


def _resolve_resume(cfg: Config, ckpt_dir: Path) -> Path | None:
    mode = cfg.train.resume
    last = ckpt_dir / "last.pt"
    if mode == "auto":
        return last if last.is_file() else None
    if mode == "never":
        if last.is_file():
            raise CheckpointError(f"{last}: the run directory already holds a checkpoint and train.resume=never; "
                                  f"choose another run.dir or use train.resume=auto to continue it")
        return None
    path = Path(mode).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found (train.resume)")
    return path


def _check_compatible(payload: dict, cfg: Config, path: Path) -> None:
    old = payload["config"]
    new = cfg.to_dict()
    if old.get("model") != new["model"]:
        diff = {k: (old.get("model", {}).get(k), v) for k, v in new["model"].items()
                if old.get("model", {}).get(k) != v}
        raise CheckpointError(f"{path}: cannot resume, the model settings differ from the checkpoint's "
                              f"(key: (checkpoint, now) {diff}); use another run.dir or train.resume=never")
    missing = [k for k in ("discriminator", "opt_g", "opt_d", "step", "epoch") if payload.get(k) is None]
    if missing:
        raise CheckpointError(f"{path}: cannot resume training from it, it holds no {missing} (a generator-only "
                              f"checkpoint?); resume from a last.pt written by mhtma-train")
    if old.get("data", {}).get("size") != new["data"]["size"]:
        raise CheckpointError(f"{path}: cannot resume, data.size is {new['data']['size']} but the checkpoint "
                              f"was trained at {old.get('data', {}).get('size')}")
    for section, key in (("run", "seed"), ("data", "val_fraction")):
        before, now = old.get(section, {}).get(key), new[section][key]
        if before != now:
            raise CheckpointError(f"{path}: cannot resume with {section}.{key}={now}; the checkpoint used "
                                  f"{section}.{key}={before}, and the train/validation split depends on it "
                                  f"(validation images would leak into training); resume with {section}.{key}={before}")
    old_bs = old.get("data", {}).get("batch_size")
    if payload.get("batch_in_epoch") and old_bs != new["data"]["batch_size"]:
        raise CheckpointError(f"{path}: cannot resume mid-epoch with data.batch_size={new['data']['batch_size']}; "
                              f"the checkpoint stopped {payload['batch_in_epoch']} batches of {old_bs} into its "
                              f"epoch (the rest of the epoch would be skipped or repeated); resume with "
                              f"data.batch_size={old_bs}")


# --------------------------------------------------------------------------------------------- train

def _build_data(cfg: Config, d: _Dist):
    from .data import InpaintingDataset, demo_dataset_root, list_images, split_paths
    from .masks import MaskFolder

    if cfg.data.root is None:
        if d.enabled and not d.main:
            torch.distributed.barrier()  # rank 0 writes the demo images first
        root = demo_dataset_root()
        if d.enabled and d.main:
            torch.distributed.barrier()
    else:
        root = Path(cfg.data.root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"data.root {root} is not a folder of images")
    paths = list_images(root)
    if len(paths) < 2:
        raise ValueError(f"data.root {root}: found {len(paths)} image(s); training needs at least 2 "
                         f"(one for validation)")
    train_paths, val_paths = split_paths(paths, cfg.data.val_fraction, cfg.run.seed)
    if not train_paths or not val_paths:
        raise ValueError(f"data.root {root}: {len(paths)} images give {len(train_paths)} training and "
                         f"{len(val_paths)} validation images with data.val_fraction={cfg.data.val_fraction}")
    masks = MaskFolder(cfg.data.masks) if cfg.data.masks else None
    train_ds = InpaintingDataset(train_paths, cfg.data.size, masks=masks, train=True, seed=cfg.run.seed,
                                 sketch=cfg.model.sketch)
    val_ds = InpaintingDataset(val_paths, cfg.data.size, masks=masks, train=False, seed=cfg.run.seed,
                               sketch=cfg.model.sketch)
    return root, train_ds, val_ds


@torch.no_grad()
def _validate(generator, loader, device, amp_ctx, max_batches, d: _Dist) -> float:
    """Mean |I_out − I_gt| over this rank's share of the validation split (summed over ranks)."""
    was_training = generator.training
    generator.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        image, mask, sketch = _batch_to(batch, device)
        with amp_ctx():
            _, refined = generator(image, mask, sketch)
        out = composite(refined.float(), image, mask)
        err = (out - image).abs().flatten(1).mean(1)
        total[0] += err.double().sum()
        total[1] += err.numel()
    if d.enabled:
        torch.distributed.all_reduce(total)
    generator.train(was_training)
    return float(total[0] / total[1].clamp_min(1))


def train(config: Config) -> dict:
    """Run (or resume) the training described by ``config``; returns a summary dict.

    Files (rank 0 only) in ``config.run.dir``: config.yaml, checkpoints/{last,best}.pt, samples/*.png,
    tb/ (TensorBoard). Raises FileNotFoundError (data folder, VGG16 weights), CheckpointError (resume).
    """
    if not isinstance(config, Config):
        raise TypeError(f"train: config must be a mhtma_model.config.Config, got {type(config).__name__}")
    cfg = config
    d = _setup_distributed(cfg)
    try:
        return _train(cfg, d)
    finally:
        if d.owns_group:
            torch.distributed.destroy_process_group()


def _train(cfg: Config, d: _Dist) -> dict:
    from tqdm import tqdm

    from .losses import PerceptualLoss, generator_loss, gradient_penalty, hinge_d_loss, wgan_d_loss

    t_start = time.time()
    if cfg.train.threads is not None:
        torch.set_num_threads(cfg.train.threads)
    device = _device(cfg, d)
    run_dir = Path(cfg.run.dir).expanduser()
    ckpt_dir = run_dir / "checkpoints"

    # Fail fast: the perceptual loss's weights file and the resume checkpoint come before any work.
    perceptual = PerceptualLoss(cfg.loss.vgg16).to(device) if cfg.loss.perceptual > 0 else None
    resume_path = _resolve_resume(cfg, ckpt_dir)
    payload = load_checkpoint(resume_path, map_location="cpu") if resume_path else None
    if payload is not None:
        _check_compatible(payload, cfg, resume_path)

    root, train_ds, val_ds = _build_data(cfg, d)
    bs = cfg.data.batch_size
    sampler = EpochSampler(len(train_ds), seed=cfg.run.seed, rank=d.rank, world=d.world)
    batches_per_epoch = math.ceil(math.ceil(len(train_ds) / d.world) / bs)
    val_indices = list(range(d.rank, len(val_ds), d.world))
    val_loader = DataLoader(torch.utils.data.Subset(val_ds, val_indices), batch_size=bs, shuffle=False,
                            num_workers=cfg.data.num_workers)

    torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
    generator = build_generator(cfg.model).to(device)
    discriminator = build_discriminator(cfg.model, cfg.data.size).to(device)
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.train.lr_g, betas=tuple(cfg.train.betas))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=cfg.train.lr_d, betas=tuple(cfg.train.betas))
    use_amp = cfg.train.amp and device.type == "cuda"
    scaler_g = torch.amp.GradScaler("cuda", enabled=use_amp)
    scaler_d = torch.amp.GradScaler("cuda", enabled=use_amp)

    def amp_ctx():
        return torch.autocast("cuda", dtype=torch.float16) if use_amp else contextlib.nullcontext()

    step, epoch, batch_in_epoch = 0, 0, 0
    early = {"best": None, "best_step": None, "bad": 0, "stopped": False, "history": []}
    metrics: dict = {}
    if payload is not None:
        generator.load_state_dict(payload["generator"])
        discriminator.load_state_dict(payload["discriminator"])
        opt_g.load_state_dict(payload["opt_g"])
        opt_d.load_state_dict(payload["opt_d"])
        for group, lr in ((opt_g.param_groups, cfg.train.lr_g), (opt_d.param_groups, cfg.train.lr_d)):
            for g in group:  # the current config's learning rates win
                g["lr"] = lr
        if payload.get("scaler_g"):
            scaler_g.load_state_dict(payload["scaler_g"])
            scaler_d.load_state_dict(payload["scaler_d"])
        step, epoch = int(payload["step"]), int(payload["epoch"])
        batch_in_epoch = int(payload.get("batch_in_epoch", 0))
        early.update(payload.get("early_stop") or {})
        early["stopped"] = early["bad"] >= cfg.train.patience  # a resumed run may raise the patience
        metrics = dict(payload.get("metrics") or {})
        _set_rng_state(payload.get("rng"))
    del payload

    g_raw, d_raw = generator, discriminator
    if d.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        generator = DDP(generator, device_ids=ids)
        discriminator = DDP(discriminator, device_ids=ids)

    writer = None
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.yaml")
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"))
        where = "resumed from " + str(resume_path) + f" at step {step}" if resume_path else "new run"
        print(f"mhtma-train: {where}; run dir {run_dir}; data {root} ({len(train_ds)} train / {len(val_ds)} val "
              f"images, {cfg.data.size}px); device {device}{' x' + str(d.world) if d.enabled else ''}"
              f"{', amp' if use_amp else ''}", file=sys.stderr, flush=True)

    weights = {"l1_coarse": cfg.loss.l1_coarse, "l1_out": cfg.loss.l1_out, "perceptual": cfg.loss.perceptual,
               "adversarial": cfg.loss.adversarial}
    sample_batch = None
    if d.main:
        sample_batch = next(iter(DataLoader(val_ds, batch_size=min(4, len(val_ds)), shuffle=False)))

    def payload_now() -> dict:
        return {"format": FORMAT, "version": VERSION, "config": cfg.to_dict(),
                "generator": g_raw.state_dict(), "discriminator": d_raw.state_dict(),
                "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                "scaler_g": scaler_g.state_dict() if use_amp else None,
                "scaler_d": scaler_d.state_dict() if use_amp else None,
                "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "rng": _rng_state(),
                "early_stop": {**early, "history": [list(h) for h in early["history"]]}, "metrics": dict(metrics)}

    saved_at = [step]

    def save_last(force: bool = True):
        """last.pt now (force) or only if train.checkpoint_every steps passed since the last save."""
        if force or step - saved_at[0] >= cfg.train.checkpoint_every:
            saved_at[0] = step
            if d.main:
                save_checkpoint(ckpt_dir / "last.pt", payload_now())

    def write_samples():
        if not d.main:
            return
        image, mask, sketch = _batch_to(sample_batch, device)
        was = g_raw.training
        g_raw.eval()
        with torch.no_grad(), amp_ctx():
            coarse, refined = g_raw(image, mask, sketch)
        g_raw.train(was)
        out = composite(refined.float(), image, mask)
        save_sample_grid(run_dir / "samples" / f"step_{step:07d}.png", image, mask, coarse.float(), out)

    def validate():
        """Validation + early-stop bookkeeping + best/last checkpoints. Returns True to stop."""
        val = _validate(g_raw, val_loader, device, amp_ctx, cfg.train.val_batches, d)
        metrics["val_l1"] = val
        early["history"].append([step, val])
        improved = early["best"] is None or val < early["best"]
        if improved:
            early.update(best=val, best_step=step, bad=0)
        else:
            early["bad"] += 1
        early["stopped"] = early["bad"] >= cfg.train.patience
        metrics["best_val_l1"] = early["best"]
        if d.main:
            writer.add_scalar("val/l1_out", val, step)
            writer.add_scalar("val/best_l1_out", early["best"], step)
            if improved:
                save_checkpoint(ckpt_dir / "best.pt", payload_now())
        save_last(force=early["stopped"] or finished())  # else every checkpoint_every steps
        return early["stopped"]

    def finished() -> bool:
        return (early["stopped"] or (cfg.train.max_steps is not None and step >= cfg.train.max_steps)
                or (cfg.train.max_epochs is not None and epoch >= cfg.train.max_epochs))

    pbar = tqdm(total=cfg.train.max_steps, initial=step, disable=not d.main, dynamic_ncols=True,
                desc="mhtma-train", unit="step", file=sys.stderr)
    generator.train()
    discriminator.train()
    last_val_step = early["history"][-1][0] if early["history"] else None
    logs: dict = {}
    while not finished():
        sampler.set_epoch(epoch, skip=batch_in_epoch * bs)
        loader_gen = torch.Generator()
        loader_gen.manual_seed(_step_seed(cfg.run.seed, epoch, 999))
        loader = DataLoader(train_ds, batch_size=bs, sampler=sampler, num_workers=cfg.data.num_workers,
                            generator=loader_gen, pin_memory=device.type == "cuda", drop_last=False)
        train_ds.set_epoch(epoch)
        stop = False
        for batch in loader:
            torch.manual_seed(_step_seed(cfg.run.seed, step, d.rank))
            image, mask, sketch = _batch_to(batch, device)

            # generator forward (once; the D step uses it detached)
            with amp_ctx():
                coarse, refined = generator(image, mask, sketch)
                output = composite(refined, image, mask)
            boxes = d_raw.crop_boxes(mask)

            # D step: real and fake in one forward, same masks and local crops
            opt_d.zero_grad(set_to_none=True)
            with amp_ctx():
                scores = discriminator(torch.cat([image, output.detach()]), torch.cat([mask, mask]),
                                       boxes=torch.cat([boxes, boxes]))
                real_s, fake_s = scores.float().chunk(2)
                d_adv = hinge_d_loss(real_s, fake_s) if cfg.loss.gan == "hinge" else wgan_d_loss(real_s, fake_s)
            d_loss = d_adv
            gp = None
            if cfg.loss.gan == "wgan-gp":
                gp = gradient_penalty(d_raw, image.float(), output.detach().float(), mask, weight=cfg.loss.gp_weight)
                d_loss = d_adv + gp
            scaler_d.scale(d_loss).backward()
            scaler_d.step(opt_d)
            scaler_d.update()

            # G step: D frozen, scored with the unwrapped D (no DDP sync needed for a frozen net)
            d_raw.requires_grad_(False)
            opt_g.zero_grad(set_to_none=True)
            with amp_ctx():
                fake_g = d_raw(output, mask, boxes=boxes).float()
                terms = generator_loss(coarse.float(), output.float(), image, fake_g, perceptual=perceptual,
                                       weights=weights)
            scaler_g.scale(terms["total"]).backward()
            scaler_g.step(opt_g)
            scaler_g.update()
            d_raw.requires_grad_(True)

            step += 1
            batch_in_epoch += 1
            if d.main:
                named = {f"loss/g_{k}": v for k, v in terms.items()}
                named.update({"loss/d_total": d_loss, "loss/d_adv": d_adv, "score/real": real_s.mean(),
                              "score/fake": fake_s.mean()})
                if gp is not None:
                    named["loss/d_gp"] = gp
                # one device-to-host copy for all of them (on CUDA, not one synchronisation per value)
                logs = dict(zip(named, torch.stack([v.detach().float() for v in named.values()]).tolist()))
                pbar.update(1)
                pbar.set_postfix(d=f"{logs['loss/d_total']:.3f}", g=f"{logs['loss/g_total']:.3f}",
                                 l1=f"{logs['loss/g_l1_out']:.4f}", ep=epoch)
                if step % cfg.train.log_every == 0 or step == 1:
                    for k, v in logs.items():
                        writer.add_scalar(k, v, step)
                    writer.add_scalar("lr/generator", opt_g.param_groups[0]["lr"], step)
                    writer.add_scalar("lr/discriminator", opt_d.param_groups[0]["lr"], step)
                    temps = g_raw.last_temperature
                    if temps is not None:
                        for k, t in enumerate(temps.float().mean(0).tolist()):
                            writer.add_scalar(f"temperature/head{k}", t, step)
                if step % cfg.train.sample_every == 0:
                    write_samples()
            if cfg.train.val_every and step % cfg.train.val_every == 0:
                last_val_step = step
                stop = validate()
            elif step % cfg.train.checkpoint_every == 0:
                save_last()
            if stop or finished():
                break
        else:  # the epoch ran to its end
            epoch += 1
            batch_in_epoch = 0
            if not cfg.train.val_every and last_val_step != step:
                last_val_step = step
                validate()
            continue
        if batch_in_epoch >= batches_per_epoch:  # max_steps hit exactly at the epoch's end
            epoch += 1
            batch_in_epoch = 0
    pbar.close()

    # Always end with a validation at the final step (so best.pt exists and last.pt holds it).
    if last_val_step != step:
        validate()
    if d.main and not (run_dir / "samples" / f"step_{step:07d}.png").exists():
        write_samples()
    if d.main and not (ckpt_dir / "best.pt").exists():
        save_checkpoint(ckpt_dir / "best.pt", payload_now())
    summary = {
        "run_dir": str(run_dir), "step": step, "epoch": epoch, "stopped_early": bool(early["stopped"]),
        "val_l1": metrics.get("val_l1"), "best_val_l1": early["best"], "best_step": early["best_step"],
        "last_checkpoint": str(ckpt_dir / "last.pt"), "best_checkpoint": str(ckpt_dir / "best.pt"),
        "losses": logs, "rank": d.rank, "world_size": d.world, "seconds": round(time.time() - t_start, 1),
        "weights_sha256": _weights_digest(g_raw, d_raw),
    }
    if writer is not None:
        writer.flush()
        writer.close()
    return summary


# ----------------------------------------------------------------------------------------------- CLI

def _parser() -> argparse.ArgumentParser:
    from .config import packaged_config_names

    p = argparse.ArgumentParser(
        prog="mhtma-train",
        description="Train the MHTMA inpainting GAN. No arguments = the demo (small model, 64 px, embedded "
                    "demo images, a few minutes on CPU) into runs/demo.",
        epilog="examples:\n"
               "  python -m mhtma_model.train\n"
               "  python -m mhtma_model.train --config celeba_hq data.root=/data/celeba_hq/train "
               "loss.vgg16=/weights/vgg16.pth\n"
               "  python -m mhtma_model.train run.dir=runs/try data.size=128 train.max_steps=2000\n"
               "  torchrun --nproc_per_node 2 -m mhtma_model.train --config places2 data.root=/data/places2\n"
               f"packaged configs: {', '.join(packaged_config_names())}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML file or packaged config name (default: demo)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="override config values, e.g. train.max_steps=100 data.root=/path/to/images")
    return p


def main(argv=None) -> int:
    """CLI entry point (``mhtma-train``); exit status 0 on success, 2 on bad config/arguments."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        parser.error(str(exc))
    try:
        summary = train(cfg)
    except (FileNotFoundError, CheckpointError) as exc:
        print(f"mhtma-train: error: {exc}", file=sys.stderr)
        return 2
    if summary["rank"] == 0:
        print(json.dumps({k: v for k, v in summary.items() if k != "losses"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
