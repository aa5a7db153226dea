"""Inpainting networks: the two-stage generator, the global-local discriminator, gated convolutions and the
registry of attention variants."""
from .attention import ATTENTION_VARIANTS, ATTENTIONS, KERNEL_BACKENDS, AttentionVariant
from .discriminator import GlobalLocalDiscriminator
from .gated import GatedConv2d, GatedDeconv
from .generator import IMAGENET_MEAN, InpaintGenerator, attention_min_size, composite

__all__ = ["ATTENTION_VARIANTS", "ATTENTIONS", "AttentionVariant", "GatedConv2d", "GatedDeconv",
           "GlobalLocalDiscriminator", "IMAGENET_MEAN", "InpaintGenerator", "KERNEL_BACKENDS", "attention_min_size",
           "composite"]
