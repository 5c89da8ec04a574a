"""Segmentation metrics for crack masks, as small pure functions plus two streaming accumulators.

Shapes and conventions
----------------------
* ``pred_prob``: ``(N, 1, H, W)`` float probabilities (or logits with ``from_logits=True``),
  upcast to at least float32 so every function compares the same numbers.
* ``target``: ``(N, 1, H, W)`` bool, or float/int in {0, 1}; crack where ``target > 0.5``.
* A pixel is *predicted* crack where ``prob > threshold`` (strict); NaN is never crack.
* Counts (``tp, fp, fn, tn``) are int64 tensors of any shape, usually ``(N,)``: one entry per image.
  The ratio functions work elementwise on them and return float64 tensors of the same shape.

Empty rule (per image)
----------------------
A ratio whose denominator is zero returns ``empty`` (default 1.0) when the prediction made no error
of any kind in that image (``fp == fn == 0``), and 0.0 otherwise. So an image with no true and no
predicted crack scores IoU = F1 = precision = recall = 1, while an image that misses all of its
cracks gets precision 0 (not 1) for predicting nothing. Pass ``empty=float("nan")`` to exclude such
images from a ``nanmean`` instead.

Dataset level (micro)
---------------------
:func:`summarize`, :class:`ConfusionMeter` and :class:`ThresholdSweep` sum the counts over all
images first and then divide. Here a zero denominator means the metric is undefined and is reported
as ``None`` (NaN inside arrays), e.g. dataset IoU when there are neither true nor predicted crack
pixels. Macro (per-image) means and population standard deviations use the empty rule above.

Tolerance matching
------------------
As in the crack literature, a predicted crack pixel is correct if a true crack pixel lies within
Euclidean distance ``tolerance`` (a disk, not a square), and a true pixel is recalled if a predicted
pixel lies within the same disk. Precision is ``matched_pred / n_pred``, recall is
``matched_true / n_true`` and F1 is their harmonic mean. ``tolerance=0`` is exact matching.

Modules
-------
:mod:`.functional` (counts, ratios, summaries, detection), :mod:`.tolerance` (disk matching),
:mod:`.sweep` (every threshold in one pass; the exact average precision by scikit-learn) and
:mod:`.classification` (the per-class report, scores by scikit-learn); everything public is
importable from here. scikit-learn gets the streamed counts as sample weights, never pixels.
"""

from .classification import classification_report, per_class_scores
from .functional import (
    ConfusionMeter,
    Counts,
    accuracy,
    confusion_counts,
    defined_ratio,
    detection_stats,
    f1,
    iou,
    kept_area,
    label_cracks,
    precision,
    recall,
    remove_small_components,
    specificity,
    summarize,
)
from .sweep import ThresholdSweep, bucket_ap, step_ap
from .tolerance import tolerance_counts, tolerance_f1

__all__ = [
    "ConfusionMeter",
    "Counts",
    "ThresholdSweep",
    "accuracy",
    "bucket_ap",
    "classification_report",
    "confusion_counts",
    "defined_ratio",
    "detection_stats",
    "f1",
    "iou",
    "kept_area",
    "label_cracks",
    "per_class_scores",
    "precision",
    "recall",
    "remove_small_components",
    "specificity",
    "step_ap",
    "summarize",
    "tolerance_counts",
    "tolerance_f1",
]
