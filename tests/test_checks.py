"""One rule, one check (mhtma_kernels.ops.checks): each rule accepts and rejects the same values wherever a
setting enters -- the op, the layer, the generator, the training config, the device resolver -- and the
layer settles its backend once, not per forward."""
import pytest
import torch

from mhtma_kernels import MaskedTemperatureAttention, masked_temperature_attention
from mhtma_kernels.ops import (BACKENDS, check_backend, check_device, check_lambda_m, check_patch_size,
                               check_temperature)
from mhtma_model.config import ConfigError, load_config
from mhtma_model.device import resolve_device
from mhtma_model.networks import InpaintGenerator

GOOD_TEMPERATURES = [pytest.param("learned", "learned", id="learned"), pytest.param(0.5, 0.5, id="float"),
                     pytest.param(2, 2.0, id="int")]
BAD_TEMPERATURES = [pytest.param(v, id=i) for v, i in ((0.0, "zero"), (-1.0, "negative"), (float("inf"), "inf"),
                                                        (float("nan"), "nan"), ("fixed", "word"), (True, "bool"))]
BAD_PATCH_SIZES = [pytest.param(v, id=i) for v, i in ((0, "zero"), (2, "even"), (-3, "negative"), (3.0, "float"),
                                                       (True, "bool"))]


@pytest.mark.parametrize("value, expected", GOOD_TEMPERATURES)
def test_good_temperatures_pass_everywhere(value, expected):
    assert check_temperature(value) == expected
    assert MaskedTemperatureAttention(4, temperature=value).fixed_temperature == (None if expected == "learned"
                                                                                   else expected)
    assert InpaintGenerator(base_channels=4, temperature=value).temperature_mode == expected
    assert load_config(None, [f"model.temperature={value}"]).model.temperature == expected


@pytest.mark.parametrize("value", BAD_TEMPERATURES)
def test_bad_temperatures_fail_everywhere_with_one_line(value):
    with pytest.raises(ValueError, match=r"^temperature must be 'learned' or a finite positive float, got "):
        check_temperature(value)
    for build, owner in ((lambda: MaskedTemperatureAttention(4, temperature=value), "MaskedTemperatureAttention"),
                         (lambda: InpaintGenerator(base_channels=4, temperature=value), "InpaintGenerator")):
        with pytest.raises(ValueError, match=rf"^{owner}: temperature must be 'learned'") as info:
            build()
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("value", [pytest.param(v, id=i) for v, i in ((0.0, "zero"), (-1.0, "negative"),
                                                                      ("hot", "word"))])
def test_config_names_the_key_of_a_bad_temperature(value):
    with pytest.raises(ConfigError, match=r"model\.temperature: must be 'learned' or a positive number"):
        load_config(None, [f"model.temperature={value}"])


@pytest.mark.parametrize("value", BAD_PATCH_SIZES)
def test_bad_patch_sizes_fail_everywhere(value):
    with pytest.raises(ValueError, match=r"^patch_size must be a positive odd integer"):
        check_patch_size(value)
    with pytest.raises(ValueError, match=r"^MaskedTemperatureAttention: patch_size must be a positive odd integer"):
        MaskedTemperatureAttention(4, patch_size=value)
    with pytest.raises(ValueError, match=r"^InpaintGenerator: patch_size must be a positive odd integer"):
        InpaintGenerator(base_channels=4, patch_size=value)


@pytest.mark.parametrize("value", [1, 3, 5], ids=lambda s: f"s{s}")
def test_odd_patch_sizes_pass(value):
    assert check_patch_size(value) == value == MaskedTemperatureAttention(4, patch_size=value).patch_size
    assert load_config(None, [f"model.patch_size={value}"]).model.patch_size == value


@pytest.mark.parametrize("value", [pytest.param(v, id=str(v)) for v in ("cuda", "Torch", "", None)])
def test_bad_backends_fail_everywhere(value):
    expected = rf"backend must be one of {BACKENDS}".replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(ValueError, match="^" + expected):
        check_backend(value)
    with pytest.raises(ValueError, match="^MaskedTemperatureAttention: " + expected):
        MaskedTemperatureAttention(4, backend=value)
    with pytest.raises(ValueError, match="^InpaintGenerator: " + expected):
        InpaintGenerator(base_channels=4, attention="none", backend=value)
    q, k, v = torch.randn(1, 1, 3, 4), torch.randn(1, 1, 2, 4), torch.randn(1, 1, 2, 4)
    with pytest.raises(ValueError, match="^" + expected):
        masked_temperature_attention(q, k, v, torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 1), backend=value)


@pytest.mark.parametrize("value, expected", [("auto", "auto"), (None, "auto"), ("cpu", "cpu"), ("cuda", "cuda"),
                                             ("cuda:1", "cuda:1"), (torch.device("cpu"), "cpu")],
                         ids=["auto", "none", "cpu", "cuda", "cuda-1", "torch-device"])
def test_device_settings_that_pass(value, expected):
    assert check_device(value) == expected
    if isinstance(value, str):
        assert load_config(None, [f"train.device={value}"]).train.device == value


@pytest.mark.parametrize("value", ["gpu", "tpu", "cuda:x", "meta", "cuda:-1"])
def test_device_settings_that_fail_in_the_config_and_the_resolver(value):
    with pytest.raises(ValueError, match=r"^device must be 'auto', 'cpu' or 'cuda\[:N\]', got "):
        check_device(value)
    with pytest.raises(ValueError, match=r"device must be 'auto', 'cpu' or 'cuda\[:N\]'"):
        resolve_device(value)
    with pytest.raises(ConfigError, match=r"train\.device: must be 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        load_config(None, [f"train.device={value}"])


@pytest.mark.parametrize("value", [pytest.param(v, id=i) for v, i in ((0, "zero"), (-1.0, "negative"),
                                                                      (float("inf"), "inf"), (True, "bool"))])
def test_bad_lambda_m_fails_with_its_owner(value):
    with pytest.raises(ValueError, match=r"^MaskedTemperatureAttention: lambda_m must be a finite positive"):
        MaskedTemperatureAttention(4, lambda_m=value)
    with pytest.raises(ValueError, match=r"^lambda_m must be a finite positive number"):
        check_lambda_m(value)


# ------------------------------------------------------------------------------ the layer's backend, once


def _layer_output(layer):
    torch.manual_seed(1)
    x, mask = torch.randn(1, 4, 6, 6), torch.zeros(1, 1, 6, 6)
    mask[..., 1:3, 1:4] = 1
    with torch.no_grad():
        return layer(x, mask)


def test_mhtma_backend_read_when_the_layer_is_built_holds_for_its_forwards(monkeypatch):
    """MHTMA_BACKEND=reference when the layer is built: its forwards run the reference backend even after the
    variable changes (to a value the op would refuse); moving the layer (``.to()``) reads it again."""
    monkeypatch.delenv("MHTMA_BACKEND", raising=False)
    torch.manual_seed(0)
    expected = _layer_output(MaskedTemperatureAttention(4, heads=2, backend="reference"))
    monkeypatch.setenv("MHTMA_BACKEND", "reference")
    torch.manual_seed(0)
    layer = MaskedTemperatureAttention(4, heads=2)
    monkeypatch.setenv("MHTMA_BACKEND", "no-such-backend")
    torch.testing.assert_close(_layer_output(layer), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="MHTMA_BACKEND must be one of"):
        layer.to("cpu")


def test_assigning_the_backend_checks_it():
    layer = MaskedTemperatureAttention(4, heads=2, backend="torch")
    layer.backend = "reference"
    assert layer.backend == "reference"
    with pytest.raises(ValueError, match="^MaskedTemperatureAttention: backend must be one of"):
        layer.backend = "cuda"
