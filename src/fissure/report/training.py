"""Training outputs (history CSV, curves) and the terminal metrics table."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers or in CI
import matplotlib.pyplot as plt  # noqa: E402

from ..engine import HISTORY_FIELDS  # noqa: E402


def write_history(history: Sequence[dict[str, Any]], path: str | Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({k: (round(v, 6) if isinstance(v, float) else v)
                             for k, v in row.items()})


def plot_curves(history: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Loss and IoU against epoch, train and validation."""
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], "o-", label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_iou.plot(epochs, [r["train_iou"] for r in history], "o-", label="train IoU @0.5")
    ax_iou.plot(epochs, [r["val_iou"] for r in history], "o-", label="val IoU @0.5")
    ax_iou.plot(epochs, [r["val_f1_tuned"] for r in history], "s--", label="val F1 @tuned")
    ax_iou.set(xlabel="epoch", ylabel="score", title="Dataset-level IoU / F1", ylim=(0, 1))
    for ax in (ax_loss, ax_iou):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_skipped(skipped: dict[str, str], path: str | Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "reason"])
        writer.writerows(sorted(skipped.items()))


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN and inf become null, tensors and numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "tolist"):
        return _clean(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(data: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(_clean(data), indent=2) + "\n", encoding="utf-8")


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "undefined"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def metrics_table(metrics: dict[str, Any]) -> str:
    """Terminal summary of :func:`fissure.workflow.evaluate`'s result."""
    lines = [f"{metrics.get('split', '?')} split: {metrics.get('n_images', '?')} images "
             f"from {metrics.get('data', '?')}"]
    tuned, base = metrics.get("at_tuned", {}), metrics.get("at_0.5", {})
    cols = [("threshold 0.5", base)]
    if tuned is not base and tuned.get("threshold") != 0.5:
        cols.append((f"tuned {tuned.get('threshold', 0):.2f}", tuned))
    lines.append(f"{'dataset-level (micro)':<26}" + "".join(f"{c:>16}" for c, _ in cols))
    for key in ("iou", "precision", "recall", "f1", "accuracy", "specificity"):
        lines.append(f"  {key:<24}" + "".join(f"{fmt(m.get(key)):>16}" for _, m in cols))
    lines.append("per-image (macro, empty/empty = 1)")
    for key in ("iou", "f1"):
        lines.append(f"  {key + ' mean ± std':<24}" + "".join(
            f"{fmt(m.get(key + '_mean')) + ' ± ' + fmt(m.get(key + '_std'), 3):>16}"
            for _, m in cols))
    if base.get("tp", 0) + base.get("fn", 0) == 0:
        lines.append("note: the split holds no crack pixels, so pixel IoU/F1 are undefined; "
                     "see the detection figures")
    det = metrics.get("detection")
    if det:
        lines.append(f"image-level detection (crack if >= {det['min_area']} px): precision "
                     f"{fmt(det['precision'])} recall {fmt(det['recall'])} f1 {fmt(det['f1'])} "
                     f"false-positive rate on {det['n_clean']} crack-free {fmt(det['fpr'])}")
    sweep = metrics.get("sweep")
    if sweep:
        for mode, label in (("exact", "exact"), ("tolerant", f"{sweep['tolerance']}-px tolerant")):
            s = sweep[mode]
            lines.append(f"{label:<16} ODS F1 {fmt(s['ods_f1'])} @ {fmt(s['ods_threshold'], 2)}"
                         f"  OIS F1 {fmt(s['ois_f1'])}  AP {fmt(s['ap'])}")
    return "\n".join(lines)
