"""TrainState: what survives a restart, and the skipped-sample bookkeeping."""

import pytest

from fissure.errors import FissureError
from fissure.training.distributed import Dist
from fissure.training.state import HISTORY_FIELDS, TrainState


def test_round_trip_through_plain_values():
    state = TrainState(epoch=3, best=0.5, best_epoch=2, bad_epochs=1,
                       history=[{"epoch": 1}], skipped={"a": "broken"})
    assert TrainState.from_dict(state.to_dict()) == state


def test_older_state_without_skipped_loads():
    stored = TrainState(epoch=1).to_dict()
    del stored["skipped"]
    assert TrainState.from_dict(stored).skipped == {}


def test_each_skipped_sample_is_logged_once():
    state, lines = TrainState(), []
    state.record_skipped([("a", "bad"), ("b", "worse")], lines.append)
    state.record_skipped([("a", "bad")], lines.append)
    assert lines == ["skipped a: bad", "skipped b: worse"]
    state.pool_skipped(Dist(), lines.append)  # one process: nothing to pool
    assert state.skipped == {"a": "bad", "b": "worse"} and len(lines) == 2


def test_too_many_skips_stop():
    state = TrainState(skipped={"a": "x", "b": "y"})
    state.check_skipped(total=4, max_fraction=0.5)
    with pytest.raises(FissureError, match="2 of 3 samples skipped"):
        state.check_skipped(total=3, max_fraction=0.5)


def test_history_fields_are_the_csv_columns():
    assert HISTORY_FIELDS[0] == "epoch" and "threshold" in HISTORY_FIELDS
