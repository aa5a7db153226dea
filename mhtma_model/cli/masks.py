"""`mhtma-masks`: write a reproducible set of generated hole masks as PNG files.

    mhtma-masks --protocol lama-thick --size 256 --count 2000 --seed 0 --output masks/thick_256
    python -m mhtma_model.mask_set --protocol box --size 512 --count 100 --output masks/box_512

Mask ``i`` is :func:`mhtma_model.masks.seeded_mask` ``(protocol, size, seed, i)``, the mask that
``mhtma-eval --mask-protocol PROTOCOL --mask-seed SEED`` gives image ``i`` of its sorted list, written as
``OUTPUT/<i, zero-padded>.png`` (8-bit gray, hole = 255, known = 0; the same arguments write
byte-identical files on any machine). ``OUTPUT/manifest.json`` records the arguments and the hole ratio
of every file, and the command prints the hole-ratio histogram by bucket (:data:`mhtma_model.metrics.BUCKETS`).
Protocols and their rules: :mod:`mhtma_model.masks`.

A rerun replaces the earlier set (the files its manifest lists); an ``--output`` folder holding other files
this set would overwrite is refused. Exit status 0 on success, 2 for a bad argument (one line on stderr).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from ..masks import MASK_PROTOCOLS, hole_ratio, seeded_mask
from ..image_modes import save_image
from ..metrics import BUCKETS, bucket_label
from ..output_files import OutputError, check_output_folder, remove_stale, write_json_atomic
from ..progress import progress

MANIFEST = "manifest.json"


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr (exit status 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def check_mask_size(size: int) -> Optional[str]:
    """None for a usable mask side, else the reason (at least 16, a multiple of 8)."""
    if size < 16 or size % 8:
        return f"--size must be a multiple of 8 and at least 16 (256 and 512 are LaMa's sizes), got {size}"
    return None


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="mhtma-masks", description=__doc__.split("\n\n")[0],
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", required=True, metavar="NAME",
                   help=f"mask protocol: {', '.join(MASK_PROTOCOLS)}")
    p.add_argument("--size", type=int, default=256, help="mask side in px, a multiple of 8 (default 256)")
    p.add_argument("--count", type=int, required=True, help="number of masks (at least 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the set (default 0)")
    p.add_argument("--output", required=True, help="folder for the PNG files and manifest.json")
    return p


def _check(args, parser) -> None:
    if args.protocol not in MASK_PROTOCOLS:
        parser.error(f"unknown --protocol {args.protocol!r}; choose one of {', '.join(MASK_PROTOCOLS)}")
    problem = check_mask_size(args.size)
    if problem:
        parser.error(problem)
    if args.count < 1:
        parser.error(f"--count must be at least 1, got {args.count}")
    if args.seed < 0:
        parser.error(f"--seed must be ≥ 0, got {args.seed}")
    try:
        check_output_folder(args.output)
    except OutputError as exc:
        parser.error(str(exc))
    foreign = foreign_files(Path(args.output).expanduser(), args.count)
    if foreign:
        parser.error(f"--output {args.output} holds {len(foreign)} file(s) this run would overwrite "
                     f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}) that no mhtma-masks "
                     f"manifest lists; choose an empty folder")


def histogram(ratios: Sequence[float]) -> list[tuple[str, int]]:
    """(bucket label, count) for every bucket of :data:`BUCKETS` (">0.6" only when used)."""
    counts = {label: 0 for label, _, _ in BUCKETS}
    for ratio in ratios:
        counts[bucket_label(ratio)] += 1
    return [(label, n) for label, n in counts.items() if label != ">0.6" or n]


def histogram_lines(ratios: Sequence[float], width: int = 40) -> list[str]:
    """The printed histogram: one line per bucket with its count, share and a bar."""
    rows = histogram(ratios)
    top = max(n for _, n in rows) or 1
    return [f"  {label:>7}  {n:6d}  {100 * n / len(ratios):5.1f} %  " + "#" * round(width * n / top)
            for label, n in rows]


def owned_files(output: Path) -> set[str]:
    """The files of an earlier set in ``output``: those a manifest of ``mhtma-masks`` lists (none without one)."""
    try:
        manifest = json.loads((output / MANIFEST).read_text(encoding="utf-8"))
        if not {"rule", "protocol"} <= manifest.keys():
            return set()
        names = {entry["file"] for entry in manifest["masks"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # no manifest, or not one of ours
        return set()
    return {name for name in names if isinstance(name, str) and "/" not in name and "\\" not in name}


def mask_names(count: int) -> list[str]:
    """The file names of a set of ``count`` masks, in order."""
    digits = max(5, len(str(count - 1)))
    return [f"{i:0{digits}d}.png" for i in range(count)]


def foreign_files(output: Path, count: int) -> list[str]:
    """The files in ``output`` a set of ``count`` masks would overwrite that are not an earlier set's."""
    if not output.is_dir():
        return []
    ours = owned_files(output)
    if (output / MANIFEST).exists() and not ours:
        return [MANIFEST] + [n for n in mask_names(count) if (output / n).exists()]
    return [n for n in mask_names(count) if (output / n).exists() and n not in ours]


def write_mask_set(protocol: str, size: int, count: int, seed: int, output: Path) -> list[float]:
    """Write the set (module docstring) -> the hole ratio of every mask, in file order. An earlier set in
    ``output`` (the files its manifest lists) is replaced: its masks that this set does not write are removed;
    other files are left alone (the command line refuses a folder whose files this set would overwrite)."""
    earlier = owned_files(output)
    ratios, files = [], []
    names = mask_names(count)
    for i in progress(range(count), desc=f"masks ({protocol}, {size} px)", unit="mask"):
        mask = seeded_mask(protocol, size, seed, i) > 0.5
        name = names[i]
        save_image(Image.fromarray(mask.astype(np.uint8) * 255, mode="L"), output / name, "PNG")
        ratios.append(hole_ratio(mask))
        files.append({"file": name, "hole_ratio": ratios[-1]})
    manifest = {"protocol": protocol, "size": size, "count": count, "seed": seed,
                "rule": "mask i = mhtma_model.masks.seeded_mask(protocol, size, seed, i); hole = 255",
                "histogram": dict(histogram(ratios)), "masks": files}
    remove_stale(output, sorted(earlier - {f["file"] for f in files}))
    write_json_atomic(output / MANIFEST, manifest, indent=1)
    return ratios


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(args, parser)
    out = Path(args.output).expanduser()
    ratios = write_mask_set(args.protocol, args.size, args.count, args.seed, out)
    print(f"{args.count} {args.protocol} masks ({args.size}×{args.size}, seed {args.seed}) -> {out}; "
          f"hole ratio mean {np.mean(ratios):.3f}, min {min(ratios):.3f}, max {max(ratios):.3f}")
    print("\n".join(histogram_lines(ratios)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
