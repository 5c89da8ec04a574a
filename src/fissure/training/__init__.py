"""Training: a run built from the config, then a loop you can read top to bottom.

:func:`build_setup` makes everything from a :class:`~fissure.config.Config` (model, data,
loss, optimiser, schedule, EMA) into one :class:`TrainSetup`; :class:`RunKeeper` keeps what
must persist (the :class:`TrainState`, ``best.pt`` and ``last.pt``, early stopping and the
time budget); :func:`fit` runs :func:`train_one_epoch` and :func:`validate` epoch after
epoch. Under torchrun, :func:`process_group` leaves the group a run joined::

    with process_group():
        setup = build_setup(cfg, source)
        keeper = RunKeeper(setup, run_dir)
        step = keeper.resume()  # only to continue a run
        state = fit(setup, keeper, start_step=step)
"""

from .distributed import is_main_process, process_group
from .interruption import TrainingInterrupted
from .keeper import RunKeeper, decision_threshold, selected_epoch
from .loop import EpochOutcome, fit, train_one_epoch
from .setup import TrainSetup, build_setup, seed_everything
from .state import HISTORY_FIELDS, TrainState
from .validation import validate

__all__ = [
    "HISTORY_FIELDS",
    "EpochOutcome",
    "RunKeeper",
    "TrainSetup",
    "TrainState",
    "TrainingInterrupted",
    "build_setup",
    "decision_threshold",
    "fit",
    "is_main_process",
    "process_group",
    "seed_everything",
    "selected_epoch",
    "train_one_epoch",
    "validate",
]
