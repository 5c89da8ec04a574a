"""Training outputs: history.csv, curves.png (labelled with their thresholds), skipped.csv."""

import csv
import math

import matplotlib.figure
import pytest

from fissure.report.training import TensorBoardLog, plot_curves, write_history, write_skipped
from fissure.training.state import HISTORY_FIELDS


def _history():
    return [{"epoch": e, "train_loss": 1 / e, "train_iou": 0.1 * e, "val_loss": 1.1 / e,
             "val_iou": math.nan if e == 1 else 0.2, "val_f1": 0.3, "val_f1_tuned": 0.35,
             "threshold": 0.4 + 0.05 * e, "lr": 1e-4, "seconds": 1.5, "skipped": 0,
             "extra": "left out"} for e in (1, 2)]


def test_write_history(tmp_path):
    history = _history()
    history[0]["train_loss"] = 0.1234567891
    write_history(history, tmp_path / "history.csv")
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines[0].split(",") == list(HISTORY_FIELDS)
    rows = list(csv.DictReader(lines))
    assert rows[0]["train_loss"] == "0.123457" and rows[0]["val_iou"] == "nan"
    assert "extra" not in rows[0]


@pytest.fixture()
def legends(monkeypatch):
    """The legend labels of each figure saved, by axes."""
    found = []

    def capture(fig, path, **kwargs):
        found.append([[t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes])

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", capture)
    return found


def test_curves_say_their_thresholds(tmp_path, legends):
    plot_curves(_history(), tmp_path / "curves.png", iou_threshold=0.3)
    loss, scores = legends[0]
    assert loss == ["train", "val"]
    assert scores == ["train IoU @0.3", "val IoU @0.3", "val F1 @tuned", "tuned threshold"]


def test_curves_default_to_the_default_threshold(tmp_path):
    plot_curves(_history(), tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_write_skipped(tmp_path):
    write_skipped({"b": "broken", "a": "empty"}, tmp_path / "skipped.csv")
    rows = list(csv.reader((tmp_path / "skipped.csv").read_text().splitlines()))
    assert rows == [["name", "reason"], ["a", "empty"], ["b", "broken"]]


def test_tensorboard_logs_finite_numbers(tmp_path):
    pytest.importorskip("tensorboard")
    board = TensorBoardLog(tmp_path)
    board.log(_history()[0])
    assert (tmp_path / "tensorboard").is_dir()
