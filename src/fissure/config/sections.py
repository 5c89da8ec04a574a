"""The config's sections: one frozen dataclass per concern, with every key's default."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

SPLITS = ("train", "val", "test")
"""The dataset splits, in the order every listing uses."""

DEFAULT_THRESHOLD = 0.5
"""Decision threshold when nothing was tuned: a checkpoint that stores none, a bare model."""


def check_threshold(value: float, key: str = "threshold") -> float:
    """``value`` as a float if it lies strictly within (0, 1); a ConfigError naming ``key``.

    A pixel is crack where its probability is ``> threshold``, so 0 and 1 would make every
    pixel, or none, crack.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{key}: expected a number within (0, 1), got {value!r}")
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
    # Training crop (crop mode) or input side (resize mode), px. auto (crop mode only): the
    # largest multiple of 32, at most 256, that every training image holds
    # (data.stats.implied_crop, what `fissure data stats` prints), chosen at setup.
    size: int | str = 256
    # The smallest crop train.min_steps may shrink data.size to, px.
    min_size: int = 96
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
    # Progress (see train.max_minutes) at which the EMA starts averaging; before it,
    # validation and best.pt take the trained weights. Its decay warms up as a running mean
    # (min(ema, n / (n + 1)) after n averaged steps), so no step before the start counts.
    ema_start: float = 0.5
    nonfinite: str = _choice("stop", "stop", "skip")
    # Time budget, validation included. The learning rate, its warm-up and the EMA follow
    # progress = max(steps done / steps planned, time used / budget), so a run the clock
    # cuts has annealed; training stops early enough to validate its final weights.
    max_minutes: float | None = None
    # With a time budget, the optimiser steps it should hold: when a timed step says the
    # budget holds fewer crops of data.size, the crop shrinks by 32 px (crop mode, down to
    # data.min_size) until it holds them (training.pace, said in the log); 0: data.size.
    min_steps: int = 0
    tensorboard: bool = False  # also log history to <run>/tensorboard (needs tensorboard)
    tune_threshold: bool = True
    threshold: float = DEFAULT_THRESHOLD
    # auto: the output bias starts at log(p / (1 - p)), p the crack share of the training
    # masks (clamped to [0.001, 0.5]), with small head weights, so the first predictions
    # are the crack prior rather than 0.5 everywhere (the detection heads' prior trick).
    init_bias: str = _choice("none", "none", "auto")
    # Model selection: best.pt is the epoch whose monitored score, averaged over its last
    # select_window validations, is highest; an epoch within select_tolerance of the best
    # so far replaces it (later, more annealed weights are preferred).
    select_window: int = 1
    select_tolerance: float = 0.0
    # A validation split of fewer images than this is topped up with training images
    # (seeded by data.split_seed, logged); 0 leaves the splits alone.
    min_val_images: int = 0
    # Also keep every Nth epoch's validated weights as epochs/epoch_NNN.pt, written as
    # best.pt is, so that another selection rule can be scored afterwards; 0: none.
    keep_every: int = 0
    loss: LossConfig = field(default_factory=LossConfig)


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation settings: detection area, tolerance in px, swept thresholds, batch, and
    ``tta``: whether ``fissure evaluate`` and ``fissure predict`` average each image with
    its left-right and top-bottom flips by default (3x the compute). Validation during
    training scores single views either way."""

    min_area: int = 20
    tolerance: int = 2
    thresholds: int = 99
    batch_size: int = 8
    tta: bool = False


@dataclass(frozen=True)
class Config:
    """A whole run configuration, one section per concern; frozen once validated."""

    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
