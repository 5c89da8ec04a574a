"""Stopping a training run cleanly on SIGINT/SIGTERM.

The signal only sets a flag; the training loop checks it after each step, saves
``last.pt`` and raises :class:`TrainingInterrupted` with the command that resumes the run.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Any

from ..errors import FissureError


class Interrupt:
    """SIGINT/SIGTERM set a flag; the loop saves ``last.pt`` at the next step and stops."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        self.signum = signum

    @contextmanager
    def installed(self):
        previous = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self)
        except ValueError:  # not the main thread (e.g. a notebook worker): no handlers
            pass
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class TrainingInterrupted(FissureError):
    """Raised after ``last.pt`` was saved because a signal asked the run to stop."""


def ignore_sigint(worker_id: int) -> None:
    """Ctrl-C reaches the whole process group; only the main process decides what to save."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
