"""The masked temperature attention op: public function, reference and backends."""
from .attention import masked_temperature_attention, resolve_backend
from .checks import BACKENDS, check_backend, check_device, check_lambda_m, check_patch_size, check_temperature
from .chunked.op import EXPORT_DECOMPOSITIONS
from .timed_choice import dispatch_report
from .reference import attention_weights_reference, masked_temperature_attention_reference

__all__ = [
    "BACKENDS",
    "EXPORT_DECOMPOSITIONS",
    "attention_weights_reference",
    "check_backend",
    "check_device",
    "check_lambda_m",
    "check_patch_size",
    "check_temperature",
    "dispatch_report",
    "masked_temperature_attention",
    "masked_temperature_attention_reference",
    "resolve_backend",
]
