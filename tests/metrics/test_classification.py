"""fissure.metrics.classification: the per-class report, by hand, against sklearn's report
and against the hand-written implementation it replaced."""

import itertools

import numpy as np
import pytest

from fissure import metrics as M


def _defined_ratio(num, den):
    return None if den == 0 else float(num) / float(den)


def _todays_report(tp, fp, fn, tn):
    """Reference: the hand-written report that sklearn's precision_recall_fscore_support
    replaced, verbatim."""
    classes = {"background": (tn, fn, fp), "crack": (tp, fp, fn)}  # (hit, false hit, miss)
    out = {}
    for name, (hit, false_hit, miss) in classes.items():
        row = {
            "precision": _defined_ratio(hit, hit + false_hit),
            "recall": _defined_ratio(hit, hit + miss),
            "f1": _defined_ratio(2 * hit, 2 * hit + false_hit + miss),
        }
        out[name] = {**(dict.fromkeys(row) if hit + miss == 0 else row), "support": hit + miss}
    total = tp + fp + fn + tn
    out["accuracy"] = {"f1": _defined_ratio(tp + tn, total), "support": total}
    for avg in ("macro avg", "weighted avg"):
        row = {}
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


def test_classification_report_by_hand() -> None:
    rep = M.classification_report(tp=3, fp=1, fn=2, tn=10)
    assert rep["crack"] == pytest.approx(
        {"precision": 3 / 4, "recall": 3 / 5, "f1": 6 / 9, "support": 5}
    )
    # background as the positive class: hits tn, false hits fn, misses fp
    assert rep["background"] == pytest.approx(
        {"precision": 10 / 12, "recall": 10 / 11, "f1": 20 / 23, "support": 11}
    )
    assert rep["accuracy"] == pytest.approx({"f1": 13 / 16, "support": 16})
    assert rep["macro avg"]["precision"] == pytest.approx((3 / 4 + 10 / 12) / 2)
    assert rep["macro avg"]["f1"] == pytest.approx((6 / 9 + 20 / 23) / 2)
    assert rep["weighted avg"]["recall"] == pytest.approx((3 / 5 * 5 + 10 / 11 * 11) / 16)
    assert rep["weighted avg"]["f1"] == pytest.approx((6 / 9 * 5 + 20 / 23 * 11) / 16)


def test_classification_report_matches_sklearn() -> None:
    sk = pytest.importorskip("sklearn.metrics")
    tp, fp, fn, tn = 7, 3, 4, 26
    y_true = np.array([1] * tp + [0] * fp + [1] * fn + [0] * tn)
    y_pred = np.array([1] * tp + [1] * fp + [0] * fn + [0] * tn)
    ref = sk.classification_report(y_true, y_pred, output_dict=True)
    ours = M.classification_report(tp, fp, fn, tn)
    for ours_key, ref_key in (
        ("background", "0"),
        ("crack", "1"),
        ("macro avg", "macro avg"),
        ("weighted avg", "weighted avg"),
    ):
        for k in ("precision", "recall", "f1"):
            ref_k = "f1-score" if k == "f1" else k
            assert ours[ours_key][k] == pytest.approx(ref[ref_key][ref_k]), (ours_key, k)
    assert ours["accuracy"]["f1"] == pytest.approx(ref["accuracy"])


CASES = {
    "all zero": (0, 0, 0, 0),
    "no crack pixel, none predicted": (0, 0, 0, 50),
    "no crack pixel, false alarms": (0, 4, 0, 46),
    "every crack missed": (0, 0, 6, 44),
    "all crack, all found": (9, 0, 0, 0),
    "all crack, some missed": (7, 0, 2, 0),
    "all predicted crack": (5, 45, 0, 0),
    "no background support, no crack found": (0, 0, 3, 0),
    "ordinary": (3, 1, 2, 10),
    "large counts": (123_456_789, 2_345_678, 3_456_789, 9_876_543_210),
}


@pytest.mark.parametrize("counts", CASES.values(), ids=CASES.keys())
def test_every_figure_equals_the_hand_written_report(counts) -> None:
    ours, todays = M.classification_report(*counts), _todays_report(*counts)
    assert ours == todays
    # same types too: ints stay ints, undefined stays None (not NaN, not 0)
    assert repr(ours) == repr(todays)


def test_every_figure_equals_the_hand_written_report_on_a_grid() -> None:
    for counts in itertools.product((0, 1, 2, 5), repeat=4):
        assert repr(M.classification_report(*counts)) == repr(_todays_report(*counts)), counts


def test_zero_support_and_all_zero_cases_by_hand() -> None:
    rep = M.classification_report(0, 4, 0, 46)  # no crack pixel; 4 false alarms
    assert rep["crack"] == {"precision": None, "recall": None, "f1": None, "support": 0}
    assert rep["background"]["recall"] == 46 / 50 and rep["background"]["precision"] == 1.0
    assert rep["macro avg"]["f1"] is None  # an average over an undefined score
    assert rep["weighted avg"]["recall"] == 46 / 50  # a class without support weighs nothing
    empty = M.classification_report(0, 0, 0, 0)
    assert empty["accuracy"] == {"f1": None, "support": 0}
    assert all(empty[row]["precision"] is None for row in ("crack", "background", "macro avg"))


def test_per_class_scores_are_sklearns_with_nan_as_none() -> None:
    scores = M.per_class_scores(0, 0, 3, 5)  # nothing predicted crack
    assert scores["crack"] == {"precision": None, "recall": 0.0, "f1": 0.0, "support": 3}
    assert scores["background"] == {"precision": 5 / 8, "recall": 1.0, "f1": 10 / 13,
                                    "support": 5}
