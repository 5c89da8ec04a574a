"""Evaluation outputs: the terminal table, ``per_image.csv`` and the three figures.

Everything here renders the metrics document of :func:`fissure.evaluation.metrics_document`
(figures at ``at_0.5`` / ``at_tuned``, sweep figures ``exact`` / ``tolerant_<k>px``), the
per-image rows of :meth:`fissure.evaluation.EvalResult.per_image` and a few re-predicted
sample images; nothing here touches pixels of the whole split.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..writes import replacing  # noqa: E402
from .format import fmt, write_json  # noqa: E402

EVAL_FILES = (
    "metrics.json",
    "per_image.csv",
    "confusion_matrix.png",
    "pr_curve.png",
    "samples.png",
)
CLASS_ROWS = ("background", "crack", "accuracy", "macro avg", "weighted avg")
OVERLAY = {"TP": (0.0, 0.8, 0.0), "FP": (1.0, 0.1, 0.1), "FN": (0.1, 0.4, 1.0)}


# --------------------------------------------------------------------------- terminal


def classification_report_text(report: dict[str, Any], digits: int = 4) -> str:
    """sklearn-style text table of :func:`fissure.metrics.classification_report`."""
    width = 12
    lines = [
        f"{'':>14}"
        + "".join(f"{h:>{width}}" for h in ("precision", "recall", "f1-score", "support"))
    ]
    for name in CLASS_ROWS:
        row = report[name]
        cells = [
            "" if name == "accuracy" and k != "f1" else fmt(row.get(k), digits)
            for k in ("precision", "recall", "f1")
        ]
        lines.append(
            f"{name:>14}" + "".join(f"{c:>{width}}" for c in cells) + f"{row['support']:>{width}}"
        )
        if name == "crack":
            lines.append("")
    return "\n".join(lines)


def _row(label: str, cells: Sequence[str], indent: int = 2, width: int = 18) -> str:
    return " " * indent + f"{label:<{32 - indent}}" + "".join(f"{c:>{width}}" for c in cells)


def _pm(stats: dict | None) -> str:
    return "undefined" if stats is None else f"{fmt(stats['mean'])} ± {fmt(stats['std'], 3)}"


def metrics_table(metrics: dict[str, Any]) -> str:
    """Terminal summary of :func:`fissure.api.evaluate`'s metrics document."""
    th = metrics["thresholds"]
    cols = ("at_0.5", "at_tuned")
    heads = (f"@ {th['at_0.5']:.2f}", f"@ {th['at_tuned']:.2f} tuned")
    source = f" ({th['tuned_source']})" if th.get("tuned_source") else ""
    lines = [
        f"{metrics.get('split', '?')} split: {metrics['n_images']} images from "
        f"{metrics.get('data', '?')}; tuned threshold {th['at_tuned']:g}{source}",
        "",
        _row("Pixel level", heads, 0),
        " dataset-level (micro)",
    ]
    for key, fig in metrics["pixel_micro"].items():
        lines.append(_row(key, [fmt(fig[c]) for c in cols]))
    lines.append(" per image (macro), mean ± std; empty image predicted empty = 1")
    for key in ("iou", "f1"):
        lines.append(_row(key, [_pm(metrics["pixel_per_image"][key][c]) for c in cols]))
    lines += [
        "",
        f"Classification report (pixels, threshold {th['at_tuned']:g})",
        classification_report_text(metrics["classification_report"]),
        "",
    ]
    det = metrics["detection"]
    lines.append(_row(f"Image-level detection (a crack of >= {det['min_area']} px)", heads, 0))
    for key in ("precision", "recall", "f1"):
        lines.append(_row(key, [fmt(det[key][c]) for c in cols]))
    lines.append(
        _row(
            f"false-positive rate ({det['n_clean']} clean)",
            [fmt(det["false_positive_rate"][c]) for c in cols],
        )
    )
    tol = metrics["tolerance"]
    lines += ["", _row(f"{tol['tolerance_px']}-px tolerant (dataset-level)", heads, 0)]
    for key in ("precision", "recall", "f1"):
        lines.append(_row(key, [fmt(tol[key][c]) for c in cols]))
    lines += ["", *_sweep_lines(metrics["threshold_sweep"])]
    for note in metrics.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def _sweep_lines(sweep: dict[str, Any]) -> list[str]:
    modes = ("exact", f"tolerant_{sweep['tolerance_px']}px")
    lines = [
        _row(
            f"Threshold sweep ({sweep['n_thresholds']} thresholds)",
            ("exact", f"{sweep['tolerance_px']}-px tolerant"),
            0,
        )
    ]
    for key, label, digits in (
        ("ods_f1", "ODS F1", 4),
        ("ods_threshold", "ODS threshold", 2),
        ("ois_f1", "OIS F1", 4),
        ("ap", "AP", 4),
    ):
        lines.append(_row(label, [fmt(sweep[key][m], digits) for m in modes]))
    return lines


# --------------------------------------------------------------------------- files


def _ranked(rows: list[dict]) -> list[dict]:
    # worst first; among equal IoU the image with more wrong pixels is worse
    return sorted(rows, key=lambda r: (r["iou"], -(r["fp"] + r["fn"]), r["name"]))


def pick_samples(rows: list[dict], per_group: int = 2) -> list[tuple[str, dict]]:
    """``(label, row)`` for the worst, median and best images by per-image IoU.

    Ranks the images that contain crack when there are any (a crack-free image predicted empty
    scores a trivial 1), then adds the crack-free image with the largest predicted area, if it
    has any, as a "false alarm". No image appears twice.
    """
    cracked = [r for r in rows if r["true_px"] > 0]
    ranked = _ranked(cracked or rows)
    k = max(1, per_group)
    mid = max(0, (len(ranked) - k) // 2)
    groups = [("worst", ranked[:k]), ("median", ranked[mid : mid + k]), ("best", ranked[::-1][:k])]
    clean = [r for r in rows if r["true_px"] == 0 and r["pred_px"] > 0]
    if cracked and clean:
        groups.append(("false alarm", [max(clean, key=lambda r: (r["pred_px"], r["name"]))]))
    seen: set[str] = set()
    picked = []
    for label, group in groups:
        for row in group:
            if row["name"] not in seen:
                seen.add(row["name"])
                picked.append((label, row))
    return picked


def write_per_image(
    rows: Sequence[dict], path: str | Path, threshold: float, tolerance: int
) -> None:
    """One CSV row per image at ``threshold``: pixel counts, IoU/F1 (empty rule), detection."""
    tol_key = f"tolerant_f1_{tolerance}px"
    fields = [
        "name",
        "true_crack_px",
        "pred_crack_px",
        "kept_crack_px",
        "tp",
        "fp",
        "fn",
        "iou",
        "f1",
        tol_key,
        "detection",
        "threshold",
    ]
    with replacing(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(fields)
        for r in rows:
            writer.writerow(
                [
                    r["name"],
                    r["true_px"],
                    r["pred_px"],
                    r["kept_px"],
                    r["tp"],
                    r["fp"],
                    r["fn"],
                    round(r["iou"], 6),
                    round(r["f1"], 6),
                    round(r["tolerant_f1"], 6),
                    r["detection"],
                    threshold,
                ]
            )


def plot_confusion(counts: dict[str, int], threshold: float, path: str | Path) -> None:
    """2x2 pixel confusion matrix: counts, and rows normalised to the true class."""
    cm = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]], dtype=np.int64)
    support = cm.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = np.where(support > 0, cm / np.where(support > 0, support, 1), np.nan)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    # log shading: crack pixels are often 1 % of the total and would all look blank
    shade = np.log1p(cm) / np.log1p(max(cm.max(), 1))
    panels = (
        (shade, [f"{v:,}" for v in cm.ravel()], "pixel counts (log shading)"),
        (
            norm,
            ["n/a" if np.isnan(v) else f"{v:.3f}" for v in norm.ravel()],
            "row-normalised (recall per true class)",
        ),
    )
    for ax, (shade, texts, title) in zip(axes, panels, strict=True):
        ax.imshow(np.nan_to_num(shade), cmap="Blues", vmin=0, vmax=1)
        for k, text in enumerate(texts):
            y, x = divmod(k, 2)
            dark = np.nan_to_num(shade)[y, x] > 0.6
            ax.text(x, y, text, ha="center", va="center", color="white" if dark else "black")
        ax.set(
            xticks=[0, 1],
            yticks=[0, 1],
            xticklabels=["background", "crack"],
            yticklabels=["background", "crack"],
            xlabel="predicted",
            ylabel="true",
            title=title,
        )
    fig.suptitle(f"Pixel confusion matrix at threshold {threshold:g}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _floats(values: Any) -> np.ndarray:
    # None (from JSON) and NaN both mean undefined
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def plot_pr_curve(metrics: dict[str, Any], path: str | Path) -> None:
    """Exact and tolerant dataset PR curves over the sweep, ODS points and tuned threshold."""
    sweep = metrics["threshold_sweep"]
    tol_key = f"tolerant_{sweep['tolerance_px']}px"
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    try:
        _draw_pr_curve(fig, ax, metrics, tol_key, path)
    finally:  # a metrics.json short of a key must not leave the figure open
        plt.close(fig)


def _draw_pr_curve(fig: Any, ax: Any, metrics: dict[str, Any], tol_key: str,
                   path: str | Path) -> None:
    _iso_f1_guides(ax)
    operating = {"exact": metrics["pixel_micro"], tol_key: metrics["tolerance"]}
    drawn = False
    for mode, color in (("exact", "tab:blue"), (tol_key, "tab:orange")):
        drawn = _pr_mode(ax, metrics, mode, color, operating[mode]) or drawn
    if not drawn:
        ax.text(
            0.5,
            0.5,
            "no crack pixels in this split:\nthe PR curve is undefined",
            ha="center",
            va="center",
        )
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.02),
        xlabel="recall",
        ylabel="precision",
        title=f"Pixel PR curve, {metrics.get('split', '')} split",
    )
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _iso_f1_guides(ax: Any) -> None:
    for f in (0.2, 0.4, 0.6, 0.8):
        r = np.linspace(f / (2 - f) + 1e-6, 1, 100)
        ax.plot(r, f * r / (2 * r - f), color="0.85", lw=0.8, zorder=0)
        ax.text(0.99, f / (2 - f) + 0.01, f"F1={f:.1f}", color="0.6", fontsize=7, ha="right")


def _pr_mode(
    ax: Any, metrics: dict[str, Any], mode: str, color: str, operating: dict[str, Any]
) -> bool:
    """Draw one sweep mode's curve, its ODS point and its operating point at the tuned
    threshold; False (nothing drawn) when the curve is undefined."""
    sweep = metrics["threshold_sweep"]
    curve, th = sweep["pr_curve"], _floats(sweep["pr_curve"]["thresholds"])
    p, r = _floats(curve[mode]["precision"]), _floats(curve[mode]["recall"])
    ok = ~np.isnan(p) & ~np.isnan(r)
    if not ok.any():
        return False
    label = mode.replace("_", " ")
    ax.plot(r[ok], p[ok], color=color, label=f"{label} (AP {fmt(sweep['ap'][mode], 3)})")
    ods_t, ods_f = sweep["ods_threshold"][mode], sweep["ods_f1"][mode]
    if ods_t is not None and ods_f is not None:
        k = int(np.argmin(np.abs(th - ods_t)))
        ax.plot(r[k], p[k], "*", ms=14, color=color, mec="black",
                label=f"{label} ODS F1 {ods_f:.3f} @ {ods_t:.2f}")
    op_p, op_r = operating["precision"]["at_tuned"], operating["recall"]["at_tuned"]
    if op_p is not None and op_r is not None:
        ax.plot(op_r, op_p, "o", ms=7, mfc="none", color=color,
                label=f"{label} @ tuned {metrics['thresholds']['at_tuned']:.2f}")
    return True


def _overlay(image: np.ndarray, true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(H, W, 3) float image dimmed, with TP green, FP red and FN blue."""
    out = image.astype(np.float32) / 255 * 0.6
    for key, where in (("TP", pred & true), ("FP", pred & ~true), ("FN", ~pred & true)):
        out[where] = OVERLAY[key]
    return out


def plot_samples(views: Sequence[Any], threshold: float, path: str | Path) -> None:
    """Grid of image / true mask / prediction / overlay, one row per :class:`SampleView`."""
    n = max(len(views), 1)
    # rows as tall as the images need, so landscape photos leave no blank bands
    aspect = float(np.median([v.mask.shape[0] / v.mask.shape[1] for v in views])) if views else 1
    fig, axes = plt.subplots(
        n, 4, figsize=(12, n * (2.9 * min(max(aspect, 0.3), 2) + 0.3)), squeeze=False
    )
    heads = (
        "image",
        "true mask",
        f"prediction (> {threshold:g})",
        "overlay: TP green, FP red, FN blue",
    )
    for ax in axes.ravel():
        ax.set(xticks=[], yticks=[])
    for j, head in enumerate(heads):
        axes[0, j].set_title(head, fontsize=9)
    if not views:
        axes[0, 0].text(0.5, 0.5, "no images to show", ha="center", transform=axes[0, 0].transAxes)
    for i, view in enumerate(views):
        pred = view.prob > threshold
        row = view.row
        panels = (view.image, view.mask, pred, _overlay(view.image, view.mask, pred))
        for j, panel in enumerate(panels):
            gray = {"cmap": "gray", "vmin": 0, "vmax": 1} if panel.ndim == 2 else {}
            axes[i, j].imshow(panel, interpolation="nearest", **gray)
        axes[i, 0].set_ylabel(
            f"{view.label}: {row['name']}\nIoU {row['iou']:.3f}  "
            f"F1 {row['f1']:.3f}\n{row['true_px']} true / {row['pred_px']} "
            "pred px",
            fontsize=8,
        )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_eval_reports(
    metrics: dict[str, Any], rows: Sequence[dict], views: Sequence[Any], out: str | Path
) -> dict[str, Path]:
    """Write metrics.json, per_image.csv, confusion_matrix.png, pr_curve.png and samples.png."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in EVAL_FILES}
    thr = metrics["thresholds"]["at_tuned"]
    write_json(metrics, paths["metrics.json"])
    write_per_image(rows, paths["per_image.csv"], thr, metrics["tolerance"]["tolerance_px"])
    plot_confusion(metrics["pixel_counts"]["at_tuned"], thr, paths["confusion_matrix.png"])
    plot_pr_curve(metrics, paths["pr_curve.png"])
    plot_samples(views, thr, paths["samples.png"])
    return paths
