"""Everything a training run is built from, made once from the config.

:func:`build_setup` joins the process group (under torchrun), seeds the random number
generators, and builds the datasets, the model and its DDP wrapper, the loss, the
optimiser, the schedule, the gradient scaler and the EMA, in this order: the order of the
random draws is part of what makes a fixed-seed run reproducible. It returns them in one
:class:`TrainSetup` and does nothing else; :func:`fissure.training.loop.fit` runs them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..config import Config
from ..data import CrackDataset, PairSource, crack_fraction
from ..data.loader import default_workers
from ..data.transforms import eval_transform, train_transform
from ..losses import build_loss
from ..model import build_model
from ..runtime import InputPolicy, select_device
from .distributed import Dist, data_parallel, init_distributed, shard
from .optim import build_optimizer, build_scheduler

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TrainSetup:
    """The parts of one training run, as :func:`build_setup` made them from ``cfg``.

    ``model`` holds the weights (saved, averaged by the EMA); ``forward`` is what a training
    step calls: the model itself, its DDP wrapper in a process group, compiled with
    ``train.compile``. ``batch_size`` is this process's share of ``train.batch_size``;
    ``workers`` the DataLoader workers of each loader; ``steps_per_epoch`` the optimiser
    steps of one epoch, on which the schedule is laid out.
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

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights validation scores and ``best.pt`` keeps: the EMA's average if any."""
        return self.ema.module if self.ema is not None else self.model


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_setup(cfg: Config, source: PairSource) -> TrainSetup:
    """Build the run that ``cfg`` describes on the pairs of ``source``.

    Under torchrun this joins the process group; wrap the run in
    :func:`fissure.training.distributed.process_group` to leave it at the end.
    """
    info, device = init_distributed(select_device(cfg.train.device))
    seed_everything(cfg.train.seed)
    train_set = CrackDataset(source, source.samples("train"),
                             train_transform(cfg.data, cfg.augment), cfg.data.on_error)
    val_set = CrackDataset(source, source.samples("val"), eval_transform(), cfg.data.on_error)
    model, forward = _model(cfg, info, device)
    workers = cfg.train.num_workers
    if workers is None:
        workers = default_workers(device, info.local_world)
    shard([], cfg.train.batch_size, info)  # checks divisibility up front
    loss_fn = _loss(cfg, train_set)
    steps = _steps_per_epoch(cfg, len(train_set))
    optimizer = build_optimizer(model, cfg.train)
    return TrainSetup(
        cfg=cfg, dist=info, device=device, train_set=train_set, val_set=val_set,
        policy=InputPolicy(cfg.data.mode, cfg.data.size), model=model, forward=forward,
        loss_fn=loss_fn, optimizer=optimizer,
        scheduler=build_scheduler(optimizer, cfg.train, steps),
        scaler=_scaler(cfg, device), ema=_ema(cfg, model),
        batch_size=cfg.train.batch_size // info.world, workers=workers, steps_per_epoch=steps,
    )


def _model(cfg: Config, info: Dist, device: torch.device) -> tuple[torch.nn.Module, Callable]:
    """``(model, forward)`` on ``device``; see :class:`TrainSetup`."""
    model = build_model(cfg.model.encoder, cfg.model.pretrained, cfg.model.n_classes)
    model.to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    model, forward = data_parallel(model, info, device, cfg.train.sync_bn)
    if cfg.train.compile:
        forward = torch.compile(forward)
    return model, forward


def _loss(cfg: Config, train_set: CrackDataset) -> Loss:
    """``train.loss``; ``pos_weight: auto`` is worked out from the training masks."""
    params = dict(cfg.train.loss.params)
    fraction = crack_fraction(train_set) if params.get("pos_weight") == "auto" else None
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
    """An exponential moving average of ``model``'s weights with ``train.ema``'s decay."""
    if not cfg.train.ema:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.train.ema))
