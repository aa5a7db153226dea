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
  :func:`mhtma_model.masks.mask_from_image` (> 127; alpha for transparent layers). Without ``--masks``
  masks are generated: image number ``i`` of the sorted list gets
  ``free_form_mask(size, size, numpy.random.default_rng([mask_seed, i]))`` — the same seed gives the same
  masks on any machine, for any batch size and method.
* The output is composited in 8 bits (prediction rounded, known pixels copied) and all metrics are
  computed on that composited image against the resized ground truth (MAE %, PSNR, SSIM: see
  :mod:`mhtma_model.metrics`). Sketch-guided models get the sketch of the ground truth
  (:func:`mhtma_model.sketch.make_sketch`, as in training).
* FID (:mod:`mhtma_model.fid`) between the composited outputs and the ground truths, overall and per
  bucket with ≥ 2 images (FID of small sets is strongly biased upwards: compare buckets only with
  equal counts). Skipped with one warning when no Inception weights are given.
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
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from . import metrics as M
from .classical import CLASSICAL_METHODS, OPENCV_METHODS, classical_inpaint, require_opencv
from .inpaint import (files_by_key, generator_uses_sketch, load_generator_or_exit, pair_key, predict_batch,
                      resolve_device)
from .masks import free_form_mask, load_mask

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
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--examples", type=int, default=EXAMPLE_ROWS, help="rows in examples.png (default 8; 0: none)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from tqdm import tqdm

    from . import fid as fidmod

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.size < 16:
        parser.error(f"--size must be at least 16, got {args.size}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.examples < 0:
        parser.error(f"--examples must be ≥ 0, got {args.examples}")
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        parser.error(str(exc))
    data_root = Path(args.data)
    if not data_root.is_dir():
        parser.error(f"--data folder not found: {data_root}")
    mask_root = Path(args.masks) if args.masks else None
    if mask_root is not None and not mask_root.is_dir():
        parser.error(f"--masks folder not found: {mask_root}")
    if args.method in OPENCV_METHODS:
        try:
            require_opencv(args.method)
        except ImportError as exc:
            parser.error(str(exc))
    try:
        fid_path = fidmod.resolve_inception_path(args.fid_weights)
    except FileNotFoundError as exc:
        parser.error(str(exc))

    generator, uses_sketch = None, False
    if args.method == "model":
        if not args.checkpoint:
            parser.error("--checkpoint is required for --method model (classical methods need none)")
        generator, _config = load_generator_or_exit(args.checkpoint, parser)
        generator.to(device).eval()
        uses_sketch = generator_uses_sketch(generator)
    elif args.checkpoint:
        print(f"note: --checkpoint is not used by --method {args.method}", file=sys.stderr)

    extractor = None
    if fid_path is None:
        fidmod.warn_fid_skipped()
        fid_note = "skipped (no Inception-v3 weights given)"
    else:
        try:
            extractor = fidmod.InceptionFeatures(fid_path).to(device)
        except (ValueError, FileNotFoundError) as exc:
            parser.error(str(exc))
        fid_note = f"Inception-v3 pool features ({extractor.variant} weights: {fid_path})"

    from .data import list_images, load_rgb

    paths = list_images(data_root)
    if not paths:
        parser.error(f"no images found under {data_root}")
    mask_paths = files_by_key(mask_root) if mask_root is not None else {}

    records: list[dict] = []
    skipped: list[dict] = []
    examples: list[tuple] = []
    feats_out: list[torch.Tensor] = []
    feats_gt: list[torch.Tensor] = []
    size = args.size

    def flush(batch: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
        truth = np.stack([b[1] for b in batch])
        holes = np.stack([b[2] for b in batch])
        if generator is not None:
            sketches = None
            if uses_sketch:
                from .sketch import make_sketch

                sketches = np.stack([make_sketch(t) for t in truth])
            pred = predict_batch(generator, truth, holes, sketches, device)
            pred_u8 = np.clip(np.round(pred), 0, 255).astype(np.uint8)
            outputs = truth.copy()
            outputs[holes] = pred_u8[holes]
        else:
            outputs = np.stack([classical_inpaint(t, h, args.method) for t, h in zip(truth, holes)])
        values = M.image_metrics(outputs, truth)
        for i, (key, _t, hole) in enumerate(batch):
            records.append({"name": key, "hole_ratio": float(hole.mean()),
                            **{k: float(v[i]) for k, v in values.items()}})
        if extractor is not None:
            to_t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).to(device, torch.float32) / 255.0  # noqa: E731
            feats_out.append(extractor(to_t(outputs)).double().cpu())
            feats_gt.append(extractor(to_t(truth)).double().cpu())
        for i in range(min(len(batch), args.examples - len(examples))):
            examples.append((truth[i], holes[i], outputs[i]))

    batch: list[tuple[str, np.ndarray, np.ndarray]] = []
    with tqdm(total=len(paths), desc=f"evaluating ({args.method})", unit="img") as bar:
        for index, path in enumerate(paths):
            key = pair_key(path, data_root)
            try:
                image = load_rgb(path)
                truth = np.asarray(resize_center_crop(image, size))
                if mask_root is None:
                    hole = generated_mask(size, args.mask_seed, index)
                else:
                    candidates = mask_paths.get(key, [])
                    if len(candidates) != 1:
                        raise ValueError(f"no mask named {key}.* in {mask_root}" if not candidates else
                                         "several masks share this name: " + ", ".join(p.name for p in candidates))
                    hole = load_user_mask(candidates[0], image.size, size)
                if not hole.any():
                    raise ValueError("the mask has no hole pixels at this size (nothing to inpaint)")
                if hole.all() and args.method == "biharmonic":
                    raise ValueError("the mask covers the whole image; biharmonic inpainting needs known pixels")
            except (OSError, ValueError) as exc:
                skipped.append({"name": key, "reason": str(exc)})
                tqdm.write(f"skipped {key}: {exc}", file=sys.stderr)
                bar.update(1)
                continue
            batch.append((key, truth, hole))
            if len(batch) == args.batch_size:
                flush(batch)
                bar.update(len(batch))
                batch = []
        if batch:
            flush(batch)
            bar.update(len(batch))

    if not records:
        print(f"error: no image could be evaluated ({len(skipped)} skipped)", file=sys.stderr)
        return 1

    fid_fn = None
    if extractor is not None:
        all_out, all_gt = torch.cat(feats_out).numpy(), torch.cat(feats_gt).numpy()
        fid_fn = lambda idx: fidmod.fid_from_features(all_out[idx], all_gt[idx])  # noqa: E731
    summary = M.summarise(records, fid_fn=fid_fn)
    if fid_fn is not None and len(records) < 2:
        warnings.warn("FID needs at least 2 images; not reported", stacklevel=1)
    result = {
        "method": args.method,
        "checkpoint": str(args.checkpoint) if args.method == "model" else None,
        "data": str(data_root),
        "size": size,
        "mask_source": f"folder {mask_root}" if mask_root else f"generated, free_form_mask, seed {args.mask_seed}",
        "mask_seed": None if mask_root else args.mask_seed,
        "device": str(device),
        "fid_weights": str(fid_path) if fid_path else None,
        "fid_note": fid_note,
        "psnr_cap_db": M.PSNR_CAP_DB,
        "images": len(records),
        "overall": summary["overall"],
        "buckets": summary["buckets"],
        "skipped": skipped,
        "per_image": records,
    }
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out_dir / "metrics.md").write_text(markdown_table(result), encoding="utf-8")
    if examples:
        _grid(examples).save(out_dir / "examples.png")
    overall = summary["overall"]
    print(f"{args.method}: {overall['count']} images  MAE {overall['mae_percent']:.3f} %  PSNR "
          f"{overall['psnr']:.2f} dB  SSIM {overall['ssim']:.4f}"
          + (f"  FID {overall['fid']:.3f}" if overall.get("fid") is not None else "")
          + (f"  ({len(skipped)} skipped)" if skipped else "") + f"  -> {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
