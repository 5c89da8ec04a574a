"""One streaming pass of a model over a split, accumulating every evaluation figure.

Memory is bounded: per batch, probabilities (N, 1, H, W) are reduced to per-image
confusion and tolerance counts and per-threshold histograms; only O(images) rows are kept,
never pixels. The few images shown in ``samples.png`` are re-read and predicted again after
the pass (:func:`reload_samples`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from ..config import DEFAULT_THRESHOLD, EvalConfig
from ..data import CrackDataset, collate, iter_groups, load_pair
from ..data.transforms import image_to_tensor
from ..metrics import (
    ConfusionMeter,
    ThresholdSweep,
    f1,
    iou,
    kept_area,
    tolerance_counts,
    tolerance_f1,
)
from ..model import ResNetUNet
from ..progress import progress_bar
from ..runtime import InputPolicy, predict_probs

OUTCOMES = ("TP", "FP", "FN", "TN")


class ToleranceMeter:
    """Per-image tolerant match counts at one threshold, as rows; O(images) memory.

    A row is ``(matched_pred, matched_true, n_pred, n_true)`` (see
    :func:`fissure.metrics.tolerance_counts`); a pixel is crack where its probability is
    ``> threshold``.
    """

    def __init__(self, threshold: float, tolerance: int) -> None:
        self.threshold, self.tolerance = threshold, tolerance
        self.rows: list[tuple[int, int, int, int]] = []

    def update(self, probs: Tensor, masks: Tensor) -> None:
        """Add one row per image of a batch.

        Shapes:
            probs: (N, 1, H, W) float probabilities.
            masks: (N, 1, H, W) bool, or float in {0, 1}.
        """
        counts = tolerance_counts(probs > self.threshold, masks, self.tolerance)
        self.rows.extend(tuple(r) for r in torch.stack(counts, 1).tolist())

    def sums(self) -> tuple[int, int, int, int]:
        """Dataset totals ``(matched_pred, matched_true, n_pred, n_true)``."""
        if not self.rows:
            return 0, 0, 0, 0
        return tuple(int(v) for v in np.asarray(self.rows, dtype=np.int64).sum(0))


@dataclass
class EvalResult:
    """Accumulated state of an evaluation; feed it with :meth:`update`.

    ``threshold`` is the tuned threshold (the checkpoint's or the user's); counts are also kept
    at :data:`~fissure.config.DEFAULT_THRESHOLD` (0.5) so the two can be compared side by
    side. :func:`fissure.evaluation.metrics_document` turns it into ``metrics.json``.
    """

    threshold: float
    tolerance: int
    min_area: int
    meters: dict[float, ConfusionMeter]
    tolerant: dict[float, ToleranceMeter]
    sweep: ThresholdSweep
    skipped: list[tuple[str, str]] = field(default_factory=list)
    # per kept threshold, each image's predicted pixels in cracks of >= min_area pixels
    kept: dict[float, list[int]] = field(default_factory=dict)

    @classmethod
    def create(cls, threshold: float, cfg: EvalConfig) -> EvalResult:
        """Empty accumulators for ``threshold`` and 0.5 (one set when they are equal), with
        ``cfg``'s tolerance, minimum area and swept thresholds."""
        thresholds = sorted({float(threshold), DEFAULT_THRESHOLD})
        return cls(
            threshold=float(threshold),
            tolerance=cfg.tolerance,
            min_area=cfg.min_area,
            meters={t: ConfusionMeter(threshold=t, keep_rows=True) for t in thresholds},
            tolerant={t: ToleranceMeter(t, cfg.tolerance) for t in thresholds},
            sweep=ThresholdSweep(cfg.thresholds, tolerance=cfg.tolerance),
            kept={t: [] for t in thresholds},
        )

    def update(self, probs: Tensor, masks: Tensor, names: Sequence[str]) -> None:
        """Add a batch to every accumulator; ``names`` label its images.

        Shapes:
            probs: (N, 1, H, W) float probabilities in [0, 1].
            masks: (N, 1, H, W) bool, or float in {0, 1}.
        """
        for meter in self.meters.values():
            meter.update(probs, masks, names=names)
        for meter in self.tolerant.values():
            meter.update(probs, masks)
        for t, areas in self.kept.items():
            areas.extend(kept_area(probs > t, self.min_area).tolist())
        self.sweep.update(probs, masks, names=names)

    @property
    def n_images(self) -> int:
        """Images evaluated so far."""
        return len(self.meters[self.threshold].rows)

    def counts(self, threshold: float | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-image ``tp, fp, fn, tn`` at a kept threshold (default: the tuned one).

        Shapes:
            returns: four (N,) int64 tensors, N the images so far.
        """
        rows = self.meters[self.threshold if threshold is None else threshold].rows
        table = torch.tensor([r[1:] for r in rows], dtype=torch.int64).reshape(-1, 4)
        return tuple(table.unbind(1))  # type: ignore[return-value]

    def kept_areas(self, threshold: float | None = None) -> Tensor:
        """Per-image predicted pixels in cracks (8-connected) of at least ``min_area`` pixels,
        at a kept threshold (default: the tuned one): an image is flagged when it has any.

        Shapes:
            returns: (N,) int64.
        """
        return torch.tensor(self.kept[self.threshold if threshold is None else threshold],
                            dtype=torch.int64)

    def per_image(self, threshold: float | None = None) -> list[dict]:
        """One dict per image, in evaluation order, at ``threshold`` (default: the tuned one).

        Keys: ``name, true_px, pred_px, tp, fp, fn, tn, iou, f1, tolerant_f1`` (per-image, empty
        rule), ``kept_px`` (:meth:`kept_areas`) and ``detection`` (``TP``/``FP``/``FN``/``TN``:
        is the image flagged as cracked, i.e. does it hold a predicted crack of at least
        ``min_area`` pixels, as ``fissure predict`` counts them, and its mask any crack).
        """
        thr = self.threshold if threshold is None else threshold
        rows, tol_rows = self.meters[thr].rows, self.tolerant[thr].rows
        if not rows:
            return []
        tp, fp, fn, tn = self.counts(thr)
        tol = torch.tensor(tol_rows, dtype=torch.int64).unbind(1)
        scores = zip(iou(tp, fp, fn), f1(tp, fp, fn), tolerance_f1(*tol), strict=True)
        keys = ("name", "tp", "fp", "fn", "tn", "iou", "f1", "tolerant_f1")
        out = []
        for row, score, kept in zip(rows, scores, self.kept[thr], strict=True):
            rec = dict(zip(keys, (*row, *(float(v) for v in score)), strict=True))
            rec["true_px"], rec["pred_px"] = rec["tp"] + rec["fn"], rec["tp"] + rec["fp"]
            rec["kept_px"] = kept
            flagged, cracked = kept > 0, rec["true_px"] > 0
            rec["detection"] = OUTCOMES[(0 if cracked else 1) if flagged else (2 if cracked else 3)]
            out.append(rec)
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
    """Run ``model`` over ``dataset`` once; counts at ``threshold`` and at 0.5, plus a sweep.

    Images are fed as ``policy`` says (see :func:`fissure.runtime.predict_probs`), in batches
    of ``cfg.batch_size``, with their flips averaged under ``cfg.tta``; ``num_workers``
    loader processes read them.
    """
    model.eval()
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
    )
    result = EvalResult.create(threshold, cfg)
    for batch in progress_bar(loader, desc="evaluate", unit="batch", enabled=progress):
        result.skipped.extend(batch["skipped"])
        names = iter(batch["name"])
        for images, masks in iter_groups(batch):
            chunk = [next(names) for _ in range(len(images))]
            probs = predict_probs(model, images.to(device), policy, tta=cfg.tta).cpu()
            result.update(probs, masks, chunk)
    return result


@dataclass
class SampleView:
    """One re-predicted image for the samples grid, with its label and streamed per-image row.

    Shapes:
        image: (H, W, 3) uint8.
        mask: (H, W) bool.
        prob: (H, W) float32 crack probabilities.
    """

    label: str
    row: dict
    image: np.ndarray
    mask: np.ndarray
    prob: np.ndarray


@torch.inference_mode()
def reload_samples(
    model: ResNetUNet,
    dataset: CrackDataset,
    picks: list[tuple[str, dict]],
    policy: InputPolicy,
    device: torch.device,
    tta: bool = False,
) -> list[SampleView]:
    """Re-read the picked ``(label, per-image row)`` images by name and predict them again,
    one at a time, as the evaluation did (``tta``: flips averaged).

    Only these few images are ever held whole in memory, whatever the split's size.
    """
    model.eval()
    by_name = {}
    for sample in dataset.samples:
        by_name.setdefault(sample.name, sample)
    views = []
    for label, row in picks:
        image, mask = load_pair(dataset.source, by_name[row["name"]])
        tensor = image_to_tensor(image)[None].to(device)
        prob = predict_probs(model, tensor, policy, tta=tta)[0, 0].float().cpu().numpy()
        views.append(SampleView(label, row, image, mask, prob))
    return views
