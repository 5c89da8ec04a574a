"""One streaming pass of a model over a split, accumulating every evaluation figure.

Memory is bounded: per batch, probabilities (N, 1, H, W) are reduced to per-image
confusion counts and per-threshold histograms; only O(images) rows are kept, never pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .config import EvalConfig
from .data import CrackDataset, collate, iter_groups
from .inference import InputPolicy, predict_probs
from .metrics import ConfusionMeter, ThresholdSweep, detection_stats
from .model import ResNetUNet

DEFAULT_THRESHOLD = 0.5


@dataclass
class EvalResult:
    """Accumulated state of an evaluation; the report module turns it into files."""

    threshold: float
    meters: dict[float, ConfusionMeter]
    sweep: ThresholdSweep
    pred_area: list[int] = field(default_factory=list)
    true_area: list[int] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def summary(self, min_area: int) -> dict[str, Any]:
        out: dict[str, Any] = {"threshold": self.threshold}
        for thr, meter in self.meters.items():
            key = "at_tuned" if thr == self.threshold else "at_0.5"
            out[key] = {"threshold": thr, **meter.compute()}
        if self.threshold == DEFAULT_THRESHOLD:
            out["at_0.5"] = out["at_tuned"]
        out["detection"] = detection_stats(torch.tensor(self.pred_area),
                                           torch.tensor(self.true_area), min_area)
        out["sweep"] = self.sweep.compute()
        return out


@torch.inference_mode()
def evaluate_dataset(
    model: ResNetUNet,
    dataset: CrackDataset,
    policy: InputPolicy,
    threshold: float,
    cfg: EvalConfig,
    device: torch.device,
    num_workers: int = 0,
    progress: bool = True,
) -> EvalResult:
    """Run ``model`` over ``dataset`` once; counts at ``threshold`` and at 0.5, plus a sweep."""
    model.eval()
    loader = DataLoader(dataset, batch_size=cfg.batch_size, num_workers=num_workers,
                        collate_fn=collate, pin_memory=device.type == "cuda")
    thresholds = sorted({threshold, DEFAULT_THRESHOLD})
    result = EvalResult(threshold, {t: ConfusionMeter(threshold=t, keep_rows=True)
                                    for t in thresholds},
                        ThresholdSweep(cfg.thresholds, tolerance=cfg.tolerance))
    for batch in tqdm(loader, desc="evaluate", disable=not progress, dynamic_ncols=True):
        result.skipped.extend(batch["skipped"])
        names = iter(batch["name"])
        for images, masks in iter_groups(batch):
            chunk = [next(names) for _ in range(len(images))]
            probs = predict_probs(model, images.to(device), policy).cpu()
            for meter in result.meters.values():
                meter.update(probs, masks, names=chunk)
            result.sweep.update(probs, masks, names=chunk)
            result.pred_area.extend((probs > threshold).sum(dim=(1, 2, 3)).tolist())
            result.true_area.extend((masks > 0.5).sum(dim=(1, 2, 3)).tolist())
    return result
