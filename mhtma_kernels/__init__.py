"""mhtma_kernels: masked temperature attention (fused Triton kernels, PyTorch paths) and its layers."""
from .ops import masked_temperature_attention, masked_temperature_attention_reference

__all__ = ["masked_temperature_attention", "masked_temperature_attention_reference"]
