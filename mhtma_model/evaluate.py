"""`mhtma-eval`: score a generator (or a classical method) on a folder of images, overall and per hole ratio.

    mhtma-eval --checkpoint runs/x/checkpoints/best.pt --data photos/ --output eval/ [--mask-seed 0]
    mhtma-eval --checkpoint best.pt --data photos/ --masks masks/ --output eval/ --fid-weights inception.pt
    mhtma-eval --method telea --data photos/ --output eval-telea/          # no checkpoint needed

Protocol
* Images (``--data``, searched recursively) are resized so the shorter side is ``--size`` (antialiased
  bicubic) and centre-cropped to ``size × size``.
* Masks: with ``--masks DIR`` each image gets the mask with the same path relative to the folder, without
  extension (``photos/a/b.jpg`` ↔ ``masks/a/b.png``); an image without a readable mask is reported and
  skipped, as is any image whose mask has no hole pixels after resizing (it would only inflate the
  means). A mask with the original image's size goes through the same resize + centre crop (nearest);
  any other mask is resized to ``size × size`` (nearest). A pixel is a hole by the rules of
  :func:`mhtma_model.images.mask_from_image` (> 127; alpha for transparent layers). Without ``--masks``
  masks are generated: image number ``i`` of the sorted list gets
  ``free_form_mask(size, size, numpy.random.default_rng([mask_seed, i]))`` — the same seed gives the same
  masks on any machine, for any batch size and method.
* The output is composited in 8 bits (prediction rounded, known pixels copied) and all metrics are
  computed on that composited image against the resized ground truth (MAE %, PSNR, SSIM: see
  :mod:`mhtma_model.metrics`). Sketch-guided models get the sketch of the ground truth
  (:func:`mhtma_model.sketch.make_sketch`, as in training).
* FID (:mod:`mhtma_model.fid`) between the composited outputs and the ground truths, overall and per
  bucket with ≥ 2 images (FID of small sets is strongly biased upwards: compare buckets only with
  equal counts). Skipped with one plain line on stderr when no Inception weights are given.
* Rows: overall and one per hole-ratio bucket 0–0.1, …, 0.5–0.6 (paper Table IV) plus ">0.6" when any
  image falls there, so the bucket counts add up to the number of evaluated images.

Writes ``OUTPUT/metrics.json`` (settings, rows, per-image values, skipped images), ``OUTPUT/metrics.md``
(the table) and ``OUTPUT/examples.png`` (rows: input with the hole in white | output | ground truth).
Exit status 0 on success (even with skipped images, which are listed), 1 when no image could be
evaluated, 2 for usage errors (bad arguments, missing/incompatible checkpoint or Inception file, OpenCV
missing for telea/navier-stokes, CUDA requested but absent).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from tqdm import tqdm

from . import fid as fidmod
from . import metrics as M
from .classical import CLASSICAL_METHODS, OPENCV_METHODS, classical_inpaint, require_opencv
from .cli_options import add_inference_options
from .device import resolve_device, set_cpu_threads
from .images import files_by_key, list_images, load_mask, load_rgb, no_images_found, pair_key
from .masks import free_form_mask
from .predict import fill_holes, generator_uses_sketch, open_generator, prepare_generator
from .sketch import make_sketch

METHODS = ("model",) + CLASSICAL_METHODS
EXAMPLE_ROWS = 8


def resize_center_crop(image: Image.Image, size: int, resample=Image.BICUBIC) -> Image.Image:
    """Scale so the shorter side is ``size`` (antialiased), then crop the central ``size × size``."""
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), resample)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def load_user_mask(path: Path, original_size: tuple[int, int], size: int) -> np.ndarray:
    """A user mask for an image of ``original_size`` (W, H) -> bool [size, size] (see the module docstring)."""
    hole = Image.fromarray(load_mask(path).astype(np.uint8) * 255)
    if hole.size == original_size:
        hole = resize_center_crop(hole, size, Image.NEAREST)
    else:
        hole = hole.resize((size, size), Image.NEAREST)
    return np.asarray(hole) > 127


def generated_mask(size: int, seed: int, index: int) -> np.ndarray:
    """Mask of image ``index`` for ``--mask-seed seed`` -> bool [size, size]."""
    return np.asarray(free_form_mask(size, size, np.random.default_rng([seed, index]))) > 0.5


def _grid(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], gap: int = 4) -> Image.Image:
    """rows of (truth uint8 [S,S,3], hole bool [S,S], output uint8 [S,S,3]) -> PNG grid input | output | truth."""
    size = rows[0][0].shape[0]
    canvas = np.full((len(rows) * (size + gap) - gap, 3 * (size + gap) - gap, 3), 255, np.uint8)
    for r, (truth, hole, output) in enumerate(rows):
        shown = truth.copy()
        shown[hole] = 255
        y = r * (size + gap)
        for c, tile in enumerate((shown, output, truth)):
            x = c * (size + gap)
            canvas[y:y + size, x:x + size] = tile
    return Image.fromarray(canvas)


def _fmt(value, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(result: dict) -> str:
    """The metrics.md text for a result dict as written to metrics.json."""
    has_fid = result.get("fid_weights") is not None
    head = "| hole ratio | images | MAE % | PSNR (dB) | SSIM |" + (" FID |" if has_fid else "")
    sep = "|---|---:|---:|---:|---:|" + ("---:|" if has_fid else "")
    lines = [f"# mhtma-eval: {result['method']}", "",
             f"- data: `{result['data']}` ({result['images']} images, {result['size']}×{result['size']})",
             f"- masks: {result['mask_source']}",
             f"- checkpoint: `{result['checkpoint']}`" if result.get("checkpoint") else "- checkpoint: none",
             f"- FID: {result['fid_note']}", "", head, sep]
    for row in [result["overall"]] + result["buckets"]:
        cells = [row["bucket"], str(row["count"]), _fmt(row["mae_percent"], 3), _fmt(row["psnr"], 2),
                 _fmt(row["ssim"], 4)]
        if has_fid:
            cells.append(_fmt(row.get("fid"), 3))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"PSNR of identical images is capped at {M.PSNR_CAP_DB:g} dB. Metrics are computed on the "
              "8-bit composited output. FID per bucket only with ≥ 2 images (biased for small sets)."]
    if result["skipped"]:
        lines += ["", f"Skipped {len(result['skipped'])} image(s):", ""]
        lines += [f"- `{s['name']}`: {s['reason']}" for s in result["skipped"]]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mhtma-eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="generator checkpoint (required for --method model)")
    p.add_argument("--data", required=True, help="folder of ground-truth images (searched recursively)")
    p.add_argument("--output", required=True, help="folder for metrics.json, metrics.md, examples.png")
    p.add_argument("--masks", default=None, help="folder of masks paired by file name (default: generated masks)")
    p.add_argument("--mask-seed", type=int, default=0, help="seed of the generated masks (default 0)")
    p.add_argument("--size", type=int, default=256, help="evaluation resolution (default 256)")
    p.add_argument("--fid-weights", default=None,
                   help="Inception-v3 state dict for FID (default: $MHTMA_INCEPTION; none -> FID skipped)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--method", choices=METHODS, default="model", help="model (default) or a classical method")
    p.add_argument("--examples", type=int, default=EXAMPLE_ROWS, help="rows in examples.png (default 8; 0: none)")
    add_inference_options(p)
    return p


@dataclass
class Evaluation:
    """What the image loop collects: per-image metrics, skipped images, example rows and FID features."""
    records: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    examples: list = field(default_factory=list)
    feats_out: list = field(default_factory=list)
    feats_gt: list = field(default_factory=list)


@dataclass
class Setup:
    """Everything :func:`main` resolved from the arguments before the image loop."""
    args: argparse.Namespace
    device: torch.device
    data_root: Path
    mask_root: Optional[Path]
    fid_path: Optional[Path]
    generator: object = None
    uses_sketch: bool = False
    extractor: object = None
    fid_note: str = ""


def _check_args(args, parser) -> Setup:
    """Validate the arguments (parser.error on a usage error) -> a :class:`Setup` without models."""
    if args.size < 16:
        parser.error(f"--size must be at least 16, got {args.size}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.examples < 0:
        parser.error(f"--examples must be ≥ 0, got {args.examples}")
    try:
        device = resolve_device(args.device)
        set_cpu_threads(args.threads)
    except ValueError as exc:
        parser.error(str(exc))
    data_root = Path(args.data)
    if not data_root.is_dir():
        parser.error(f"--data folder not found: {data_root}")
    mask_root = Path(args.masks) if args.masks else None
    if mask_root is not None and not mask_root.is_dir():
        parser.error(f"--masks folder not found: {mask_root}")
    if mask_root is not None and not list_images(mask_root):
        parser.error(no_images_found(mask_root, "--masks folder"))
    if args.method in OPENCV_METHODS:
        try:
            require_opencv(args.method)
        except ImportError as exc:
            parser.error(str(exc))
    try:
        fid_path = fidmod.resolve_inception_path(args.fid_weights)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    return Setup(args, device, data_root, mask_root, fid_path)


def _load_models(setup: Setup, parser) -> None:
    """The generator (``--method model``) and the FID feature extractor (when weights are given)."""
    args = setup.args
    if args.method == "model":
        if not args.checkpoint:
            parser.error("--checkpoint is required for --method model (classical methods need none)")
        try:
            setup.generator, _config = open_generator(args.checkpoint)
        except ValueError as exc:
            parser.error(str(exc))
        try:
            prepare_generator(setup.generator, setup.device, args.precision, args.compile)
        except ValueError as exc:
            parser.error(str(exc))
        setup.uses_sketch = generator_uses_sketch(setup.generator)
    elif args.checkpoint:
        print(f"note: --checkpoint is not used by --method {args.method}", file=sys.stderr)
    if setup.fid_path is None:
        fidmod.note_fid_skipped()
        setup.fid_note = "skipped (no Inception-v3 weights given)"
        return
    try:
        setup.extractor = fidmod.InceptionFeatures(setup.fid_path).to(setup.device)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    setup.fid_note = f"Inception-v3 pool features ({setup.extractor.variant} weights: {setup.fid_path})"


def _load_case(setup: Setup, index: int, path: Path, mask_paths: dict) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth uint8 [S, S, 3] and hole bool [S, S] of image ``index``; OSError/ValueError -> skipped."""
    args, size = setup.args, setup.args.size
    key = pair_key(path, setup.data_root)
    image = load_rgb(path)
    truth = np.asarray(resize_center_crop(image, size))
    if setup.mask_root is None:
        hole = generated_mask(size, args.mask_seed, index)
    else:
        candidates = mask_paths.get(key, [])
        if len(candidates) != 1:
            raise ValueError(f"no mask named {key}.* in {setup.mask_root}" if not candidates else
                             "several masks share this name: " + ", ".join(p.name for p in candidates))
        hole = load_user_mask(candidates[0], image.size, size)
    if not hole.any():
        raise ValueError("the mask has no hole pixels at this size (nothing to inpaint)")
    if hole.all() and args.method == "biharmonic":
        raise ValueError("the mask covers the whole image; biharmonic inpainting needs known pixels")
    return truth, hole


def _score_batch(setup: Setup, batch: list[tuple[str, np.ndarray, np.ndarray]], ev: Evaluation) -> None:
    """Inpaint one batch, compute its metrics (and FID features), keep example rows."""
    truth = np.stack([b[1] for b in batch])
    holes = np.stack([b[2] for b in batch])
    if setup.generator is not None:
        sketches = np.stack([make_sketch(t) for t in truth]) if setup.uses_sketch else None
        outputs = fill_holes(setup.generator, truth, holes, sketches, setup.device, setup.args.precision)
    else:
        outputs = np.stack([classical_inpaint(t, h, setup.args.method) for t, h in zip(truth, holes)])
    values = M.image_metrics(outputs, truth)
    for i, (key, _t, hole) in enumerate(batch):
        ev.records.append({"name": key, "hole_ratio": float(hole.mean()),
                           **{k: float(v[i]) for k, v in values.items()}})
    if setup.extractor is not None:
        to_t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).to(setup.device, torch.float32) / 255.0  # noqa: E731
        ev.feats_out.append(setup.extractor(to_t(outputs)).double().cpu())
        ev.feats_gt.append(setup.extractor(to_t(truth)).double().cpu())
    for i in range(min(len(batch), setup.args.examples - len(ev.examples))):
        ev.examples.append((truth[i], holes[i], outputs[i]))


def _evaluate(setup: Setup, paths: list[Path]) -> Evaluation:
    """Every image in batches of ``--batch-size``; unreadable or unusable images are listed as skipped."""
    ev = Evaluation()
    mask_paths = files_by_key(setup.mask_root) if setup.mask_root is not None else {}
    batch: list[tuple[str, np.ndarray, np.ndarray]] = []
    with tqdm(total=len(paths), desc=f"evaluating ({setup.args.method})", unit="img") as bar:
        for index, path in enumerate(paths):
            key = pair_key(path, setup.data_root)
            try:
                truth, hole = _load_case(setup, index, path, mask_paths)
            except (OSError, ValueError) as exc:
                ev.skipped.append({"name": key, "reason": str(exc)})
                tqdm.write(f"skipped {key}: {exc}", file=sys.stderr)
                bar.update(1)
                continue
            batch.append((key, truth, hole))
            if len(batch) == setup.args.batch_size:
                _score_batch(setup, batch, ev)
                bar.update(len(batch))
                batch = []
        if batch:
            _score_batch(setup, batch, ev)
            bar.update(len(batch))
    return ev


def _result(setup: Setup, ev: Evaluation) -> dict:
    """The metrics.json content: settings, overall and per-bucket rows, skipped and per-image values."""
    args, mask_root = setup.args, setup.mask_root
    fid_fn = None
    if setup.extractor is not None:
        all_out, all_gt = torch.cat(ev.feats_out).numpy(), torch.cat(ev.feats_gt).numpy()
        fid_fn = lambda idx: fidmod.fid_from_features(all_out[idx], all_gt[idx])  # noqa: E731
    summary = M.summarise(ev.records, fid_fn=fid_fn)
    if fid_fn is not None and len(ev.records) < 2:
        print("note: FID needs at least 2 images; not reported", file=sys.stderr)
    return {
        "method": args.method,
        "checkpoint": str(args.checkpoint) if args.method == "model" else None,
        "data": str(setup.data_root),
        "size": args.size,
        "mask_source": f"folder {mask_root}" if mask_root else f"generated, free_form_mask, seed {args.mask_seed}",
        "mask_seed": None if mask_root else args.mask_seed,
        "device": str(setup.device),
        "precision": args.precision if args.method == "model" else None,
        "fid_weights": str(setup.fid_path) if setup.fid_path else None,
        "fid_note": setup.fid_note,
        "psnr_cap_db": M.PSNR_CAP_DB,
        "images": len(ev.records),
        "overall": summary["overall"],
        "buckets": summary["buckets"],
        "skipped": ev.skipped,
        "per_image": ev.records,
    }


def _write(out_dir: Path, result: dict, examples: list) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out_dir / "metrics.md").write_text(markdown_table(result), encoding="utf-8")
    if examples:
        _grid(examples).save(out_dir / "examples.png")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    setup = _check_args(parser.parse_args(argv), parser)
    paths = list_images(setup.data_root)
    if not paths:
        parser.error(no_images_found(setup.data_root, "--data folder"))
    _load_models(setup, parser)
    ev = _evaluate(setup, paths)
    if not ev.records:
        print(f"error: no image could be evaluated ({len(ev.skipped)} skipped)", file=sys.stderr)
        return 1
    result = _result(setup, ev)
    out_dir = Path(setup.args.output)
    _write(out_dir, result, ev.examples)
    overall, skipped = result["overall"], ev.skipped
    print(f"{setup.args.method}: {overall['count']} images  MAE {overall['mae_percent']:.3f} %  PSNR "
          f"{overall['psnr']:.2f} dB  SSIM {overall['ssim']:.4f}"
          + (f"  FID {overall['fid']:.3f}" if overall.get("fid") is not None else "")
          + (f"  ({len(skipped)} skipped)" if skipped else "") + f"  -> {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
