"""Tests for reading training runs and evaluations (fissure.app.runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fissure.app.runs import best_epoch, figure_png, find_runs, metric_rows, read_history
from fissure.config import TrainConfig
from fissure.errors import DataError


def test_runs_evaluations_and_problems_are_found(runs_root: Path) -> None:
    problems: list[str] = []
    runs = find_runs(runs_root, problems.append)
    assert [run.name for run in runs] == ["run_a", "run_b", "lone/eval"]
    assert len(problems) == 1 and "broken/metrics.json: not a metrics document" in problems[0]
    run_a, run_b, lone = runs
    assert [e.name for e in run_a.evaluations] == ["run_a/eval"]
    assert set(run_a.evaluations[0].figures) == {
        "pr_curve.png",
        "confusion_matrix.png",
        "samples.png",
    }
    assert (run_a.monitor, run_a.best_epoch, run_a.best_score) == ("iou", 2, 0.5)
    assert (run_b.monitor, run_b.best_epoch) == ("loss", 4)  # the loss falls to the end
    assert run_b.best_score == pytest.approx(0.35)  # the loss itself, not its ranking
    assert run_a.history[1] == {**run_a.history[1], "epoch": 2, "val_iou": 0.5, "skipped": 0}
    assert run_a.config is not None and "monitor: iou" in run_a.config
    assert not lone.history and lone.config is None and lone.evaluations[0].figures == {}
    with pytest.raises(DataError, match="no such runs folder"):
        find_runs(runs_root / "nope")


def test_best_epoch_follows_the_training_rule() -> None:
    rows = [
        {"epoch": 1, "val_iou": 0.3},
        {"epoch": 2, "val_iou": 0.31},
        {"epoch": 3, "val_iou": float("nan")},
        {"epoch": 4, "val_iou": 0.4},
    ]
    assert best_epoch(rows, TrainConfig(monitor="iou")) == (4, 0.4)
    assert best_epoch(rows, TrainConfig(monitor="iou", min_delta=0.2)) == (1, 0.3)
    assert best_epoch([{"epoch": 1}], TrainConfig(monitor="iou")) == (None, None)
    assert best_epoch([{"epoch": 1, "val_iou": "n/a"}], TrainConfig(monitor="iou")) == (
        None, None)


def test_best_epoch_follows_a_smoothed_selection(tmp_path: Path) -> None:
    """The page names the epoch that best.pt holds when the config smooths the selection,
    not the epoch with the highest single score."""
    f1 = [0.50, 0.68, 0.60, 0.62, 0.63]
    lines = ["epoch,val_loss,val_iou,val_f1_tuned"]
    lines += [f"{n},0.3,0.4,{score}" for n, score in enumerate(f1, start=1)]
    run = tmp_path / "runs" / "smoothed"
    run.mkdir(parents=True)
    (run / "history.csv").write_text("\n".join(lines) + "\n")
    (run / "config.yaml").write_text(
        "train:\n  monitor: f1\n  select_window: 3\n  select_tolerance: 0.005\n")
    [found] = find_runs(tmp_path / "runs")
    # 3-validation means: 0.50, 0.59, 0.593, 0.633, 0.617 (within 0.005 of 0.633? no)
    assert (found.best_epoch, found.best_score) == (4, 0.62)
    assert best_epoch(found.history, TrainConfig(monitor="f1")) == (2, 0.68)


def test_metric_rows_and_figures(runs_root: Path) -> None:
    run_a, _, lone = find_runs(runs_root)
    rows = metric_rows(run_a.evaluations[0].metrics)
    names = [row["figure"] for row in rows]
    assert "pixel (dataset) iou" in names and "image detection f1" in names
    assert "tolerant (2 px) f1" in names
    assert set(rows[0]) == {"figure", "at 0.5", "at tuned"}
    evaluation = run_a.evaluations[0]
    assert (
        figure_png(evaluation, "pr_curve.png") == (evaluation.folder / "pr_curve.png").read_bytes()
    )
    for name in ("pr_curve.png", "confusion_matrix.png"):  # drawn from metrics.json
        assert figure_png(lone.evaluations[0], name)[:8] == b"\x89PNG\r\n\x1a\n"
    assert figure_png(lone.evaluations[0], "samples.png") is None
    assert metric_rows({}) == []


def test_damaged_history_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "history.csv").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DataError, match="history.csv: cannot read"):
        read_history(tmp_path / "history.csv")


def test_a_history_cut_short_keeps_its_whole_rows(tmp_path: Path) -> None:
    # another program writing history.csv in place, read half-way: a short last row
    (tmp_path / "history.csv").write_text("epoch,val_loss,val_iou,val_f1_tuned\n"
                                          "1,0.4,0.3,0.5\n2,0.4\n,\n")
    rows = read_history(tmp_path / "history.csv")
    assert [row["epoch"] for row in rows] == [1, 2]
    assert rows[1]["val_iou"] is None
    assert best_epoch(rows, TrainConfig(monitor="iou")) == (1, 0.3)


def test_fissure_writes_history_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fissure.report import training as report

    path = tmp_path / "history.csv"
    report.write_history([{"epoch": 1, "val_loss": 0.5}], path)
    before = path.read_text()

    class Full(Exception):
        pass

    def fail(*args, **kwargs):
        raise Full("disk full")

    monkeypatch.setattr(report.csv.DictWriter, "writerow", fail)
    with pytest.raises(Full):
        report.write_history([{"epoch": 1}, {"epoch": 2}], path)
    assert path.read_text() == before  # never half a file
