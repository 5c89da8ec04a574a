"""What the Runs page reads: training runs and evaluations under a folder (``--runs``).

A training run is a folder holding ``history.csv`` (what ``fissure train`` writes each
epoch), with its ``config.yaml``; an evaluation is a folder holding ``metrics.json``
(what ``fissure evaluate --out`` writes), with the figures beside it. An evaluation
belongs to the run whose folder holds it (``runs/a/eval``); one outside any run is shown
on its own.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..config import TrainConfig, read_yaml
from ..errors import DataError, FissureError
from ..report.evaluation import plot_confusion, plot_pr_curve
from ..training.keeper import monitored_score, selected_epoch

MAX_DEPTH = 4
"""How deep below ``--runs`` runs and evaluations are looked for."""
FIGURES = ("pr_curve.png", "confusion_matrix.png", "samples.png")


@dataclass(frozen=True)
class Evaluation:
    """One ``fissure evaluate`` output folder: its metrics document and figures."""

    name: str
    folder: Path
    metrics: dict[str, Any]
    figures: dict[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class Run:
    """A training run (``history`` per epoch, ``config`` as YAML text) and its evaluations.

    ``best_epoch`` is the epoch ``fissure train`` kept as ``best.pt`` (its ``train.monitor``,
    ``min_delta``, ``select_window`` and ``select_tolerance``), ``best_score`` that epoch's
    monitored score. A folder of evaluations alone has no history.
    """

    name: str
    folder: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    config: str | None = None
    monitor: str = TrainConfig.monitor
    best_epoch: int | None = None
    best_score: float | None = None
    evaluations: list[Evaluation] = field(default_factory=list)


def _number(text: str | None) -> float | int | str | None:
    if text is None:  # a cell a short row lacks
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text else value


def read_history(path: Path) -> list[dict[str, Any]]:
    """``history.csv`` as one dict of numbers per epoch; a DataError naming a bad file.

    A row without a whole epoch number (a file cut short by another program) is left out.
    """
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    numbers = [{k: _number(v) for k, v in row.items() if k is not None} for row in rows]
    return [row for row in numbers if isinstance(row.get("epoch"), int)]


def best_epoch(
    history: list[dict[str, Any]], train: TrainConfig
) -> tuple[int | None, float | None]:
    """The epoch ``fissure train`` kept as ``best.pt`` under ``train``'s selection settings
    (:func:`~fissure.training.selected_epoch`), and that epoch's own monitored score.
    A score that is missing or not a number counts as not finite."""
    rows = [{**row, **{key: _as_float(row.get(key)) for key in _SCORES}} for row in history]
    epoch = selected_epoch(rows, train)
    if epoch is None:
        return None, None
    row = next(r for r in rows if int(r["epoch"]) == epoch)
    if train.monitor == "loss":  # the figure itself; the ranking negates it
        return epoch, row["val_loss"]
    return epoch, monitored_score(row, train.monitor)


_SCORES = ("val_loss", "val_iou", "val_f1_tuned")


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _selection(config_path: Path) -> TrainConfig:
    """The selection settings of a run's ``config.yaml`` (defaults where it has none)."""
    train = (read_yaml(config_path).get("train") or {}) if config_path.is_file() else {}
    keys = ("monitor", "min_delta", "select_window", "select_tolerance")
    return replace(TrainConfig(), **{key: train[key] for key in keys if key in train})


def read_evaluation(folder: Path, root: Path) -> Evaluation:
    """The evaluation in ``folder``; a DataError naming a damaged ``metrics.json``."""
    path = folder / "metrics.json"
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a metrics document ({exc})") from None
    figures = {name: folder / name for name in FIGURES if (folder / name).is_file()}
    return Evaluation(_name(folder, root), folder, metrics, figures)


def _name(folder: Path, root: Path) -> str:
    relative = folder.relative_to(root).as_posix()
    return root.name if relative == "." else relative


def read_run(folder: Path, root: Path, evaluations: list[Evaluation]) -> Run:
    """The training run in ``folder`` (``history.csv``, ``config.yaml``)."""
    history = read_history(folder / "history.csv")
    config_path = folder / "config.yaml"
    try:
        config = config_path.read_text(encoding="utf-8") if config_path.is_file() else None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{config_path}: cannot read ({exc})") from None
    train = _selection(config_path)
    epoch, score = best_epoch(history, train)
    return Run(_name(folder, root), folder, history, config, train.monitor, epoch, score,
               evaluations)


def _folders(root: Path, name: str) -> list[Path]:
    found = [
        p.parent
        for depth in range(MAX_DEPTH + 1)
        for p in root.glob("/".join(["*"] * depth + [name]))
    ]
    return sorted(set(found))


def find_runs(root: str | Path, warn: Callable[[str], None] | None = None) -> list[Run]:
    """Every training run and evaluation under ``root``, runs first, by folder name.

    A run or evaluation that cannot be read is left out, its one-line reason passed to
    ``warn``; a missing ``root`` is a DataError.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: no such runs folder")
    evaluations: list[Evaluation] = []
    for folder in _folders(root, "metrics.json"):
        try:
            evaluations.append(read_evaluation(folder, root))
        except FissureError as exc:
            if warn:
                warn(str(exc))
    runs, claimed = [], set()
    for folder in _folders(root, "history.csv"):
        own = [e for e in evaluations if e.folder.is_relative_to(folder)]
        try:
            runs.append(read_run(folder, root, own))
        except FissureError as exc:
            if warn:
                warn(str(exc))
            continue
        claimed |= {e.folder for e in own}
    alone = [Run(e.name, e.folder, evaluations=[e]) for e in evaluations if e.folder not in claimed]
    return runs + alone


def metric_rows(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The headline figures of a metrics document, one row each, at 0.5 and tuned.

    Each row's name says how the figure counts: pixels summed over the dataset (micro),
    images, or pixels within the document's tolerance.
    """
    rows = []
    tol = (metrics.get("tolerance") or {}).get("tolerance_px")
    sections = (
        ("pixel_micro", "pixel (dataset)"),
        ("detection", "image detection"),
        ("tolerance", f"tolerant ({tol} px)" if tol is not None else "tolerant"),
    )
    for section, label in sections:
        for key, figure in (metrics.get(section) or {}).items():
            value = figure.get("at_tuned") if isinstance(figure, dict) else ""
            if value is None or isinstance(value, (int, float)):
                rows.append(
                    {
                        "figure": f"{label} {key}",
                        "at 0.5": figure.get("at_0.5"),
                        "at tuned": figure.get("at_tuned"),
                    }
                )
    return rows


def figure_png(evaluation: Evaluation, name: str) -> bytes | None:
    """A figure of the evaluation: its file, or drawn again from ``metrics.json`` (the PR
    curve and the confusion matrix) when only the document is there."""
    if name in evaluation.figures:
        return evaluation.figures[name].read_bytes()
    buffer = io.BytesIO()
    metrics = evaluation.metrics
    try:
        if name == "pr_curve.png":
            plot_pr_curve(metrics, buffer)
        elif name == "confusion_matrix.png":
            plot_confusion(
                metrics["pixel_counts"]["at_tuned"], metrics["thresholds"]["at_tuned"], buffer
            )
        else:
            return None
    except (KeyError, TypeError, ValueError):
        return None
    return buffer.getvalue()
