"""Optimisers and learning-rate schedules from the ``train`` config section.

Schedules are per optimiser step, as functions of the run's progress
(:class:`~fissure.training.budget.Budget`): a linear warm-up over the share
``train.warmup_epochs / train.epochs`` of the run, then constant, cosine or poly (power 0.9)
decay to zero at progress 1. Without a time budget progress is steps done over steps
planned, so the schedule is the usual step-based one; with ``train.max_minutes`` it is the
larger of that and the share of the budget used, so a run the clock cuts has annealed.
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import TrainConfig
from .budget import Budget, schedule_factor


def build_optimizer(model: torch.nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    """Adam or AdamW (``train.optimizer``) over the trainable parameters of ``model``, in
    torch's fused implementation where this build has one for the parameters' device.

    Fused is the same update in one kernel over all parameters instead of one small op per
    tensor: on 2 Intel Xeon cores (AVX-512, AMX) the ResNet34 U-Net's AdamW step took 37 ms
    against 67 ms, and the whole bf16 training step of 128 px crops 312 ms against 342
    (BENCHMARKS.md, "Fused optimiser step"; 402 against 452 ms on 2 AMD Zen 4 cores).
    torch < 2.4 has no fused CPU kernel and refuses ``fused=True`` there, hence the
    per-tensor fallback.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    kind = torch.optim.AdamW if train.optimizer == "adamw" else torch.optim.Adam
    try:
        return kind(params, lr=train.lr, weight_decay=train.weight_decay, fused=True)
    except RuntimeError:
        return kind(params, lr=train.lr, weight_decay=train.weight_decay)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load ``state`` (an optimiser's ``state_dict``) into ``optimizer``, keeping the
    implementation ``optimizer`` was built with (fused or not).

    A state dict carries its groups' ``fused`` and ``foreach`` flags, and loading it would
    bring them along: a run resumed on another machine or torch could get a fused flag its
    build cannot run, or lose the fused step. They are this machine's choice, not the run's.
    """
    own = optimizer.param_groups
    groups = [{**saved, **{k: mine[k] for k in ("fused", "foreach") if k in mine}}
              for saved, mine in zip(state["param_groups"], own, strict=False)]
    optimizer.load_state_dict({**state, "param_groups": groups})


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
