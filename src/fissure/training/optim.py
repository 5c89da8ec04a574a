"""Optimisers and learning-rate schedules from the ``train`` config section.

Schedules are per optimiser step, as functions of the run's progress
(:class:`~fissure.training.budget.Budget`): a linear warm-up over the share
``train.warmup_epochs / train.epochs`` of the run, then constant, cosine or poly (power 0.9)
decay to zero at progress 1. Without a time budget progress is steps done over steps
planned, so the schedule is the usual step-based one; with ``train.max_minutes`` it is the
larger of that and the share of the budget used, so a run the clock cuts has annealed.
"""

from __future__ import annotations

import torch

from ..config import TrainConfig
from .budget import Budget, schedule_factor


def build_optimizer(model: torch.nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    """Adam or AdamW (``train.optimizer``) over the trainable parameters of ``model``."""
    params = [p for p in model.parameters() if p.requires_grad]
    if train.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    return torch.optim.Adam(params, lr=train.lr, weight_decay=train.weight_decay)


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the base learning rate after ``step`` of ``total`` optimiser steps,
    ``warmup`` of them warming up: :func:`schedule_factor` at progress ``step / total``."""
    total = max(1, total)
    return schedule_factor(step / total, warmup / total, kind, first=1.0 / total)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    train: TrainConfig,
    steps_per_epoch: int,
    budget: Budget | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-step schedule of ``train.scheduler`` over ``train.epochs`` epochs, following
    ``budget``'s progress (steps only when None)."""
    total = max(1, train.epochs * steps_per_epoch)
    budget = budget or Budget(total)
    warmup = int(round(train.warmup_epochs * steps_per_epoch)) / total
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: schedule_factor(budget.progress(step), warmup, train.scheduler,
                                                first=1.0 / total)
    )
