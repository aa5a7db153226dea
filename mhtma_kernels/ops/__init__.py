"""The masked temperature attention op: public function, reference and backends."""
from .attention import BACKENDS, check_lambda_m, masked_temperature_attention, resolve_backend
from .dispatch import dispatch_report
from .reference import attention_weights_reference, masked_temperature_attention_reference

__all__ = [
    "BACKENDS",
    "attention_weights_reference",
    "check_lambda_m",
    "dispatch_report",
    "masked_temperature_attention",
    "masked_temperature_attention_reference",
    "resolve_backend",
]
