"""Patch plumbing shared by the attention layers: input checks, mask resizing, key validity,
patch extraction ("unrolling") and folding back ("rolling").

Conventions: a mask is ``[B, 1, H0, W0]`` with 1 = hole (any resolution, float or bool); a feature
map is ``[N, C, H, W]``; the patch size ``s`` is odd, ``p = s // 2``.

Patches of a map ``[N, C, H, W]`` are flattened pixel-major, ``D = s * s * C``: entry
``(dy * s + dx) * C + c`` is channel ``c`` at offset ``(dy, dx)`` of the window (the transpose of
``torch.nn.functional.unfold``'s channel-major order; a dot product between two patches is the same in
either order). Runs of C contiguous values make the gather and the fold cheap passes over memory:
at 32 channels, 32x32 maps and N = 32 they took 25 ms and 11 ms of CPU time against 50 ms and 44 ms
channel-major (one thread, AMD EPYC).

- queries: the zero-padded s×s patch centred on every pixel, ``Nq = H * W`` (row-major centres);
- keys / values: the unpadded patches, ``Nk = (H - s + 1) * (W - s + 1)``; key ``j`` with top-left
  corner ``(y, x)`` is exactly the query patch centred on ``(y + p, x + p)``, so the keys are the
  query rows of the inner region (:func:`key_rows`; no second unfold), and a key's unit vector is
  that query's unit vector (the keys need no norms of their own).

Patch norms come from a box filter (:func:`query_patch_inverse_norms`): ``||q_i||^2`` is the sum of
``sum_c f_c^2`` over the s×s window, O(C·H·W) instead of a reduction over the O(C·s²·H·W) patches.
"""
import torch
import torch.nn.functional as F


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
    """Unroll ``features [N, C, H, W]`` into queries and keys.

    Returns ``(queries [N, Nq, D], keys [N, Nk, D])``, both contiguous (D = s·s·C pixel-major, see the
    module docstring; Nq = H·W, Nk = (H-s+1)(W-s+1)); values are the keys. One pass writes the
    zero-padded map channels-last, one gather pass the queries (a window view, whose backward is
    PyTorch's ``unfold_backward``), one copy of their inner rows the keys.
    """
    n, c, h, w = features.shape
    p = patch_size // 2
    padded = F.pad(features.permute(0, 2, 3, 1), (0, 0, p, p, p, p))  # [N, H+2p, W+2p, C]
    windows = padded.unfold(1, patch_size, 1).unfold(2, patch_size, 1)  # [N, H, W, C, s, s] view
    queries = windows.permute(0, 1, 2, 4, 5, 3).reshape(n, h * w, patch_size * patch_size * c).contiguous()
    return queries, key_rows(queries, (h, w), patch_size)


def key_rows(rows: torch.Tensor, size: tuple[int, int], patch_size: int) -> torch.Tensor:
    """The rows of query-aligned ``rows [N, H*W, ...]`` whose centre is a key centre -> ``[N, Nk, ...]``.

    Key ``j`` (top-left corner ``(y, x)``) is the query centred on ``(y + p, x + p)``: applied to the
    query patches this gives the key patches, applied to the normalised queries the normalised keys.
    """
    h, w = size
    p = patch_size // 2
    return rows.unflatten(1, (h, w))[:, p:h - p, p:w - p].flatten(1, 2)


def query_patch_inverse_norms(features: torch.Tensor, patch_size: int, eps: float = 1e-6) -> torch.Tensor:
    """``1 / max(||q_i||, eps)`` ``[N, H*W]`` for the zero-padded query patches of ``features [N, C, H, W]``.

    ``||q_i||^2`` is the s×s box sum (zero padding) of ``sum_c f_c^2``, accumulated in float32 at least;
    ``rsqrt(max(n2, eps^2)) = 1 / max(sqrt(n2), eps)``, and the clamp keeps the gradient finite (0) at
    a zero patch. Multiply the queries (and, through :func:`key_rows`, the keys) by it to normalise them.
    """
    p = patch_size // 2
    energy = features.to(torch.promote_types(features.dtype, torch.float32)).square().sum(dim=1, keepdim=True)
    # A convolution with a ones kernel, not avg_pool2d(divisor_override=1): ONNX's AveragePool has no
    # divisor override, and the exported model would average instead of sum.
    box = energy.new_ones(1, 1, patch_size, patch_size)
    sums = F.conv2d(energy, box, padding=p)  # [N, 1, H, W]
    return sums.clamp_min(eps * eps).rsqrt().flatten(1)


def patch_counts(size: tuple[int, int], patch_size: int, dtype: torch.dtype, device) -> torch.Tensor:
    """``[H, W]``: how many zero-padded query patches cover each pixel (s² inside, fewer at the border)."""
    p = patch_size // 2
    per_axis = []
    for n in size:
        i = torch.arange(n, device=device)
        per_axis.append(((i + p).clamp(max=n - 1) - (i - p).clamp(min=0) + 1).to(dtype))
    return per_axis[0][:, None] * per_axis[1][None, :]


def fold_patches(patches: torch.Tensor, size: tuple[int, int], patch_size: int) -> torch.Tensor:
    """Roll query-aligned patches ``[N, H*W, D]`` back into a map ``[N, C, H, W]`` (C = D / s²).

    Every pixel receives the matching entry of each patch that covers it; the sum is divided by
    the number of such patches (:func:`patch_counts`). The sum is s² shifted adds of ``[N, H, W, C]``
    planes into a zero-padded channels-last canvas; the result is a ``[N, C, H, W]`` view of
    channels-last memory.
    """
    h, w = size
    s, p = patch_size, patch_size // 2
    n, _, d = patches.shape
    grid = patches.view(n, h, w, s, s, d // (s * s))
    # half-precision patches are summed in float32 (the canvas is 1/s² the size of the patches)
    acc = torch.promote_types(patches.dtype, torch.float32)
    canvas = patches.new_zeros(n, h + 2 * p, w + 2 * p, d // (s * s), dtype=acc)
    for dy in range(s):
        for dx in range(s):
            # the patch centred on (y, x) puts its offset (dy, dx) on pixel (y + dy - p, x + dx - p)
            canvas[:, dy:dy + h, dx:dx + w] += grid[:, :, :, dy, dx]
    count = patch_counts(size, patch_size, acc, patches.device)
    return (canvas[:, p:p + h, p:p + w] / count[:, :, None]).to(patches.dtype).permute(0, 3, 1, 2)
