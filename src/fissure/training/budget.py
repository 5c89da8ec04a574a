"""How far a run has got: ``progress = max(steps done / steps planned, time used / budget)``.

A run planned for ``train.epochs`` epochs on a machine twice as slow as the one it was tuned
on runs out of ``train.max_minutes`` half-way through its steps. If the learning rate, its
warm-up and the EMA followed steps alone, such a run would stop with its learning rate
still high and its weights never annealed. Here they follow :class:`Budget`'s progress
instead, which is the larger of the step fraction and the time fraction, so a run that the
clock cuts has annealed, and a fast machine that finishes its steps first runs the schedule
it was given.

The time that counts is the run's own (validation and checkpoints included), summed over
resumes. Training stops when the time left is what the last end of an epoch (validation and
checkpoints) took, so the final, annealed weights are validated within the budget: the time
fraction is therefore taken against the budget less that reserve. Before the first end of
an epoch has been timed, the reserve is an estimate: a validation pass costs about
:attr:`Budget.val_cost_steps` training steps (set by the setup from the split's pixels), so
a first epoch longer than the budget still leaves room to validate. It stops before the step
that would cross that line, as a step-based schedule stops after its last step, whose
learning rate is the schedule's last above 0.

Under DDP every rank must take the same learning rate, so the clock is read at one point
per optimiser step (:meth:`Budget.tick`) and, through ``share``, every rank takes rank 0's
reading.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

Clock = Callable[[], float]

RESERVE_MARGIN = 1.25
"""The reserve for the final validation is the longest end of epoch seen, times this: the
machine is shared and the last pass may well be slower."""
MAX_RESERVE_SHARE = 0.5
"""The reserve never takes more than this share of the budget, so progress keeps moving
when validation is as slow as training."""


def schedule_factor(progress: float, warmup: float, kind: str, first: float = 0.0) -> float:
    """Multiplier of the base learning rate at ``progress`` in [0, 1].

    ``warmup`` is the share of the run given to a linear warm-up; ``kind`` the decay after
    it (``none``, ``cosine``, ``poly`` with power 0.9), which reaches 0 at progress 1.
    ``first`` is the progress one optimiser step adds: the warm-up never goes below it, so
    the first step does not run at a learning rate of 0. From progress ``first`` on, the
    factor depends on progress alone, whether progress came from steps or from time.
    """
    if warmup > 0 and progress < warmup:
        return min(1.0, max(progress, first) / warmup)
    if kind == "none" or warmup >= 1.0:
        return 1.0
    x = min(1.0, max(0.0, (progress - warmup) / (1.0 - warmup)))
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * x))
    return (1.0 - x) ** 0.9


def ema_decay(n_averaged: int, decay: float) -> float:
    """The EMA decay of the update after ``n_averaged`` averaged updates: ``min(decay,
    n / (n + 1))``, a plain running mean until it reaches ``decay``.

    A fixed decay of 0.999 would keep the early, poor weights in the average for a thousand
    steps, which is longer than a budgeted run on a slow CPU lasts; the running mean weighs
    every averaged step equally until the EMA's horizon ``1 / (1 - decay)`` is reached.
    """
    return min(decay, n_averaged / (n_averaged + 1.0))


class Budget:
    """The progress of one run through its planned steps and its time budget.

    ``total_steps`` is the plan (epochs times steps per epoch); ``max_seconds`` the time
    budget, None for none. ``clock`` returns seconds (injectable for tests); ``share`` makes
    every rank take rank 0's reading of it (identity on one process).
    """

    def __init__(
        self,
        total_steps: int,
        max_seconds: float | None = None,
        clock: Clock = time.monotonic,
        share: Callable[[float], float] | None = None,
    ) -> None:
        self.total_steps = max(1, int(total_steps))
        self.max_seconds = max_seconds if max_seconds and max_seconds > 0 else None
        self.clock = clock
        self.share = share or (lambda value: value)
        self.reserve = 0.0  # seconds kept for the final validation and checkpoints
        # a validation pass in training steps, for the reserve before one has been timed
        self.val_cost_steps = 0.0
        self._timed_end = False
        self.elapsed = 0.0  # at the last tick, this run's time including earlier sessions
        self._before = 0.0  # the time of earlier sessions (resumed runs)
        self.step_seconds = 0.0  # the last optimiser step, from one tick to the next
        self._started: float | None = None
        self._last_tick: float | None = None
        self._floor = 0.0  # progress never goes back when the reserve grows

    # -- the clock --------------------------------------------------------------------

    def start(self) -> None:
        """Start (or restart, after a resume) counting this session's time."""
        self._started = self.clock()
        self.elapsed = self._before
        self._last_tick = None

    def tick(self, step: bool = True) -> float:
        """Read the clock (rank 0's under DDP); returns the run's elapsed seconds. ``step``:
        the reading follows an optimiser step, so it times that step too."""
        if self._started is not None:
            self.elapsed = float(self.share(self._before + self.clock() - self._started))
            if step:
                if self._last_tick is not None:
                    self.step_seconds = self.elapsed - self._last_tick
                self._last_tick = self.elapsed
        return self.elapsed

    def note_end_of_epoch(self, seconds: float) -> None:
        """Keep room for an end of epoch (validation and checkpoints) that took ``seconds``.

        The next tick does not time a step: the time since the last one holds the end of
        the epoch."""
        self._last_tick = None
        self._timed_end = True
        if self.max_seconds is None:
            return
        wanted = max(self.reserve, RESERVE_MARGIN * seconds)
        self.reserve = min(wanted, MAX_RESERVE_SHARE * self.max_seconds)

    # -- progress ---------------------------------------------------------------------

    @property
    def training_seconds(self) -> float | None:
        """The time training may take: the budget less the reserve (None without budget);
        until an end of epoch has been timed, less the estimated one."""
        if self.max_seconds is None:
            return None
        return self.max_seconds - self.kept_seconds

    @property
    def kept_seconds(self) -> float:
        """Seconds kept for the final validation and checkpoints (estimated until an end of
        epoch has been timed); 0 without a budget."""
        if self.max_seconds is None or self._timed_end:
            return self.reserve
        estimate = RESERVE_MARGIN * self.val_cost_steps * self.step_seconds
        return min(max(self.reserve, estimate), MAX_RESERVE_SHARE * self.max_seconds)

    def time_fraction(self) -> float:
        """Time used over :attr:`training_seconds` at the last tick; 0 without a budget."""
        limit = self.training_seconds
        return 0.0 if limit is None else self.elapsed / limit

    def progress(self, steps: int) -> float:
        """``max(steps / total_steps, time fraction)`` in [0, 1], never below an earlier
        answer (a grown reserve must not send the learning rate back up)."""
        value = min(1.0, max(steps / self.total_steps, self.time_fraction(), self._floor))
        self._floor = value
        return value

    def out_of_time(self) -> bool:
        """Whether training must stop now: one more step (as long as the last) would eat
        into the reserve for the final validation."""
        limit = self.training_seconds
        return limit is not None and self.elapsed + self.step_seconds >= limit

    # -- resume -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """What ``last.pt`` keeps: the elapsed seconds, the reserve, the progress floor and
        the plan it was reached under (planned steps, budget).

        The clock is read here without ``share``: only rank 0 writes ``last.pt``, and a
        collective called by one rank would never return.
        """
        elapsed = self.elapsed
        if self._started is not None:
            elapsed = self._before + self.clock() - self._started
        return {"elapsed": elapsed, "reserve": self.reserve, "progress": self._floor,
                "total_steps": self.total_steps, "max_seconds": self.max_seconds}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Continue from :meth:`state_dict`'s values (None: a run from before budgets).

        A resume that changes the plan (more ``train.epochs``, another
        ``train.max_minutes``) drops the progress floor: progress is worked out afresh
        against the new plan, or a finished run extended would train at a learning rate
        of 0.
        """
        if not state:
            return
        self._before = float(state.get("elapsed", 0.0))
        self.elapsed = self._before
        self.reserve = float(state.get("reserve", 0.0))
        self._timed_end = self.reserve > 0
        plan = state.get("total_steps", self.total_steps), state.get("max_seconds",
                                                                     self.max_seconds)
        same_plan = plan == (self.total_steps, self.max_seconds)
        self._floor = float(state.get("progress", 0.0)) if same_plan else 0.0
        if self._started is not None:
            self._started = self.clock()

    def describe(self) -> str:
        """One log line: the plan, the budget and the rule that joins them."""
        if self.max_seconds is None:
            return (f"schedule: {self.total_steps} planned steps; learning rate, warm-up and "
                    f"EMA follow steps done / {self.total_steps} (no train.max_minutes)")
        return (f"schedule: learning rate, warm-up and EMA follow progress = max(steps done "
                f"/ {self.total_steps}, time used / budget), budget "
                f"{self.max_seconds / 60:g} min including validation; training stops early "
                f"enough to validate the final weights within it")
