"""Training outputs (history CSV, curves) and the shared JSON writer and number format."""

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

from ..errors import ConfigError  # noqa: E402
from ..training.state import HISTORY_FIELDS  # noqa: E402


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


class TensorBoardLog:
    """Mirrors each history row as scalars under ``<run>/tensorboard``."""

    def __init__(self, run_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("train.tensorboard: needs the tensorboard package "
                              "(pip install 'fissure[tensorboard]')") from None
        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def log(self, row: dict[str, Any]) -> None:
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, row["epoch"])
        self.writer.flush()


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

