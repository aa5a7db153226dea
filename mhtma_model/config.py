"""Training configuration: five dataclass sections, YAML files and ``section.key=value`` overrides.

``Config`` = ``run`` (where and how a run is stored), ``data`` (images, size, masks), ``model`` (generator
and discriminator), ``loss`` (weights of the generator objective, GAN loss) and ``train`` (optimiser,
schedule, validation, resume, precision, device).

The dataclass defaults ARE the demo: ``load_config()`` with no file equals ``load_config("demo")``
(the packaged ``mhtma_model/configs/demo.yaml`` restates every default with comments). The paper
configs (``paris_streetview``, ``celeba_hq``, ``places2``) set every key they rely on.

Overrides are ``section.key=value`` strings; the value is parsed with ``yaml.safe_load`` (so ``null``,
``true``, ``[0.5, 0.9]`` and ``1e-4`` work) and then coerced and validated against the field's type.
Unknown sections or keys and bad values raise :class:`ConfigError` (a ``ValueError``) listing what
is valid.

Why not OmegaConf structured configs (tried): with these dataclasses as the schema it saved
41 of 440 lines, but only after keeping a third of the coercion (integral floats and "1e3" for ints,
ints for ``Union[str, float]``, the legacy booleans of ``train.amp`` — OmegaConf turns ``off`` into the
string ``'False'``), the key walk with its lists of valid keys, and a translation of its multi-line
errors; and it changed behaviour (a number for a path became a string silently, ``${...}`` in a path
became an interpolation error). Not worth a new dependency.
"""
from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from mhtma_kernels.ops import BACKENDS, check_backend, check_device, check_lambda_m, check_patch_size, check_temperature

from .masks import parse_protocol_mix
from .networks import ATTENTION_VARIANTS, ATTENTIONS, GlobalLocalDiscriminator, InpaintGenerator, attention_min_size
from .output_files import write_text_atomic
from .precision import AMP_SETTINGS, LEGACY_AMP

__all__ = ["ConfigError", "RunConfig", "DataConfig", "ModelConfig", "LossConfig", "TrainConfig", "Config",
           "load_config", "packaged_config", "packaged_config_names", "build_generator", "build_discriminator",
           "ATTENTIONS", "BACKENDS", "GAN_LOSSES"]

# ATTENTIONS (mhtma_model.networks.attention) and BACKENDS (mhtma_kernels.ops.attention) are the registries
# themselves, re-exported here for config users.
GAN_LOSSES = ("hinge", "wgan-gp")
PACKAGED_DIR = Path(__file__).with_name("configs")


class ConfigError(ValueError):
    """A config file or override names an unknown key or holds a bad value."""


@dataclass
class RunConfig:
    """Where the run lives. ``dir`` holds config.yaml, checkpoints/, samples/ and tb/ (relative to cwd)."""
    dir: str = "runs/demo"
    seed: int = 0


@dataclass
class DataConfig:
    """Images: ``root`` None = the embedded demo dataset (scikit-image sample photos, random crops).

    ``size``: square training side (multiple of 8). ``masks``: None = free-form masks generated on the fly,
    or a folder of mask images (> 127 = hole). ``mask_protocols``: the generated masks' protocol mix, e.g.
    ``"lama-thick:1, lama-medium:1, free-form:2"`` (:func:`mhtma_model.masks.parse_protocol_mix`; None =
    ``free-form``; not together with ``masks``). ``val_fraction``: share of images held out for validation.
    """
    root: Optional[str] = None
    size: int = 64
    batch_size: int = 4
    val_fraction: float = 0.1
    num_workers: int = 0
    masks: Optional[str] = None
    mask_protocols: Optional[str] = None


@dataclass
class ModelConfig:
    """Generator (``InpaintGenerator``) and discriminator (``GlobalLocalDiscriminator``) settings.

    ``temperature``: "learned" or a positive float (fixed t, ablation). ``disc_channels``: discriminator
    width C (paper 64).
    """
    base_channels: int = 8
    attention: str = "mhtma"
    heads: int = 2
    temperature: Union[str, float] = "learned"
    patch_size: int = 3
    lambda_m: float = 1e4
    sketch: bool = False
    backend: str = "auto"
    disc_channels: int = 8


@dataclass
class LossConfig:
    """Generator objective ``l1_coarse·|I_c−I_gt|₁ + l1_out·|I_out−I_gt|₁ + perceptual·L_perc(I_c) +
    adversarial·L_adv``; discriminator: hinge (default) or WGAN-GP (``gp_weight``·gradient penalty).

    ``vgg16``: VGG16 state-dict file for the perceptual loss (None = env ``MHTMA_VGG16``); only read when
    ``perceptual > 0``. The demo sets ``perceptual: 0`` because no weights file ships with the package.
    """
    gan: str = "hinge"
    l1_coarse: float = 1.2
    l1_out: float = 1.0
    perceptual: float = 0.0
    adversarial: float = 0.01
    gp_weight: float = 10.0
    vgg16: Optional[str] = None


@dataclass
class TrainConfig:
    """Optimisation and schedule.

    ``max_steps``/``max_epochs``: stop after this many generator updates / epochs (None = no limit; early
    stopping ends paper runs). ``val_every``: 0 = validate at the end of every epoch, N > 0 = every N
    steps. ``patience``: validations without improvement before stopping. ``checkpoint_every``: steps
    between ``last.pt`` saves (also saved at every validation and at the end). ``resume``: "auto"
    (continue from run.dir/checkpoints/last.pt if present), "never" (refuse a run dir that already has
    one), or a checkpoint path. ``device``: "auto" | "cpu" | "cuda" | "cuda:N".
    ``amp``: "auto" (bf16 autocast on GPUs with bf16, fp16 + GradScaler on older GPUs, off on CPU) | "bf16" |
    "fp16" (CUDA only) | "off"; the old booleans still load (true -> "auto", false -> "off").
    ``tf32``: fp32 matmuls/convolutions on CUDA may use TF32 (set when training starts).
    ``compile``: torch.compile the generator (default off). Details: :mod:`mhtma_model.precision`.
    ``threads``: CPU threads torch may use (null = torch's default). The demo uses 1: its convolutions are
    small, and on a busy 2-core machine a second OpenMP thread mostly spins (measured ~10x slower).
    """
    max_steps: Optional[int] = 300
    max_epochs: Optional[int] = None
    lr_g: float = 5e-4  # the demo's; paper configs set 1e-4
    lr_d: float = 5e-4
    betas: tuple = (0.5, 0.9)
    patience: int = 30
    val_every: int = 0
    val_batches: Optional[int] = None
    sample_every: int = 100
    log_every: int = 10
    checkpoint_every: int = 100
    resume: str = "auto"
    amp: str = "auto"
    tf32: bool = True
    compile: bool = False
    device: str = "auto"
    threads: Optional[int] = 1


SECTIONS = {"run": RunConfig, "data": DataConfig, "model": ModelConfig, "loss": LossConfig, "train": TrainConfig}


def _fields(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


# ----------------------------------------------------------------------------------------- coercion

def _as_int(value, where):
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    raise ConfigError(f"{where}: expected an integer, got {value!r}")


def _as_float(value, where):
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        out = float(value)
    elif isinstance(value, str):
        try:
            out = float(value)  # YAML 1.1 reads "1e4" as a string
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    else:
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if not math.isfinite(out):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return out


def _as_bool(value, where):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
        return value.lower() in ("true", "yes", "on", "1")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ConfigError(f"{where}: expected true or false, got {value!r}")


def _as_str(value, where):
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    raise ConfigError(f"{where}: expected a string, got {value!r}")


def _coerce(value, hint, where):
    """Coerce a YAML-parsed ``value`` to the dataclass field type ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        if type(None) in args and value is None:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _coerce(value, rest[0], where)
        # Union[str, float] (model.temperature): a number, or the string as given.
        if float in rest and not isinstance(value, bool):
            try:
                return _as_float(value, where)
            except ConfigError:
                pass
        return _as_str(value, where)
    if value is None:
        raise ConfigError(f"{where}: needs a value, got nothing ({where}= or null); give one or leave the override out")
    if hint is int:
        return _as_int(value, where)
    if hint is float:
        return _as_float(value, where)
    if hint is bool:
        return _as_bool(value, where)
    if hint is str:
        return _as_str(value, where)
    if hint is tuple:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list such as [0.5, 0.9], got {value!r}")
        return tuple(_as_float(v, where) for v in value)
    raise TypeError(f"unsupported config field type {hint!r} at {where}")  # pragma: no cover


# --------------------------------------------------------------------------------------- validation

def _check(cond: bool, where: str, message: str, value) -> None:
    if not cond:
        raise ConfigError(f"{where}: {message}, got {value!r}")


def _check_protocols(d: DataConfig) -> None:
    """``data.mask_protocols``: a mix :func:`parse_protocol_mix` accepts, and not together with ``data.masks``."""
    if d.mask_protocols is None:
        return
    _check(d.masks is None, "data.mask_protocols", "generates masks, so data.masks must be null", d.mask_protocols)
    try:
        parse_protocol_mix(d.mask_protocols)
    except ValueError as exc:
        raise ConfigError(f"data.mask_protocols: {exc}") from None


def _obeys(rule, value) -> bool:
    """Whether ``value`` passes one of the shared rules (:mod:`mhtma_kernels.ops.checks`); the config words
    its own ``section.key: ...`` message."""
    try:
        rule(value)
    except ValueError:
        return False
    return True


def _validate(cfg: "Config") -> None:
    r, d, m, lo, t = cfg.run, cfg.data, cfg.model, cfg.loss, cfg.train
    _check(bool(r.dir), "run.dir", "must be a non-empty path", r.dir)
    _check(r.seed >= 0, "run.seed", "must be >= 0", r.seed)
    _check(d.root is None or bool(d.root), "data.root", "must be a folder path or null (demo dataset)", d.root)
    _check(d.size % 8 == 0 and d.size >= 16, "data.size", "must be a multiple of 8 and >= 16 (e.g. 64, 256)",
           d.size)
    _check(d.batch_size >= 1, "data.batch_size", "must be >= 1", d.batch_size)
    _check(0.0 < d.val_fraction < 1.0, "data.val_fraction", "must lie strictly between 0 and 1", d.val_fraction)
    _check(d.num_workers >= 0, "data.num_workers", "must be >= 0", d.num_workers)
    _check(d.masks is None or bool(d.masks), "data.masks", "must be a folder path or null (generated masks)",
           d.masks)
    _check_protocols(d)
    _check(m.base_channels >= 1, "model.base_channels", "must be >= 1", m.base_channels)
    _check(m.attention in ATTENTIONS, "model.attention", f"must be one of {list(ATTENTIONS)}", m.attention)
    _check(m.heads >= 1, "model.heads", "must be >= 1", m.heads)
    _check(_obeys(check_temperature, m.temperature), "model.temperature", "must be 'learned' or a positive number",
           m.temperature)
    _check(_obeys(check_patch_size, m.patch_size), "model.patch_size", "must be a positive odd integer", m.patch_size)
    _check(_obeys(check_lambda_m, m.lambda_m), "model.lambda_m", "must be a finite positive number", m.lambda_m)
    _check(_obeys(check_backend, m.backend), "model.backend", f"must be one of {list(BACKENDS)}", m.backend)
    _check(m.disc_channels >= 1, "model.disc_channels", "must be >= 1", m.disc_channels)
    if ATTENTION_VARIANTS[m.attention].layer is not None:
        need = attention_min_size(m.patch_size)
        _check(d.size >= need, "data.size", f"must be >= {need} with model.patch_size={m.patch_size} "
               "(attention works on 1/4-resolution patches)", d.size)
    _check(lo.gan in GAN_LOSSES, "loss.gan", f"must be one of {list(GAN_LOSSES)}", lo.gan)
    for name in ("l1_coarse", "l1_out", "perceptual", "adversarial", "gp_weight"):
        _check(getattr(lo, name) >= 0, f"loss.{name}", "must be >= 0", getattr(lo, name))
    _check(lo.vgg16 is None or bool(lo.vgg16), "loss.vgg16", "must be a file path or null (env MHTMA_VGG16)",
           lo.vgg16)
    _check(t.max_steps is None or t.max_steps >= 1, "train.max_steps", "must be >= 1 or null", t.max_steps)
    _check(t.max_epochs is None or t.max_epochs >= 1, "train.max_epochs", "must be >= 1 or null", t.max_epochs)
    _check(t.lr_g > 0, "train.lr_g", "must be > 0", t.lr_g)
    _check(t.lr_d > 0, "train.lr_d", "must be > 0", t.lr_d)
    _check(len(t.betas) == 2 and all(0 <= b < 1 for b in t.betas), "train.betas",
           "must be two numbers in [0, 1), e.g. [0.5, 0.9]", list(t.betas))
    _check(t.patience >= 1, "train.patience", "must be >= 1", t.patience)
    _check(t.val_every >= 0, "train.val_every", "must be >= 0 (0 = every epoch)", t.val_every)
    _check(t.val_batches is None or t.val_batches >= 1, "train.val_batches", "must be >= 1 or null (all)",
           t.val_batches)
    for name in ("sample_every", "log_every", "checkpoint_every"):
        _check(getattr(t, name) >= 1, f"train.{name}", "must be >= 1", getattr(t, name))
    _check(bool(t.resume), "train.resume", "must be 'auto', 'never' or a checkpoint path", t.resume)
    _check(t.amp in AMP_SETTINGS, "train.amp", f"must be one of {list(AMP_SETTINGS)} (true = auto, false = off)",
           t.amp)
    _check(t.threads is None or t.threads >= 1, "train.threads", "must be >= 1 or null", t.threads)
    _check(_obeys(check_device, t.device), "train.device", "must be 'auto', 'cpu', 'cuda' or 'cuda:N'", t.device)


# -------------------------------------------------------------------------------------------- Config

@dataclass
class Config:
    """The full configuration. Build with :func:`load_config` or :meth:`from_dict`; both validate."""
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        """Plain nested dict (str/int/float/bool/None/list only; tuples become lists) — YAML and
        ``torch.load(weights_only=True)`` safe."""
        out = {}
        for name in SECTIONS:
            section = {}
            for key, value in dataclasses.asdict(getattr(self, name)).items():
                section[key] = list(value) if isinstance(value, tuple) else value
            out[name] = section
        return out

    @classmethod
    def from_dict(cls, d: dict | None) -> "Config":
        """Defaults updated with the (possibly partial) nested dict ``d``; unknown keys -> ConfigError."""
        cfg = cls()
        _apply_dict(cfg, d or {}, source="config")
        _validate(cfg)
        return cfg

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the resolved config as YAML (atomically, with the umask's mode)."""
        return write_text_atomic(path, self.to_yaml())


def _valid_keys_text() -> str:
    return "; ".join(f"{s}: {', '.join(_fields(c))}" for s, c in SECTIONS.items())


def _set(cfg: Config, section: str, key: str, value, source: str) -> None:
    if section not in SECTIONS:
        raise ConfigError(f"{source}: unknown section {section!r}; valid sections are {list(SECTIONS)} "
                          f"(keys — {_valid_keys_text()})")
    hints = _fields(SECTIONS[section])
    if key not in hints:
        raise ConfigError(f"{source}: unknown key {section}.{key!s}; valid keys of [{section}] are "
                          f"{', '.join(hints)}")
    if (section, key) == ("train", "amp") and isinstance(value, bool):
        value = LEGACY_AMP[value]  # configs and checkpoints from before amp took a dtype (YAML reads off as false)
    setattr(getattr(cfg, section), key, _coerce(value, hints[key], f"{section}.{key}"))


def _apply_dict(cfg: Config, d: dict, source: str) -> None:
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected a mapping of sections {list(SECTIONS)}, got {type(d).__name__}")
    for section, values in d.items():
        if section not in SECTIONS:
            _set(cfg, str(section), "", None, source)  # raises with the list of sections
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section [{section}] must be a mapping of keys "
                              f"({', '.join(_fields(SECTIONS[section]))}), got {values!r}")
        for key, value in values.items():
            _set(cfg, section, str(key), value, source)


def packaged_config_names() -> list[str]:
    """Names of the configs shipped inside the package (demo, paris_streetview, celeba_hq, places2)."""
    return sorted(p.stem for p in PACKAGED_DIR.glob("*.yaml"))


def packaged_config(name: str) -> Path:
    """Path of the packaged config ``name`` (without .yaml)."""
    path = PACKAGED_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no packaged config named {name!r}; available: {packaged_config_names()}")
    return path


def _resolve_path(path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    if p.is_file():
        return p
    name = str(path)
    if os.sep not in name and not name.endswith((".yaml", ".yml")) and (PACKAGED_DIR / f"{name}.yaml").is_file():
        return PACKAGED_DIR / f"{name}.yaml"
    raise ConfigError(f"config file not found: {p} (packaged configs: {packaged_config_names()})")


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"section.key=value"`` -> (section, key, yaml-parsed value)."""
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. train.max_steps=100); "
                          f"valid keys — {_valid_keys_text()}")
    dotted, raw = text.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override {text!r}: the name must be section.key (e.g. data.size); "
                          f"valid keys — {_valid_keys_text()}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: cannot parse the value ({_yaml_problem(exc)})") from None
    return parts[0], parts[1], value


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where (PyYAML's own text spans several lines)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(exc, 'problem', None) or str(exc).splitlines()[0]}{where}"


def load_config(path: str | os.PathLike | None = None, overrides=()) -> Config:
    """Defaults (= the demo) <- YAML file ``path`` (a file, or a packaged name like ``"celeba_hq"``) <-
    ``overrides`` (``"section.key=value"`` strings). Validated; raises :class:`ConfigError`."""
    cfg = Config()
    if path is not None:
        file = _resolve_path(path)
        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: not valid YAML ({_yaml_problem(exc)}); fix the file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file}: cannot read this config file ({getattr(exc, 'strerror', None) or exc})") \
                from None
        _apply_dict(cfg, data or {}, source=str(file))
    if isinstance(overrides, str):
        overrides = [overrides]
    for text in overrides:
        section, key, value = parse_override(text)
        _set(cfg, section, key, value, source=f"override {text!r}")
    _validate(cfg)
    return cfg


# ------------------------------------------------------------------------------------------ builders

def build_generator(model_cfg: ModelConfig):
    """The :class:`~mhtma_model.networks.InpaintGenerator` described by ``model_cfg``."""
    return InpaintGenerator(base_channels=model_cfg.base_channels, attention=model_cfg.attention,
                            heads=model_cfg.heads, temperature=model_cfg.temperature,
                            patch_size=model_cfg.patch_size, lambda_m=model_cfg.lambda_m, sketch=model_cfg.sketch,
                            backend=model_cfg.backend)


def build_discriminator(model_cfg: ModelConfig, image_size: int):
    """The :class:`~mhtma_model.networks.GlobalLocalDiscriminator` for ``image_size`` training images."""
    return GlobalLocalDiscriminator(base_channels=model_cfg.disc_channels, image_size=image_size)
