"""Everything a training run is built from, made once from the config.

:func:`build_setup` joins the process group (under torchrun), seeds the random number
generators, and builds the model, the datasets, the model's DDP wrapper, the loss, the
optimiser, the schedule, the gradient scaler and the EMA, in this order: the order of the
random draws is part of what makes a fixed-seed run reproducible. It returns them in one
:class:`TrainSetup` and does nothing else; :func:`fissure.training.loop.fit` runs them.

Four choices are made here from the device: whether pairs go through the decoded-sample
store (``data.cache``), whether augmentation runs per sample in the loader (CPU) or per
batch on the device (CUDA, :mod:`fissure.training.augment`), the batch size when
``train.batch_size`` is ``auto``, and the crop when ``train.min_steps`` asks for more steps
than the time budget holds at ``data.size`` (:mod:`fissure.training.pace`). Each choice is
described in :attr:`TrainSetup.notes`.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from ..config import AUTO, Config
from ..data import CrackDataset, PairSource, Sample
from ..data.decoded import DecodedStore, default_root, estimate_bytes, free_bytes
from ..data.loader import default_workers
from ..data.stats import SplitStats
from ..data.transforms import eval_transform, train_transform
from ..errors import ConfigError
from ..losses import auto_pos_weight, build_loss
from ..model import build_model
from ..runtime import InputPolicy, half_largest_fitting, select_device
from .augment import BatchAugment, geometry_transform
from .budget import Budget, Clock, ema_decay
from .distributed import Dist, broadcast_float, data_parallel, init_distributed, merge_dicts, shard
from .optim import build_optimizer, build_scheduler
from .pace import fit_crop_to_budget, zero_step
from .recipe import (
    SAMPLED_IMAGES,
    check_val_cracks,
    dtype_note,
    init_output_bias,
    needs_facts,
    note_small_images,
    resolve_size,
    top_up_validation,
    train_facts,
)

Loss = Callable[..., torch.Tensor]  # loss(logits, target, valid=None), see fissure.losses

AUTO_BATCH_CPU = 16
"""``train.batch_size: auto`` off CUDA, where probing memory means nothing (the OS would
swap, not fail): the notebook's batch and the config default."""
AUTO_BATCH_LIMIT = 1024
"""The largest batch ``train.batch_size: auto`` tries on CUDA."""


@dataclass(frozen=True)
class TrainSetup:
    """The parts of one training run, as :func:`build_setup` made them from ``cfg``.

    ``model`` holds the weights (saved, averaged by the EMA); ``forward`` is what a training
    step calls: the model itself, its DDP wrapper in a process group, compiled with
    ``train.compile``. ``batch_size`` is this process's share of ``train.batch_size``;
    ``workers`` the DataLoader workers of each loader; ``steps_per_epoch`` the optimiser
    steps of one epoch, on which the schedule is laid out. ``augment``, when set, is the
    augmentation a training step applies to its uint8 batch on the device (the training
    set then yields uint8 crops); ``notes`` say what was chosen automatically, for the log.
    ``cfg`` holds the resolved batch size and crop when ``train.batch_size`` or
    ``data.size`` was ``auto``. ``budget`` is the run's progress through its steps and its
    time (:class:`~fissure.training.budget.Budget`), which the schedule and the EMA follow.
    """

    cfg: Config
    dist: Dist
    device: torch.device
    train_set: CrackDataset
    val_set: CrackDataset
    policy: InputPolicy
    model: torch.nn.Module
    forward: Callable[[torch.Tensor], torch.Tensor]
    loss_fn: Loss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    ema: AveragedModel | None
    batch_size: int
    workers: int
    steps_per_epoch: int
    augment: BatchAugment | None = None
    notes: tuple[str, ...] = ()
    budget: Budget = field(default_factory=lambda: Budget(1))

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights validation scores and ``best.pt`` keeps: the EMA's average once it
        has begun (``train.ema_start``), else the trained weights."""
        if self.ema is not None and int(self.ema.n_averaged) > 0:
            return self.ema.module
        return self.model


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_setup(
    cfg: Config,
    source: PairSource,
    *,
    batch_augment: bool | None = None,
    clock: Clock = time.monotonic,
    resuming: bool = False,
) -> TrainSetup:
    """Build the run that ``cfg`` describes on the pairs of ``source``.

    ``batch_augment`` augments whole batches on the device instead of each sample in the
    loader; None does so on CUDA only. ``clock`` is what the time budget reads (seconds).
    ``resuming``: the crop is the one the run's ``config.yaml`` recorded, not timed again
    (``train.min_steps``), so a resumed run trains on what it began with.
    Under torchrun this joins the process group; wrap the run in
    :func:`fissure.training.distributed.process_group` to leave it at the end.
    """
    info, device = init_distributed(select_device(cfg.train.device))
    seed_everything(cfg.train.seed)
    notes: list[str] = [dtype_note(device, cfg.train.amp)]
    on_device = device.type == "cuda" if batch_augment is None else batch_augment
    train_samples, val_samples = top_up_validation(
        cfg, source.samples("train"), source.samples("val"), notes)
    check_val_cracks(cfg, source, val_samples)
    facts = _facts(cfg, source, train_samples)
    cfg = resolve_size(cfg, facts, notes)
    model = _build_model(cfg, device)
    if cfg.train.init_bias == AUTO and facts is not None:
        p = init_output_bias(model, facts.crack_fraction)
        notes.append(f"train.init_bias auto: output starts at crack probability {p:.4f} "
                     f"(training masks: {100 * facts.crack_fraction:.2f} % crack pixels)")
    cfg = _resolve_batch_size(cfg, model, device, info, len(train_samples), notes)
    if resuming and cfg.train.min_steps and cfg.train.max_minutes:
        notes.append(f"train.min_steps: resumed, so the recorded {cfg.data.size} px crops "
                     "are kept")
    else:
        cfg = fit_crop_to_budget(cfg, model, device, info, notes)
    note_small_images(cfg, facts, notes, len(train_samples))
    train_store, val_store = _decoded_stores(cfg, source, (train_samples, val_samples),
                                             device, notes)
    transform = (geometry_transform(cfg.data) if on_device
                 else train_transform(cfg.data, cfg.augment))
    train_set = CrackDataset(source, train_samples, transform, cfg.data.on_error, train_store)
    val_set = CrackDataset(source, val_samples, eval_transform(), cfg.data.on_error, val_store)
    model, forward = _wrap(cfg, model, info, device)
    workers = cfg.train.num_workers
    if workers is None:
        workers = default_workers(device, info.local_world)
    shard([], cfg.train.batch_size, info)  # checks divisibility up front
    loss_fn = _loss(cfg, facts, notes)
    steps = _steps_per_epoch(cfg, len(train_set))
    optimizer = build_optimizer(model, cfg.train)
    budget = _budget(cfg, steps, clock, info)
    budget.val_cost_steps = validation_cost(cfg, facts, len(val_set))
    notes.append(budget.describe())
    return TrainSetup(
        cfg=cfg, dist=info, device=device, train_set=train_set, val_set=val_set,
        policy=InputPolicy(cfg.data.mode, cfg.data.size), model=model, forward=forward,
        loss_fn=loss_fn, optimizer=optimizer,
        scheduler=build_scheduler(optimizer, cfg.train, steps, budget),
        scaler=_scaler(cfg, device), ema=_ema(cfg, model),
        batch_size=cfg.train.batch_size // info.world, workers=workers, steps_per_epoch=steps,
        augment=BatchAugment(cfg.augment) if on_device else None, notes=tuple(notes),
        budget=budget,
    )


def _facts(cfg: Config, source: PairSource, samples: list[Sample]) -> SplitStats | None:
    """The training masks' facts: all of them for an ``auto`` value, a sample of them for
    the crop-mode log line on small images, None when nothing needs them."""
    if needs_facts(cfg):
        return train_facts(source, samples, cfg.data.on_error)
    if cfg.data.mode == "crop":
        return train_facts(source, samples, cfg.data.on_error, limit=SAMPLED_IMAGES)
    return None


def _budget(cfg: Config, steps_per_epoch: int, clock: Clock, info: Dist) -> Budget:
    """The run's :class:`Budget`; under DDP every rank reads rank 0's clock."""
    minutes = cfg.train.max_minutes
    share = (lambda value: broadcast_float(value, info)) if info.active else None
    return Budget(cfg.train.epochs * steps_per_epoch, minutes * 60 if minutes else None,
                  clock=clock, share=share)


def validation_cost(cfg: Config, facts: SplitStats | None, n_val: int) -> float:
    """A validation pass of ``n_val`` images in training steps, before one has been timed:
    its pixels over those of a step's crops, a forward pass costing about a third of a
    step (forward, backward, update). Crop-mode images are taken at the training images'
    mean size (``data.size`` squared when unknown)."""
    size = int(cfg.data.size)
    area = float(size * size)
    if cfg.data.mode == "crop" and facts is not None and facts.sizes:
        area = facts.mean_area
    return n_val * area / (3.0 * int(cfg.train.batch_size) * size * size)


def _decoded_stores(
    cfg: Config,
    source: PairSource,
    samples: tuple[list[Sample], list[Sample]],
    device: torch.device,
    notes: list[str],
) -> tuple[DecodedStore | None, DecodedStore | None]:
    """The decoded-sample stores of the training and validation sets, or (None, None).

    The training set's pairs are stored shrunk to ``data.size`` in ``resize`` mode, the
    validation set's at native resolution (validation sees whole images as they are).
    ``data.cache: auto`` stores only on CUDA, and only when the store fits in half the
    free disk.
    """
    mode = cfg.data.cache
    if mode == "none" or (mode == "auto" and device.type != "cuda"):
        return None, None
    root = default_root(cfg.data)
    resize = cfg.data.size if cfg.data.mode == "resize" else None
    need = (estimate_bytes(source, samples[0], resize)
            + estimate_bytes(source, samples[1], None))
    free = free_bytes(root)
    if mode == "auto" and need > free // 2:
        notes.append(f"data.cache auto: no decoded store; it would take {need / 2**30:.1f} "
                     f"GiB of the {free / 2**30:.1f} GiB free at {root}")
        return None, None
    notes.append(f"data.cache {mode}: decoded pairs stored in {root} "
                 f"(up to {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free)")
    return DecodedStore(root, resize), DecodedStore(root, None)


def _build_model(cfg: Config, device: torch.device) -> torch.nn.Module:
    """The model on ``device``, channels-last if ``train.channels_last``."""
    model = build_model(cfg.model.encoder, cfg.model.pretrained, cfg.model.n_classes,
                        decoder_channels=cfg.model.decoder_channels)
    model.to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def _wrap(
    cfg: Config, model: torch.nn.Module, info: Dist, device: torch.device
) -> tuple[torch.nn.Module, Callable]:
    """``(model, forward)``: DDP in a process group, compiled with ``train.compile``."""
    model, forward = data_parallel(model, info, device, cfg.train.sync_bn)
    if cfg.train.compile:
        forward = torch.compile(forward)
    return model, forward


def _resolve_batch_size(
    cfg: Config,
    model: torch.nn.Module,
    device: torch.device,
    info: Dist,
    n_train: int,
    notes: list[str],
) -> Config:
    """``cfg`` with ``train.batch_size: auto`` replaced by a number (unchanged otherwise).

    On CUDA each process probes its device (:func:`probe_batch_size`) and the group takes
    the smallest answer; elsewhere each process takes :data:`AUTO_BATCH_CPU` / processes.
    The global batch is the per-process batch times the processes.
    """
    if cfg.train.batch_size != AUTO:
        return cfg
    if device.type == "cuda":
        limit = min(AUTO_BATCH_LIMIT, max(1, n_train // info.world))
        mine = probe_batch_size(memory_probe(model, cfg, device), limit)
        per_process = min(merge_dicts({info.rank: mine}, info).values())
        how = "the largest power of two that fit a training step, halved"
    else:
        per_process = max(1, AUTO_BATCH_CPU // info.world)
        how = f"the {device.type} fallback (no memory probe off CUDA)"
    batch = per_process * info.world
    notes.append(f"train.batch_size auto: {batch}, {how}")
    return replace(cfg, train=replace(cfg.train, batch_size=batch))


def probe_batch_size(fits: Callable[[int], bool], limit: int = AUTO_BATCH_LIMIT) -> int:
    """:func:`~fissure.runtime.half_largest_fitting`, or a ConfigError when nothing fits."""
    batch = half_largest_fitting(fits, limit)
    if batch == 0:
        raise ConfigError("train.batch_size: auto: not even one sample fits a training step "
                          "on this device; lower data.size or free device memory")
    return batch


def memory_probe(
    model: torch.nn.Module, cfg: Config, device: torch.device
) -> Callable[[int], bool]:
    """``fits(n)``: whether forward and backward of ``n`` inputs of ``data.size`` run on
    ``device`` without running out of memory.

    The probe trains a copy of ``model`` on zeros, so neither the weights, their
    BatchNorm statistics nor any random generator of the run are touched.
    """
    probe = copy.deepcopy(model).train()

    def fits(n: int) -> bool:
        try:
            zero_step(probe, cfg, device, n, int(cfg.data.size))
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()

    return fits


def _loss(cfg: Config, facts: SplitStats | None, notes: list[str]) -> Loss:
    """``train.loss``; ``pos_weight: auto`` is worked out from the training masks."""
    params = dict(cfg.train.loss.params)
    fraction = None
    if params.get("pos_weight") == AUTO and facts is not None:
        fraction = max(facts.crack_fraction, 1e-6)
        notes.append(f"train.loss.params.pos_weight auto: {auto_pos_weight(fraction):.2f} "
                     f"from {100 * fraction:.2f} % crack pixels in the training masks")
    return build_loss(cfg.train.loss.name, params, crack_fraction=fraction)


def _steps_per_epoch(cfg: Config, n_train: int) -> int:
    """``train.steps_per_epoch``, else the steps of one pass over ``n_train`` samples."""
    if cfg.train.steps_per_epoch:
        return cfg.train.steps_per_epoch
    per_step = cfg.train.batch_size * cfg.train.accumulate
    return max(1, math.ceil(n_train / per_step))


def _scaler(cfg: Config, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 autocast; disabled where autocast runs in bf16 or not at all."""
    use_fp16 = (cfg.train.amp and device.type == "cuda"
                and not torch.cuda.is_bf16_supported())
    return torch.amp.GradScaler("cuda", enabled=use_fp16)


def _ema(cfg: Config, model: torch.nn.Module) -> AveragedModel | None:
    """An exponential moving average of ``model``'s weights, its decay ``train.ema``
    reached through a running mean (:func:`~fissure.training.budget.ema_decay`)."""
    if not cfg.train.ema:
        return None
    return AveragedModel(model, multi_avg_fn=_ema_update(cfg.train.ema))


def _ema_update(decay: float) -> Callable[[list, list, torch.Tensor], None]:
    """AveragedModel's ``multi_avg_fn``: one EMA step at :func:`ema_decay`'s decay."""

    @torch.no_grad()
    def update(averaged: list, current: list, n_averaged: torch.Tensor) -> None:
        weight = 1.0 - ema_decay(int(n_averaged), decay)
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, weight)
        else:
            for a, c in zip(averaged, current, strict=True):
                a.copy_(a * (1.0 - weight) + c * weight)

    return update
