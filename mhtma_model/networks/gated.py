"""Gated convolutions (Yu et al., DeepFill v2), the building block of both generator stages.

A gated convolution computes features and a soft, learned per-pixel gate with one convolution::

    [a, g] = Conv(x)                 Conv: C_in -> 2 * C_out   (split along channels)
    y      = ELU(a) * sigmoid(g)     [B, C_out, H', W']

so the network learns where information is valid (known pixels, filled holes, sketch lines)
instead of being told by a hard partial-convolution rule. No normalisation layers are used.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


def _positive_int(value, name: str, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
    return value


class GatedConv2d(nn.Module):
    r"""``y = act(a) * sigmoid(g)``, ``[a, g] = Conv2d(x)`` with ``2 * out_channels`` outputs.

    Shapes: ``x [B, C_in, H, W] -> y [B, C_out, H_out, W_out]`` with the usual convolution
    arithmetic; the default "same" padding ``dilation * (kernel_size - 1) // 2`` (zeros) keeps
    ``H_out = ceil(H / stride)`` for odd kernels.

    Args:
        in_channels, out_channels: C_in, C_out.
        kernel_size: odd k.
        stride: 1 or 2 (2 halves H and W).
        dilation: dilation rate (the dilated middle layers use 2, 4, 8, 16).
        activation: ``"elu"`` (default), ``"lrelu"`` (LeakyReLU 0.2) or ``None`` (identity feature
            branch, gate only).
    """

    ACTIVATIONS = ("elu", "lrelu", None)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, activation: str | None = "elu"):
        super().__init__()
        name = type(self).__name__
        _positive_int(in_channels, "in_channels", name)
        _positive_int(out_channels, "out_channels", name)
        _positive_int(kernel_size, "kernel_size", name)
        _positive_int(stride, "stride", name)
        _positive_int(dilation, "dilation", name)
        if kernel_size % 2 == 0:
            raise ValueError(f"{name}: kernel_size must be odd for 'same' padding, got {kernel_size}")
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"{name}: activation must be one of {self.ACTIVATIONS}, got {activation!r}")
        self.out_channels = out_channels
        self.activation = activation
        padding = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv2d(in_channels, 2 * out_channels, kernel_size, stride=stride, padding=padding,
                              dilation=dilation)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Variance-preserving start: He-normal feature weights doubled, gate weights N(0, 1/fan_in), zero bias.

        PyTorch's default conv init shrinks the signal a little per layer, and the gate (~0.5 at start)
        halves it again: through the ~20 gated layers of the generator a fresh network's output then
        ignores its input (measured: an output change of ~1e-7 for a different input image). The factor 2
        on the feature weights compensates the gate's average of 0.5, so the signal keeps its scale.
        """
        weight = self.conv.weight
        fan_in = weight.shape[1] * weight.shape[2] * weight.shape[3]
        with torch.no_grad():
            weight[: self.out_channels].normal_(0.0, 2.0 * math.sqrt(2.0 / fan_in))
            weight[self.out_channels:].normal_(0.0, math.sqrt(1.0 / fan_in))
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, C_in, H, W] -> [B, C_out, H_out, W_out]``."""
        features, gate = self.conv(x).split(self.out_channels, dim=1)
        if self.activation == "elu":
            features = F.elu(features)
        elif self.activation == "lrelu":
            features = F.leaky_relu(features, 0.2)
        return features * torch.sigmoid(gate)


class GatedDeconv(nn.Module):
    r"""Upsampling by 2 then a gated 3×3 convolution (DeepFill v2's "deconv"; no checkerboard).

    ``x [B, C_in, H, W] -> nearest x2 -> GatedConv2d -> [B, C_out, 2H, 2W]``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, activation: str | None = "elu"):
        super().__init__()
        self.conv = GatedConv2d(in_channels, out_channels, kernel_size, activation=activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, C_in, H, W] -> [B, C_out, 2H, 2W]``."""
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
