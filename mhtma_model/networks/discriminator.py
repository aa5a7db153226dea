"""Global-local discriminator D_gl with spectral normalisation (paper Sec. III-A, Iizuka et al. layout).

Layout (C = ``base_channels``, every conv 5×5 stride 2 + LeakyReLU 0.2, spectral norm on every
conv and linear layer, no other normalisation)::

    input: [I, M]  (the image and its hole mask, 4 channels — see below)
    global branch on the full H×W image:
        conv(C) · conv(2C) · conv(4C) · conv(8C) · conv(8C) · conv(8C)     (6 convs, H/64)
        adaptive average pool to 4×4 · flatten · Linear(8C·16 -> F)
    local branch on an L×L crop, L = image_size // 2 (128 at 256):
        conv(C) · conv(2C) · conv(4C) · conv(8C) · conv(8C)                (5 convs, L/32)
        adaptive average pool to 4×4 · flatten · Linear(8C·16 -> F)
    score = Linear(2F -> 1)([global ‖ local])                               [B, 1] raw score

F = 16·C (1024 at C = 64). At 256×256 both branches end exactly at 4×4, so the pooling is the
identity there; it lets the same network accept other sizes (64 ... 512) without recomputing the
Linear sizes. The score is raw (no sigmoid): the hinge and WGAN-GP losses take raw scores.

Mask channel (a design choice): the discriminator sees the mask as a 4th input channel, as
DeepFill v2's SN-PatchGAN does, so it knows which pixels were generated. Real and fake images
are always scored with the same mask, so the mask itself carries no real/fake signal.

Local crop: per sample, a hole pixel is drawn uniformly with torch's global RNG, the L×L crop is
centred on it and clamped to the image (so it always contains that hole pixel); a sample without
holes gets a uniformly random crop. :meth:`GlobalLocalDiscriminator.crop_boxes` exposes the choice,
so a caller can score a real and a fake image on the same crop (``boxes=`` argument of ``forward``).

Precision: the spectral norm (power iteration and sigma) always runs in fp32 with autocast off
(:class:`FP32SpectralNorm`; under CUDA autocast ``torch.mv`` would otherwise run in bf16/fp16); the
normalised weight then enters the conv/linear, which autocast runs in the low dtype. Its buffers and
state-dict keys are those of ``torch.nn.utils.parametrizations.spectral_norm``.
"""
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm

from .gated import _positive_int


class FP32SpectralNorm(_SpectralNorm):
    """torch's spectral-norm parametrization computed in fp32 with autocast disabled."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        with torch.autocast(weight.device.type, enabled=False):
            return super().forward(weight.float())


def spectral_norm(module: nn.Module) -> nn.Module:
    """``module`` (Conv2d or Linear) with its ``weight`` parametrized by :class:`FP32SpectralNorm`
    (one power iteration per training forward, as torch's default)."""
    parametrize.register_parametrization(module, "weight", FP32SpectralNorm(module.weight, 1, 0, 1e-12))
    return module


def _branch(in_channels: int, widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [spectral_norm(nn.Conv2d(in_channels, width, 5, stride=2, padding=2)), nn.LeakyReLU(0.2)]
        in_channels = width
    layers += [nn.AdaptiveAvgPool2d(4), nn.Flatten()]
    return nn.Sequential(*layers)


class GlobalLocalDiscriminator(nn.Module):
    r"""``forward(image [B, 3, H, W], mask [B, 1, H, W], boxes=None) -> scores [B, 1]``.

    Args:
        base_channels: width C (paper-size 64).
        image_size: training image side; the local crop side is ``image_size // 2``. Inputs must have
            both sides >= the crop side (any size from 64 to 512 and beyond works).
    """

    def __init__(self, base_channels: int = 64, image_size: int = 256):
        super().__init__()
        _positive_int(base_channels, "base_channels", "GlobalLocalDiscriminator")
        _positive_int(image_size, "image_size", "GlobalLocalDiscriminator")
        if image_size < 16:
            raise ValueError(f"GlobalLocalDiscriminator: image_size must be >= 16, got {image_size}")
        c = base_channels
        self.base_channels, self.image_size, self.local_size = c, image_size, image_size // 2
        features = 16 * c
        self.global_branch = _branch(4, [c, 2 * c, 4 * c, 8 * c, 8 * c, 8 * c])
        self.global_fc = spectral_norm(nn.Linear(8 * c * 16, features))
        self.local_branch = _branch(4, [c, 2 * c, 4 * c, 8 * c, 8 * c])
        self.local_fc = spectral_norm(nn.Linear(8 * c * 16, features))
        self.head = spectral_norm(nn.Linear(2 * features, 1))
        self.act = nn.LeakyReLU(0.2)

    def extra_repr(self) -> str:
        return f"base_channels={self.base_channels}, image_size={self.image_size}, local_size={self.local_size}"

    @torch.no_grad()
    def crop_boxes(self, mask: torch.Tensor) -> torch.Tensor:
        """Top-left corners ``[B, 2]`` (row, col; int64, CPU) of the local crops for ``mask [B, 1, H, W]``.

        Each crop (side ``local_size``) is centred on a hole pixel drawn uniformly with torch's global
        RNG and clamped to the image, so it contains that pixel; without holes the corner is uniform.
        """
        b, _, h, w = mask.shape
        side = self.local_size
        boxes = torch.empty(b, 2, dtype=torch.long)
        holes = (mask[:, 0] > 0.5).cpu()
        for i in range(b):
            rows, cols = torch.nonzero(holes[i], as_tuple=True)
            if rows.numel():
                k = int(torch.randint(rows.numel(), (1,)))
                top = min(max(int(rows[k]) - side // 2, 0), h - side)
                left = min(max(int(cols[k]) - side // 2, 0), w - side)
            else:
                top = int(torch.randint(h - side + 1, (1,)))
                left = int(torch.randint(w - side + 1, (1,)))
            boxes[i, 0], boxes[i, 1] = top, left
        return boxes

    def forward(self, image: torch.Tensor, mask: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """``image [B, 3, H, W]`` in [-1, 1], ``mask [B, 1, H, W]`` (1 = hole), optional ``boxes [B, 2]``
        from :meth:`crop_boxes` -> raw scores ``[B, 1]``."""
        if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"GlobalLocalDiscriminator: image must be a tensor [B, 3, H, W], "
                             f"got {tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}")
        b, _, h, w = image.shape
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (b, 1, h, w):
            raise ValueError(f"GlobalLocalDiscriminator: mask must be a tensor of shape {[b, 1, h, w]}, "
                             f"got {list(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}")
        side = self.local_size
        if h < side or w < side:
            raise ValueError(f"GlobalLocalDiscriminator: image {h}x{w} is smaller than the local crop "
                             f"{side}x{side} (image_size={self.image_size}); use image_size <= 2*min(H, W)")
        if boxes is None:
            boxes = self.crop_boxes(mask)
        elif tuple(boxes.shape) != (b, 2):
            raise ValueError(f"GlobalLocalDiscriminator: boxes must have shape [{b}, 2], got {list(boxes.shape)}")
        x = torch.cat([image, mask.to(image.dtype)], dim=1)
        crops = torch.stack([x[i, :, t:t + side, l:l + side] for i, (t, l) in enumerate(boxes.tolist())])
        g = self.act(self.global_fc(self.global_branch(x)))
        loc = self.act(self.local_fc(self.local_branch(crops)))
        return self.head(torch.cat([g, loc], dim=1))
