"""Attention layers built on the masked temperature attention op: MHTMA and the paper's baselines."""
from .attention import MaskedTemperatureAttention
from .baselines import ATMA, ContextualAttention
from .temperature import TemperatureNetwork

__all__ = ["ATMA", "ContextualAttention", "MaskedTemperatureAttention", "TemperatureNetwork"]
