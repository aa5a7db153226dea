"""F_emb: the network that learns one temperature per image and head (paper Sec. III-D, Fig. 4)."""
import math

import torch
from torch import nn
from torch.nn import functional as F

FINAL_ACTIVATIONS = ("softplus", "leaky_relu")


class TemperatureNetwork(nn.Module):
    r"""Temperature network F_emb: ``x [B, C, H, W]`` (+ hole map) -> ``t [B, heads]``.

    Architecture (paper Fig. 4)::

        a = LeakyReLU_0.2(Conv3x3(.)) x 4      strides 2, 2, 2, 1 (padding 1; any H, W >= 1)
        g = [GAP(a) ‖ GMP(a)]                  [B, 2 * hidden_channels]
        t = Softplus(Linear(g)) + floor        [B, heads]   (MHTMA, Eq. 13-14; t > 0 always)
        t = LeakyReLU_0.2(Linear(g))           [B, heads]   (final_activation="leaky_relu": ATMA [7],
                                                             may be negative or zero)

    Input: the feature map the attention refines and, when ``use_mask=True`` (default), the hole
    map resized to H×W as one extra input channel, so the network can see how much of the image
    is missing when it chooses how soft the attention should be.

    Initialisation: the Linear bias is set so that the starting temperature is ``init_temperature``
    (default 0.1, i.e. 1/t = 10, DeepFill's fixed softmax scale), with the Linear weights scaled
    down (x0.1) so all images start near that value while every parameter still gets gradients.

    Args:
        in_channels: C of the feature map.
        heads: number of temperatures per image.
        hidden_channels: width of the four convolutions.
        use_mask: append the hole map as an input channel (``forward`` then needs ``hole``).
        final_activation: ``"softplus"`` (MHTMA) or ``"leaky_relu"`` (ATMA baseline).
        floor: added after Softplus (ignored for LeakyReLU).
        init_temperature: temperature at initialisation (> floor).
    """

    def __init__(self, in_channels: int, heads: int = 2, hidden_channels: int = 32, use_mask: bool = True,
                 final_activation: str = "softplus", floor: float = 1e-4, init_temperature: float = 0.1):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("heads", heads), ("hidden_channels", hidden_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TemperatureNetwork: {name} must be a positive int, got {value!r}")
        if final_activation not in FINAL_ACTIVATIONS:
            raise ValueError(f"TemperatureNetwork: final_activation must be one of {FINAL_ACTIVATIONS}, "
                             f"got {final_activation!r}")
        if not (math.isfinite(floor) and floor >= 0):
            raise ValueError(f"TemperatureNetwork: floor must be a finite number >= 0, got {floor!r}")
        if not (math.isfinite(init_temperature) and init_temperature > floor):
            raise ValueError(f"TemperatureNetwork: init_temperature must be finite and > floor ({floor}), "
                             f"got {init_temperature!r}")
        self.in_channels, self.heads, self.use_mask = in_channels, heads, use_mask
        self.final_activation, self.floor = final_activation, float(floor)
        layers = []
        channels = in_channels + (1 if use_mask else 0)
        for stride in (2, 2, 2, 1):
            layers += [nn.Conv2d(channels, hidden_channels, 3, stride=stride, padding=1), nn.LeakyReLU(0.2)]
            channels = hidden_channels
        self.encoder = nn.Sequential(*layers)
        self.linear = nn.Linear(2 * hidden_channels, heads)
        with torch.no_grad():
            self.linear.weight.mul_(0.1)
            if final_activation == "softplus":
                bias = math.log(math.expm1(init_temperature - self.floor))  # softplus^-1
            else:
                bias = init_temperature
            self.linear.bias.fill_(bias)

    def forward(self, x: torch.Tensor, hole: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, C, H, W]``, ``hole [B, 1, H, W]`` (1 = hole; needed iff use_mask) -> ``t [B, heads]``."""
        if self.use_mask:
            if hole is None:
                raise ValueError("TemperatureNetwork: use_mask=True needs hole [B, 1, H, W]")
            x = torch.cat([x, hole.to(x.dtype)], dim=1)
        a = self.encoder(x)
        g = torch.cat([a.mean(dim=(2, 3)), a.amax(dim=(2, 3))], dim=1)
        z = self.linear(g)
        if self.final_activation == "softplus":
            return F.softplus(z) + self.floor
        return F.leaky_relu(z, 0.2)
