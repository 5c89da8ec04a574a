"""What a training run carries from epoch to epoch and across restarts.

:class:`TrainState` is stored in ``last.pt`` as plain values (epochs, the best score, the
history rows of ``history.csv``) together with the samples the run could not read
(``data.on_error: skip``), each kept once with its reason for ``skipped.csv``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import FissureError
from .distributed import Dist, merge_dicts

HISTORY_FIELDS = ("epoch", "train_loss", "train_iou", "val_loss", "val_iou", "val_f1",
                  "val_f1_tuned", "threshold", "lr", "steps", "progress", "seconds", "skipped",
                  "device", "compute_dtype", "cpu")
"""Columns of ``history.csv``. ``steps`` counts the optimiser steps taken so far and
``progress`` is the schedule's position (:mod:`fissure.training.budget`); the last three
say where the epoch ran. Runs from before a column existed leave it empty."""


@dataclass
class TrainState:
    """What survives a restart; stored in ``last.pt`` as plain values."""

    epoch: int = 0
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # sample name -> reason

    def to_dict(self) -> dict[str, Any]:
        """Plain values, as stored under ``train_state`` in ``last.pt``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> TrainState:
        """From :meth:`to_dict`'s keys in a ``last.pt``; ``skipped`` may be absent (older runs)."""
        return cls(epoch=stored["epoch"], best=stored["best"], best_epoch=stored["best_epoch"],
                   bad_epochs=stored["bad_epochs"], history=list(stored["history"]),
                   skipped=dict(stored.get("skipped") or {}))

    def record_skipped(self, skipped: Iterable[tuple[str, str]],
                       log: Callable[[str], None]) -> None:
        """Add a batch's ``(name, reason)`` pairs; each name is logged the first time only."""
        for name, reason in skipped:
            if name not in self.skipped:
                self.skipped[name] = reason
                log(f"skipped {name}: {reason}")

    def pool_skipped(self, info: Dist, log: Callable[[str], None]) -> None:
        """Under DDP, take in what the other ranks skipped, so that ``skipped.csv``, the log
        and the skip limit cover the whole dataset, not rank 0's share of it."""
        if not info.active:
            return
        pooled = merge_dicts(self.skipped, info)
        for name in pooled.keys() - self.skipped.keys():
            log(f"skipped {name}: {pooled[name]}")
        self.skipped = pooled

    def check_skipped(self, total: int, max_fraction: float) -> None:
        """FissureError once more than ``max_fraction`` of ``total`` samples were skipped."""
        if len(self.skipped) > max_fraction * total:
            raise FissureError(
                f"{len(self.skipped)} of {total} samples skipped, more than "
                f"data.max_skip_fraction={max_fraction}; see skipped.csv")
