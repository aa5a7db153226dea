"""mhtma_kernels: masked temperature attention (fused Triton kernels, PyTorch paths) and its layers."""
from .layers import ATMA, ContextualAttention, MaskedTemperatureAttention, TemperatureNetwork
from .ops import masked_temperature_attention, masked_temperature_attention_reference

__all__ = [
    "ATMA",
    "ContextualAttention",
    "MaskedTemperatureAttention",
    "TemperatureNetwork",
    "masked_temperature_attention",
    "masked_temperature_attention_reference",
]
