"""Stopping a training run cleanly on SIGINT/SIGTERM.

The signal only sets a flag; the training loop checks it after each step, saves
``last.pt`` and raises :class:`TrainingInterrupted` with the command that resumes the run.
DataLoader workers ignore SIGINT (:func:`fissure.data.loader.ignore_sigint`), so that only
the main process decides what to save.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import FissureError


class Interrupt:
    """SIGINT/SIGTERM set a flag; the loop saves ``last.pt`` at the next step and stops.

    ``signum`` is the signal received, or None while none was. A second Ctrl-C (SIGINT)
    does not wait for the next step (a long validation, a slow disk): it raises
    KeyboardInterrupt at once, and the ``last.pt`` of the latest finished save stays.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    @contextmanager
    def installed(self) -> Iterator[Interrupt]:
        """This object as the SIGINT and SIGTERM handler inside the block.

        Outside the main thread (e.g. a notebook worker) Python refuses handlers; the block
        then runs without them. The previous handlers come back at its end.
        """
        previous = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self)
        except ValueError:
            pass
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class TrainingInterrupted(FissureError):
    """Raised after ``last.pt`` was saved because a signal asked the run to stop."""
