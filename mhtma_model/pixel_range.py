"""The one mapping between 8-bit pixels (0..255) and the network's range [-1, 1]: network inputs, generator
outputs, sample grids, validation and inference all go through it, so an output pixel means the same in each."""
from __future__ import annotations

import numpy as np
import torch


def to_network(pixels: np.ndarray) -> torch.Tensor:
    """Pixels ``[..., H, W, 3]`` in 0..255 -> float32 ``[..., 3, H, W]`` in [-1, 1] (contiguous, on the CPU)."""
    return torch.from_numpy(np.asarray(pixels, dtype=np.float32) / 127.5 - 1.0).movedim(-1, -3).contiguous()


def from_network(images: torch.Tensor) -> np.ndarray:
    """Network images ``[..., 3, H, W]`` in [-1, 1] -> float32 numpy ``[..., H, W, 3]`` in [0, 255] (clamped, not rounded)."""
    return ((images.detach().float().clamp(-1, 1) + 1.0) * 127.5).movedim(-3, -1).cpu().numpy()


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Values in [0, 255] -> uint8, rounded half to even and clipped: ``to_uint8(from_network(x))`` is ``x`` in 8 bits."""
    return np.clip(np.round(values), 0, 255).astype(np.uint8)
