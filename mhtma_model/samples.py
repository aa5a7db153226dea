"""Sample grids a training run writes to ``run.dir/samples/`` (one PNG per sample step)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .image_modes import save_image
from .networks import composite
from .pixel_range import from_network, to_uint8


#: The columns of a sample grid, left to right, as labelled in its header.
SAMPLE_COLUMNS = ("input", "coarse", "output", "truth")
GAP = 2  # white pixels between rows and columns


def _font(size: int):
    """Pillow's bundled font at ``size`` px (FreeType), or its fixed bitmap font where FreeType is missing."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def label_band(labels, width: int) -> np.ndarray:
    """A white uint8 band ``[h, len(labels) * (width + GAP) - GAP, 3]`` with each label in black, centred
    over its column of ``width`` px (the font shrinks, down to 6 px, until the longest label fits)."""
    size = 12
    while size > 6 and max(_font(size).getbbox(t)[2] for t in labels) > width - 2:
        size -= 1
    font = _font(size)
    height = size + 6
    band = Image.new("RGB", (len(labels) * (width + GAP) - GAP, height), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    for j, text in enumerate(labels):
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        x = j * (width + GAP) + (width - (right - left)) / 2 - left
        draw.text((x, (height - (bottom - top)) / 2 - top), text, fill=(0, 0, 0), font=font)
    return np.asarray(band)


def save_sample_grid(path: Path, image, mask, coarse, output) -> Path:
    """PNG grid, one row per image, columns: input (holes white) | coarse | output | truth, under a header
    band naming them (:data:`SAMPLE_COLUMNS`); written atomically."""
    shown_input = composite(torch.ones_like(image), image, mask)  # holes drawn white
    cols = [to_uint8(from_network(t)) for t in (shown_input, coarse, output, image)]
    b, h, w, _ = cols[0].shape
    gap = GAP
    header = label_band(SAMPLE_COLUMNS, w)
    top = header.shape[0]
    grid = np.full((top + b * h + (b - 1) * gap, 4 * w + 3 * gap, 3), 255, np.uint8)
    grid[:top] = header
    for i in range(b):
        for j, col in enumerate(cols):
            grid[top + i * (h + gap):top + i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = col[i]
    save_image(Image.fromarray(grid), path, "PNG")
    return Path(path)
