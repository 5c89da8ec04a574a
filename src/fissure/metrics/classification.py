"""Per-class scores from one pixel confusion matrix, laid out like sklearn's report.

Counts are plain ints summed over a dataset (see :mod:`fissure.metrics` for the conventions).
"""

from __future__ import annotations

from .functional import defined_ratio


def classification_report(tp: int, fp: int, fn: int, tn: int) -> dict:
    """Per-class precision/recall/F1/support from one pixel confusion matrix, like sklearn's.

    ``background`` treats "no crack" as the positive class. Rows ``accuracy``, ``macro avg``
    (unweighted mean over classes) and ``weighted avg`` (mean weighted by support) follow. A
    value whose denominator is 0 is ``None`` (sklearn would print 0 with a warning), and so are
    all three scores of a class with no support, and an average over a ``None``, except that a
    class with no support has no weight in ``weighted avg``.
    """
    classes = {"background": (tn, fn, fp), "crack": (tp, fp, fn)}  # (hit, false hit, miss)
    out: dict = {}
    for name, (hit, false_hit, miss) in classes.items():
        row = {
            "precision": defined_ratio(hit, hit + false_hit),
            "recall": defined_ratio(hit, hit + miss),
            "f1": defined_ratio(2 * hit, 2 * hit + false_hit + miss),
        }
        # with no true pixel of the class a score of 0 would only mean "nothing to find"
        out[name] = {**(dict.fromkeys(row) if hit + miss == 0 else row), "support": hit + miss}
    total = tp + fp + fn + tn
    out["accuracy"] = {"f1": defined_ratio(tp + tn, total), "support": total}
    for avg in ("macro avg", "weighted avg"):
        row: dict = {}
        for key in ("precision", "recall", "f1"):
            pairs = [(out[c][key], out[c]["support"]) for c in classes]
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
