"""Bad input to every command line and to the Inpainter API, as a table.

Each command-line case runs the command's ``main(argv)`` in-process in a fresh folder and asserts: the exit status
(2 for usage, 1 for a runtime failure), a short stderr whose last line names the bad thing (the case's fragments),
no traceback, and that the folder holds exactly what it held before (nothing partial, nothing stale). A few cases
run as real processes for the real exit status.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pytest
import torch
from PIL import Image

from mhtma_model import Inpainter
from mhtma_model.cli import evaluate, export, inpaint, masks, train, ui
from mhtma_model.output_files import OutputError

from .tiny_checkpoint import make_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]
MAINS = {"train": train.main, "inpaint": inpaint.main, "eval": evaluate.main, "masks": masks.main,
         "export": export.main, "ui": ui.main}
#: Longest stderr a failure may print (argparse's usage block included).
MAX_STDERR = 2500


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """Shared read-only inputs: checkpoints good and bad, images, masks, folders and odd files."""
    root = tmp_path_factory.mktemp("bad-inputs")
    ckpt = make_tiny_checkpoint(root / "tiny.pt")
    make_tiny_checkpoint(root / "sketch.pt", sketch=True)
    make_tiny_checkpoint(root / "triton.pt", backend="triton")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "photo.png")
    hole = np.zeros((32, 32), np.uint8)
    hole[8:20, 8:20] = 255
    Image.fromarray(hole).save(root / "mask.png")
    Image.fromarray(np.zeros((16, 24), np.uint8)).save(root / "small_mask.png")
    (root / "notes.txt").write_text("not an image\n")
    (root / "fake.png").write_text("not an image\n")
    (root / "empty.png").write_bytes(b"")
    (root / "cut.png").write_bytes((root / "photo.png").read_bytes()[:600])
    (root / "empty.pt").write_bytes(b"")
    (root / "truncated.pt").write_bytes(ckpt.read_bytes()[:2000])
    for name in ("images", "masks", "two"):
        (root / name).mkdir()
    Image.open(root / "photo.png").save(root / "images" / "a.png")
    Image.open(root / "mask.png").save(root / "masks" / "a.png")
    Image.open(root / "photo.png").save(root / "two" / "first.png")
    Image.open(root / "photo.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / "two" / "second.png")
    (root / "empty_dir").mkdir()
    (root / "run" / "checkpoints").mkdir(parents=True)
    (root / "run" / "checkpoints" / "best.pt").write_bytes(ckpt.read_bytes())
    (root / "unreadable_data").mkdir()
    (root / "unreadable_data" / "x.png").write_text("not an image")
    (root / "broken_images").mkdir()
    for name in ("a.png", "b.jpg", "c.png"):
        (root / "broken_images" / name).write_text("not an image")
    (root / "bad.yaml").write_text("data: [1, 2\n")
    (root / "list.yaml").write_text("- 1\n- 2\n")
    (root / "unknown.yaml").write_text("train:\n  nope: 1\n")
    return root


def _tree(folder: Path) -> dict:
    """Every file and folder under ``folder`` with its content's size and mode (what a case must not change)."""
    return {str(p.relative_to(folder)): (p.is_dir(), p.stat().st_size if p.is_file() else 0,
                                         p.read_bytes()[:64] if p.is_file() else b"")
            for p in sorted(folder.rglob("*"))}


def run_main(command: str, argv: Sequence[str], capsys) -> tuple[int, str, str]:
    try:
        code = MAINS[command](list(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_clear_failure(code: int, err: str, status: int, fragments: Sequence[str]) -> None:
    assert code == status, f"exit {code}, expected {status}\n{err}"
    assert "Traceback" not in err, err
    assert err.strip() and len(err) < MAX_STDERR, err
    last = err.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment.lower() in last.lower(), f"{fragment!r} not in the last line {last!r}"


# ---------------------------------------------------------------------------------------- the table
@dataclass
class Case:
    id: str
    command: str
    argv: Callable[[Path, Path], list]  # (shared fixtures, this case's folder) -> argv
    fragments: tuple  # what the last line of stderr must name
    status: int = 2
    prepare: Callable[[Path], None] = lambda work: None  # files the case puts into its folder first
    env: dict = None
    marks: tuple = ()


def C(id, command, argv, *fragments, status=2, prepare=None, env=None, marks=()) -> Case:
    return Case(id, command, argv, fragments, status, prepare or (lambda work: None), env, marks)


def _permissions_apply() -> bool:
    """Whether a read-only folder is read-only to this process (not for root with its usual capabilities)."""
    probe = Path(tempfile.mkdtemp())
    try:
        probe.chmod(0o555)
        return not os.access(probe, os.W_OK)
    finally:
        probe.chmod(0o755)
        probe.rmdir()


AS_USER = pytest.mark.skipif(not _permissions_apply(), reason="this process writes into read-only folders (root)")


def _read_only(work: Path) -> None:
    """A folder ``ro`` (holding one file ``ro/old.onnx``) that the user cannot write into."""
    (work / "ro").mkdir()
    (work / "ro" / "old.onnx").write_text("an earlier model")
    (work / "ro" / "old.onnx").chmod(0o444)
    (work / "ro").chmod(0o555)


def _file(work: Path, name: str = "taken", text: str = "someone's file") -> None:
    (work / name).write_text(text)


def T(*overrides):
    """mhtma-train argv: a run dir in the case's folder, the shared two-image data, then ``overrides``
    (callables of (fx, work) for paths)."""
    def argv(fx, work):
        base = [f"run.dir={work / 'run'}", f"data.root={fx / 'two'}", "train.max_steps=1", "data.size=32"]
        return base + [o(fx, work) if callable(o) else o for o in overrides]
    return argv


TRAIN = [
    C("unknown-key", "train", T("train.nope=1"), "train.nope"),
    C("unknown-section", "train", T("nope.x=1"), "nope"),
    C("override-without-equals", "train", T("train.max_steps"), "train.max_steps"),
    C("steps-not-a-number", "train", T("train.max_steps=abc"), "train.max_steps"),
    C("steps-negative", "train", T("train.max_steps=-1"), "train.max_steps"),
    C("size-zero", "train", T("data.size=0"), "data.size"),
    C("size-empty", "train", T("data.size="), "data.size", "needs a value"),
    C("run-dir-empty", "train", T("run.dir="), "run.dir", "needs a value"),
    C("size-not-multiple-of-8", "train", T("data.size=33"), "data.size"),
    C("batch-size-zero", "train", T("data.batch_size=0"), "data.batch_size"),
    C("val-fraction-above-one", "train", T("data.val_fraction=2"), "data.val_fraction"),
    C("unknown-backend", "train", T("model.backend=nope"), "backend"),
    C("threads-zero", "train", T("train.threads=0"), "train.threads"),
    C("unknown-device", "train", T("train.device=tpu"), "train.device"),
    C("config-missing", "train", lambda fx, work: ["--config", str(work / "missing.yaml")], "missing.yaml"),
    C("config-bad-yaml", "train", lambda fx, work: ["--config", str(fx / "bad.yaml")], "bad.yaml"),
    C("config-not-a-mapping", "train", lambda fx, work: ["--config", str(fx / "list.yaml")], "list.yaml"),
    C("config-unknown-key", "train", lambda fx, work: ["--config", str(fx / "unknown.yaml")], "nope"),
    C("data-root-missing", "train", T(lambda fx, work: f"data.root={work / 'nowhere'}"), "data.root",
      "not found", "nowhere"),
    C("data-root-a-file", "train", T(lambda fx, work: f"data.root={fx / 'notes.txt'}"), "data.root", "is a file"),
    C("data-root-without-images", "train", T(lambda fx, work: f"data.root={fx / 'empty_dir'}"), "data.root",
      "no images"),
    C("data-root-every-image-unreadable", "train", T(lambda fx, work: f"data.root={fx / 'broken_images'}"),
      "data.root", "none of its", "can be read", "give a complete"),
    C("data-root-one-image", "train", T(lambda fx, work: f"data.root={fx / 'images'}"), "at least 2"),
    C("run-dir-a-file", "train", T(lambda fx, work: f"run.dir={work / 'taken'}"), "run.dir", "taken",
      prepare=_file),
    C("run-dir-below-a-file", "train", T(lambda fx, work: f"run.dir={work / 'taken' / 'run'}"), "run.dir",
      "is a file", prepare=_file),
    C("checkpoints-dir-a-file", "train", T(), "run.dir", "checkpoints",
      prepare=lambda work: ((work / "run").mkdir(), _file(work / "run", "checkpoints"))),
    C("resume-missing", "train", T(lambda fx, work: f"train.resume={work / 'missing.pt'}"), "train.resume"),
    C("resume-text-file", "train", T(lambda fx, work: f"train.resume={fx / 'notes.txt'}"), "notes.txt",
      "not a readable"),
    C("resume-empty-file", "train", T(lambda fx, work: f"train.resume={fx / 'empty.pt'}"), "empty.pt", "empty"),
    C("resume-truncated", "train", T(lambda fx, work: f"train.resume={fx / 'truncated.pt'}"), "truncated.pt",
      "truncated"),
    C("resume-other-model", "train", T(lambda fx, work: f"train.resume={fx / 'tiny.pt'}"), "tiny.pt",
      "model settings differ"),
    C("resume-generator-only", "train", T("model.base_channels=4", "model.heads=2", "model.patch_size=3",
                                          lambda fx, work: f"train.resume={fx / 'tiny.pt'}"), "tiny.pt",
      "last.pt"),
    C("vgg16-missing", "train", T("loss.perceptual=1", lambda fx, work: f"loss.vgg16={work / 'vgg.pt'}"),
      "vgg.pt"),
    C("demo-cache-is-a-file", "train", lambda fx, work: [f"run.dir={work / 'run'}", "train.max_steps=1"],
      "MHTMA_CACHE", prepare=_file, env={"MHTMA_CACHE": "{work}/taken"}),
]


def I(*extra, image="photo.png", mask="mask.png", output="out"):
    """mhtma-inpaint argv with the tiny checkpoint, the shared photo and mask, ``--output`` in the case's folder."""
    def argv(fx, work):
        args = ["--checkpoint", str(fx / "tiny.pt"), "--image", str(fx / image), "--mask", str(fx / mask),
                "--output", str(work / output), "--device", "cpu"]
        return args + [e(fx, work) if callable(e) else e for e in extra]
    return argv


def _ckpt_swap(name):
    def argv(fx, work):
        args = I()(fx, work)
        args[1] = str(fx / name) if name else str(work / "missing.pt")
        return args
    return argv


def _sketch_model(sketch):
    """mhtma-inpaint argv with the sketch-guided tiny checkpoint and ``--sketch`` a shared file."""
    def argv(fx, work):
        args = I("--sketch", str(fx / sketch))(fx, work)
        args[1] = str(fx / "sketch.pt")
        return args
    return argv


INPAINT = [
    C("no-image-option", "inpaint", lambda fx, work: ["--checkpoint", str(fx / "tiny.pt"), "--mask", "m",
                                                      "--output", "o"], "--image"),
    C("checkpoint-missing", "inpaint", _ckpt_swap(None), "checkpoint not found", "missing.pt"),
    C("checkpoint-text-file", "inpaint", _ckpt_swap("notes.txt"), "notes.txt", "not a readable"),
    C("checkpoint-empty-file", "inpaint", _ckpt_swap("empty.pt"), "empty.pt", "empty"),
    C("checkpoint-truncated", "inpaint", _ckpt_swap("truncated.pt"), "truncated.pt", "truncated"),
    C("checkpoint-folder-without-model", "inpaint", _ckpt_swap("empty_dir"), "config.json",
      "runs/NAME/checkpoints/best.pt"),
    C("checkpoint-a-training-run-folder", "inpaint", _ckpt_swap("run"), "config.json", "run/checkpoints/best.pt"),
    C("image-missing", "inpaint", I(image="nope.png"), "--image", "nope.png"),
    C("mask-missing", "inpaint", I(mask="nope.png"), "--mask", "not found", "nope.png"),
    C("mask-a-folder", "inpaint", I(mask="masks"), "--mask", "folder"),
    C("image-folder-mask-file", "inpaint", I(image="images"), "--mask", "folder"),
    C("image-folder-mask-missing", "inpaint", I(image="images", mask="nope"), "--mask", "not found"),
    C("image-folder-without-images", "inpaint", I(image="empty_dir", mask="masks"), "no images"),
    C("sketch-missing", "inpaint", I("--sketch", lambda fx, work: str(work / "nope.png")), "--sketch",
      "not found"),
    C("sketch-for-a-plain-model", "inpaint", I("--sketch", lambda fx, work: str(fx / "mask.png")), "--sketch",
      "without sketches"),
    C("max-size-too-small", "inpaint", I("--max-size", "2"), "--max-size"),
    C("max-size-not-a-number", "inpaint", I("--max-size", "big"), "--max-size"),
    C("device-unknown", "inpaint", I("--device", "tpu"), "tpu"),
    C("precision-unknown", "inpaint", I("--precision", "fp8"), "--precision"),
    C("precision-fp16-on-cpu", "inpaint", I("--precision", "fp16"), "fp16"),
    C("threads-zero", "inpaint", I("--threads", "0"), "--threads"),
    C("output-an-existing-file", "inpaint", I(output="taken"), "--output", "taken", prepare=_file),
    C("output-below-a-file", "inpaint", I(output="taken/out"), "--output", "is a file", prepare=_file),
    C("output-file-below-a-file", "inpaint", I(output="taken/result.png"), "--output", "is a file",
      prepare=_file),
    C("output-unknown-suffix", "inpaint", I(output="result.xyz"), "--output", ".xyz", "end the name with /"),
    C("output-file-for-an-image-folder", "inpaint", I(image="images", mask="masks", output="result.png"),
      "--output", "folder"),
    C("unreadable-image", "inpaint", I(image="fake.png"), "cannot read image", "fake.png", "give a complete",
      status=1),
    C("empty-image", "inpaint", I(image="empty.png"), "empty.png", "the file is empty", "give a complete",
      status=1),
    C("truncated-image", "inpaint", I(image="cut.png"), "cut.png", "truncated", "give a complete", status=1),
    C("mask-size-mismatch", "inpaint", I(mask="small_mask.png"), "mask", "image's size", status=1),
    C("mask-size-mismatch-to-file", "inpaint", I(mask="small_mask.png", output="result.png"), "image's size",
      status=1),
    C("sketch-size-mismatch", "inpaint", _sketch_model("small_mask.png"), "sketch small_mask.png",
      "image's size", status=1),
    C("unreadable-sketch", "inpaint", _sketch_model("fake.png"), "cannot read sketch", "fake.png",
      "give a complete", status=1),
    C("unreadable-mask", "inpaint", I(mask="fake.png"), "cannot read mask", "fake.png", "give a complete",
      status=1),
]


def E(*extra, data="images", output="eval"):
    """mhtma-eval argv: the tiny checkpoint on the shared one-image folder, ``--output`` in the case's folder."""
    def argv(fx, work):
        args = ["--checkpoint", str(fx / "tiny.pt"), "--data", str(fx / data), "--output", str(work / output),
                "--size", "32", "--device", "cpu"]
        return args + [e(fx, work) if callable(e) else e for e in extra]
    return argv


EVAL = [
    C("data-missing", "eval", E(data="nope"), "--data", "not found"),
    C("data-a-file", "eval", E(data="notes.txt"), "--data", "is a file"),
    C("data-without-images", "eval", E(data="empty_dir"), "--data", "no images"),
    C("masks-missing", "eval", E("--masks", lambda fx, work: str(work / "nope")), "--masks", "not found"),
    C("masks-a-file", "eval", E("--masks", lambda fx, work: str(fx / "notes.txt")), "--masks", "is a file"),
    C("masks-and-protocol", "eval", E("--masks", lambda fx, work: str(fx / "masks"), "--mask-protocol", "box"),
      "--mask-protocol", "--masks"),
    C("protocol-unknown", "eval", E("--mask-protocol", "stars"), "--mask-protocol"),
    C("predictions-with-checkpoint", "eval", E("--predictions", lambda fx, work: str(fx / "images")),
      "--predictions"),
    C("size-zero", "eval", E("--size", "0"), "--size"),
    C("batch-size-zero", "eval", E("--batch-size", "0"), "--batch-size"),
    C("examples-negative", "eval", E("--examples", "-1"), "--examples"),
    C("mask-seed-negative", "eval", E("--mask-seed", "-1"), "--mask-seed", "≥ 0"),
    C("method-unknown", "eval", E("--method", "magic"), "--method"),
    C("model-without-checkpoint", "eval", lambda fx, work: E()(fx, work)[2:], "--checkpoint"),
    C("checkpoint-text-file", "eval", lambda fx, work: ["--checkpoint", str(fx / "notes.txt")] + E()(fx, work)[2:],
      "notes.txt", "not a readable"),
    C("checkpoint-empty-file", "eval", lambda fx, work: ["--checkpoint", str(fx / "empty.pt")] + E()(fx, work)[2:],
      "empty"),
    C("fid-weights-missing", "eval", E("--fid-weights", lambda fx, work: str(work / "inception.pt")),
      "inception.pt"),
    C("lpips-backbone-missing", "eval", E("--lpips-backbone", lambda fx, work: str(work / "alex.pt")), "alex.pt"),
    C("output-an-existing-file", "eval", E(output="taken"), "--output", "taken", prepare=_file),
    C("output-below-a-file", "eval", E(output="taken/eval"), "--output", "is a file", prepare=_file),
    C("device-unknown", "eval", E("--device", "tpu"), "tpu"),
    C("threads-zero", "eval", E("--threads", "0"), "--threads"),
    C("every-image-unreadable", "eval", E(data="unreadable_data"), "no image could be evaluated", "--data",
      status=1),
    C("every-mask-missing", "eval", E("--masks", lambda fx, work: str(fx / "masks"), data="two"),
      "no image could be evaluated", status=1),
]


def _frames(work: Path, count: int = 4) -> None:
    """A folder ``masks`` of someone's video frames named like mask files, and no manifest."""
    (work / "masks").mkdir()
    for i in range(count):
        _file(work / "masks", f"{i:05d}.png", f"frame {i}")


def _other_manifest(work: Path) -> None:
    """A folder ``masks`` whose manifest.json is another tool's."""
    (work / "masks").mkdir()
    _file(work / "masks", "manifest.json", '{"masks": [{"file": "00000.png"}]}')


def M(*extra, output="masks"):
    def argv(fx, work):
        args = ["--protocol", "box", "--size", "32", "--count", "2", "--output", str(work / output)]
        return args + list(extra)
    return argv


MASKS = [
    C("protocol-unknown", "masks", M("--protocol", "stars"), "--protocol", "stars"),
    C("protocol-missing", "masks", lambda fx, work: ["--count", "2", "--output", str(work / "m")], "--protocol"),
    C("size-zero", "masks", M("--size", "0"), "--size"),
    C("size-negative", "masks", M("--size", "-8"), "--size"),
    C("size-not-multiple-of-8", "masks", M("--size", "20"), "--size"),
    C("size-not-a-number", "masks", M("--size", "big"), "--size"),
    C("count-zero", "masks", M("--count", "0"), "--count"),
    C("count-not-a-number", "masks", M("--count", "many"), "--count"),
    C("seed-negative", "masks", M("--seed", "-1"), "--seed"),
    C("output-an-existing-file", "masks", M(output="taken"), "--output", "taken", prepare=_file),
    C("output-below-a-file", "masks", M(output="taken/masks"), "--output", "is a file", prepare=_file),
    C("output-holds-frames-named-like-masks", "masks", M(), "--output", "00000.png", "no mhtma-masks manifest",
      prepare=_frames),
    C("output-holds-another-manifest", "masks", M(), "--output", "manifest.json", "no mhtma-masks manifest",
      prepare=_other_manifest),
]


def X(*extra, output="model.onnx", checkpoint="tiny.pt"):
    def argv(fx, work):
        args = ["--checkpoint", str(fx / checkpoint), "--output", str(work / output)]
        return args + [e(fx, work) if callable(e) else e for e in extra]
    return argv


EXPORT = [
    C("tolerance-negative", "export", X("--tolerance", "-1"), "--tolerance"),
    C("tolerance-nan", "export", X("--tolerance", "nan"), "--tolerance"),
    C("tolerance-not-a-number", "export", X("--tolerance", "tiny"), "--tolerance"),
    C("output-a-folder", "export", X(output="dir"), "--output", "folder",
      prepare=lambda work: (work / "dir").mkdir()),
    C("output-below-a-file", "export", X(output="taken/model.onnx"), "--output", "is a file", prepare=_file),
    C("size-zero", "export", X("--size", "0"), "--size"),
    C("size-not-multiple-of-8", "export", X("--size", "30"), "--size"),
    C("image-without-mask", "export", X("--image", lambda fx, work: str(fx / "photo.png")), "--image", "--mask"),
    C("check-image-missing", "export", X("--image", lambda fx, work: str(work / "nope.png"), "--mask",
                                         lambda fx, work: str(fx / "mask.png")), "--image", "not found", "nope.png"),
    C("check-mask-missing", "export", X("--image", lambda fx, work: str(fx / "photo.png"), "--mask",
                                        lambda fx, work: str(work / "nope.png")), "--mask", "not found"),
    C("check-image-unreadable", "export", X("--image", lambda fx, work: str(fx / "fake.png"), "--mask",
                                            lambda fx, work: str(fx / "mask.png")), "fake.png", "give a complete"),
    C("checkpoint-missing", "export", X(checkpoint="nope.pt"), "nope.pt"),
    C("checkpoint-text-file", "export", X(checkpoint="notes.txt"), "notes.txt", "not a readable"),
    C("checkpoint-truncated", "export", X(checkpoint="truncated.pt"), "truncated"),
]


def _free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def U(*extra, checkpoint="tiny.pt"):
    """mhtma-ui argv on a free port (the default may be taken on a shared machine), then ``extra``."""
    def argv(fx, work):
        return ["--checkpoint", str(fx / checkpoint), "--device", "cpu", "--port", _free_port()] + list(extra)
    return argv


UI = [
    C("no-checkpoint", "ui", lambda fx, work: [], "--checkpoint"),
    C("checkpoint-truncated", "ui", U(checkpoint="truncated.pt"), "truncated.pt", "truncated"),
    C("checkpoint-missing", "ui", U(checkpoint="nope.pt"), "nope.pt"),
    C("checkpoint-text-file", "ui", U(checkpoint="notes.txt"), "notes.txt", "not a readable"),
    C("checkpoint-empty-file", "ui", U(checkpoint="empty.pt"), "empty"),
    C("port-zero", "ui", U("--port", "0"), "--port"),
    C("port-too-large", "ui", U("--port", "70000"), "--port"),
    C("port-not-a-number", "ui", U("--port", "http"), "--port"),
    C("host-unknown-name", "ui", U("--host", "no-such-host.invalid"), "--host", "no-such-host.invalid"),
    C("host-not-this-machine", "ui", U("--host", "192.0.2.1"), "192.0.2.1"),
    C("device-unknown", "ui", U("--device", "tpu"), "tpu"),
    C("precision-fp16-on-cpu", "ui", U("--precision", "fp16"), "fp16"),
    C("threads-zero", "ui", U("--threads", "0"), "--threads"),
]

READ_ONLY = [
    C("read-only-output", "inpaint", I(output="ro/out"), "--output", "not writable", prepare=_read_only,
      marks=(AS_USER,)),
    C("read-only-output-file", "inpaint", I(output="ro/result.png"), "--output", "not writable",
      prepare=_read_only, marks=(AS_USER,)),
    C("read-only-output", "eval", E(output="ro"), "--output", "not writable", prepare=_read_only,
      marks=(AS_USER,)),
    C("read-only-output", "masks", M(output="ro/masks"), "--output", "not writable", prepare=_read_only,
      marks=(AS_USER,)),
    C("read-only-output-folder", "export", X(output="ro/model.onnx"), "--output", "not writable",
      prepare=_read_only, marks=(AS_USER,)),
    C("read-only-output-file", "export", X(output="ro/old.onnx"), "--output", "read-only", prepare=_read_only,
      marks=(AS_USER,)),
    C("read-only-run-dir", "train", T(lambda fx, work: f"run.dir={work / 'ro'}"), "run.dir", "not writable",
      prepare=_read_only, marks=(AS_USER,)),
    C("read-only-demo-cache", "train", lambda fx, work: [f"run.dir={work / 'run'}", "train.max_steps=1"],
      "MHTMA_CACHE", prepare=_read_only, env={"MHTMA_CACHE": "{work}/ro/cache"}, marks=(AS_USER,)),
]

CASES = TRAIN + INPAINT + EVAL + MASKS + EXPORT + UI + READ_ONLY


@pytest.mark.parametrize("case", [pytest.param(c, id=f"{c.command}-{c.id}", marks=c.marks) for c in CASES])
def test_command_line_refuses_clearly(case: Case, fx, tmp_path, capsys, monkeypatch, one_thread):
    work = tmp_path / "work"
    work.mkdir()
    case.prepare(work)
    for name, value in (case.env or {}).items():
        monkeypatch.setenv(name, value.format(work=work))
    before = _tree(work)
    code, _, err = run_main(case.command, case.argv(fx, work), capsys)
    assert_clear_failure(code, err, case.status, case.fragments)
    assert _tree(work) == before, "the failed run left or changed files"


def _pinned(argv):
    """``argv`` with the checkpoint whose attention is pinned to backend='triton'."""
    return lambda fx, work: [str(fx / "triton.pt") if a == str(fx / "tiny.pt") else a for a in argv(fx, work)]


PINNED = [
    C("checkpoint-pinned-to-triton", "inpaint", _pinned(I()), "backend='triton'", "CUDA GPU", "model.backend"),
    C("checkpoint-pinned-to-triton", "eval", _pinned(E()), "backend='triton'", "CUDA GPU", "model.backend"),
    C("checkpoint-pinned-to-triton", "ui", _pinned(U()), "backend='triton'", "CUDA GPU", "model.backend"),
    C("backend-triton-without-a-gpu", "train", T("model.backend=triton"), "backend='triton'", "CUDA GPU",
      "model.backend=auto"),
    C("env-backend-triton-without-a-gpu", "inpaint", I(), "MHTMA_BACKEND=triton", "CUDA GPU", "unset",
      env={"MHTMA_BACKEND": "triton"}),
    C("env-backend-triton-without-a-gpu", "train", T(), "MHTMA_BACKEND=triton", "CUDA GPU", "unset",
      env={"MHTMA_BACKEND": "triton"}),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=f"{c.command}-{c.id}") for c in PINNED])
def test_backend_that_cannot_run_here_is_one_line(case: Case, fx, tmp_path, capsys, monkeypatch, one_thread):
    """A machine with neither a GPU nor Triton's interpreter (which the test session turns on without a GPU)."""
    if torch.cuda.is_available():
        pytest.skip("a GPU runs the triton backend")
    from mhtma_kernels.ops.triton import launcher
    monkeypatch.setattr(launcher, "interpreting", lambda: False)
    for name, value in (case.env or {}).items():
        monkeypatch.setenv(name, value)
    work = tmp_path / "work"
    work.mkdir()
    code, _, err = run_main(case.command, case.argv(fx, work), capsys)
    assert_clear_failure(code, err, case.status, case.fragments)
    assert _tree(work) == {}, "the failed run left files"


def test_export_of_a_pinned_checkpoint_runs_where_triton_cannot(fx, tmp_path, capsys, monkeypatch, one_thread):
    """mhtma-export exports the `torch` backend: a checkpoint pinned to triton is no obstacle."""
    pytest.importorskip("onnxruntime")
    from mhtma_kernels.ops.triton import launcher
    monkeypatch.setattr(launcher, "interpreting", lambda: False)
    code, _, err = run_main("export", X(checkpoint="triton.pt")(fx, tmp_path), capsys)
    assert code == 0, err
    assert "backend='triton'" in err and (tmp_path / "model.onnx").is_file()


def test_enough_cases():
    assert len(CASES) + len(API_CASES) >= 100


# ------------------------------------------------------------------------- what a run leaves behind
def test_masks_rerun_replaces_the_earlier_set(tmp_path, capsys):
    out = tmp_path / "m"
    assert masks.main(["--protocol", "box", "--size", "32", "--count", "5", "--output", str(out)]) == 0
    assert masks.main(["--protocol", "box", "--size", "32", "--count", "2", "--output", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png", "manifest.json"]
    assert [m["file"] for m in json.loads((out / "manifest.json").read_text())["masks"]] == ["00000.png",
                                                                                            "00001.png"]


def test_masks_leave_files_they_do_not_write_alone(tmp_path, capsys):
    out = tmp_path / "m"
    out.mkdir()
    _file(out, "00007.png", "frame 7")
    assert masks.main(["--protocol", "box", "--size", "32", "--count", "5", "--output", str(out)]) == 0
    assert masks.main(["--protocol", "box", "--size", "32", "--count", "2", "--output", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png", "00007.png", "manifest.json"]
    assert (out / "00007.png").read_text() == "frame 7"


def test_inpaint_output_file_name_writes_that_file(fx, tmp_path, capsys):
    target = tmp_path / "result.png"
    assert inpaint.main(I(output="result.png")(fx, tmp_path)) == 0
    assert target.is_file() and not target.is_dir()
    with Image.open(target) as result:
        assert result.size == (32, 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.png"]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_files_get_the_umask_mode(fx, tmp_path, capsys):
    """Checkpoints, safetensors, images, masks and metrics: 0666 less the umask (0644 under 022)."""
    before = os.umask(0o022)
    try:
        inpainter = Inpainter.load(fx / "tiny.pt", device="cpu")
        inpainter.save_pretrained(tmp_path / "pretrained")
        make_tiny_checkpoint(tmp_path / "ckpt.pt")
        assert inpaint.main(I(output="out")(fx, tmp_path)) == 0
        assert masks.main(["--protocol", "box", "--size", "32", "--count", "1", "--output",
                           str(tmp_path / "m")]) == 0
        assert evaluate.main(E(output="eval")(fx, tmp_path)) == 0
    finally:
        os.umask(before)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} >= {".pt", ".safetensors", ".json", ".png", ".md"}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: "0o644" for p in files}


def test_eval_rerun_leaves_nothing_stale(fx, tmp_path, capsys):
    out = tmp_path / "eval"
    assert evaluate.main(E("--save-outputs", output="eval")(fx, tmp_path)) == 0
    assert (out / "examples.png").is_file() and (out / "outputs" / "a.png").is_file()
    assert evaluate.main(E("--examples", "0", output="eval")(fx, tmp_path)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "metrics.md"]


def test_eval_results_that_cannot_be_written_are_one_line_exit_1(fx, tmp_path, capsys):
    """The whole evaluation runs, then metrics.json cannot be written (a folder holds its name)."""
    (tmp_path / "eval" / "metrics.json").mkdir(parents=True)
    before = _tree(tmp_path)
    code, _, err = run_main("eval", E("--examples", "0", output="eval")(fx, tmp_path), capsys)
    assert_clear_failure(code, err, 1, ("cannot write", "metrics.json"))
    assert _tree(tmp_path) == before


def test_train_failure_after_the_start_is_one_line_exit_1(fx, tmp_path, capsys, one_thread):
    """The run trains, then cannot write last.pt (a folder holds its name): a runtime failure, not usage."""
    (tmp_path / "run" / "checkpoints" / "last.pt").mkdir(parents=True)
    code, _, err = run_main("train", T()(fx, tmp_path), capsys)
    assert_clear_failure(code, err, 1, ("stopped at step", "last.pt"))


def test_training_log_has_plain_progress_lines(fx, tmp_path, capsys, one_thread):
    """Not a terminal: a few plain progress lines, no carriage-return updates."""
    argv = T("train.max_steps=3", "train.val_every=3", "model.base_channels=4", "model.heads=2")(fx, tmp_path)
    assert train.main(argv) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "mhtma-train: 3/3 step" in err


def test_training_warns_of_an_unreadable_image_in_one_plain_line(fx, tmp_path, capsys, one_thread):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("first.png", "second.png"):
        (data / name).write_bytes((fx / "two" / name).read_bytes())
    (data / "broken.png").write_text("not an image")
    argv = T("train.max_steps=2", "model.base_channels=4", "model.heads=2", "data.val_fraction=0.4",
             lambda fx, work: f"data.root={data}")(fx, tmp_path)
    assert train.main(argv) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "broken.png" in line]
    assert warned and all(line.startswith("mhtma-train: warning: skipping unreadable image") for line in warned)


# ------------------------------------------------------------------------------ the Inpainter API
def _inpainter(fx):
    return Inpainter.load(fx / "tiny.pt", device="cpu")


def _photo():
    return Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8))


def _hole(h=32, w=32):
    hole = np.zeros((h, w), np.uint8)
    hole[4:12, 4:12] = 255
    return Image.fromarray(hole)


API_CASES = [
    pytest.param(lambda fx, work: Inpainter.load(work / "missing.pt"), ValueError, "missing.pt",
                 id="load-missing"),
    pytest.param(lambda fx, work: Inpainter.load(fx / "notes.txt"), ValueError, "notes.txt",
                 id="load-text-file"),
    pytest.param(lambda fx, work: Inpainter.load(fx / "empty.pt"), ValueError, "empty", id="load-empty-file"),
    pytest.param(lambda fx, work: Inpainter.load(fx / "truncated.pt"), ValueError, "truncated",
                 id="load-truncated"),
    pytest.param(lambda fx, work: Inpainter.from_pretrained(fx / "empty_dir"), ValueError, "config.json",
                 id="pretrained-folder-empty"),
    pytest.param(lambda fx, work: Inpainter.load(fx / "tiny.pt", device="tpu"), ValueError, "tpu",
                 id="device-unknown"),
    pytest.param(lambda fx, work: Inpainter.load(fx / "tiny.pt", device="cpu", precision="fp16"), ValueError,
                 "fp16", id="fp16-on-cpu"),
    pytest.param(lambda fx, work: _inpainter(fx)(_photo(), _hole(16, 24)), ValueError, "mask",
                 id="mask-size-mismatch"),
    pytest.param(lambda fx, work: _inpainter(fx)("photo.png", _hole()), TypeError, "open_image(path)",
                 id="image-a-path"),
    pytest.param(lambda fx, work: _inpainter(fx)(_photo(), "mask.png"), TypeError,
                 "mask = mhtma_model.images.open_image", id="mask-a-path"),
    pytest.param(lambda fx, work: _inpainter(fx)(_photo(), None), TypeError,
                 "mask must be a PIL image or a numpy array", id="mask-none"),
    pytest.param(lambda fx, work: _inpainter(fx)(_photo(), np.full((32, 32), 0.5, np.float32)), ValueError,
                 "0 and 1", id="mask-float-array-not-0-1"),
    pytest.param(lambda fx, work: _inpainter(fx)(_photo(), np.zeros((32, 32, 2), np.uint8)), ValueError, "shape",
                 id="mask-two-channels"),
    pytest.param(lambda fx, work: _inpainter(fx)(np.zeros((32, 32, 5), np.uint8), _hole()), TypeError, "image",
                 id="image-five-channels"),
    pytest.param(lambda fx, work: _inpainter(fx).batch([_photo()], []), ValueError, "mask",
                 id="batch-lengths-differ"),
    pytest.param(lambda fx, work: _inpainter(fx).save_pretrained(fx / "notes.txt"), OutputError, "notes.txt",
                 id="save-pretrained-into-a-file"),
    pytest.param(lambda fx, work: Inpainter(_inpainter(fx).generator, device="cpu").save_pretrained(work / "x"),
                 ValueError, "config", id="save-pretrained-without-config"),
]


@pytest.mark.parametrize("call, error, fragment", API_CASES)
def test_inpainter_api_refuses_clearly(call, error, fragment, fx, tmp_path):
    before = _tree(tmp_path)
    with pytest.raises(error) as info:
        call(fx, tmp_path)
    message = str(info.value)
    assert fragment.lower() in message.lower() and len(message.splitlines()) == 1 and len(message) < 600, message
    assert _tree(tmp_path) == before


# --------------------------------------------------------------------------- real processes, real codes
@pytest.mark.parametrize("module, argv, status, fragment", [
    pytest.param("mhtma_model.inpaint", ["--checkpoint", "{fx}/tiny.pt", "--image", "{fx}/photo.png", "--mask",
                                         "{fx}/nope.png", "--output", "{work}/out"], 2, "--mask", id="inpaint-usage"),
    pytest.param("mhtma_model.inpaint", ["--checkpoint", "{fx}/tiny.pt", "--image", "{fx}/photo.png", "--mask",
                                         "{fx}/small_mask.png", "--output", "{work}/out", "--device", "cpu"], 1,
                 "image's size", id="inpaint-runtime"),
    pytest.param("mhtma_model.mask_set", ["--protocol", "box", "--size", "0", "--count", "1", "--output",
                                          "{work}/m"], 2, "--size", id="masks-usage"),
    pytest.param("mhtma_model.masks", ["--protocol", "box", "--count", "1", "--output", "{work}/m"], 1,
                 "the command is mhtma-masks", id="masks-library-as-a-command"),
])
def test_real_process_exit_status(module, argv, status, fragment, fx, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    args = [a.format(fx=fx, work=tmp_path) for a in argv]
    done = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                          timeout=300)
    assert_clear_failure(done.returncode, done.stderr, status, [fragment])
    assert list(tmp_path.iterdir()) == []


def test_mask_size_mismatch_is_reported_once(fx, tmp_path, capsys):
    code, _, err = run_main("inpaint", I(mask="small_mask.png")(fx, tmp_path), capsys)
    assert code == 1 and err.count("small_mask.png is 24x16") == 1, err
