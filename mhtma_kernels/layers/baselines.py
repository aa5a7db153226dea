"""The paper's baselines, with MHTMA's ``forward(x [B, C, H, W], mask [B, 1, H0, W0]) -> [B, C, H, W]``.

- :class:`ContextualAttention`: DeepFill v2 contextual attention (paper Algorithm 2), the
  for-loop baseline of the benchmarks.
- :class:`ATMA`: single-head temperature masked attention whose temperature network ends in
  LeakyReLU (paper ref. [7]), the predecessor whose instability MHTMA fixes.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.tracing import is_tracing
from .attention import MaskedTemperatureAttention
from ..ops.checks import check_patch_size
from .patches import check_feature_size, check_inputs, resize_mask
from .temperature import TemperatureNetwork

# DeepFill's guard against dividing a zero patch by its zero norm.
_DEEPFILL_EPS = 1e-4


class ContextualAttention(nn.Module):
    r"""DeepFill v2 contextual attention (Yu et al. 2019; paper Algorithm 2), parameter-free.

    For each image n **in a Python for-loop over the batch** (kept on purpose: it is the
    for-loop baseline the fused op is benchmarked against), with its OWN mask (the widely copied
    port applies image 0's mask to the whole batch; this one does not)::

        w_j   = s×s patch j of x_n, zero 'same' padding          L = H*W filters [L, C, s, s]
        wn_j  = w_j / max(|w_j|, 1e-4)                           normalised keys as conv filters
        y     = conv2d(x_n, wn, padding=s//2)                    [1, L, H, W]: y_ji = <q_i, wn_j>
        mm_j  = 1 iff mask patch j (same padding) has no hole    [1, L, 1, 1]
        y     = softmax_j(softmax_scale * (y * mm)) * mm         mask by multiplication, scale 10
        out_n = conv_transpose2d(y, w, padding=s//2) / s²        paste raw patches

    Queries are raw (unnormalised) patches, as in DeepFill; dividing by the constant s² is the
    stride-1 equivalent of DeepFill's ``/ 4`` (4x4 pasting kernel, stride 2 = 4 overlapping
    patches per pixel), so border pixels, which fewer patches cover, come out damped, as in
    DeepFill. Hole keys get weight 0 (their logits are 0 before the softmax and their weights are
    multiplied by 0 after it, so a row's weights sum to less than 1); with an all-hole mask the
    output is 0.

    Omitted from DeepFill (documented, not options): the rate-2 downsampling of the matching
    (``rate=1`` here: matching and pasting at the feature resolution), the 3×3 identity "fuse"
    convolutions that propagate attention scores, and the flow/offset visualisation.

    Traced (torch.compile, torch.export) the loop is replaced by :meth:`batched_forward`, the same
    computation for the whole batch at once: a Python loop over a symbolic batch size cannot be traced.

    Args:
        in_channels: optional; when given, ``forward`` checks that x has that many channels.
        patch_size: odd s (DeepFill: 3).
        softmax_scale: fixed scale 1/t (DeepFill: 10).
    """

    def __init__(self, in_channels: int | None = None, patch_size: int = 3, softmax_scale: float = 10.0):
        super().__init__()
        if in_channels is not None and (isinstance(in_channels, bool) or not isinstance(in_channels, int)
                                        or in_channels < 1):
            raise ValueError(f"ContextualAttention: in_channels must be a positive int or None, got {in_channels!r}")
        if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)) \
                or not math.isfinite(softmax_scale) or softmax_scale <= 0:
            raise ValueError(f"ContextualAttention: softmax_scale must be a finite positive number, "
                             f"got {softmax_scale!r}")
        self.in_channels = in_channels
        self.patch_size = check_patch_size(patch_size, "ContextualAttention")
        self.softmax_scale = float(softmax_scale)
        self.last_temperature = None  # fixed scale: nothing learned to log

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, patch_size={self.patch_size}, softmax_scale={self.softmax_scale:g}"

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x [B, C, H, W]``, ``mask [B, 1, H0, W0]`` (1 = hole) -> ``[B, C, H, W]``."""
        check_inputs(x, mask, self.in_channels, "ContextualAttention")
        _, c, h, w = x.shape
        s, p = self.patch_size, self.patch_size // 2
        check_feature_size(h, w, s, "ContextualAttention")
        hole = resize_mask(mask, (h, w)).to(x.dtype)
        if is_tracing(x):  # a loop over a symbolic batch cannot be traced (torch.export, dynamic batch)
            return self.batched_forward(x, hole)
        outputs = []
        for n in range(x.shape[0]):
            xn = x[n:n + 1]
            raw = F.unfold(xn, s, padding=p)[0].t().reshape(h * w, c, s, s)  # [L, C, s, s]
            norm = raw.flatten(1).norm(dim=1).clamp_min(_DEEPFILL_EPS)
            normed = raw / norm[:, None, None, None]
            scores = F.conv2d(xn, normed, padding=p)  # [1, L, H, W]
            mm = (F.unfold(hole[n:n + 1], s, padding=p).mean(dim=1) == 0).to(x.dtype).view(1, h * w, 1, 1)
            scores = scores * mm
            weights = F.softmax(scores * self.softmax_scale, dim=1) * mm
            outputs.append(F.conv_transpose2d(weights, raw, padding=p) / (s * s))
        return torch.cat(outputs, dim=0)

    def batched_forward(self, x: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
        """The same computation for the whole batch at once (used when the layer is traced).

        ``x [B, C, H, W]``, ``hole [B, 1, H, W]`` resized -> ``[B, C, H, W]``. The convolution with the
        normalised patches is ``wn @ unfold(x)`` and the transposed convolution ``fold(w^T @ weights)``.
        """
        _, _, h, w = x.shape
        s, p = self.patch_size, self.patch_size // 2
        cols = F.unfold(x, s, padding=p)  # [B, D, L]: patch j (centred on pixel j) in column j
        raw = cols.transpose(1, 2)  # [B, L, D]
        normed = raw / raw.norm(dim=2, keepdim=True).clamp_min(_DEEPFILL_EPS)
        scores = normed @ cols  # [B, L keys, L pixels]
        mm = (F.unfold(hole, s, padding=p).mean(dim=1) == 0).to(x.dtype)[:, :, None]  # [B, L, 1]
        weights = F.softmax(scores * mm * self.softmax_scale, dim=1) * mm
        return F.fold(raw.transpose(1, 2) @ weights, (h, w), s, padding=p) / (s * s)


class ATMA(MaskedTemperatureAttention):
    r"""ATMA baseline (paper ref. [7]): single-head temperature masked attention with a temperature
    network whose last activation is LeakyReLU(0.2), so t may be negative or zero.

    Same patches, mask resizing, key validity and folding as :class:`MaskedTemperatureAttention`
    with ``heads=1`` (``head_channels`` defaults to ``in_channels``, so there is no projection);
    ``last_temperature`` is the raw ``[B, 1]`` output of the LeakyReLU head, negative values
    included (initialised at +0.1).

    Why MHTMA uses Softplus instead: the logit of a valid key is ``<qn_i, kn_j> / t``. A negative
    t flips the ranking (the *least* similar patch gets the most weight); t near 0 makes the valid
    logits ±1/|t| explode, so the softmax collapses onto one patch (or onto the -lambda_m hole keys
    once every valid logit is below -lambda_m), with exploding gradients; t = 0 gives inf/NaN.
    Softplus + floor keeps t > 0. The shared op refuses t <= 0, so ATMA computes its masked
    softmax itself, in plain PyTorch, through the exact identity

        z_ij = <qn_i / t, kn'_j> + bias_j,   kn'_j = kn_j (valid) or 0 (hole),
        bias_j = 0 (valid) or -lambda_m (hole)

    fed to ``scaled_dot_product_attention(scale=1)`` (memory-efficient kernels where PyTorch has
    them), which is valid for any non-zero t of either sign.
    """

    def __init__(self, in_channels: int, head_channels: int | None = None, patch_size: int = 3,
                 lambda_m: float = 1e4, heads: int = 1, temperature_hidden: int = 32):
        if heads != 1:
            raise ValueError(f"ATMA: is single-head, heads must be 1, got {heads!r}")
        super().__init__(in_channels, heads=1, head_channels=in_channels if head_channels is None else head_channels,
                         patch_size=patch_size, lambda_m=lambda_m, temperature="learned", backend="reference",
                         temperature_hidden=temperature_hidden)

    def _make_temperature_net(self, hidden: int) -> nn.Module:
        return TemperatureNetwork(self.in_channels, 1, hidden_channels=hidden, final_activation="leaky_relu")

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, head_channels={self.head_channels}, patch_size={self.patch_size}, "
                f"lambda_m={self.lambda_m:g}, temperature=LeakyReLU(F_emb)")

    def attend(self, qn, kn, v, key_valid, t):
        """Masked softmax for a temperature of any sign on normalised patches: qn [B,1,Nq,D], kn/v [B,1,Nk,D],
        t [B,1]."""
        qs = qn / t.to(qn.dtype)[:, :, None, None]
        ks = kn * key_valid[:, None, :, None].to(kn.dtype)
        bias = torch.zeros(key_valid.shape, dtype=qn.dtype, device=qn.device).masked_fill(~key_valid, -self.lambda_m)
        return F.scaled_dot_product_attention(qs, ks, v, attn_mask=bias[:, None, None, :], scale=1.0)
