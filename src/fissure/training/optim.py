"""Optimisers and learning-rate schedules from the ``train`` config section.

Schedules are per optimiser step: a linear warm-up over ``train.warmup_epochs`` epochs,
then constant, cosine or poly (power 0.9) decay to zero at the last step.
"""

from __future__ import annotations

import math

import torch

from ..config import TrainConfig


def build_optimizer(model: torch.nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    """Adam or AdamW (``train.optimizer``) over the trainable parameters of ``model``."""
    params = [p for p in model.parameters() if p.requires_grad]
    if train.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    return torch.optim.Adam(params, lr=train.lr, weight_decay=train.weight_decay)


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the base learning rate after ``step`` optimiser steps."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "none" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return (1.0 - progress) ** 0.9


def build_scheduler(
    optimizer: torch.optim.Optimizer, train: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-step schedule of ``train.scheduler`` over ``train.epochs`` epochs."""
    total = train.epochs * steps_per_epoch
    warmup = int(round(train.warmup_epochs * steps_per_epoch))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, warmup, train.scheduler)
    )
