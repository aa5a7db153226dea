"""The files of ``mhtma-inpaint``: images paired with their masks (and sketches) by name, opened, and a notice
for a mask that is legal but probably not meant (no hole, or all hole)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from PIL import Image

from .images import files_by_key, mask_from_image, no_images_found, open_image


def mask_notice(mask: Image.Image) -> Optional[str]:
    """A one-line notice for a mask that is legal but probably not what the user meant, else None: no hole
    (the image comes back unchanged) or all hole (nothing known to condition on: the fill is a guess)."""
    hole = mask_from_image(mask)
    if not hole.any():
        return "the mask has no hole (no pixel > 127): nothing to fill, the image is written unchanged"
    if hole.all():
        return ("the mask covers the whole image: nothing known to condition on, so the output is the model's "
                "guess from nothing (leave part of the image visible for a real fill)")
    return None


def open_inputs(image_path: Path, mask_path: Path, sketch_path: Optional[Path] = None):
    """Image, mask and sketch (or None) files as PIL images (:func:`mhtma_model.images.open_image`); OSError
    or ValueError naming the file when one is unreadable or the mask's or sketch's size differs from the image's."""
    image, mask = open_image(image_path), open_image(mask_path, what="mask")
    sketch = open_image(sketch_path, what="sketch") if sketch_path is not None else None
    for role, picture, path in (("mask", mask, mask_path), ("sketch", sketch, sketch_path)):
        if picture is not None and picture.size != image.size:
            raise ValueError(f"{role} {path.name} is {picture.size[0]}x{picture.size[1]} but image "
                             f"{image_path.name} is {image.size[0]}x{image.size[1]}; give a {role} of the "
                             f"image's size")
    return image, mask, sketch


def pair_inputs(image: Path, mask: Path, sketch: Optional[Path] = None):
    """-> (pairs [(key, image_path, mask_path, sketch_path | None)], problems [(key, reason)]); ValueError for
    a usage error (file/folder mix-up, missing path, an image folder holding no images)."""
    if image.is_file():
        for option, path in (("--mask", mask), ("--sketch", sketch)):
            if path is not None and not path.exists():
                raise ValueError(f"{option} file not found: {path}")
            if path is not None and not path.is_file():
                raise ValueError(f"--image is a file, so {option} must be a file too, but {path} is a folder")
        return [(image.stem, image, mask, sketch)], []
    if not image.is_dir():
        raise ValueError(f"--image not found: {image}")
    for option, path in (("--mask", mask), ("--sketch", sketch)):
        if path is not None and not path.exists():
            raise ValueError(f"{option} folder not found: {path}")
        if path is not None and not path.is_dir():
            raise ValueError(f"--image is a folder, so {option} must be a folder too, but {path} is a file")
    images, masks = files_by_key(image), files_by_key(mask)
    if not images:
        raise ValueError(no_images_found(image, "--image folder"))
    sketches = files_by_key(sketch) if sketch is not None else {}
    pairs, problems = [], []
    for key, paths in sorted(images.items()):
        if len(paths) > 1:
            problems.append((key, "several images share this name: " + ", ".join(p.name for p in paths)))
        elif key not in masks:
            problems.append((key, f"no mask named {key}.* in {mask}"))
        elif len(masks[key]) > 1:
            problems.append((key, "several masks share this name: " + ", ".join(p.name for p in masks[key])))
        elif len(sketches.get(key, [])) > 1:
            problems.append((key, "several sketches share this name: " + ", ".join(p.name for p in sketches[key])))
        else:
            sk = sketches.get(key)
            pairs.append((key, paths[0], masks[key][0], sk[0] if sk else None))
    for key in sorted(set(masks) - set(images)):
        problems.append((key, f"mask without an image in {image}"))
    for key in sorted(set(sketches) - set(images)):
        problems.append((key, f"sketch without an image in {image}"))
    return pairs, problems
