"""Run configuration: YAML files read into frozen dataclasses.

A config is built from, in order: the dataclass defaults, a YAML file, then dotted
overrides such as ``train.epochs=3`` (values parsed as YAML, so ``3`` is an int and
``null`` is None). Every key is checked: an unknown key is an error naming it and the
closest valid key, and a value of the wrong type is an error naming its key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from .errors import ConfigError

SPLITS = ("train", "val", "test")
"""The dataset splits, in the order every listing uses."""

DEFAULT_THRESHOLD = 0.5
"""Decision threshold when nothing was tuned: a checkpoint that stores none, a bare model."""


def check_threshold(value: float, key: str = "threshold") -> float:
    """``value`` as a float if it lies strictly within (0, 1); a ConfigError naming ``key``.

    A pixel is crack where its probability is ``> threshold``, so 0 and 1 would make every
    pixel, or none, crack.
    """
    number = float(value)
    if not 0.0 < number < 1.0:
        raise ConfigError(f"{key}: must be within (0, 1), got {value}")
    return number


def _choice(default: Any, *choices: Any) -> Any:
    return field(default=default, metadata={"choices": choices})


@dataclass(frozen=True)
class SnowflakeConfig:
    """Where the stage source finds its manifest and files."""

    connection: str | None = None  # connections.toml name, "local" (emulator) or None (active)
    database: str = "PROJET_FISSURES"
    schema: str = "STORAGE_SCHEMA"
    stage: str = "MY_FISSURE_STAGE"
    manifest: str = "V_TRAINING_DATA"
    image_column: str = "IMAGE_NAME"
    mask_column: str = "MASK_NAME"
    group_column: str = "IMAGE_GROUP"
    image_prefix: str = "images"
    mask_prefix: str = "masks"
    suffix: str = ".gz"
    cache_dir: str = "~/.cache/fissure/stage"
    refresh: bool = False


@dataclass(frozen=True)
class DataConfig:
    """Where the pairs come from (``source``: folders or a stage) and how they are fed."""

    source: str = _choice("folder", "folder", "stage")
    root: str = "data/synth"
    # {split: id-list file}, paths relative to `root` unless absolute.
    split_files: dict[str, str] | None = None
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_seed: int = 0
    size: int = 256
    # resize: whole image shrunk to size x size (the notebook); crop: random crops at native
    # resolution for training, validation at native resolution.
    mode: str = _choice("resize", "resize", "crop")
    # Fraction of training crops forced to contain crack pixels (crop mode only).
    crack_crop_fraction: float = 0.5
    on_error: str = _choice("raise", "raise", "skip")
    max_skip_fraction: float = 0.05
    # decoded: each pair is gunzipped, decoded, binarised (and shrunk to `size` for resize
    # mode's training set) once, into a memory-mapped store beside the stage cache
    # (~/.cache/fissure/decoded, or $FISSURE_DECODED_CACHE); later epochs read arrays.
    # auto: decoded when training on CUDA and the store fits in half the free disk, else
    # none (on a CPU the model, not decoding, sets the pace).
    cache: str = _choice("auto", "auto", "none", "decoded")
    snowflake: SnowflakeConfig = field(default_factory=SnowflakeConfig)


@dataclass(frozen=True)
class AugmentConfig:
    """Training-only joint augmentations; each probability is per sample."""

    hflip: float = 0.5
    vflip: float = 0.5
    rot90: float = 0.5
    brightness: float = 0.1
    contrast: float = 0.1
    gamma: float = 0.0  # max |log gamma| shift; 0 disables
    blur: float = 0.0  # probability of a light Gaussian blur
    noise: float = 0.0  # std of additive Gaussian noise on the [0, 1] image


@dataclass(frozen=True)
class ModelConfig:
    """The network: a U-Net on a torchvision ResNet encoder."""

    encoder: str = _choice("resnet34", "resnet18", "resnet34", "resnet50")
    pretrained: bool = False
    # Widths of the four decoder stages, deepest first (smp's `decoder_channels`); None: the
    # notebook's, which follow the encoder (256, 128, 64, 64 for resnet18/34).
    decoder_channels: tuple[int, ...] | None = None
    # One logit per pixel (crack against background); kept as a key for the notebook's name.
    n_classes: int = 1


@dataclass(frozen=True)
class LossConfig:
    """A loss by name, with its keyword parameters (see :mod:`fissure.losses`)."""

    name: str = "bce"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, schedule, selection, stopping and speed settings of a training run."""

    epochs: int = 30
    # The global batch. auto: on CUDA the largest power of two whose forward and backward
    # fit in memory, halved once for safety; elsewhere 16 (training.setup.AUTO_BATCH_CPU).
    batch_size: int | str = 16
    lr: float = 1e-4
    optimizer: str = _choice("adam", "adam", "adamw")
    weight_decay: float = 0.0
    scheduler: str = _choice("none", "none", "cosine", "poly")
    warmup_epochs: float = 0.0
    grad_clip: float | None = None
    accumulate: int = 1
    # Optimiser steps per epoch; None means one pass over the training split.
    steps_per_epoch: int | None = None
    patience: int = 7
    monitor: str = _choice("iou", "iou", "f1", "loss")
    min_delta: float = 0.0
    # None: 0 on CPU, where workers would compete with the compute threads for the cores;
    # on CUDA, the process's share of the cores less one, 2 to 8 (data.loader.default_workers).
    num_workers: int | None = None
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    sync_bn: bool = False  # SyncBatchNorm across processes under torchrun
    ema: float | None = None
    nonfinite: str = _choice("stop", "stop", "skip")
    max_minutes: float | None = None
    tensorboard: bool = False  # also log history to <run>/tensorboard (needs tensorboard)
    tune_threshold: bool = True
    threshold: float = DEFAULT_THRESHOLD
    loss: LossConfig = field(default_factory=LossConfig)


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation settings: detection area, tolerance in px, swept thresholds, batch."""

    min_area: int = 20
    tolerance: int = 2
    thresholds: int = 99
    batch_size: int = 8


@dataclass(frozen=True)
class Config:
    """A whole run configuration, one section per concern; frozen once validated."""

    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0] if len(errors) == 1 else ConfigError(
            f"{key}: expected {_type_name(tp)}, got {value!r}"
        )
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = typing.get_args(tp)[0]
        return tuple(_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value))
    if _is_dataclass_type(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(tp, value, key + ".")
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): v for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number = value
        if isinstance(value, str):
            # YAML 1.1 reads "3e-4" (no dot) as a string; users mean a number.
            with contextlib.suppress(ValueError):
                number = float(value)
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            if not math.isfinite(number):
                raise ConfigError(f"{key}: must be a finite number, got {value!r}")
            return float(number)
    elif tp is str and isinstance(value, str):
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _build(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for raw_key, value in values.items():
        key = str(raw_key)
        if key not in fields:
            known = [prefix + name for name in fields]
            close = difflib.get_close_matches(prefix + key, known, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (valid: {', '.join(fields)})"
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint}")
        value = _coerce(prefix + key, value, hints[key])
        choices = fields[key].metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(
                f"{prefix}{key}: {value!r} is not one of {', '.join(map(str, choices))}"
            )
        kwargs[key] = value
    return cls(**kwargs)


AUTO = "auto"
"""The value of ``train.batch_size`` that asks for a size found on the device."""


def _check(cfg: Config) -> None:
    batch = cfg.train.batch_size
    if isinstance(batch, str) and batch != AUTO:
        raise ConfigError(f"train.batch_size: expected a positive int or 'auto', got {batch!r}")
    positive = {
        "data.size": cfg.data.size,
        "train.epochs": cfg.train.epochs,
        "train.batch_size": batch if isinstance(batch, int) else 1,
        "train.accumulate": cfg.train.accumulate,
        "eval.batch_size": cfg.eval.batch_size,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key}: must be at least 1, got {value}")
    if cfg.data.size < 32:
        raise ConfigError(f"data.size: must be at least 32, got {cfg.data.size}")
    if cfg.train.lr <= 0:
        raise ConfigError(f"train.lr: must be positive, got {cfg.train.lr}")
    if cfg.train.patience < 0 or (cfg.train.num_workers or 0) < 0:
        raise ConfigError("train.patience and train.num_workers must be >= 0")
    for key in ("val_fraction", "test_fraction", "crack_crop_fraction", "max_skip_fraction"):
        value = getattr(cfg.data, key)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"data.{key}: must be within [0, 1], got {value}")
    if cfg.data.val_fraction + cfg.data.test_fraction >= 1.0:
        raise ConfigError("data.val_fraction + data.test_fraction must be below 1")
    check_threshold(cfg.train.threshold, "train.threshold")
    if cfg.model.n_classes != 1:
        raise ConfigError(f"model.n_classes: fissure segments one class (crack against "
                          f"background), so it must be 1, got {cfg.model.n_classes}")
    channels = cfg.model.decoder_channels
    if channels is not None and (len(channels) != 4 or min(channels) < 1):
        raise ConfigError(f"model.decoder_channels: four positive widths, deepest first "
                          f"(e.g. [256, 128, 64, 64]), got {list(channels)}")
    if cfg.train.ema is not None and not 0.0 < cfg.train.ema < 1.0:
        raise ConfigError(f"train.ema: must be within (0, 1), got {cfg.train.ema}")
    if cfg.data.split_files is not None:
        unknown = set(cfg.data.split_files) - set(SPLITS)
        if unknown:
            raise ConfigError(f"data.split_files: unknown split {sorted(unknown)[0]!r}")


def config_from_dict(values: Mapping[str, Any] | None) -> Config:
    """Build a validated :class:`Config` from nested mappings."""
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"config: expected a mapping at the top level, got {values!r}")
    cfg = _build(Config, values)
    _check(cfg)
    return cfg


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict of ``cfg`` (YAML- and checkpoint-safe: tuples become lists)."""
    return dataclasses.asdict(cfg, dict_factory=lambda items: {
        k: list(v) if isinstance(v, tuple) else v for k, v in items})


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """Turn ``["train.epochs=3", "data.root=x"]`` into nested dicts."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected KEY=VALUE, e.g. train.epochs=3")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override '{item}': empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
        node[parts[-1]] = value
    return nested


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge where ``update`` wins; sections merge, values replace."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML file; a ConfigError naming the file if it is missing or no
    mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML ({reason})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return values


def load_config(
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    base: Mapping[str, Any] | None = None,
) -> Config:
    """Read a YAML config, apply dotted overrides and validate.

    ``base`` (for instance a checkpoint's stored config) sits under the file's values.
    Relative paths stay relative to the working directory, as with other CLI tools.
    """
    values: dict[str, Any] = dict(base or {})
    if path is not None:
        values = merge(values, read_yaml(path))
    values = merge(values, parse_overrides(overrides))
    return config_from_dict(values)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write ``cfg`` as YAML, keys in their declared order."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")
