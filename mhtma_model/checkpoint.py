"""Checkpoints: atomic writes, safe loads (``torch.load(weights_only=True)``), a generator from a file alone.

Payload (a dict of tensors and plain Python values only)::

    {"format": "mhtma", "version": 1,
     "config": Config.to_dict(),            # enough to rebuild the networks
     "generator": state_dict, "discriminator": state_dict | None,
     "opt_g": state_dict | None, "opt_d": state_dict | None,
     "step": int, "epoch": int, "rng": dict | None, "early_stop": dict | None, "metrics": dict}

(a training checkpoint, :func:`training_payload`, adds "batch_in_epoch" and "scaler_g"/"scaler_d"; this
module is the one place that writes and reads that layout). Writing is atomic and follows the umask
(:func:`mhtma_model.output_files.write_atomic`): a crash at any point leaves either the old file or the new
one, never a torn one.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from .config import Config, ConfigError, build_generator
from .output_files import write_atomic

__all__ = ["FORMAT", "VERSION", "CheckpointError", "save_checkpoint", "load_checkpoint", "load_generator",
           "training_payload", "restore_training", "resolve_resume", "check_resumable", "rng_state",
           "set_rng_state"]

FORMAT = "mhtma"
VERSION = 1
REQUIRED = ("format", "version", "config", "generator")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, not an mhtma checkpoint, of another version, or does not
    match its config. The message names the path and the reason."""


def _check_payload(payload, where: str) -> None:
    if not isinstance(payload, dict):
        raise CheckpointError(f"{where}: not an mhtma checkpoint (expected a dict payload, got "
                              f"{type(payload).__name__})")
    if payload.get("format") != FORMAT:
        raise CheckpointError(f"{where}: not an mhtma checkpoint (format {payload.get('format')!r}, expected "
                              f"{FORMAT!r})")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{where}: checkpoint version {payload.get('version')!r} is not supported by this "
                              f"mhtma (expects version {VERSION})")
    missing = [k for k in REQUIRED if k not in payload]
    if missing:
        raise CheckpointError(f"{where}: incomplete mhtma checkpoint, missing {missing}")
    if not isinstance(payload["config"], dict):
        raise CheckpointError(f"{where}: 'config' must be a plain dict (Config.to_dict()), got "
                              f"{type(payload['config']).__name__}")


#: How every file torch.save writes begins (a zip archive).
ZIP_MAGIC = b"PK\x03\x04"


def _unreadable_reason(path: Path, exc: Exception) -> str:
    """What is wrong with a file torch.load refused, in words (torch's own message is about its internals)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(ZIP_MAGIC))
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    if not head:
        return "the file is empty, 0 bytes"
    if head != ZIP_MAGIC:
        return "not a PyTorch archive at all: a text file, an image, ...?"
    if "weights_only" in str(exc) or "Unsupported global" in str(exc):
        return "it holds Python objects other than tensors and plain values, which are not loaded for safety"
    return "damaged or truncated: its archive cannot be read; was it copied completely?"


def save_checkpoint(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` to ``path`` atomically, with the umask's mode (:mod:`mhtma_model.output_files`).

    ``payload`` must carry "format": "mhtma", "version": 1, "config" (plain dict) and "generator"
    (state dict); everything in it must be tensors or plain Python values (checked by loading it back
    would be costly, so only the structure is checked here; ``torch.load(weights_only=True)`` in
    :func:`load_checkpoint` enforces the rest).
    """
    path = Path(path)
    _check_payload(payload, f"save_checkpoint({path})")
    return write_atomic(path, lambda fh: torch.save(payload, fh))


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load and check an mhtma checkpoint with ``torch.load(weights_only=True)``; CheckpointError if the
    file is missing, unreadable, not an mhtma checkpoint, or of another version."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, pickle with non-allowed globals, random bytes ...
        raise CheckpointError(f"{path}: not a readable mhtma checkpoint ({_unreadable_reason(path, exc)}); give "
                              f"a checkpoint written by mhtma-train (runs/NAME/checkpoints/best.pt)") from exc
    _check_payload(payload, str(path))
    return payload


def load_generator(path: str | os.PathLike, map_location="cpu"):
    """Rebuild the generator from the checkpoint alone -> ``(generator in eval mode, Config)``.

    The generator also carries ``training_size`` (the config's ``data.size``), the scale
    :func:`mhtma_model.inference.inpaint_image` runs it at by default.

    CheckpointError if the file is unusable or its weights do not fit the network its config describes.
    """
    payload = load_checkpoint(path, map_location=map_location)
    try:
        config = Config.from_dict(payload["config"])
    except ConfigError as exc:
        raise CheckpointError(f"{path}: its config is not valid for this mhtma ({exc})") from exc
    generator = build_generator(config.model)
    state = payload["generator"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: 'generator' is not a state dict")
    try:
        generator.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: generator weights do not match the network its config describes "
                              f"({' '.join(str(exc).split())[:500]})") from exc
    generator.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu")
    generator.eval()
    generator.training_size = config.data.size
    return generator, config


# ------------------------------------------------------------------------------------------ RNG state

def rng_state() -> dict:
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


def set_rng_state(state: dict | None) -> None:
    """Restore what :func:`rng_state` saved (None or {} = leave the RNGs alone)."""
    if not state:
        return
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------- training state

def training_payload(config: Config, *, generator, discriminator, opt_g, opt_d, scaler_g, scaler_d, step: int,
                     epoch: int, batch_in_epoch: int, early_stop: dict, metrics: dict) -> dict:
    """Everything a resumed run needs (module docstring), with the current RNG states."""
    amp = scaler_g.is_enabled()
    return {"format": FORMAT, "version": VERSION, "config": config.to_dict(),
            "generator": generator.state_dict(), "discriminator": discriminator.state_dict(),
            "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
            "scaler_g": scaler_g.state_dict() if amp else None,
            "scaler_d": scaler_d.state_dict() if amp else None,
            "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "rng": rng_state(),
            "early_stop": early_stop, "metrics": dict(metrics)}


def restore_training(payload: dict, config: Config, *, generator, discriminator, opt_g, opt_d, scaler_g,
                     scaler_d) -> dict:
    """Load a :func:`training_payload` into the networks, optimisers (with ``config``'s learning rates,
    which win over the saved ones), scalers and RNGs -> ``{"step", "epoch", "batch_in_epoch",
    "early_stop", "metrics"}``."""
    generator.load_state_dict(payload["generator"])
    discriminator.load_state_dict(payload["discriminator"])
    opt_g.load_state_dict(payload["opt_g"])
    opt_d.load_state_dict(payload["opt_d"])
    for group, lr in ((opt_g.param_groups, config.train.lr_g), (opt_d.param_groups, config.train.lr_d)):
        for g in group:
            g["lr"] = lr
    if payload.get("scaler_g"):
        scaler_g.load_state_dict(payload["scaler_g"])
        scaler_d.load_state_dict(payload["scaler_d"])
    set_rng_state(payload.get("rng"))
    return {"step": int(payload["step"]), "epoch": int(payload["epoch"]),
            "batch_in_epoch": int(payload.get("batch_in_epoch", 0)),
            "early_stop": payload.get("early_stop") or {}, "metrics": dict(payload.get("metrics") or {})}


def resolve_resume(resume: str, ckpt_dir: Path) -> Path | None:
    """The checkpoint ``train.resume`` names: "auto" (last.pt if present), "never" (refuses a run dir
    with a last.pt) or a path; CheckpointError when it cannot be used."""
    last = ckpt_dir / "last.pt"
    if resume == "auto":
        return last if last.is_file() else None
    if resume == "never":
        if last.is_file():
            raise CheckpointError(f"{last}: the run directory already holds a checkpoint and train.resume=never; "
                                  f"choose another run.dir or use train.resume=auto to continue it")
        return None
    path = Path(resume).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found (train.resume)")
    return path


def _check_model(old: dict, new: dict, path: Path) -> None:
    """A resumed run builds the checkpoint's networks: the model settings must be the same."""
    if old.get("model") != new["model"]:
        diff = {k: (old.get("model", {}).get(k), v) for k, v in new["model"].items()
                if old.get("model", {}).get(k) != v}
        raise CheckpointError(f"{path}: cannot resume, the model settings differ from the checkpoint's "
                              f"(key: (checkpoint, now) {diff}); use another run.dir or train.resume=never")


def _check_data(old: dict, new: dict, path: Path) -> None:
    """A resumed run sees the checkpoint's data: data.size, run.seed and data.val_fraction must be the same."""
    if old.get("data", {}).get("size") != new["data"]["size"]:
        raise CheckpointError(f"{path}: cannot resume, data.size is {new['data']['size']} but the checkpoint "
                              f"was trained at {old.get('data', {}).get('size')}")
    for section, key in (("run", "seed"), ("data", "val_fraction")):
        before, now = old.get(section, {}).get(key), new[section][key]
        if before != now:
            raise CheckpointError(f"{path}: cannot resume with {section}.{key}={now}; the checkpoint used "
                                  f"{section}.{key}={before}, and the train/validation split depends on it "
                                  f"(validation images would leak into training); resume with {section}.{key}={before}")


def check_resumable(payload: dict, config: Config, path: Path) -> None:
    """CheckpointError unless training with ``config`` can continue from ``payload`` (read from ``path``)."""
    old, new = payload["config"], config.to_dict()
    _check_model(old, new, path)
    missing = [k for k in ("discriminator", "opt_g", "opt_d", "step", "epoch") if payload.get(k) is None]
    if missing:
        raise CheckpointError(f"{path}: cannot resume training from it, it holds no {missing} (a generator-only "
                              f"checkpoint?); resume from a last.pt written by mhtma-train")
    _check_data(old, new, path)
    old_bs = old.get("data", {}).get("batch_size")
    if payload.get("batch_in_epoch") and old_bs != new["data"]["batch_size"]:
        raise CheckpointError(f"{path}: cannot resume mid-epoch with data.batch_size={new['data']['batch_size']}; "
                              f"the checkpoint stopped {payload['batch_in_epoch']} batches of {old_bs} into its "
                              f"epoch (the rest of the epoch would be skipped or repeated); resume with "
                              f"data.batch_size={old_bs}")
