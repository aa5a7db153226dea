"""Output checks, atomic writes with the umask, and plain progress lines off a terminal."""
import io
import os

import pytest

from mhtma_model.output_files import (OutputError, check_output_file, check_output_folder, write_atomic,
                                      write_text_atomic)
from mhtma_model.progress import PLAIN_LINES, UNKNOWN_TOTAL_EVERY, PlainProgress, progress


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)],
                         ids=["umask-022", "umask-077", "umask-002"])
def test_atomic_write_follows_the_umask(tmp_path, umask, mode):
    before = os.umask(umask)
    try:
        path = write_text_atomic(tmp_path / "a" / "b.txt", "hello")
    finally:
        os.umask(before)
    assert path.read_text() == "hello" and path.stat().st_mode & 0o777 == mode


def test_failed_atomic_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = write_text_atomic(tmp_path / "x.json", "old")

    def dying(fh):
        fh.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomic(path, dying)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


@pytest.mark.parametrize("make, check, fragment", [
    pytest.param(lambda t: (t / "f").write_text("x") and t / "f", check_output_folder, "existing file",
                 id="folder-is-a-file"),
    pytest.param(lambda t: (t / "f").write_text("x") and t / "f" / "sub", check_output_folder, "is a file",
                 id="folder-below-a-file"),
    pytest.param(lambda t: t, check_output_file, "is a folder", id="file-is-a-folder"),
    pytest.param(lambda t: (t / "f").write_text("x") and t / "f" / "out.png", check_output_file, "is a file",
                 id="file-below-a-file"),
])
def test_checks_refuse_without_creating(tmp_path, make, check, fragment):
    target = make(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(OutputError, match=fragment):
        check(target)
    assert sorted(tmp_path.rglob("*")) == before


def test_checks_accept_new_paths_without_creating(tmp_path):
    assert check_output_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert check_output_file(tmp_path / "c" / "d.png") == tmp_path / "c" / "d.png"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("total, updates", [(1000, 1000), (7, 7), (None, 350)], ids=["1000", "7", "unknown"])
def test_plain_progress_prints_a_few_lines(total, updates):
    out = io.StringIO()
    bar = progress(total=total, desc="work", unit="step", file=out)
    assert isinstance(bar, PlainProgress)  # a StringIO is not a terminal
    for _ in range(updates):
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    expected = PLAIN_LINES if total else updates // UNKNOWN_TOTAL_EVERY + 1
    assert "\r" not in out.getvalue() and len(lines) <= expected and lines[-1].startswith(f"work: {updates}")
