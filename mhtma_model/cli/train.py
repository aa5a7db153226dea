"""`mhtma-train`: the command line of :mod:`mhtma_model.training` (``python -m mhtma_model.train`` works too).

    mhtma-train [--config FILE.yaml | NAME] [section.key=value ...]

Exit status 0 on success, 2 on a bad config or argument (one line, before any work), 1 when the run fails
once started (a file it cannot write or read; one line), 128 + the signal number after SIGINT/SIGTERM
(``last.pt`` written first).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from ..checkpoint import CheckpointError
from ..output_files import OutputError
from ..config import ConfigError, load_config, packaged_config_names
from ..data import UnreadableImageWarning
from ..precision import PrecisionError
from ..samples import SAMPLE_COLUMNS
from ..training import TrainingFailed, TrainingInterrupted, train


def _parser() -> argparse.ArgumentParser:
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
    """CLI entry point (``mhtma-train``); exit status as the module docstring says."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        parser.error(str(exc))
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning(warnings.showwarning)
            summary = train(cfg)
    except (FileNotFoundError, CheckpointError, ConfigError, PrecisionError, OutputError) as exc:
        print(f"mhtma-train: error: {exc}", file=sys.stderr)
        return 2
    except TrainingFailed as exc:
        print(f"mhtma-train: error: {exc}", file=sys.stderr)
        return 1
    except TrainingInterrupted as exc:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"mhtma-train: {exc}", file=sys.stderr, flush=True)
        return 128 + exc.signum
    if summary["rank"] == 0:
        print(json.dumps({k: v for k, v in summary.items() if k != "losses"}, indent=2))
        print(closing_lines(summary), file=sys.stderr)
    return 0


def _show_warning(show):
    """``show`` (warnings.showwarning) with an unreadable training image as one plain line, not Python's
    file:line and source line."""
    def one_line(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, UnreadableImageWarning):
            print(f"mhtma-train: warning: {message}", file=file or sys.stderr, flush=True)
        else:
            show(message, category, filename, lineno, file, line)
    return one_line


def closing_lines(summary: dict) -> str:
    """What a finished run tells its user: why it stopped, where checkpoints, samples and TensorBoard logs
    are, and the commands to run next."""
    run_dir, best = Path(summary["run_dir"]), summary["best_checkpoint"]
    why = "stopped early (no validation improvement)" if summary["stopped_early"] else "finished"
    best_val = summary["best_val_l1"]
    head = f"mhtma-train: {why} at step {summary['step']}" + (
        f"; best validation L1 {best_val:.4f} at step {summary['best_step']}" if best_val is not None else "")
    return "\n".join([
        head,
        f"  checkpoints  {best} (lowest validation L1); {summary['last_checkpoint']} (to resume or extend)",
        f"  samples      {run_dir / 'samples'}/step_*.png (columns: {' | '.join(SAMPLE_COLUMNS)})",
        f"  TensorBoard  tensorboard --logdir {run_dir / 'tb'}",
        f"  next         mhtma-inpaint --checkpoint {best} --image photo.png --mask hole.png --output out/",
        f"  evaluate     mhtma-eval --checkpoint {best} --data YOUR_TEST_IMAGES/ --output eval/",
    ])


if __name__ == "__main__":
    sys.exit(main())
