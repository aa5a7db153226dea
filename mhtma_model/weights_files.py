"""Where a local weights file comes from: the one rule the FID Inception, the LPIPS backbone, the VGG16 of the
perceptual loss and the learned edge detector share (nothing is ever downloaded).

The file named by an option or argument, else the one named by an environment variable, else none. A file that
is named (by either) but is not there is an error that names it and says how to get it; having none at all is
the caller's choice: skip the metric (``missing=None``) or fail with the caller's message. And how such a file
is read (:func:`load_weights_file`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch

PathLike = Union[str, os.PathLike, None]


def resolve_weights_file(path: PathLike, env: str, *, option: str, not_found: Callable[[Path, str], str],
                         missing: Optional[str] = None, env_source: Optional[str] = None) -> Optional[Path]:
    """``path`` (None or "" for unset), else ``$env`` (unset or empty for unset), else None.

    Args:
        path: the file from the command line or the caller's argument.
        env: the environment variable consulted when ``path`` is unset.
        option: how ``path`` is named in messages (e.g. ``"--fid-weights"``).
        not_found: ``(file, source) -> message`` of the FileNotFoundError for a named file that is not a
            file; ``source`` is ``option`` or ``env_source``.
        missing: if given, neither being set raises FileNotFoundError with this message instead of returning None.
        env_source: how the variable is named in messages (default ``"$" + env``).
    """
    source = option
    if path is None or str(path) == "":
        value = os.environ.get(env, "")
        if not value:
            if missing is not None:
                raise FileNotFoundError(missing)
            return None
        path, source = value, env_source if env_source is not None else f"${env}"
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise FileNotFoundError(not_found(resolved, source))
    return resolved


def load_weights_file(path: Union[str, os.PathLike], what: str, how: str) -> Any:
    """``torch.load`` of ``path`` on the CPU, tensors only (``weights_only``): what the file holds, unchecked.

    FileNotFoundError ``"{what} not found: {path}; {how}"`` when ``path`` is not a file; ValueError when it does
    not load as a torch file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}; {how}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable torch state dict: {exc}") from exc


__all__ = ["resolve_weights_file", "load_weights_file"]
