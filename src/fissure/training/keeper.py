"""What a training run keeps: its state, ``best.pt`` and ``last.pt``, and when to stop.

:class:`RunKeeper` owns the :class:`~fissure.training.state.TrainState` of one run folder.
After each epoch it records the history row, keeps ``best.pt`` when the monitored score
improved and rewrites ``last.pt``; it resumes from ``last.pt`` and says when early stopping
or the time budget ends the run. Only rank 0 writes files; every rank keeps the same state.

Selection can be made less hostage to a tiny validation split: ``train.select_window``
ranks an epoch by its score averaged over its last validations, and an epoch within
``train.select_tolerance`` of the best score replaces ``best.pt`` (the later, more annealed
weights win a near tie). :func:`selected_epoch` replays these rules on a finished run's
history, and ``train.keep_every`` keeps the weights another rule would have chosen.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..checkpoint import load_checkpoint, make_checkpoint
from ..config import Config, TrainConfig
from ..errors import CheckpointError
from ..model import load_weights
from .budget import Budget
from .optim import load_optimizer_state
from .setup import TrainSetup
from .state import TrainState


def decision_threshold(row: Mapping[str, Any] | None, train: TrainConfig) -> float:
    """The threshold a checkpoint stores after the epoch of history ``row``.

    With ``train.tune_threshold``, the one validation tuned (``row["threshold"]``); without
    it, or before the first epoch (``row`` None or empty), ``train.threshold``. ``best.pt``
    and ``last.pt`` both take theirs from here.
    """
    if train.tune_threshold and row:
        return row["threshold"]
    return train.threshold


def monitored_score(row: Mapping[str, Any], monitor: str) -> float:
    """The score ``train.monitor`` ranks epochs by; higher is better (loss is negated)."""
    if monitor == "loss":
        return -row["val_loss"]
    return row["val_f1_tuned"] if monitor == "f1" else row["val_iou"]


def smoothed_score(history: Sequence[Mapping[str, Any]], monitor: str, window: int) -> float:
    """The monitored score of the last row, averaged over the last ``window`` rows' finite
    scores; NaN when the last row's own score is not finite."""
    scores = [monitored_score(row, monitor) for row in history[-max(1, window):]]
    if not scores or not math.isfinite(scores[-1]):
        return math.nan
    finite = [s for s in scores if math.isfinite(s)]
    return sum(finite) / len(finite)


def select_step(
    best: float | None, score: float, train: TrainConfig
) -> tuple[float | None, bool, bool]:
    """One epoch of model selection, given the best (smoothed) score so far and this epoch's.

    Returns the best score after it, whether the epoch replaces ``best.pt`` (a gain of more
    than ``train.min_delta``, or within ``train.select_tolerance`` of the best), and whether
    it is a real improvement (which alone resets ``train.patience``). A non-finite score
    changes nothing.
    """
    if not math.isfinite(score):
        return best, False, False
    if best is None or score > best + train.min_delta:
        return score, True, True
    near = train.select_tolerance > 0 and score >= best - train.select_tolerance
    return best, near, False


def selected_epoch(history: Sequence[Mapping[str, Any]], train: TrainConfig) -> int | None:
    """The epoch ``best.pt`` would hold after ``history`` (rows of ``history.csv``) under
    ``train``'s selection settings: ``monitor``, ``min_delta``, ``select_window`` and
    ``select_tolerance``; None when no epoch had a finite score."""
    best, chosen = None, None
    for end, row in enumerate(history, start=1):
        score = smoothed_score(history[:end], train.monitor, train.select_window)
        best, keep, _ = select_step(best, score, train)
        if keep:
            chosen = int(row["epoch"])
    return chosen


class RunKeeper:
    """The persistent side of a run in ``run_dir``: state, checkpoints and stopping rules."""

    def __init__(self, setup: TrainSetup, run_dir: str | Path) -> None:
        self.setup = setup
        self.run_dir = Path(run_dir)
        self.state = TrainState()

    def train_state(self, step: int = 0) -> dict[str, Any]:
        """What ``last.pt`` stores besides the weights: optimiser, schedule, scaler and EMA
        states, the step reached in the current epoch, and :class:`TrainState`'s values."""
        s = self.setup
        budget = getattr(s, "budget", None)
        return {
            "budget": budget.state_dict() if budget is not None else None,
            "optimizer": s.optimizer.state_dict(),
            "scheduler": s.scheduler.state_dict(),
            "scaler": s.scaler.state_dict(),
            "ema": s.ema.state_dict() if s.ema is not None else None,
            "step": step,
            **self.state.to_dict(),
        }

    def save_last(self, step: int = 0) -> None:
        """Write ``last.pt``: the trained weights (not the EMA's) and everything to resume.

        ``step`` is the optimiser step reached in the epoch after ``state.epoch``; 0 when
        that epoch has not begun.
        """
        if not self.setup.dist.main:
            return
        cfg = self.setup.cfg
        metrics = self.state.history[-1] if self.state.history else {}
        ckpt = make_checkpoint(self.setup.model, cfg, epoch=self.state.epoch, metrics=metrics,
                               threshold=decision_threshold(metrics, cfg.train),
                               train_state=self.train_state(step))
        ckpt.save(self.run_dir / "last.pt")

    def save_best(self, row: dict[str, Any]) -> None:
        """Write ``best.pt``: the validated weights (the EMA's if any) of epoch ``row``."""
        self._save_validated(row, self.run_dir / "best.pt")

    def keep_epoch(self, row: dict[str, Any]) -> None:
        """With ``train.keep_every`` N, write the validated weights of every Nth epoch to
        ``epochs/epoch_NNN.pt``, as :meth:`save_best` writes them."""
        every = self.setup.cfg.train.keep_every
        if every and row["epoch"] % every == 0:
            self._save_validated(row, self.run_dir / "epochs" / f"epoch_{row['epoch']:03d}.pt")

    def _save_validated(self, row: dict[str, Any], path: Path) -> None:
        if not self.setup.dist.main:
            return
        cfg = self.setup.cfg
        ckpt = make_checkpoint(self.setup.eval_model, cfg, epoch=row["epoch"], metrics=row,
                               threshold=decision_threshold(row, cfg.train))
        ckpt.save(path)

    def end_epoch(self, row: dict[str, Any]) -> bool:
        """Record the finished epoch's history ``row``, keep ``best.pt`` if it improved on the
        best score (and the epoch's weights under ``train.keep_every``), and write
        ``last.pt``; returns whether it improved."""
        self.state.epoch += 1
        self.state.history.append(row)
        improved = self._update_best(row)
        self.keep_epoch(row)
        self.save_last()
        return improved

    def _update_best(self, row: dict[str, Any]) -> bool:
        """Keep ``best.pt`` when the (smoothed) score beats the best by more than
        ``train.min_delta``, or comes within ``train.select_tolerance`` of it; the best
        score itself only ever rises, and only a real improvement resets the patience."""
        train = self.setup.cfg.train
        score = smoothed_score(self.state.history, train.monitor, train.select_window)
        self.state.best, keep, improved = select_step(self.state.best, score, train)
        self.state.bad_epochs = 0 if improved else self.state.bad_epochs + 1
        if not keep:
            return False
        self.state.best_epoch = row["epoch"]
        self.save_best(row)
        return True

    def stop_reason(self) -> str | None:
        """Why the run should stop after this epoch, or None.

        Early stopping after ``train.patience`` epochs without improvement, or the time
        budget ``train.max_minutes`` (validation included). Under DDP rank 0's answer is
        the one that counts.
        """
        train = self.setup.cfg.train
        if train.patience and self.state.bad_epochs >= train.patience:
            return f"early stopping: no improvement for {train.patience} epochs"
        budget = self.setup.budget
        budget.tick(step=False)
        if budget.out_of_time():
            return (f"time budget of {train.max_minutes:g} min reached after "
                    f"{budget.elapsed / 60:.1f} min")
        return None

    def resume(self) -> int:
        """Restore from ``run_dir/last.pt``; returns the step to continue from in the epoch."""
        path = self.run_dir / "last.pt"
        if not path.is_file():
            raise CheckpointError(f"{self.run_dir}: no last.pt to resume from")
        s = self.setup
        ckpt = load_checkpoint(path, map_location=s.device)
        if s.dist.main:  # half-written files of a run killed with SIGKILL mid-save
            for stale in self.run_dir.glob(".*.pt.*.tmp"):
                stale.unlink(missing_ok=True)
        state = ckpt.train_state
        if not state:
            raise CheckpointError(f"{path}: holds no training state to resume")
        ckpt.check_encoder(s.cfg.model.encoder)
        load_weights(s.model, ckpt.state_dict, str(path))
        load_optimizer_state(s.optimizer, state["optimizer"])
        s.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") and s.scaler.is_enabled():
            # empty when saved where fp16 loss scaling was off (CPU, bf16, amp off): a
            # resume on an fp16 GPU then starts its scaler afresh
            s.scaler.load_state_dict(state["scaler"])
        if s.ema is not None and state.get("ema") is not None:
            s.ema.load_state_dict(state["ema"])
        s.budget.load_state_dict(_with_plan(state.get("budget"), ckpt.config, s.steps_per_epoch))
        # the saved rates are the old plan's: an extended run continues at the new plan's
        sched = s.scheduler
        for group, base, factor in zip(s.optimizer.param_groups, sched.base_lrs,
                                       sched.lr_lambdas, strict=True):
            group["lr"] = base * factor(sched.last_epoch)
        self.state = TrainState.from_dict(state)
        return int(state.get("step", 0))


def _with_plan(budget: dict[str, Any] | None, saved: Config, steps_per_epoch: int
               ) -> dict[str, Any] | None:
    """A ``last.pt``'s budget state with the plan it was reached under: from before plans
    were recorded, the one its stored config describes (so that extending such a run is
    seen as a new plan too)."""
    if not budget or "total_steps" in budget:
        return budget
    old = Budget(saved.train.epochs * steps_per_epoch, (saved.train.max_minutes or 0) * 60)
    return {**budget, "total_steps": old.total_steps, "max_seconds": old.max_seconds}
