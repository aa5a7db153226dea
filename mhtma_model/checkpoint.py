"""Checkpoints: atomic writes, safe loads (``torch.load(weights_only=True)``), a generator from a file alone.

Payload (a dict of tensors and plain Python values only)::

    {"format": "mhtma", "version": 1,
     "config": Config.to_dict(),            # enough to rebuild the networks
     "generator": state_dict, "discriminator": state_dict | None,
     "opt_g": state_dict | None, "opt_d": state_dict | None,
     "step": int, "epoch": int, "rng": dict | None, "early_stop": dict | None, "metrics": dict}

(the trainer adds "batch_in_epoch" and "scaler_g"/"scaler_d"). Writing goes to a temporary file in the
target's folder, is flushed and fsync'ed, then ``os.replace``'d over the target, so a crash at any
point leaves either the old file or the new one, never a torn one.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

__all__ = ["FORMAT", "VERSION", "CheckpointError", "save_checkpoint", "load_checkpoint", "load_generator"]

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


def save_checkpoint(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` to ``path`` atomically (temp file in the same folder, fsync, ``os.replace``).

    ``payload`` must carry "format": "mhtma", "version": 1, "config" (plain dict) and "generator"
    (state dict); everything in it must be tensors or plain Python values (checked by loading it back
    would be costly, so only the structure is checked here; ``torch.load(weights_only=True)`` in
    :func:`load_checkpoint` enforces the rest).
    """
    path = Path(path)
    _check_payload(payload, f"save_checkpoint({path})")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load and check an mhtma checkpoint with ``torch.load(weights_only=True)``; CheckpointError if the
    file is missing, unreadable, not an mhtma checkpoint, or of another version."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, pickle with non-allowed globals, random bytes ...
        raise CheckpointError(f"{path}: not a readable mhtma checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    _check_payload(payload, str(path))
    return payload


def load_generator(path: str | os.PathLike, map_location="cpu"):
    """Rebuild the generator from the checkpoint alone -> ``(generator in eval mode, Config)``.

    The generator also carries ``training_size`` (the config's ``data.size``), the scale
    :func:`mhtma_model.inpaint.inpaint_image` runs it at by default.

    CheckpointError if the file is unusable or its weights do not fit the network its config describes.
    """
    from .config import Config, ConfigError, build_generator

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
