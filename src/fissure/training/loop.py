"""The training loop: :func:`fit` runs epochs of :func:`train_one_epoch` and :func:`validate`.

Batches are dicts from :func:`fissure.data.collate`: ``image`` (N, 3, H, W) normalised
float and ``mask`` (N, 1, H, W) in {0, 1}. IoU and F1 are dataset-level: TP, FP and FN are
summed over the whole epoch (and over the ranks), then divided once by
:func:`fissure.metrics.iou` and :func:`fissure.metrics.f1`, NaN when undefined.

Under DDP every rank runs this same code on its share of each batch; the collectives
(forward, backward, count sums, stop decisions) keep the ranks in step.

With ``train.max_minutes`` the epoch under way when the time left reaches what the last end
of epoch (validation and checkpoints) took is cut short, validated, and ends the run: the
schedule follows the budget (:mod:`fissure.training.budget`), so those weights have
annealed, and they are always validated.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from ..data.loader import epoch_indices, make_loader
from ..data.transforms import valid_pixels
from ..errors import FissureError
from ..metrics import confusion_counts
from ..progress import progress_bar
from ..runtime import autocast_dtype, autocast_for
from .augment import device_batch
from .distributed import any_rank, broadcast_flag, shard
from .interruption import Interrupt, TrainingInterrupted
from .keeper import RunKeeper
from .setup import TrainSetup
from .state import TrainState
from .validation import Tally, note_skipped, pool_skipped, reduce_tally, validate

Log = Callable[[str], None]
EpochEnd = Callable[[list[dict[str, Any]]], None]


def _silent(message: str) -> None:
    """Log sink of ranks other than 0: one process speaks for the group."""


def fit(
    setup: TrainSetup,
    keeper: RunKeeper,
    *,
    start_step: int = 0,
    progress: bool = True,
    log: Log = print,
    on_epoch_end: EpochEnd | None = None,
) -> TrainState:
    """Train from ``keeper.state`` to ``train.epochs`` epochs, or until a stopping rule says.

    ``start_step`` is the step to continue the first epoch from (see
    :meth:`RunKeeper.resume`). After each epoch, rank 0 calls ``on_epoch_end`` with the
    history so far. A SIGINT or SIGTERM saves ``last.pt`` and raises
    :class:`TrainingInterrupted`. Only rank 0 logs and shows progress bars. A run resumed
    after a stopping rule fired (patience, the time budget) trains nothing unless the
    resume's config moved that limit.
    """
    cfg = setup.cfg
    progress = progress and setup.dist.main
    log = log if setup.dist.main else _silent
    interrupt = Interrupt()
    setup.budget.start()
    ran_on = {"device": str(setup.device),
              "compute_dtype": str(autocast_dtype(setup.device, cfg.train.amp)).removeprefix(
                  "torch."),
              "cpu": torch.backends.cpu.get_cpu_capability()}
    if start_step == 0 and keeper.state.epoch > 0:  # resumed after an epoch's end
        reason = keeper.stop_reason()
        if broadcast_flag(reason is not None, setup.dist):
            log(f"{reason or 'stopped'}: nothing to train (raise train.patience, "
                "train.max_minutes or train.epochs with --set to go on)")
            return keeper.state
    with interrupt.installed():
        while keeper.state.epoch < cfg.train.epochs:
            tick = time.monotonic()
            row: dict[str, Any] = {"epoch": keeper.state.epoch + 1}
            outcome = train_one_epoch(setup, keeper.state, interrupt, start_step=start_step,
                                      log=log, progress=progress)
            if outcome.stopped_at is not None:
                keeper.save_last(outcome.stopped_at)
                where = f"epoch {keeper.state.epoch + 1}, step {outcome.stopped_at}"
                raise _interrupted(interrupt, keeper, where)
            start_step = 0
            if outcome.cut_at is not None:
                log(_cut_line(setup, keeper.state.epoch + 1, outcome.cut_at))
            closing = setup.budget.clock()
            row.update(outcome.metrics)
            row.update(validate(setup, keeper.state, log=log, progress=progress))
            row["lr"] = setup.optimizer.param_groups[0]["lr"]
            row["steps"] = setup.scheduler.last_epoch
            row["progress"] = round(setup.budget.progress(setup.scheduler.last_epoch), 4)
            row["seconds"] = round(time.monotonic() - tick, 2)
            row["skipped"] = len(keeper.state.skipped)
            row.update(ran_on)
            improved = keeper.end_epoch(row)
            log(_epoch_line(row, cfg.train.epochs, improved))
            if on_epoch_end is not None and setup.dist.main:
                on_epoch_end(keeper.state.history)
            setup.budget.note_end_of_epoch(setup.budget.clock() - closing)
            if any_rank([interrupt.signum is not None], setup.dist)[0]:
                raise _interrupted(interrupt, keeper, f"end of epoch {keeper.state.epoch}")
            reason = keeper.stop_reason()
            if broadcast_flag(reason is not None, setup.dist):
                log(reason or "stopping: rank 0 decided so")
                break
    return keeper.state


def _epoch_line(row: dict[str, Any], epochs: int, improved: bool) -> str:
    return (f"epoch {row['epoch']:3d}/{epochs}  "
            f"train loss {row['train_loss']:.4f} "
            f"iou {row['train_iou']:.4f} | val loss {row['val_loss']:.4f} "
            f"iou {row['val_iou']:.4f} f1@{row['threshold']:.2f} {row['val_f1_tuned']:.4f}"
            f"  lr {row['lr']:.2e} progress {row['progress']:.2f}  {row['seconds']:.1f}s"
            + ("  * best" if improved else ""))


def _cut_line(setup: TrainSetup, epoch: int, step: int) -> str:
    """The log line of an epoch the time budget cut short."""
    budget = setup.budget
    return (f"time budget: epoch {epoch} stops after {step} of {setup.steps_per_epoch} steps "
            f"({setup.scheduler.last_epoch} of {budget.total_steps} planned), "
            f"{budget.elapsed / 60:.1f} of {(budget.max_seconds or 0) / 60:g} min used, "
            f"lr {setup.optimizer.param_groups[0]['lr']:.2e}; {budget.kept_seconds:.0f} s kept "
            f"to validate these final weights")


def _interrupted(interrupt: Interrupt, keeper: RunKeeper, where: str) -> TrainingInterrupted:
    """The error that ends a run stopped by a signal, once ``last.pt`` is saved."""
    return TrainingInterrupted(
        f"stopped by signal {interrupt.signum}; saved {keeper.run_dir / 'last.pt'} "
        f"({where}); continue with fissure train --resume {keeper.run_dir}")


# -- training ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EpochOutcome:
    """What :func:`train_one_epoch` returns.

    ``metrics``: ``train_loss`` and ``train_iou`` of a finished epoch. ``stopped_at``: the
    step at which a signal stopped the epoch before its end (then ``metrics`` is empty and
    the caller saves ``last.pt`` at that step); None for a finished epoch. ``cut_at``: the
    step at which the time budget ended the epoch (its metrics cover the steps taken, and
    it is the run's last); None when it was not cut.
    """

    metrics: dict[str, float]
    stopped_at: int | None = None
    cut_at: int | None = None


def train_one_epoch(
    setup: TrainSetup,
    state: TrainState,
    interrupt: Interrupt,
    *,
    start_step: int = 0,
    log: Log = print,
    progress: bool = True,
) -> EpochOutcome:
    """Train epoch ``state.epoch + 1`` from optimiser step ``start_step``.

    The epoch's sample order depends only on ``train.seed`` and the epoch, so a resumed
    epoch takes the rest of the uninterrupted one's samples, in order. Its augmentations
    are seeded from ``train.seed``, the epoch and ``start_step``: reproducible, but not the
    draws the uninterrupted run would have made from that step (an epoch-boundary resume,
    ``start_step`` 0, matches it exactly). Train IoU is taken at ``train.threshold``, like
    validation's.
    """
    cfg = setup.cfg
    setup.model.train()
    torch.manual_seed(cfg.train.seed + 7919 * state.epoch + start_step)
    indices = epoch_indices(len(setup.train_set), cfg.train, state.epoch)
    per_step = cfg.train.batch_size * cfg.train.accumulate
    mine = shard(indices[start_step * per_step:], cfg.train.batch_size, setup.dist)
    if start_step and not mine:
        # resumed from a last.pt saved after the epoch's final step (older versions did)
        return EpochOutcome({"train_loss": math.nan, "train_iou": math.nan})
    loader = make_loader(setup.train_set, setup.batch_size, setup.workers, setup.device, mine)
    bar = progress_bar(loader, desc=f"epoch {state.epoch + 1}/{cfg.train.epochs} train",
                       enabled=progress, leave=False)
    tally = Tally()
    setup.optimizer.zero_grad(set_to_none=True)
    try:
        batches, step, stop, cut = _train_batches(setup, state, bar, tally, start_step,
                                                  interrupt, log, len(loader))
    finally:
        bar.close()
    # A signal during the epoch's last batch finishes the epoch instead: fit() stops after
    # validation and the end-of-epoch last.pt, so no checkpoint points past the last step.
    if stop and not cut and batches < len(loader):
        return EpochOutcome({}, stopped_at=step)
    pool_skipped(setup, state, log)
    reduce_tally(setup.dist, tally)
    if tally.seen == 0:
        raise FissureError("no training batch could be used this epoch")
    return EpochOutcome({"train_loss": tally.loss / tally.seen, "train_iou": tally.iou()},
                        cut_at=step if cut and batches < len(loader) else None)


def _train_batches(
    setup: TrainSetup,
    state: TrainState,
    bar: Iterable[dict[str, Any]],
    tally: Tally,
    step: int,
    interrupt: Interrupt,
    log: Log,
    n_batches: int,
) -> tuple[int, int, bool]:
    """Run the epoch's ``n_batches`` micro-batches from ``bar`` into ``tally``, stepping the
    optimiser every ``train.accumulate`` of them and after the last (a shorter group
    counts as a step, as the plan does); returns (batches taken, step reached, stopped by a
    signal, cut by the time budget). Every rank reads the same clock reading
    (:meth:`Budget.tick`), so all cut at the same step."""
    accumulate, active = setup.cfg.train.accumulate, setup.dist.active
    used, step_ok, batches, stop, cut = 0, True, 0, False, False
    try:
        for batch in bar:
            batches += 1
            note_skipped(setup, state, batch["skipped"], log)
            loss = None
            # micro-batches in this one's group: the epoch's last group may be shorter
            group = min(accumulate, n_batches - (batches - 1) // accumulate * accumulate)
            if batch["name"] or active:
                loss, counts, stop = _train_batch(setup, state, batch, step, interrupt, log,
                                                  group)
                tally.conf += counts
                step_ok, used = step_ok and loss is not None, used + 1
            if batches % accumulate == 0 or batches == n_batches:
                if step_ok and used:
                    if used < group:  # empty batches skipped: the mean of those that ran
                        _scale_gradients(setup.model, group / used)
                    optimizer_step(setup)
                else:  # a void step's other micro-batches must not leak into the next
                    setup.optimizer.zero_grad(set_to_none=True)
                step, step_ok, used = step + 1, True, 0
                cut = setup.budget.out_of_time()
            if loss is not None:
                tally.loss += loss * len(batch["name"])
                tally.seen += len(batch["name"])
                bar.set_postfix(loss=f"{loss:.4f}", iou=f"{tally.iou():.4f}")
            if not active:  # one process: no need to wait for the next batch
                stop = interrupt.signum is not None
            if stop or cut:
                break
    except RuntimeError:
        # A signal sent to the whole process group also kills the loader's workers.
        if interrupt.signum is None:
            raise
        stop = True
    return batches, step, stop, cut


def _train_batch(
    setup: TrainSetup,
    state: TrainState,
    batch: dict[str, Any],
    step: int,
    interrupt: Interrupt,
    log: Log,
    group: int,
) -> tuple[float | None, torch.Tensor, bool]:
    """Forward and backward one of the ``group`` micro-batches of an optimiser step (its
    gradient is divided by ``group``, so the step's is their mean); returns (loss, or None
    when the step is void; tp/fp/fn at ``train.threshold``; whether to stop after it).

    Under DDP, forward and backward are collectives, so the ranks act together: if any
    has an empty batch, none runs the model; if any loss is not finite, all run the
    backward and then all drop the gradients; if any was signalled, all stop after it.
    A rank acting alone would leave the others waiting in a collective for ever.

    Shapes:
        batch["image"]: (N, 3, H, W) float, normalised.
        batch["mask"]: (N, 1, H, W) float in {0, 1}, IGNORE on a small image's padding.
        returns: counts (3,) int64 on the CPU.
    """
    cfg, info, where = setup.cfg, setup.dist, f"epoch {state.epoch + 1} step {step + 1}"
    counts = torch.zeros(3, dtype=torch.int64)
    empty, stop = not batch["name"], interrupt.signum is not None
    if info.active:
        empty, stop = any_rank([empty, stop], info)
    if empty:
        log(f"{where}: skipped, a process had no readable sample")
        setup.optimizer.zero_grad(set_to_none=True)
        return None, counts, stop
    images, masks = device_batch(batch, setup.device, setup.augment, cfg.train.channels_last)
    # Before the forward: on CUDA the check waits for the device, and here only for the batch.
    valid = valid_pixels(masks)
    with autocast_for(setup.device, cfg.train.amp):
        logits = setup.forward(images)
    loss = setup.loss_fn(logits.float(), masks, valid=valid)
    with torch.no_grad():
        scores = logits.detach().float()
        if valid is not None:
            # Padding becomes a predicted and true background pixel: a TN, which IoU ignores.
            scores, masks = scores.masked_fill(~valid, -math.inf), masks * valid
        found = confusion_counts(scores, masks, cfg.train.threshold, from_logits=True)
        counts = torch.stack([c.sum() for c in found[:3]]).cpu()
    ok = _check_finite(setup, loss, where, log)
    if ok or info.active:
        setup.scaler.scale(loss / group).backward()
    if info.active and any_rank([not ok], info)[0]:
        if ok:
            log(f"{where}: skipped, a non-finite loss in another process")
        setup.optimizer.zero_grad(set_to_none=True)
        ok = False
    return (loss.item() if ok else None), counts, stop


def _scale_gradients(model: torch.nn.Module, factor: float) -> None:
    for param in model.parameters():
        if param.grad is not None:
            param.grad.mul_(factor)


def _check_finite(setup: TrainSetup, loss: torch.Tensor, where: str, log: Log) -> bool:
    """Whether ``loss`` is finite; if not, ``train.nonfinite`` says: skip the step or stop."""
    if torch.isfinite(loss):
        return True
    if setup.cfg.train.nonfinite == "skip":
        log(f"non-finite loss at {where}: step skipped")
        setup.optimizer.zero_grad(set_to_none=True)
        return False
    raise FissureError(f"non-finite loss at {where}; lower train.lr, set train.grad_clip, "
                       "or set train.nonfinite=skip")


def optimizer_step(setup: TrainSetup) -> None:
    """One optimiser step on the accumulated gradients: clip, step, then the clock, the
    schedule and the EMA update, which follow the progress it gives."""
    clip = setup.cfg.train.grad_clip
    if clip:
        setup.scaler.unscale_(setup.optimizer)
        torch.nn.utils.clip_grad_norm_(setup.model.parameters(), clip)
    setup.scaler.step(setup.optimizer)
    setup.scaler.update()
    setup.optimizer.zero_grad(set_to_none=True)
    setup.budget.tick()
    setup.scheduler.step()
    if setup.ema is not None and (setup.budget.progress(setup.scheduler.last_epoch)
                                  >= setup.cfg.train.ema_start):
        setup.ema.update_parameters(setup.model)
