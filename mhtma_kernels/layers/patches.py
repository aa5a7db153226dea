"""Patch plumbing shared by the attention layers: input checks, mask resizing, key validity,
patch extraction ("unrolling") and folding back ("rolling").

Conventions: a mask is ``[B, 1, H0, W0]`` with 1 = hole (any resolution, float or bool); a feature
map is ``[N, C, H, W]``; the patch size ``s`` is odd, ``p = s // 2``.

Patches of a map ``[N, C, H, W]`` are flattened channel-major, ``D = C * s * s`` (the layout of
``torch.nn.functional.unfold``):

- queries: the zero-padded s×s patch centred on every pixel, ``Nq = H * W`` (row-major centres);
- keys / values: the unpadded patches, ``Nk = (H - s + 1) * (W - s + 1)``; key ``j`` with top-left
  corner ``(y, x)`` is exactly the query patch centred on ``(y + p, x + p)``, so one padded unfold
  yields both (the keys are a strided view of the inner region, no second unfold).
"""
import torch
import torch.nn.functional as F


def check_patch_size(patch_size) -> int:
    """Return ``patch_size`` as int; it must be a positive odd integer (1, 3, 5, ...)."""
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1 or patch_size % 2 == 0:
        raise ValueError(
            f"patch_size must be a positive odd integer (1, 3, 5, ...) so that zero-padded query patches "
            f"are centred on their pixel, got {patch_size!r}"
        )
    return patch_size


def check_inputs(x, mask, in_channels: int | None, layer: str) -> None:
    """Validate ``x [B, C, H, W]`` (C = in_channels unless None) and ``mask [B, 1, H0, W0]``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{layer}: x must be a torch.Tensor [B, C, H, W], got {type(x).__name__}")
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{layer}: mask must be a torch.Tensor [B, 1, H0, W0] (1 = hole), got {type(mask).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{layer}: x must be a floating-point tensor, got {x.dtype}")
    expected_c = "C" if in_channels is None else str(in_channels)
    if x.dim() != 4 or (in_channels is not None and x.shape[1] != in_channels):
        raise ValueError(f"{layer}: x must have shape [B, {expected_c}, H, W], got {tuple(x.shape)}")
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"{layer}: mask must have shape [B, 1, H0, W0] (1 = hole), got {tuple(mask.shape)}")
    if mask.shape[0] != x.shape[0]:
        raise ValueError(f"{layer}: mask batch {mask.shape[0]} does not match x batch {x.shape[0]}")
    if mask.shape[2] == 0 or mask.shape[3] == 0:
        raise ValueError(f"{layer}: mask must have a non-empty spatial size, got {tuple(mask.shape)}")
    if mask.device != x.device:
        raise ValueError(f"{layer}: mask is on {mask.device} but x is on {x.device}")
    if not (mask.is_floating_point() or mask.dtype == torch.bool):
        raise TypeError(f"{layer}: mask must be a float or bool tensor, got {mask.dtype}")


def check_feature_size(height: int, width: int, patch_size: int, layer: str) -> None:
    """A feature map smaller than the patch has no key patch: refuse it clearly."""
    if height < patch_size or width < patch_size:
        raise ValueError(
            f"{layer}: feature map {height}x{width} is smaller than patch_size {patch_size}: "
            f"no key patch fits (need H >= {patch_size} and W >= {patch_size})"
        )


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a hole mask ``[B, 1, H0, W0]`` to ``size = (H, W)`` so that no hole pixel vanishes.

    Per axis: nearest-neighbour upsizing (every source pixel lands on >= 1 target pixel) to
    ``(max(H0, H), max(W0, W))``, then adaptive max pooling down to ``(H, W)`` (its windows cover
    every source pixel). Works for any odd/even sizes. Returns float ``{0, 1}`` of shape
    ``[B, 1, H, W]`` in the dtype of ``mask`` (float32 for a bool mask), where 1 means the
    target pixel covers at least one source pixel with value >= 0.5.
    """
    hole = (mask >= 0.5) if mask.dtype != torch.bool else mask
    hole = hole.to(mask.dtype if mask.is_floating_point() else torch.float32)
    h, w = size
    h0, w0 = hole.shape[-2:]
    if (h0, w0) != (max(h0, h), max(w0, w)):
        hole = F.interpolate(hole, size=(max(h0, h), max(w0, w)), mode="nearest")
    if hole.shape[-2:] != (h, w):
        hole = F.adaptive_max_pool2d(hole, (h, w))
    return hole


def key_validity(hole: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Key validity ``[B, Nk]`` bool from a resized hole map ``[B, 1, H, W]``.

    Key ``j`` (unpadded s×s window, row-major top-left corners) is valid iff its window holds no
    hole pixel (paper Eq. 8: ``m'_j = 1 iff sum(m_j) = 0``).
    """
    covered = F.max_pool2d(hole, kernel_size=patch_size, stride=1)  # [B, 1, H-s+1, W-s+1]
    return (covered == 0).flatten(1)


def extract_patches(features: torch.Tensor, patch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unroll ``features [N, C, H, W]`` once into queries and keys.

    Returns ``(queries [N, Nq, D], keys [N, Nk, D])`` (strided views; D = C·s·s, Nq = H·W,
    Nk = (H-s+1)(W-s+1)); values are the keys.
    """
    n, c, h, w = features.shape
    p = patch_size // 2
    cols = F.unfold(features, kernel_size=patch_size, padding=p)  # [N, D, H*W]
    d = cols.shape[1]
    keys = cols.view(n, d, h, w)[:, :, p:h - p, p:w - p].reshape(n, d, -1)
    return cols.transpose(1, 2), keys.transpose(1, 2)


def fold_patches(patches: torch.Tensor, size: tuple[int, int], patch_size: int) -> torch.Tensor:
    """Roll query-aligned patches ``[N, H*W, D]`` back into a map ``[N, C, H, W]`` (C = D / s²).

    Every pixel receives the matching entry of each patch that covers it; the sum is divided by
    the number of such patches (``fold(patches) / fold(ones)``; s² inside, fewer at the border).
    """
    h, w = size
    p = patch_size // 2
    cols = patches.transpose(1, 2)  # [N, D, H*W]
    summed = F.fold(cols, (h, w), kernel_size=patch_size, padding=p)
    ones = torch.ones(1, patch_size * patch_size, h * w, dtype=patches.dtype, device=patches.device)
    count = F.fold(ones, (h, w), kernel_size=patch_size, padding=p)  # [1, 1, H, W], >= 1
    return summed / count
