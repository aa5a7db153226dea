"""Attention layers built on the masked temperature attention op: MHTMA and the paper's baselines."""
from .attention import MaskedTemperatureAttention
from .temperature import TemperatureNetwork

__all__ = ["MaskedTemperatureAttention", "TemperatureNetwork"]
