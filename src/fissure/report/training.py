"""Training outputs: ``history.csv``, ``curves.png``, ``skipped.csv`` and TensorBoard scalars."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers or in CI
import matplotlib.pyplot as plt  # noqa: E402

from ..config import DEFAULT_THRESHOLD  # noqa: E402
from ..extras import require  # noqa: E402
from ..training.state import HISTORY_FIELDS  # noqa: E402
from ..writes import replacing  # noqa: E402


def write_history(history: Sequence[dict[str, Any]], path: str | Path) -> None:
    """One CSV row per epoch, in :data:`~fissure.training.state.HISTORY_FIELDS` order;
    floats rounded to 6 decimals, other keys of the rows left out. Replaced whole, so a
    reader (the app's Runs page, while the run trains) never sees half a file."""
    with replacing(Path(path)) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({k: (round(v, 6) if isinstance(v, float) else v)
                             for k, v in row.items()})


def plot_curves(
    history: Sequence[dict[str, Any]],
    path: str | Path,
    *,
    iou_threshold: float = DEFAULT_THRESHOLD,
) -> None:
    """Loss, and IoU / F1, against epoch, for training and validation.

    Each score's label says its threshold: train and val IoU are taken at
    ``iou_threshold`` (the run's ``train.threshold``); val F1 at each epoch's tuned
    threshold, drawn as its own line.
    """
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], "o-", label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    at = f"@{iou_threshold:g}"
    ax_iou.plot(epochs, [r["train_iou"] for r in history], "o-", label=f"train IoU {at}")
    ax_iou.plot(epochs, [r["val_iou"] for r in history], "o-", label=f"val IoU {at}")
    ax_iou.plot(epochs, [r["val_f1_tuned"] for r in history], "s--", label="val F1 @tuned")
    ax_iou.plot(epochs, [r["threshold"] for r in history], ":", color="grey",
                label="tuned threshold")
    ax_iou.set(xlabel="epoch", ylabel="score", title="Dataset-level IoU / F1", ylim=(0, 1))
    for ax in (ax_loss, ax_iou):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class TensorBoardLog:
    """Mirrors each history row as scalars under ``<run>/tensorboard``."""

    def __init__(self, run_dir: str | Path) -> None:
        require("tensorboard", "train.tensorboard")
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def log(self, row: dict[str, Any]) -> None:
        """Write the row's finite numbers as scalars at step ``row["epoch"]``."""
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, row["epoch"])
        self.writer.flush()


def write_skipped(skipped: dict[str, str], path: str | Path) -> None:
    """``skipped.csv``: the samples a run could not read, by name, with the reason."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "reason"])
        writer.writerows(sorted(skipped.items()))
