"""Run configuration: YAML files read into frozen dataclasses.

A config is built from, in order: the dataclass defaults, a YAML file, then dotted
overrides such as ``train.epochs=3`` (values parsed as YAML, so ``3`` is an int and
``null`` is None). Every key is checked: an unknown key is an error naming it and the
closest valid key, and a value of the wrong type is an error naming its key.
"""

from .loading import (
    AUTO,
    changed_keys,
    config_from_dict,
    config_to_dict,
    load_config,
    merge,
    parse_overrides,
    read_yaml,
    save_config,
)
from .sections import (
    DEFAULT_THRESHOLD,
    SPLITS,
    AugmentConfig,
    Config,
    DataConfig,
    EvalConfig,
    LossConfig,
    ModelConfig,
    SnowflakeConfig,
    TrainConfig,
    check_threshold,
)

__all__ = [
    "AUTO",
    "changed_keys",
    "DEFAULT_THRESHOLD",
    "SPLITS",
    "AugmentConfig",
    "Config",
    "DataConfig",
    "EvalConfig",
    "LossConfig",
    "ModelConfig",
    "SnowflakeConfig",
    "TrainConfig",
    "check_threshold",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "merge",
    "parse_overrides",
    "read_yaml",
    "save_config",
]
