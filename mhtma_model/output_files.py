"""Where the commands write: output paths checked before any work starts, and files written atomically with the
user's umask.

Checks (:func:`check_output_file`, :func:`check_output_folder`) raise :class:`OutputError`, one line naming the
option, the path and what to do. They create nothing: a run that fails before writing leaves no folder.

Writing (:func:`atomic_path` and the helpers on it; images go through :func:`mhtma_model.image_modes.save_image`,
which uses them) goes to a temporary file beside the target, created with mode 0666 less the umask (what
``open()`` gives: 0644 under umask 022, unlike ``tempfile.mkstemp``'s 0600), flushed and fsync'ed, then
``os.replace``'d over the target: a reader sees the old file or the new one, never a torn one, and a failure
leaves no temporary file behind.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Callable, Iterator, Union

PathLike = Union[str, os.PathLike]

#: Mode of a new file before the umask (the same as ``open(path, "w")``).
FILE_MODE = 0o666


class OutputError(ValueError):
    """An output path that cannot be written (a folder where a file is wanted, a file where a folder is wanted,
    no permission, a parent that is not a folder); the message names the option and the path."""


def _nearest_existing(path: Path) -> Path:
    """``path`` itself or its closest ancestor that exists."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def _check_creatable(path: Path, option: str) -> None:
    """OutputError unless ``path`` can be made: its closest existing ancestor is a writable folder."""
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise OutputError(f"{option} {path}: {base} is a file, not a folder; choose a path under a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: the folder {base} is not writable; choose another place or fix its "
                          f"permissions")


def check_output_folder(path: PathLike, option: str = "--output") -> Path:
    """``path`` as a folder the run can write into (existing and writable, or creatable) -> the Path.
    OutputError (module docstring) otherwise; nothing is created."""
    path = Path(path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise OutputError(f"{option} {path} is an existing file, but a folder is wanted; choose a folder name")
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputError(f"{option} {path}: the folder is not writable; choose another folder or fix its "
                              f"permissions")
        return path
    _check_creatable(path, option)
    return path


def check_output_file(path: PathLike, option: str = "--output", example: str = "out.png") -> Path:
    """``path`` as a file the run can write (new, or an existing file it may replace) -> the Path. OutputError
    when it is a folder, when its folder cannot be written or made; nothing is created."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder, but a file is wanted; give a file name such as "
                          f"{path / example}")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{option} {path}: the file is read-only; choose another name or fix its permissions")
    _check_creatable(path, option)
    return path


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (an empty file with the umask's mode, same suffix) for the caller
    to write; on a normal exit it is fsync'ed and renamed over ``path`` (folders made as needed), on an
    exception removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: PathLike, write: Callable[[object], None]) -> Path:
    """Call ``write(binary file object)`` for ``path``'s new content, then put it in place atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            write(fh)
    return Path(path)


def write_text_atomic(path: PathLike, text: str) -> Path:
    """``text`` (UTF-8) as the content of ``path``, atomically."""
    return write_atomic(path, lambda fh: fh.write(text.encode("utf-8")))


def write_json_atomic(path: PathLike, value, indent: int = 2) -> Path:
    """``value`` as JSON (one trailing newline) in ``path``, atomically."""
    return write_text_atomic(path, json.dumps(value, indent=indent) + "\n")


def remove_stale(folder: Path, names) -> list[Path]:
    """Delete the files ``names`` (relative to ``folder``) that exist -> the ones removed."""
    removed = []
    for name in names:
        target = folder / name
        if target.is_file():
            target.unlink()
            removed.append(target)
    return removed


__all__ = ["OutputError", "FILE_MODE", "check_output_folder", "check_output_file", "atomic_path", "write_atomic",
           "write_text_atomic", "write_json_atomic", "remove_stale"]
