"""Config: defaults = packaged demo, packaged/paper YAML files, YAML round trip, override parsing and coercion,
clear errors for unknown keys and bad values."""
import dataclasses

import pytest
import yaml

from mhtma_model.config import (SECTIONS, Config, ConfigError, load_config, packaged_config,
                                packaged_config_names)

NAMES = ["demo", "paris_streetview", "celeba_hq", "places2"]
PAPER = ["paris_streetview", "celeba_hq", "places2"]


def test_defaults_are_the_packaged_demo():
    assert load_config() == load_config("demo") == load_config(packaged_config("demo"))
    assert load_config() == Config()
    cfg = Config()
    assert cfg.run.dir == "runs/demo" and cfg.data.root is None
    assert 8 <= cfg.model.base_channels <= 12 and 64 <= cfg.data.size <= 128
    assert cfg.loss.perceptual == 0.0  # no VGG16 file ships with the package


def test_packaged_names():
    assert packaged_config_names() == sorted(NAMES)


@pytest.mark.parametrize("name", PAPER)
def test_paper_configs_set_every_key_and_the_paper_values(name):
    data = yaml.safe_load(packaged_config(name).read_text())
    for section, cls in SECTIONS.items():
        assert set(data[section]) == {f.name for f in dataclasses.fields(cls)}, section
    cfg = load_config(name)
    assert cfg.data.size == 256 and cfg.data.batch_size == 16
    assert (cfg.loss.l1_coarse, cfg.loss.l1_out, cfg.loss.perceptual, cfg.loss.adversarial) == (1.2, 1.0, 0.004, 0.01)
    assert cfg.train.lr_g == cfg.train.lr_d == 1e-4 and cfg.train.betas == (0.5, 0.9)
    assert cfg.train.patience == 30 and cfg.loss.gan == "hinge" and cfg.model.heads == 2


@pytest.mark.parametrize("name", NAMES)
def test_yaml_round_trip(name, tmp_path):
    cfg = load_config(name, ["model.temperature=0.25", "train.betas=[0.1, 0.99]", "data.root=/x/y"])
    path = cfg.save(tmp_path / "config.yaml")
    again = load_config(path)
    assert again == cfg
    assert Config.from_dict(cfg.to_dict()) == cfg
    assert isinstance(cfg.to_dict()["train"]["betas"], list)


@pytest.mark.parametrize("override, section, key, expected", [
    pytest.param("run.dir=runs/x", "run", "dir", "runs/x", id="str"),
    pytest.param("data.root=/data/celeba", "data", "root", "/data/celeba", id="path"),
    pytest.param("data.root=null", "data", "root", None, id="null"),
    pytest.param("data.size=128", "data", "size", 128, id="int"),
    pytest.param("data.batch_size=2.0", "data", "batch_size", 2, id="integral-float-to-int"),
    pytest.param("train.max_steps=1e3", "train", "max_steps", 1000, id="yaml11-exponent-string-int"),
    pytest.param("train.max_steps=null", "train", "max_steps", None, id="optional-int-null"),
    pytest.param("train.lr_g=1e-3", "train", "lr_g", 1e-3, id="exponent-float"),
    pytest.param("train.lr_d=2.5e-4", "train", "lr_d", 2.5e-4, id="float"),
    pytest.param("model.lambda_m=1e4", "model", "lambda_m", 1e4, id="float-from-string"),
    pytest.param("model.temperature=learned", "model", "temperature", "learned", id="temperature-learned"),
    pytest.param("model.temperature=2", "model", "temperature", 2.0, id="temperature-fixed"),
    pytest.param("model.sketch=true", "model", "sketch", True, id="bool"),
    pytest.param("train.amp=off", "train", "amp", "off", id="amp-off"),  # YAML reads off as false
    pytest.param("train.amp=false", "train", "amp", "off", id="amp-legacy-false"),
    pytest.param("train.amp=true", "train", "amp", "auto", id="amp-legacy-true"),
    pytest.param("train.amp=bf16", "train", "amp", "bf16", id="amp-bf16"),
    pytest.param("train.amp=fp16", "train", "amp", "fp16", id="amp-fp16"),
    pytest.param("train.tf32=false", "train", "tf32", False, id="tf32"),
    pytest.param("train.compile=true", "train", "compile", True, id="compile"),
    pytest.param("train.betas=[0.0, 0.99]", "train", "betas", (0.0, 0.99), id="tuple"),
    pytest.param("loss.gan=wgan-gp", "loss", "gan", "wgan-gp", id="choice"),
    pytest.param("train.resume=runs/a/checkpoints/last.pt", "train", "resume", "runs/a/checkpoints/last.pt",
                 id="resume-path"),
])
def test_overrides_are_coerced(override, section, key, expected):
    value = getattr(getattr(load_config(overrides=[override]), section), key)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("override, fragments", [
    pytest.param("foo.bar=1", ["unknown section 'foo'", "run", "data", "model", "loss", "train", "batch_size"],
                 id="unknown-section"),
    pytest.param("data.sizee=64", ["unknown key data.sizee", "root", "size", "batch_size", "val_fraction"],
                 id="unknown-key"),
    pytest.param("train.lr=1", ["unknown key train.lr", "lr_g", "lr_d", "max_steps"], id="unknown-key-train"),
    pytest.param("data.size", ["section.key=value"], id="no-equals"),
    pytest.param("size=64", ["section.key"], id="no-section"),
    pytest.param("data.size=63", ["data.size", "multiple of 8", "63"], id="size-not-multiple-of-8"),
    pytest.param("data.size=abc", ["data.size", "integer", "abc"], id="size-not-int"),
    pytest.param("data.size=64.5", ["data.size", "integer"], id="size-fractional"),
    pytest.param("model.attention=foo", ["model.attention", "mhtma", "atma", "contextual", "none", "foo"],
                 id="attention-choice"),
    pytest.param("train.lr_g=-1e-4", ["train.lr_g", "> 0"], id="negative-lr"),
    pytest.param("train.lr_d=0", ["train.lr_d", "> 0"], id="zero-lr"),
    pytest.param("data.batch_size=0", ["data.batch_size", ">= 1"], id="batch-zero"),
    pytest.param("data.val_fraction=1.5", ["data.val_fraction", "between 0 and 1"], id="val-fraction"),
    pytest.param("model.temperature=-1", ["model.temperature", "'learned' or a positive number"], id="temp-neg"),
    pytest.param("model.temperature=hot", ["model.temperature", "hot"], id="temp-word"),
    pytest.param("model.patch_size=4", ["model.patch_size", "odd"], id="patch-even"),
    pytest.param("model.backend=cuda", ["model.backend", "triton"], id="backend"),
    pytest.param("model.sketch=maybe", ["model.sketch", "true or false"], id="bool"),
    pytest.param("loss.gan=lsgan", ["loss.gan", "hinge", "wgan-gp"], id="gan"),
    pytest.param("loss.perceptual=-0.1", ["loss.perceptual", ">= 0"], id="negative-weight"),
    pytest.param("loss.l1_out=nan", ["loss.l1_out", "finite"], id="nan-weight"),
    pytest.param("train.betas=[0.5]", ["train.betas", "two numbers"], id="betas-len"),
    pytest.param("train.betas=0.5", ["train.betas", "list"], id="betas-scalar"),
    pytest.param("train.patience=0", ["train.patience", ">= 1"], id="patience"),
    pytest.param("train.device=gpu", ["train.device", "cuda:N"], id="device"),
    pytest.param("train.max_steps=0", ["train.max_steps", ">= 1"], id="max-steps"),
    pytest.param("data.size=8", ["data.size"], id="size-too-small"),
    pytest.param("train.amp=fp8", ["train.amp", "bf16", "fp16", "off", "fp8"], id="amp-choice"),
    pytest.param("train.tf32=maybe", ["train.tf32", "true or false"], id="tf32"),
])
def test_bad_overrides_give_clear_errors(override, fragments):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize("contents, pattern", [
    pytest.param("model:\n  heads: 2\n  widht: 3\n", r"unknown key model.widht.*base_channels", id="unknown-key"),
    pytest.param("model: 3\n", r"section \[model\] must be a mapping", id="section-not-mapping"),
    pytest.param("trainer:\n  lr: 1\n", r"unknown section 'trainer'", id="unknown-section"),
    pytest.param(None, r"config file not found.*demo", id="missing-file"),
])
def test_bad_file_contents(tmp_path, contents, pattern):
    path = tmp_path / ("bad.yaml" if contents is not None else "missing.yaml")
    if contents is not None:
        path.write_text(contents)
    with pytest.raises(ConfigError, match=pattern):
        load_config(path)


def test_file_then_overrides_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  size: 128\n  batch_size: 3\ntrain:\n  lr_g: 0.001\n")
    cfg = load_config(path, ["data.size=96"])
    assert (cfg.data.size, cfg.data.batch_size, cfg.train.lr_g) == (96, 3, 1e-3)
    assert cfg.model == Config().model  # untouched sections keep the defaults
    with pytest.raises(ConfigError, match="unknown key"):
        Config.from_dict({"model": {"nope": 1}})


@pytest.mark.parametrize("value", ["0", "-1", "inf", "nan"])
def test_lambda_m_checked_by_the_op_rule(value):
    """model.lambda_m follows the op's one check (finite and positive; inf and nan already fail parsing)."""
    with pytest.raises(ConfigError, match=r"model\.lambda_m: .*finite"):
        load_config(None, [f"model.lambda_m={value}"])
