"""`mhtma-inpaint`: fill the holes of your own images with a trained generator.

    mhtma-inpaint --checkpoint runs/x/checkpoints/best.pt --image photo.jpg --mask photo_mask.png --output out/
    mhtma-inpaint --checkpoint best.pt --image photos/ --mask masks/ --output out/ [--sketch sketches/]

This module only parses arguments and reports. The work is done by :class:`mhtma_model.Inpainter` (also
used by ``mhtma-ui`` and the export) and :mod:`mhtma_model.inference`, whose docstring states the rules for masks, any image size, large images, bit-identical known pixels and sketches.

Command-line rules
* **Outputs**: ``OUTPUT/<name>.png`` with the input's size, for input ``<name>.<any ext>``, in the input's
  mode, bit depth, EXIF and ICC profile where PNG holds them; a picture PNG cannot hold (CMYK, float,
  grey+alpha palette, ...) is converted, with one ``note:`` line per kind of conversion
  (:mod:`mhtma_model.image_modes`). With one ``--image`` file, ``--output`` may also name the file itself
  (``result.png``, ``result.tif``). ``--output`` is checked before any work; files are written atomically with
  the user's umask, and a run that writes nothing creates no folder. In folder
  mode images and masks (and sketches) are paired by their path relative to the folder without the
  extension (``photos/a/b.jpg`` ↔ ``masks/a/b.png`` → ``out/a/b.png``); a missing, mismatched (size),
  ambiguous (two files with one name) or unreadable pair is reported and skipped, the rest is still
  written. A sketch is optional per image; a mask or sketch without an image is reported.
* **Notices**: a mask with no hole (the image is written unchanged) or one that covers the whole image
  (nothing known to condition on) is legal; each gets one ``note:`` line on stderr.
* **Threads**: ``--threads N`` CPU threads (default :func:`mhtma_model.device.default_cpu_threads`:
  ``$OMP_NUM_THREADS``, else half the CPUs, at most 4); ``--device``, ``--precision`` and ``--compile`` as in
  every inference command (:mod:`mhtma_model.cli.options`).
* **Exit status**: 0 when every image was written, 1 when at least one pair failed, 2 for usage errors
  (bad arguments, missing or incompatible checkpoint, CUDA requested but absent, an image folder without
  images, an ``--output`` that is an existing file).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from PIL import Image

from .options import add_inference_options, apply_inference_options, command_parser
from ..image_modes import save_image
from ..input_files import mask_notice, open_inputs, pair_inputs
from ..inference import check_pinned_backend
from ..inpainter import Inpainter
from ..output_files import OutputError, check_output_file, check_output_folder
from ..progress import progress


def build_parser() -> argparse.ArgumentParser:
    p = command_parser("mhtma-inpaint", __doc__)
    p.add_argument("--image", required=True, help="an image file or a folder of images")
    p.add_argument("--mask", required=True, help="a mask file or a folder of masks (pixel > 127 = hole)")
    p.add_argument("--output", required=True,
                   help="folder for the inpainted PNGs; with one --image file, also a file name (result.png)")
    p.add_argument("--sketch", default=None, help="optional sketch file or folder (sketch-guided models)")
    p.add_argument("--max-size", type=int, default=None,
                   help="longest side the network sees; larger inputs use the window/resize strategy "
                        "(default: the checkpoint's training size, data.size)")
    add_inference_options(p)
    return p


def _setup(args, parser: argparse.ArgumentParser) -> tuple[list, list, Inpainter]:
    """Check the arguments, pair the inputs and load the checkpoint -> (pairs, problems, inpainter);
    every usage error -> parser.error (one line, exit 2)."""
    if args.max_size is not None and args.max_size < 8:
        parser.error(f"--max-size must be at least 8, got {args.max_size}")
    try:
        device = apply_inference_options(args)
        pairs, problems = pair_inputs(Path(args.image), Path(args.mask),
                                      Path(args.sketch) if args.sketch else None)
        inpainter = Inpainter.load(args.checkpoint, device, args.precision, args.compile, args.max_size)
        check_pinned_backend(inpainter.generator, inpainter.device, inpainter.precision)
    except ValueError as exc:
        parser.error(str(exc))
    if args.sketch and not inpainter.uses_sketch:
        parser.error(f"--sketch given but {args.checkpoint} was trained without sketches (model.sketch=false)")
    if inpainter.uses_sketch and not args.sketch:
        print("note: this is a sketch-guided model and no --sketch was given; running without guidance",
              file=sys.stderr)
    return pairs, problems, inpainter


def output_targets(args, parser: argparse.ArgumentParser) -> Callable[[str], Path]:
    """Check ``--output`` before any work (nothing is created) -> where the result of input ``key`` goes:
    ``--output`` itself when it names an image file (one ``--image`` file), else ``OUTPUT/<key>.png``."""
    output = Path(args.output).expanduser()
    spelled_as_folder = args.output.endswith(("/", os.sep)) or output.is_dir()
    as_file = output.suffix.lower() in Image.registered_extensions() and not spelled_as_folder
    try:
        if output.suffix and not as_file and not spelled_as_folder and Path(args.image).is_file():
            raise OutputError(f"--output {output}: {output.suffix} is not an image format Pillow writes; for one "
                              f"result file use .png, .tif, .jpg, .webp or .bmp, for a folder end the name "
                              f"with / ({output}/)")
        if as_file and Path(args.image).is_dir():
            raise OutputError(f"--output {output} names a file, but --image is a folder; give a folder for "
                              f"the results")
        if as_file:
            check_output_file(output)
            return lambda key: output
        check_output_folder(output)
    except OutputError as exc:
        parser.error(str(exc))
    return lambda key: output / f"{key}.png"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    target_of = output_targets(args, parser)
    pairs, problems, inpainter = _setup(args, parser)
    out_dir = Path(args.output)

    written, conversions = 0, set()
    bar = progress(pairs, desc="inpainting", unit="img", disable=len(pairs) < 2)
    for key, image_path, mask_path, sketch_path in bar:
        try:
            image, mask, sketch = open_inputs(image_path, mask_path, sketch_path)
            notice = mask_notice(mask)
            if notice:
                bar.write(f"note: {key}: {notice}", file=sys.stderr)
            result = inpainter(image, mask, sketch)
            converted = save_image(result, target_of(key))
            if converted and converted not in conversions:  # one line per kind of conversion
                conversions.add(converted)
                bar.write(f"note: {key}: {converted}", file=sys.stderr)
            written += 1
        except (OSError, ValueError) as exc:  # reported once, in the list below
            problems.append((key, str(exc)))
    print(f"wrote {written} image(s) to {out_dir}")
    if problems:
        print(f"{len(problems)} problem(s):", file=sys.stderr)
        for key, reason in problems:
            print(f"  {key}: {reason}", file=sys.stderr)
        return 1
    return 0

if __name__ == "__main__":
    sys.exit(main())
