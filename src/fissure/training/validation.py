"""The validation pass, and the sums both passes keep: loss, images and pixel counts
(:class:`Tally`), reduced over the ranks, and unreadable samples, limited to
``data.max_skip_fraction``."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from ..data import iter_groups
from ..data.loader import make_loader
from ..errors import FissureError
from ..metrics import ThresholdSweep, confusion_counts, f1, iou
from ..progress import progress_bar
from ..runtime import forward_logits
from .distributed import Dist, all_reduce_sum
from .setup import TrainSetup
from .state import TrainState

Log = Callable[[str], None]


@dataclass
class Tally:
    """Sums over an epoch: loss times images, images, and the (tp, fp, fn) pixel counts."""

    loss: float = 0.0
    seen: int = 0
    conf: torch.Tensor = field(default_factory=lambda: torch.zeros(3, dtype=torch.int64))

    def iou(self) -> float:
        return float(iou(*self.conf, empty=math.nan))


# -- the validation pass --------------------------------------------------------------------------


@torch.inference_mode()
def validate(
    setup: TrainSetup, state: TrainState, *, log: Log = print, progress: bool = True
) -> dict[str, float]:
    """Score :attr:`TrainSetup.eval_model` on the validation split.

    Returns ``val_loss``; ``val_iou`` and ``val_f1`` at ``train.threshold``;
    ``val_f1_tuned``, the best F1 over ``eval.thresholds`` thresholds, and ``threshold``,
    the one it was reached at (``train.threshold`` when none scores).
    """
    cfg = setup.cfg
    model = setup.eval_model
    model.eval()
    mine = list(range(len(setup.val_set)))[setup.dist.rank::setup.dist.world]
    loader = make_loader(setup.val_set, cfg.eval.batch_size, setup.workers, setup.device, mine)
    sweep = ThresholdSweep(cfg.eval.thresholds, tolerance=0, per_image=False)
    tally = Tally()
    bar = progress_bar(loader, desc=f"epoch {state.epoch + 1}/{cfg.train.epochs} val",
                       enabled=progress, inner=True, leave=False)
    for batch in bar:
        note_skipped(setup, state, batch["skipped"], log)
        for images, masks in iter_groups(batch):
            images, masks = images.to(setup.device), masks.to(setup.device)
            logits = forward_logits(model, images, setup.policy, cfg.train.amp)
            tally.loss += setup.loss_fn(logits, masks).item() * len(images)
            tally.seen += len(images)
            counts = confusion_counts(logits, masks, cfg.train.threshold, from_logits=True)
            tally.conf += torch.stack([c.sum() for c in counts[:3]]).cpu()
            sweep.update(torch.sigmoid(logits).cpu(), masks.cpu())
    pool_skipped(setup, state, log)
    reduce_tally(setup.dist, tally)
    if setup.dist.active:
        sweep.reduce_(lambda t: all_reduce_sum(t, setup.dist))
    if tally.seen == 0:
        raise FissureError("no validation image could be used")
    tuned = sweep.compute()["exact"]
    # A sweep that found no crack at any threshold (F1 0 or undefined throughout) would pick
    # its lowest threshold by the tie rule; that is no tuned threshold.
    threshold = tuned["ods_threshold"] if tuned["ods_f1"] else cfg.train.threshold
    return {"val_loss": tally.loss / tally.seen, "val_iou": tally.iou(),
            "val_f1": float(f1(*tally.conf, empty=math.nan)),
            "val_f1_tuned": tuned["ods_f1"] if tuned["ods_f1"] is not None else math.nan,
            "threshold": float(threshold)}


# -- shared by both passes ---------------------------------------------------------------


def note_skipped(
    setup: TrainSetup, state: TrainState, skipped: Iterable[tuple[str, str]], log: Log
) -> None:
    """Record a batch's unreadable samples; stop once more than the allowed share is."""
    state.record_skipped(skipped, log)
    _check_skipped(setup, state)


def pool_skipped(setup: TrainSetup, state: TrainState, log: Log) -> None:
    """Take in what the other ranks skipped (under DDP), then apply the same limit."""
    state.pool_skipped(setup.dist, log)
    _check_skipped(setup, state)


def _check_skipped(setup: TrainSetup, state: TrainState) -> None:
    total = len(setup.train_set) + len(setup.val_set)
    state.check_skipped(total, setup.cfg.data.max_skip_fraction)


def reduce_tally(info: Dist, tally: Tally) -> None:
    """Sum ``tally`` over the ranks in place (nothing to do for one process)."""
    if not info.active:
        return
    all_reduce_sum(tally.conf, info)
    sums = all_reduce_sum(torch.tensor([tally.loss, float(tally.seen)], dtype=torch.float64),
                          info)
    tally.loss, tally.seen = float(sums[0]), int(sums[1])

