"""Per-image confusion counts, the ratios built on them, and dataset-level summaries.

Shapes, the threshold rule and the empty rule are stated once, in :mod:`fissure.metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

Counts = tuple[Tensor, Tensor, Tensor, Tensor]
OptTensor = Tensor | None
_ALWAYS = torch.tensor(True)
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _as_prob(pred: Tensor, from_logits: bool) -> Tensor:
    if pred.dtype not in (torch.float32, torch.float64):
        pred = pred.float()
    return torch.sigmoid(pred) if from_logits else pred


def _as_mask(target: Tensor) -> Tensor:
    return target if target.dtype == torch.bool else target > 0.5


def _check_pair(pred: Tensor, target: Tensor, spatial: bool = False) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target {tuple(target.shape)}")
    if pred.ndim < 2 or (spatial and (pred.ndim != 4 or pred.shape[1] != 1)):
        raise ValueError(f"expected (N, 1, H, W) tensors, got shape {tuple(pred.shape)}")


def confusion_counts(
    pred_prob: Tensor, target: Tensor, threshold: float = 0.5, from_logits: bool = False
) -> Counts:
    """Per-image ``tp, fp, fn, tn``; a pixel is predicted crack where ``prob > threshold``.

    With ``from_logits`` the threshold still applies to ``sigmoid(pred_prob)``.

    Shapes:
        pred_prob: (N, 1, H, W) float probabilities (logits with ``from_logits``).
        target: (N, 1, H, W) bool, or float/int in {0, 1}.
        returns: four (N,) int64 tensors.
    """
    _check_pair(pred_prob, target)
    pred = (_as_prob(pred_prob, from_logits) > threshold).flatten(1)
    true = _as_mask(target).flatten(1)
    tp = (pred & true).sum(1)
    fp = (pred & ~true).sum(1)
    fn = (~pred & true).sum(1)
    tn = true.shape[1] - tp - fp - fn
    return tp, fp, fn, tn


def _ratio(num: Tensor, den: Tensor, no_error: Tensor, empty: float) -> Tensor:
    num, den = torch.as_tensor(num).double(), torch.as_tensor(den).double()
    fallback = torch.where(torch.as_tensor(no_error), empty, 0.0).double()
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), fallback)


def iou(tp: Tensor, fp: Tensor, fn: Tensor, tn: OptTensor = None, empty: float = 1.0) -> Tensor:
    """Jaccard index ``tp / (tp + fp + fn)``, elementwise, with the empty rule.

    Shapes:
        tp, fp, fn, tn: int counts, any one shape (``tn`` is unused).
        returns: float64, the counts' shape.
    """
    return _ratio(tp, tp + fp + fn, _ALWAYS, empty)


def f1(tp: Tensor, fp: Tensor, fn: Tensor, tn: OptTensor = None, empty: float = 1.0) -> Tensor:
    """F1 / Dice ``2 tp / (2 tp + fp + fn)``, elementwise, with the empty rule.

    Shapes:
        tp, fp, fn, tn: int counts, any one shape (``tn`` is unused).
        returns: float64, the counts' shape.
    """
    return _ratio(2 * tp, 2 * tp + fp + fn, _ALWAYS, empty)


def precision(
    tp: Tensor, fp: Tensor, fn: Tensor, tn: OptTensor = None, empty: float = 1.0
) -> Tensor:
    """``tp / (tp + fp)``, elementwise; with no predicted crack, ``empty`` if ``fn == 0``.

    With no predicted crack but a missed one, 0.

    Shapes:
        tp, fp, fn, tn: int counts, any one shape (``tn`` is unused).
        returns: float64, the counts' shape.
    """
    return _ratio(tp, tp + fp, torch.as_tensor(fn) == 0, empty)


def recall(tp: Tensor, fp: Tensor, fn: Tensor, tn: OptTensor = None, empty: float = 1.0) -> Tensor:
    """``tp / (tp + fn)``, elementwise; with no true crack: ``empty`` if ``fp == 0`` else 0.

    Shapes:
        tp, fp, fn, tn: int counts, any one shape (``tn`` is unused).
        returns: float64, the counts' shape.
    """
    return _ratio(tp, tp + fn, torch.as_tensor(fp) == 0, empty)


def specificity(tp: Tensor, fp: Tensor, fn: Tensor, tn: Tensor, empty: float = 1.0) -> Tensor:
    """``tn / (tn + fp)``, elementwise; for an all-crack image, ``empty`` if ``fn == 0``.

    For an all-crack image with a missed crack pixel, 0.

    Shapes:
        tp, fp, fn, tn: int counts, any one shape.
        returns: float64, the counts' shape.
    """
    tn = torch.as_tensor(tn)
    return _ratio(tn, tn + fp, torch.as_tensor(fn) == 0, empty)


def accuracy(tp: Tensor, fp: Tensor, fn: Tensor, tn: Tensor, empty: float = 1.0) -> Tensor:
    """``(tp + tn) / (tp + fp + fn + tn)``, elementwise; ``empty`` for a zero-pixel image.

    Shapes:
        tp, fp, fn, tn: int counts, any one shape.
        returns: float64, the counts' shape.
    """
    return _ratio(tp + tn, tp + fp + fn + tn, _ALWAYS, empty)


def defined_ratio(num: float, den: float) -> float | None:
    """``num / den`` as a float, or ``None`` when ``den`` is 0 (the dataset-level rule)."""
    return None if den == 0 else float(num) / float(den)


def _moments(tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
    """Sums of per-image IoU, IoU^2, F1, F1^2 (float64 ``(4,)``), so macro stats can stream."""
    i, d = iou(tp, fp, fn).flatten(), f1(tp, fp, fn).flatten()
    return torch.stack([i.sum(), (i * i).sum(), d.sum(), (d * d).sum()])


def _summary(sums: Tensor, moments: Tensor, n: int) -> dict[str, float | int | None]:
    tp, fp, fn, tn = (int(v) for v in sums)
    out: dict[str, float | int | None] = {"n_images": n, "tp": tp, "fp": fp, "fn": fn, "tn": tn}
    out["iou"] = defined_ratio(tp, tp + fp + fn)
    out["precision"] = defined_ratio(tp, tp + fp)
    out["recall"] = defined_ratio(tp, tp + fn)
    out["f1"] = defined_ratio(2 * tp, 2 * tp + fp + fn)
    out["accuracy"] = defined_ratio(tp + tn, tp + fp + fn + tn)
    out["specificity"] = defined_ratio(tn, tn + fp)
    for k, name in enumerate(("iou", "f1")):
        mean = float(moments[2 * k]) / n if n else None
        # sum-of-squares can dip a hair below mean^2 in floating point
        var = max(float(moments[2 * k + 1]) / n - mean * mean, 0.0) if n else None
        out[f"{name}_mean"] = mean
        out[f"{name}_std"] = math.sqrt(var) if var is not None else None
    return out


def summarize(tp: Tensor, fp: Tensor, fn: Tensor, tn: Tensor) -> dict[str, float | int | None]:
    """Dataset (micro) and per-image (macro) metrics from per-image counts.

    Keys: ``n_images, tp, fp, fn, tn`` (ints); micro ``iou, precision, recall, f1, accuracy,
    specificity`` (``None`` when the denominator is 0); macro ``iou_mean, iou_std, f1_mean,
    f1_std`` (empty rule, population std; ``None`` when there are no images).

    Shapes:
        tp, fp, fn, tn: (N,) int counts, one entry per image.
    """
    tp, fp, fn, tn = (torch.as_tensor(c).flatten().long() for c in (tp, fp, fn, tn))
    sums = torch.stack([tp.sum(), fp.sum(), fn.sum(), tn.sum()])
    return _summary(sums, _moments(tp, fp, fn), tp.numel())


class ConfusionMeter:
    """Streaming :func:`summarize` over batches.

    State is four int64 sums and four float64 moment sums, whatever the number of pixels or images
    (:meth:`state_dict`; the tensors add up across processes). With ``keep_rows`` it also keeps one
    ``(name, tp, fp, fn, tn)`` row per image, which is O(images) only.
    """

    def __init__(
        self, threshold: float = 0.5, from_logits: bool = False, keep_rows: bool = False
    ) -> None:
        self.threshold, self.from_logits, self.keep_rows = threshold, from_logits, keep_rows
        self.reset()

    def reset(self) -> None:
        """Forget every batch (and row) added so far."""
        self._sums = torch.zeros(4, dtype=torch.int64)
        self._moments = torch.zeros(4, dtype=torch.float64)
        self._n = 0
        self.rows: list[tuple[str, int, int, int, int]] = []

    def update(
        self,
        pred_prob: Tensor,
        target: Tensor,
        threshold: float | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        """Add a batch; ``threshold`` overrides the meter's, ``names`` label the rows.

        Shapes:
            pred_prob: (N, 1, H, W) float probabilities (logits with ``from_logits``).
            target: (N, 1, H, W) bool, or float/int in {0, 1}.
        """
        th = self.threshold if threshold is None else threshold
        counts = [c.cpu() for c in confusion_counts(pred_prob, target, th, self.from_logits)]
        n = counts[0].numel()
        if names is not None and len(names) != n:
            raise ValueError(f"got {len(names)} names for a batch of {n} images")
        self._sums += torch.stack([c.sum() for c in counts])
        self._moments += _moments(*counts[:3])
        if self.keep_rows:
            labels = names if names is not None else [str(self._n + i) for i in range(n)]
            rows = torch.stack(counts, 1).tolist()
            self.rows.extend((str(lab), *row) for lab, row in zip(labels, rows, strict=True))
        self._n += n

    def compute(self) -> dict[str, float | int | None]:
        """Same keys as :func:`summarize`."""
        return _summary(self._sums, self._moments, self._n)

    def state_dict(self) -> dict[str, Tensor]:
        """The running totals, copied; they add up across processes.

        Shapes:
            returns: ``sums`` (4,) int64 (tp, fp, fn, tn), ``moments`` (4,) float64 (sums of
                per-image IoU, IoU^2, F1, F1^2), ``n_images`` 0-dim.
        """
        return {"sums": self._sums.clone(), "moments": self._moments.clone(),
                "n_images": torch.tensor(self._n)}  # fmt: skip


def label_cracks(mask: np.ndarray, min_area: int) -> tuple[np.ndarray, int]:
    """Number the 8-connected components of at least ``min_area`` pixels 1, 2, ...

    Returns the labels (0 elsewhere) and the count; numbers follow the order of each
    component's first pixel, row by row.

    Shapes:
        mask: (H, W) bool.
        returns: (H, W) int32, and an int.
    """
    labels, n_labels = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if n_labels == 0:
        return labels, 0
    keep = np.bincount(labels.ravel()) >= min_area
    keep[0] = False
    numbers = (np.cumsum(keep) * keep).astype(labels.dtype)
    return numbers[labels], int(keep.sum())


def remove_small_components(mask: np.ndarray, min_area: int) -> tuple[np.ndarray, int]:
    """Drop 8-connected components with fewer than ``min_area`` pixels.

    Returns the cleaned mask and the number of components kept.

    Shapes:
        mask: (H, W) bool.
        returns: (H, W) bool, and an int.
    """
    labels, count = label_cracks(mask, min_area)
    return labels > 0, count


def kept_area(pred: Tensor, min_area: int) -> Tensor:
    """Per-image predicted crack pixels left once every 8-connected component of fewer
    than ``min_area`` pixels is dropped (:func:`remove_small_components`, the speck filter
    ``fissure predict`` measures cracks after), so that an image counts as flagged in
    evaluation exactly when prediction finds a crack in it.

    Shapes:
        pred: (N, 1, H, W) bool, crack where ``prob > threshold``.
        returns: (N,) int64.
    """
    kept = [int(remove_small_components(image[0], min_area)[0].sum())
            for image in pred.cpu().numpy()]
    return torch.tensor(kept, dtype=torch.int64)


def detection_stats(pred_area: Tensor, true_area: Tensor, min_area: int = 1) -> dict:
    """Image-level crack presence from per-image crack areas.

    An image is predicted cracked when ``pred_area >= min_area`` (raise ``min_area`` to ignore
    speckle) and truly cracked when ``true_area > 0``. Returns image counts ``tp, fp, fn, tn,
    n_images, n_cracked, n_clean`` and ``precision, recall, f1, accuracy`` plus ``fpr``, the share
    of crack-free images flagged; each ratio is ``None`` when its denominator is 0.

    Shapes:
        pred_area, true_area: (N,) pixel counts, one per image.
    """
    pred = torch.as_tensor(pred_area).flatten() >= min_area
    true = torch.as_tensor(true_area).flatten() > 0
    if pred.shape != true.shape:
        raise ValueError(f"pred_area has {pred.numel()} images, true_area {true.numel()}")
    tp, fp = int((pred & true).sum()), int((pred & ~true).sum())
    fn, tn = int((~pred & true).sum()), int((~pred & ~true).sum())
    return {
        "tp": tp, "fp": fp, "fn": fn, "tn": tn, "min_area": min_area,
        "n_images": tp + fp + fn + tn, "n_cracked": tp + fn, "n_clean": fp + tn,
        "precision": defined_ratio(tp, tp + fp), "recall": defined_ratio(tp, tp + fn),
        "f1": defined_ratio(2 * tp, 2 * tp + fp + fn), "fpr": defined_ratio(fp, fp + tn),
        "accuracy": defined_ratio(tp + tn, tp + fp + fn + tn),
    }  # fmt: skip
