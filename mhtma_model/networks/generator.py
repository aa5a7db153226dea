"""The two-stage inpainting generator: coarse network G_c and refinement network G_r (paper Sec. III-A).

Layout (C = ``base_channels``; every "G" is a :class:`~.gated.GatedConv2d`, k×k, stride s, dilation d;
"Up" is a :class:`~.gated.GatedDeconv`; resolutions relative to the input H×W)::

    input x0 = [I_fill, M (, S·M)]          I_fill = I ⊙ (1-M) + mean ⊙ M     4 or 5 channels

    G_c  (coarse, encoder - dilated middle - decoder)
        G5(C) · G3s2(2C) · G3(2C) · G3s2(4C) · G3(4C) · G3(4C)            -> 1/4
        G3 d2(4C) · G3 d4(4C) · G3 d8(4C) · G3 d16(4C)                   dilated gated convs
        G3(4C) · G3(4C) · Up(2C) · G3(2C) · Up(C) · G3(C/2) · Conv3(3) · tanh  -> I_c

    x1 = [I_c ⊙ M + I_fill ⊙ (1-M), M (, S·M)]

    G_r  (refinement, two parallel encoders + one decoder)
        attention branch: G5(C) · G3s2(2C) · G3(2C) · G3s2(4C) · G3(4C) · G3(4C)
                          · Attention(4C channels at 1/4 resolution, mask M) · G3(4C) · G3(4C)
        conv branch:      G5(C) · G3s2(2C) · G3(2C) · G3s2(4C) · G3(4C) · G3(4C)
                          · G3 d2 · G3 d4 · G3 d8 · G3 d16 (4C)
        decoder on the concatenation (8C): G3(4C) · Up(2C) · G3(2C) · Up(C) · G3(C/2) · Conv3(3) · tanh
                          (5 gated convs + 1 conv)                         -> I_r

Width: a gated conv here outputs C features (its convolution has 2C channels). DeepFill v2's
``cnum = 48`` splits 48 channels into 24 features + 24 gates, so ``base_channels=24`` reproduces its
width (4.1 M generator parameters); 32 -> 7.3 M, 48 -> 16.4 M, 64 -> 29 M; demo 8 -> 0.5 M.

Attention choices (paper ablations; the registry is :mod:`.attention`): ``"mhtma"`` (:class:`mhtma_kernels.MaskedTemperatureAttention`,
multi-head, learned or fixed temperature), ``"atma"`` (single-head, LeakyReLU temperature),
``"contextual"`` (DeepFill v2 contextual attention, fixed scale 10), ``"none"`` (identity: the
attention branch keeps its gated convs, only the attention layer is removed).
"""
import torch
from torch import nn

from mhtma_kernels.ops import check_backend, check_patch_size, check_temperature

from .attention import ATTENTION_VARIANTS, ATTENTIONS, build_attention
from .gated import GatedConv2d, GatedDeconv, _positive_int

#: ImageNet mean colour in [0, 1] units; hole pixels are set to it (mapped to [-1, 1]) before G_c.
IMAGENET_MEAN = (0.485, 0.456, 0.406)

def composite(pred: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``pred ⊙ mask + image ⊙ (1 - mask)``: generated pixels in the hole, known pixels elsewhere.

    Shapes broadcast: pred, image ``[B, 3, H, W]``, mask ``[B, 1, H, W]`` (1 = hole).
    """
    return pred * mask + image * (1 - mask)


def attention_min_size(patch_size: int, multiple: int = 8) -> int:
    """Smallest image side with an attention layer: ``4 * patch_size`` (patches at 1/4 resolution)
    rounded up to a multiple of ``multiple``."""
    return -(-4 * patch_size // multiple) * multiple


def _encoder(in_channels: int, c: int) -> list[nn.Module]:
    """Gated encoder down to 1/4 resolution: ``[B, in, H, W] -> [B, 4c, H/4, W/4]``."""
    return [
        GatedConv2d(in_channels, c, 5),
        GatedConv2d(c, 2 * c, 3, stride=2),
        GatedConv2d(2 * c, 2 * c, 3),
        GatedConv2d(2 * c, 4 * c, 3, stride=2),
        GatedConv2d(4 * c, 4 * c, 3),
        GatedConv2d(4 * c, 4 * c, 3),
    ]


def _dilated(c4: int) -> list[nn.Module]:
    """Dilated gated convs, rates 2, 4, 8, 16 (receptive field grows to ~61 feature pixels)."""
    return [GatedConv2d(c4, c4, 3, dilation=rate) for rate in (2, 4, 8, 16)]


def _decoder_tail(c: int) -> list[nn.Module]:
    """``[B, 4c, H/4, W/4]`` -> ``[B, 3, H, W]`` in [-1, 1]: Up(2c) · G(2c) · Up(c) · G(c/2) · Conv · tanh."""
    half = max(1, c // 2)
    return [
        GatedDeconv(4 * c, 2 * c),
        GatedConv2d(2 * c, 2 * c, 3),
        GatedDeconv(2 * c, c),
        GatedConv2d(c, half, 3),
        nn.Conv2d(half, 3, 3, padding=1),
        nn.Tanh(),
    ]


class CoarseNetwork(nn.Module):
    """G_c: ``x0 [B, in, H, W] -> I_c [B, 3, H, W]`` in [-1, 1] (layout in the module docstring)."""

    def __init__(self, in_channels: int, c: int):
        super().__init__()
        self.encoder = nn.Sequential(*_encoder(in_channels, c))
        self.middle = nn.Sequential(*_dilated(4 * c), GatedConv2d(4 * c, 4 * c, 3), GatedConv2d(4 * c, 4 * c, 3))
        self.decoder = nn.Sequential(*_decoder_tail(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.middle(self.encoder(x)))


class RefinementNetwork(nn.Module):
    """G_r: ``x1 [B, in, H, W]``, mask ``[B, 1, H, W]`` -> ``I_r [B, 3, H, W]`` in [-1, 1]."""

    def __init__(self, in_channels: int, c: int, attention: nn.Module | None):
        super().__init__()
        self.attention_encoder = nn.Sequential(*_encoder(in_channels, c))
        self.attention = attention  # None = identity ("none" ablation)
        self.attention_out = nn.Sequential(GatedConv2d(4 * c, 4 * c, 3), GatedConv2d(4 * c, 4 * c, 3))
        self.conv_encoder = nn.Sequential(*_encoder(in_channels, c), *_dilated(4 * c))
        self.decoder = nn.Sequential(GatedConv2d(8 * c, 4 * c, 3), *_decoder_tail(c))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        a = self.attention_encoder(x)
        if self.attention is not None:
            a = self.attention(a, mask)
        a = self.attention_out(a)
        b = self.conv_encoder(x)
        return self.decoder(torch.cat([a, b], dim=1))


class InpaintGenerator(nn.Module):
    r"""Coarse-to-fine inpainting generator (DeepFill v2 layout with a pluggable attention layer).

    ``forward(image, mask, sketch=None) -> (coarse, refined)``:

    - ``image [B, 3, H, W]`` in [-1, 1]; hole pixels are ignored (the generator replaces them by the
      ImageNet mean colour, so masked or unmasked images give the same result);
    - ``mask [B, 1, H, W]`` float (or bool), 1 = hole, values in [0, 1];
    - ``sketch [B, 1, H, W]`` in [0, 1], required iff ``sketch=True`` (the input channel is sketch ⊙ mask);
    - H and W must be multiples of :attr:`multiple` (8), and at least ``4 * patch_size`` rounded up to
      a multiple of 8 when an attention layer is used (it works on 1/4-resolution patches).

    Returns raw (not composited) ``coarse = G_c(x0)`` and ``refined = G_r(x1)``, both ``[B, 3, H, W]``
    in [-1, 1] (tanh); the final output is ``composite(refined, image, mask)``.

    Args:
        base_channels: width C (paper-size 48-64; demo 8-16). The layers hold C, 2C, 4C channels.
        attention: ``"mhtma"`` | ``"atma"`` | ``"contextual"`` | ``"none"``.
        heads: MHTMA heads (paper: 2). Ignored by the other choices (ATMA is single-head).
        temperature: ``"learned"`` or a positive float (fixed t, ablation); MHTMA only.
        patch_size: attention patch size (odd).
        lambda_m: mask penalty of MHTMA / ATMA.
        sketch: adds the sketch channel (5 input channels instead of 4).
        backend: op backend of MHTMA (``"auto"``, ``"torch"``, ``"triton"``, ``"reference"``).
    """

    multiple = 8

    def __init__(self, base_channels: int = 32, attention: str = "mhtma", heads: int = 2, temperature="learned",
                 patch_size: int = 3, lambda_m: float = 1e4, sketch: bool = False, backend: str = "auto"):
        super().__init__()
        _positive_int(base_channels, "base_channels", "InpaintGenerator")
        if attention not in ATTENTIONS:
            raise ValueError(f"InpaintGenerator: attention must be one of {ATTENTIONS}, got {attention!r}")
        _positive_int(heads, "heads", "InpaintGenerator")
        self.temperature_mode = check_temperature(temperature, "InpaintGenerator")
        check_patch_size(patch_size, "InpaintGenerator")
        check_backend(backend, "InpaintGenerator")
        if not isinstance(sketch, bool):
            raise TypeError(f"InpaintGenerator: sketch must be a bool, got {type(sketch).__name__}")
        self.base_channels, self.attention_type, self.heads = base_channels, attention, heads
        self.patch_size, self.lambda_m, self.sketch, self.backend = patch_size, float(lambda_m), sketch, backend
        in_channels = 5 if sketch else 4
        c = base_channels
        self.coarse = CoarseNetwork(in_channels, c)
        self.refine = RefinementNetwork(
            in_channels, c, build_attention(attention, 4 * c, heads, temperature, patch_size, lambda_m, backend))
        self.register_buffer("fill_value", torch.tensor(IMAGENET_MEAN).mul(2).sub(1).view(1, 3, 1, 1),
                             persistent=False)

    def extra_repr(self) -> str:
        return (f"base_channels={self.base_channels}, attention={self.attention_type!r}, heads={self.heads}, "
                f"temperature={self.temperature_mode}, patch_size={self.patch_size}, sketch={self.sketch}")

    @property
    def min_size(self) -> int:
        """Smallest accepted side: 8, or ``4 * patch_size`` rounded up to 8 with an attention layer."""
        if self.refine.attention is None:
            return self.multiple
        return attention_min_size(self.patch_size, self.multiple)

    @property
    def last_temperature(self) -> torch.Tensor | None:
        """Detached temperatures of the last forward: ``[B, heads]`` (MHTMA, learned), ``[B, 1]`` (ATMA);
        ``None`` when nothing is learned (fixed temperature, contextual attention, no attention) or
        before the first forward."""
        layer = self.refine.attention
        if layer is None or not ATTENTION_VARIANTS[self.attention_type].learns_temperature:
            return None
        if self.attention_type == "mhtma" and self.temperature_mode != "learned":
            return None
        return getattr(layer, "last_temperature", None)

    def _check(self, image, mask, sketch) -> None:
        if not isinstance(image, torch.Tensor) or not image.is_floating_point():
            raise TypeError(f"InpaintGenerator: image must be a floating-point torch.Tensor [B, 3, H, W], "
                            f"got {type(image).__name__ if not isinstance(image, torch.Tensor) else image.dtype}")
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"InpaintGenerator: image must have shape [B, 3, H, W], got {tuple(image.shape)}")
        b, _, h, w = image.shape
        if h % self.multiple or w % self.multiple:
            raise ValueError(f"InpaintGenerator: image size {h}x{w} (HxW) is not divisible by {self.multiple}; "
                             f"pad or resize it to multiples of {self.multiple}")
        if min(h, w) < self.min_size:
            raise ValueError(f"InpaintGenerator: image size {h}x{w} (HxW) is too small; each side must be at least "
                             f"{self.min_size} (attention on 1/4-resolution {self.patch_size}x{self.patch_size} "
                             f"patches)")
        if not isinstance(mask, torch.Tensor) or not (mask.is_floating_point() or mask.dtype == torch.bool):
            raise TypeError("InpaintGenerator: mask must be a float or bool torch.Tensor [B, 1, H, W] (1 = hole)")
        if tuple(mask.shape) != (b, 1, h, w):
            raise ValueError(f"InpaintGenerator: mask must have shape [B, 1, H, W] = {[b, 1, h, w]}, "
                             f"got {list(mask.shape)}")
        if mask.device != image.device:
            raise ValueError(f"InpaintGenerator: mask is on {mask.device} but image is on {image.device}")
        if self.sketch and sketch is None:
            raise ValueError("InpaintGenerator: this generator was built with sketch=True; pass sketch [B, 1, H, W]")
        if not self.sketch and sketch is not None:
            raise ValueError("InpaintGenerator: a sketch was given but the generator was built with sketch=False")
        if sketch is not None:
            if not isinstance(sketch, torch.Tensor) or not sketch.is_floating_point():
                raise TypeError("InpaintGenerator: sketch must be a floating-point torch.Tensor [B, 1, H, W]")
            if tuple(sketch.shape) != (b, 1, h, w):
                raise ValueError(f"InpaintGenerator: sketch must have shape {[b, 1, h, w]}, got {list(sketch.shape)}")
            if sketch.device != image.device:
                raise ValueError(f"InpaintGenerator: sketch is on {sketch.device} but image is on {image.device}")

    def forward(self, image: torch.Tensor, mask: torch.Tensor, sketch: torch.Tensor | None = None):
        """``image [B,3,H,W]``, ``mask [B,1,H,W]`` (1 = hole), ``sketch [B,1,H,W]`` or None
        -> ``(coarse, refined)``, each ``[B, 3, H, W]`` in [-1, 1]."""
        self._check(image, mask, sketch)
        mask = mask.to(image.dtype)
        filled = composite(self.fill_value.to(image.dtype), image, mask)  # I_fill
        extra = [mask] if sketch is None else [mask, sketch.to(image.dtype) * mask]
        coarse = self.coarse(torch.cat([filled, *extra], dim=1))
        x1 = composite(coarse, filled, mask)
        refined = self.refine(torch.cat([x1, *extra], dim=1), mask)
        return coarse, refined
