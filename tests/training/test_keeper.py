"""RunKeeper: the decision threshold, best and early stopping, the time budget, resume."""

import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from fissure.config import TrainConfig, load_config
from fissure.errors import CheckpointError
from fissure.training import RunKeeper, decision_threshold
from fissure.training.budget import Budget
from fissure.training.distributed import Dist
from fissure.training.keeper import monitored_score, selected_epoch, smoothed_score


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _keeper(tmp_path, clock=None, **train):
    """A keeper of a rank that writes no file: only its bookkeeping is under test."""
    cfg = SimpleNamespace(train=TrainConfig(**train))
    minutes = cfg.train.max_minutes
    budget = Budget(100, minutes * 60 if minutes else None, clock=clock or FakeClock())
    budget.start()
    return RunKeeper(SimpleNamespace(cfg=cfg, dist=Dist(rank=1, world=2), budget=budget),
                     tmp_path)


def _row(epoch, **scores):
    return {"epoch": epoch, "val_loss": 1.0, "val_iou": 0.5, "val_f1_tuned": 0.5,
            "threshold": 0.4, **scores}


def test_one_decision_threshold_for_both_checkpoints():
    tuned, fixed = TrainConfig(threshold=0.3), TrainConfig(tune_threshold=False, threshold=0.3)
    assert decision_threshold({"threshold": 0.7}, tuned) == 0.7
    assert decision_threshold({"threshold": 0.7}, fixed) == 0.3
    assert decision_threshold({}, tuned) == 0.3  # before the first epoch
    assert decision_threshold(None, tuned) == 0.3


def test_monitored_score():
    row = _row(1, val_loss=0.25, val_iou=0.5, val_f1_tuned=0.75)
    assert monitored_score(row, "loss") == -0.25
    assert monitored_score(row, "iou") == 0.5
    assert monitored_score(row, "f1") == 0.75


def test_best_improves_by_more_than_min_delta(tmp_path):
    keeper = _keeper(tmp_path, min_delta=0.1)
    assert keeper.end_epoch(_row(1, val_iou=0.5))
    assert not keeper.end_epoch(_row(2, val_iou=0.55))
    assert not keeper.end_epoch(_row(3, val_iou=math.nan))  # never "best"
    assert keeper.end_epoch(_row(4, val_iou=0.7))
    state = keeper.state
    assert (state.epoch, state.best, state.best_epoch, state.bad_epochs) == (4, 0.7, 4, 0)
    assert len(state.history) == 4 and not list(tmp_path.iterdir())  # rank 1 writes nothing


def test_stop_reasons(tmp_path):
    clock = FakeClock()
    keeper = _keeper(tmp_path, clock, patience=2, max_minutes=1.0)
    assert keeper.stop_reason() is None
    keeper.state.bad_epochs = 2
    assert keeper.stop_reason().startswith("early stopping: no improvement for 2 epochs")
    keeper.state.bad_epochs = 0
    clock.now = 59.0
    assert keeper.stop_reason() is None
    keeper.setup.budget.note_end_of_epoch(4.0)  # 5 s kept for the final validation
    assert keeper.stop_reason() == "time budget of 1 min reached after 1.0 min"
    clock.now = 1e6
    assert _keeper(tmp_path, clock, patience=0).stop_reason() is None


def test_selection_on_a_smoothed_score(tmp_path):
    """With a window of 2, a lucky single epoch does not beat a steady pair."""
    keeper = _keeper(tmp_path, monitor="f1", select_window=2)
    for epoch, f1 in enumerate([0.5, 0.9, 0.3, 0.7, 0.75], start=1):
        keeper.end_epoch(_row(epoch, val_f1_tuned=f1))
    # means: 0.5, 0.7, 0.6, 0.5, 0.725
    assert keeper.state.best_epoch == 5 and keeper.state.best == pytest.approx(0.725)
    assert math.isnan(smoothed_score([_row(1), _row(2, val_f1_tuned=math.nan)], "f1", 2))
    assert smoothed_score([_row(1, val_f1_tuned=math.nan), _row(2, val_f1_tuned=0.6)],
                          "f1", 2) == 0.6  # a NaN before is left out of the mean


def test_selection_tolerance_prefers_later_epochs(tmp_path):
    keeper = _keeper(tmp_path, monitor="f1", select_tolerance=0.01)
    for epoch, f1 in enumerate([0.70, 0.72, 0.715, 0.70], start=1):
        keeper.end_epoch(_row(epoch, val_f1_tuned=f1))
    state = keeper.state
    assert state.best_epoch == 3 and state.best == 0.72  # 0.70 is out of tolerance
    assert state.bad_epochs == 2  # a near tie is kept, but it is no improvement
    strict = _keeper(tmp_path, monitor="f1")
    for epoch, f1 in enumerate([0.70, 0.72, 0.715], start=1):
        strict.end_epoch(_row(epoch, val_f1_tuned=f1))
    assert strict.state.best_epoch == 2


def test_selected_epoch_replays_the_keeper():
    """The rule replayed on a finished history picks the epoch the keeper kept."""
    f1 = [0.5, 0.9, 0.3, 0.7, 0.75]
    history = [_row(epoch, val_f1_tuned=score) for epoch, score in enumerate(f1, start=1)]
    assert selected_epoch(history, TrainConfig(monitor="f1")) == 2
    assert selected_epoch(history, TrainConfig(monitor="f1", select_window=2)) == 5
    # window 3 means: 0.5, 0.7, 0.567, 0.633, 0.583; of the later ones only 0.633 is
    # within 0.1 of 0.7
    assert selected_epoch(history, TrainConfig(monitor="f1", select_window=3,
                                               select_tolerance=0.1)) == 4
    assert selected_epoch([_row(1, val_f1_tuned=math.nan)], TrainConfig(monitor="f1")) is None
    for train in (TrainConfig(monitor="f1", select_window=2),
                  TrainConfig(monitor="f1", select_tolerance=0.25, min_delta=0.01)):
        keeper = _keeper(Path("unused"), **vars(train))
        for row in history:
            keeper.end_epoch(row)
        assert keeper.state.best_epoch == selected_epoch(history, train)


def test_resume_needs_last_pt(tmp_path):
    with pytest.raises(CheckpointError, match="no last.pt"):
        _keeper(tmp_path).resume()


def test_api_resume_needs_last_pt(tmp_path):
    from fissure import api

    with pytest.raises(CheckpointError, match="no last.pt"):
        api.resume(tmp_path)


def test_resume_restores_state_and_removes_half_written_files(tmp_path, tiny_overrides):
    from fissure.data import build_source
    from fissure.training import build_setup

    cfg = load_config(None, tiny_overrides + ["train.device=cpu", "train.ema=0.9"])
    setup = build_setup(cfg, build_source(cfg.data))
    keeper = RunKeeper(setup, tmp_path)
    keeper.state.epoch, keeper.state.best = 3, 0.25
    keeper.state.history.append(_row(3, threshold=0.35))
    setup.budget.load_state_dict({"elapsed": 100.0, "reserve": 7.0, "progress": 0.4})
    keeper.save_last(step=2)
    (tmp_path / ".last.pt.123.tmp").write_bytes(b"half")
    fresh = RunKeeper(build_setup(cfg, build_source(cfg.data)), tmp_path)
    assert fresh.setup.budget.elapsed == 0.0
    assert fresh.resume() == 2
    assert (fresh.state.epoch, fresh.state.best) == (3, 0.25)
    budget = fresh.setup.budget  # the time budget goes on from the time already used
    assert (budget.elapsed, budget.reserve, budget.progress(0)) == (100.0, 7.0, 0.4)
    assert not list(tmp_path.glob(".*.tmp"))
    other = load_config(None, tiny_overrides + ["train.device=cpu", "model.encoder=resnet34"])
    with pytest.raises(CheckpointError, match="resnet18"):
        RunKeeper(build_setup(other, build_source(other.data)), tmp_path).resume()


def test_resume_on_an_fp16_machine_of_a_run_saved_without_loss_scaling(tmp_path, tiny_overrides):
    """A last.pt from a CPU (scaler off, its state {}) resumed where fp16 loss scaling is on
    starts the scaler afresh instead of failing inside torch."""
    import dataclasses

    import torch

    from fissure.data import build_source
    from fissure.training import build_setup

    cfg = load_config(None, tiny_overrides + ["train.device=cpu"])
    RunKeeper(build_setup(cfg, build_source(cfg.data)), tmp_path).save_last()
    setup = build_setup(cfg, build_source(cfg.data))
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    fresh = RunKeeper(dataclasses.replace(setup, scaler=scaler), tmp_path)
    assert fresh.resume() == 0 and scaler.is_enabled()
