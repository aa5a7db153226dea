"""Sample grids a training run writes to ``run.dir/samples/`` (one PNG per sample step)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``[B, 3, H, W]`` in [-1, 1] -> ``[B, H, W, 3]`` uint8."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def save_sample_grid(path: Path, image, mask, coarse, output) -> Path:
    """PNG grid, one row per image, columns: input (holes white) | coarse | output | truth (written atomically)."""
    shown_input = image * (1 - mask) + mask  # holes drawn white
    cols = [to_uint8(t) for t in (shown_input, coarse, output, image)]
    b, h, w, _ = cols[0].shape
    gap = 2
    grid = np.full((b * h + (b - 1) * gap, 4 * w + 3 * gap, 3), 255, np.uint8)
    for i in range(b):
        for j, col in enumerate(cols):
            grid[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = col[i]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(grid).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
