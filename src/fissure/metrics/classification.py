"""Per-class scores from one pixel confusion matrix, laid out like sklearn's report.

Counts are plain ints summed over a dataset (see :mod:`fissure.metrics` for the conventions).
"""

from __future__ import annotations

import numpy as np

from .functional import defined_ratio

CLASSES = ("background", "crack")
"""Row names, in label order: ``background`` is label 0, ``crack`` label 1."""


def per_class_scores(tp: int, fp: int, fn: int, tn: int) -> dict[str, dict]:
    """``precision, recall, f1, support`` of each class by
    :func:`sklearn.metrics.precision_recall_fscore_support`, from the four counts.

    The four cells of the confusion matrix are four weighted samples (true label, predicted
    label) = (1, 1), (0, 1), (1, 0), (0, 0) with weights ``tp, fp, fn, tn``, so no pixel
    array is ever built. A score whose denominator is 0 is ``None``; ``support`` (true
    pixels of the class) is an int.
    """
    if tp + fp + fn + tn == 0:  # sklearn refuses weights that are all zero
        return {name: {**dict.fromkeys(("precision", "recall", "f1")), "support": 0}
                for name in CLASSES}
    # sklearn.metrics pulls in scipy, a second or more at import: only evaluation needs it.
    from sklearn.metrics import precision_recall_fscore_support

    scores = precision_recall_fscore_support(
        [1, 0, 1, 0],
        [1, 1, 0, 0],
        labels=[0, 1],
        sample_weight=[tp, fp, fn, tn],
        zero_division=np.nan,
    )
    rows = {}
    for label, name in enumerate(CLASSES):
        precision, recall, f1, support = (float(column[label]) for column in scores)
        rows[name] = {
            "precision": None if np.isnan(precision) else precision,
            "recall": None if np.isnan(recall) else recall,
            "f1": None if np.isnan(f1) else f1,
            "support": int(support),
        }
    return rows


def classification_report(tp: int, fp: int, fn: int, tn: int) -> dict:
    """Per-class precision/recall/F1/support from one pixel confusion matrix, like sklearn's.

    ``background`` treats "no crack" as the positive class. Rows ``accuracy``, ``macro avg``
    (unweighted mean over classes) and ``weighted avg`` (mean weighted by support) follow. A
    value whose denominator is 0 is ``None`` (sklearn would print 0 with a warning), and so are
    all three scores of a class with no support, and an average over a ``None``, except that a
    class with no support has no weight in ``weighted avg``. The per-class scores come from
    :func:`per_class_scores`; the averages apply these rules to them, which sklearn's
    averages (that skip a NaN) do not.
    """
    out: dict = {}
    for name, row in per_class_scores(tp, fp, fn, tn).items():
        # with no true pixel of the class a score of 0 would only mean "nothing to find"
        if row["support"] == 0:
            row = {**dict.fromkeys(("precision", "recall", "f1")), "support": 0}
        out[name] = row
    total = tp + fp + fn + tn
    out["accuracy"] = {"f1": defined_ratio(tp + tn, total), "support": total}
    for avg in ("macro avg", "weighted avg"):
        row: dict = {}
        for key in ("precision", "recall", "f1"):
            pairs = [(out[c][key], out[c]["support"]) for c in CLASSES]
            if avg == "weighted avg":
                pairs = [(v, s) for v, s in pairs if s > 0]
            if not pairs or any(v is None for v, _ in pairs):
                row[key] = None
            elif avg == "macro avg":
                row[key] = sum(v for v, _ in pairs) / len(pairs)
            else:
                row[key] = sum(v * s for v, s in pairs) / sum(s for _, s in pairs)
        out[avg] = {**row, "support": total}
    return out
