"""From YAML and dotted overrides to a checked :class:`~fissure.config.sections.Config`, and
back to YAML."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Union

import yaml

from ..errors import ConfigError
from ..writes import replacing
from .sections import (
    SPLITS,
    Config,
    DataConfig,
    check_threshold,
)


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
        item = (typing.get_args(tp) or (str, Any))[1]
        return {str(k): _coerce(f"{key}.{k}", v, item) for k, v in value.items()}
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
"""The value of ``train.batch_size`` (a size found on the device) and ``data.size`` (a crop
the training images imply) that asks for a value found at setup."""


def _check(cfg: Config) -> None:
    batch = cfg.train.batch_size
    if isinstance(batch, str) and batch != AUTO:
        raise ConfigError(f"train.batch_size: expected a positive int or 'auto', got {batch!r}")
    _check_size(cfg.data)
    _check_ranges(cfg)
    _check_augment(cfg)
    if cfg.train.lr <= 0:
        raise ConfigError(f"train.lr: must be positive, got {cfg.train.lr}")
    if cfg.train.patience < 0 or (cfg.train.num_workers or 0) < 0:
        raise ConfigError("train.patience and train.num_workers must be >= 0")
    if cfg.train.select_tolerance < 0 or cfg.train.min_val_images < 0:
        raise ConfigError("train.select_tolerance and train.min_val_images must be >= 0")
    if cfg.train.min_steps < 0:
        raise ConfigError(f"train.min_steps: must be >= 0 (0: keep data.size), got "
                          f"{cfg.train.min_steps}")
    if cfg.train.min_steps and cfg.data.mode != "crop":
        raise ConfigError("train.min_steps: it shrinks training crops, so it needs "
                          "data.mode: crop")
    if cfg.train.keep_every < 0:
        raise ConfigError(f"train.keep_every: must be >= 0 (0: keep no epoch), got "
                          f"{cfg.train.keep_every}")
    if not 0.0 <= cfg.train.ema_start < 1.0:
        raise ConfigError(f"train.ema_start: must be within [0, 1), got {cfg.train.ema_start}")
    if (cfg.train.max_minutes or 0) < 0:
        raise ConfigError(f"train.max_minutes: must be >= 0 (0: no budget), got "
                          f"{cfg.train.max_minutes}")
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


def _check_ranges(cfg: Config) -> None:
    """Counts that must be at least 1 and amounts that must not be negative."""
    train, batch = cfg.train, cfg.train.batch_size
    positive = {
        "train.select_window": train.select_window,
        "train.epochs": train.epochs,
        "train.batch_size": batch if isinstance(batch, int) else 1,
        "train.accumulate": train.accumulate,
        "eval.batch_size": cfg.eval.batch_size,
        "eval.thresholds": cfg.eval.thresholds,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key}: must be at least 1, got {value}")
    # a negative grad_clip would flip the gradients, a negative min_delta reward worse epochs
    not_negative = {
        "train.weight_decay": train.weight_decay,
        "train.warmup_epochs": train.warmup_epochs,
        "train.grad_clip": train.grad_clip or 0,
        "train.min_delta": train.min_delta,
        "train.steps_per_epoch": train.steps_per_epoch or 0,  # 0, like null: one pass
        "eval.tolerance": cfg.eval.tolerance,
        "eval.min_area": cfg.eval.min_area,
        **{f"augment.{key}": getattr(cfg.augment, key)
           for key in ("brightness", "contrast", "gamma", "noise")},
    }
    for key, value in not_negative.items():
        if value < 0:
            raise ConfigError(f"{key}: must be >= 0, got {value}")


def _check_augment(cfg: Config) -> None:
    """Augmentation probabilities within [0, 1] (strengths: :func:`_check_ranges`)."""
    for key in ("hflip", "vflip", "rot90", "blur"):
        value = getattr(cfg.augment, key)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"augment.{key}: a probability, so within [0, 1], got {value}")


def _check_size(data: DataConfig) -> None:
    size = data.size
    if isinstance(size, str):
        if size != AUTO:
            raise ConfigError(f"data.size: expected a positive int or 'auto', got {size!r}")
        if data.mode != "crop":
            raise ConfigError("data.size: 'auto' picks a crop, so it needs data.mode: crop")
    elif size < 32:
        raise ConfigError(f"data.size: must be at least 32, got {size}")
    if data.min_size < 32:
        raise ConfigError(f"data.min_size: must be at least 32, got {data.min_size}")


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


def changed_keys(before: Config, after: Config) -> list[str]:
    """The dotted keys whose values differ between two configs, in declared order."""

    def flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in values.items():
            if isinstance(value, Mapping):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    old, new = flat(config_to_dict(before)), flat(config_to_dict(after))
    return [key for key in dict.fromkeys([*old, *new]) if old.get(key) != new.get(key)]


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
    """Write ``cfg`` as YAML, keys in their declared order; whole or not at all (a resume
    reads it, and a file cut short could still parse, its missing keys then defaults)."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
