"""Inpainting networks: the two-stage generator, the global-local discriminator and gated convolutions."""
from .discriminator import GlobalLocalDiscriminator
from .gated import GatedConv2d, GatedDeconv
from .generator import ATTENTIONS, IMAGENET_MEAN, InpaintGenerator, composite

__all__ = ["ATTENTIONS", "GatedConv2d", "GatedDeconv", "GlobalLocalDiscriminator", "IMAGENET_MEAN",
           "InpaintGenerator", "composite"]
