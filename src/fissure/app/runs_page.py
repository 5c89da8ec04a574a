"""The Runs page: training curves, config and best epoch; evaluations' metrics, PR curve,
confusion matrix and samples; two runs side by side.

Runs are read from the folder ``fissure app --runs`` names (or one typed in the page),
see :mod:`fissure.app.runs`.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ..errors import FissureError
from ..report.evaluation import metrics_table
from .runs import Evaluation, Run, figure_png, find_runs, metric_rows

CURVES = (
    ("Loss", ("train_loss", "val_loss")),
    ("IoU / F1", ("train_iou", "val_iou", "val_f1_tuned", "threshold")),
)
"""The two charts of a run: history columns drawn against the epoch."""


def _curves(run: Run) -> None:
    frame = pd.DataFrame(run.history).set_index("epoch")
    for title, columns in CURVES:
        present = [c for c in columns if c in frame.columns]
        if present:
            st.caption(title)
            st.line_chart(frame[present])


def _evaluation(evaluation: Evaluation) -> None:
    metrics = evaluation.metrics
    st.markdown(
        f"**Evaluation `{evaluation.name}`**: {metrics.get('split', '?')} split, "
        f"{metrics.get('n_images', '?')} images"
    )
    rows = metric_rows(metrics)
    if rows:
        st.dataframe(pd.DataFrame(rows), hide_index=True, key=f"metrics_{evaluation.folder}")
    with st.expander("Full metrics"):
        try:
            st.code(metrics_table(metrics), language=None)
        except (KeyError, TypeError, ValueError):
            st.json(metrics, expanded=False)
    for name, caption in (
        ("pr_curve.png", "PR curve"),
        ("confusion_matrix.png", "Confusion matrix"),
        ("samples.png", "Samples"),
    ):
        png = figure_png(evaluation, name)
        if png is not None:
            st.image(png, caption=caption)


def _run(run: Run) -> None:
    """One run: best epoch, curves, config and its evaluations."""
    st.subheader(run.name)
    if run.history:
        last = run.history[-1]
        best = (
            "no epoch improved"
            if run.best_epoch is None
            else f"best epoch {run.best_epoch} ({run.monitor} {run.best_score:.4f})"
        )
        st.markdown(f"{len(run.history)} epoch(s), last {last.get('epoch')}; {best}")
        _curves(run)
    if run.config is not None:
        with st.expander("config.yaml"):
            st.code(run.config, language="yaml")
    for evaluation in run.evaluations:
        _evaluation(evaluation)
    if not run.history and not run.evaluations:
        st.info("Nothing to show in this folder.")


def render(runs: str | None = None) -> None:
    """Draw the Runs page for the folder ``runs`` (``fissure app --runs``)."""
    st.header("Runs")
    folder = st.text_input("Runs folder", value=runs or "", key="runs_folder")
    if not folder.strip():
        st.info(
            "Name a folder of training runs (fissure train --out) and evaluations "
            "(fissure evaluate --out)."
        )
        return
    problems: list[str] = []
    try:
        found = find_runs(folder, problems.append)
    except FissureError as exc:
        st.error(str(exc))
        return
    for problem in problems:
        st.warning(problem)
    if not found:
        st.info(f"{folder}: no training runs (history.csv) or evaluations (metrics.json).")
        return
    names = [run.name for run in found]
    chosen = st.multiselect(
        "Runs (two side by side)", names, default=names[:1], max_selections=2, key="runs_chosen"
    )
    columns = st.columns(len(chosen)) if chosen else []
    for column, name in zip(columns, chosen, strict=True):
        with column:
            _run(found[names.index(name)])
