"""Hand-checked cases for fissure.metrics.functional: counts, ratios, summaries, detection."""

import math

import numpy as np
import pytest
import torch
from metric_cases import as_ints, img, random_batches

from fissure import metrics as M

TARGET_4x4 = img([[0, 1, 1, 0], [0, 1, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
PROB_4x4 = img(
    [[0.1, 0.9, 0.8, 0.2], [0.6, 0.7, 0.5, 0.1], [0.0, 0.4, 0.0, 0.0], [0.0, 0.0, 0.0, 0.9]]
)


def test_4x4_counts_and_ratios():
    # > 0.5 hits (0,1) (0,2) (1,1) on crack, (1,0) (3,3) off it; the 0.5 at (1,2) stays negative
    tp, fp, fn, tn = M.confusion_counts(PROB_4x4, TARGET_4x4)
    assert as_ints((tp, fp, fn, tn)) == [[3], [2], [2], [9]]
    assert tp.dtype == torch.int64 and tp.shape == (1,)
    assert M.iou(tp, fp, fn).item() == pytest.approx(3 / 7)
    assert M.precision(tp, fp, fn).item() == pytest.approx(3 / 5)
    assert M.recall(tp, fp, fn).item() == pytest.approx(3 / 5)
    assert M.f1(tp, fp, fn).item() == pytest.approx(6 / 10)
    assert M.accuracy(tp, fp, fn, tn).item() == pytest.approx(12 / 16)
    assert M.specificity(tp, fp, fn, tn).item() == pytest.approx(9 / 11)
    assert as_ints(M.confusion_counts(PROB_4x4, TARGET_4x4, threshold=0.45)) == [[4], [2], [1], [9]]
    assert as_ints(M.confusion_counts(PROB_4x4, TARGET_4x4.bool())) == [[3], [2], [2], [9]]


def test_ratios_are_elementwise_on_any_shape():
    tp, fp, fn = torch.tensor([[1, 0], [2, 0]]), torch.tensor([[1, 0], [0, 3]]), torch.zeros(2, 2)
    assert M.iou(tp, fp, fn).tolist() == [[0.5, 1.0], [1.0, 0.0]]
    with pytest.raises(TypeError):
        M.accuracy(tp, fp, fn)  # tn is required where it matters


def test_all_targets_empty():
    target = torch.zeros(1, 1, 2, 2)
    prob = img([[0.9, 0.0], [0.0, 0.0]])
    tp, fp, fn, tn = M.confusion_counts(prob, target)
    assert as_ints((tp, fp, fn, tn)) == [[0], [1], [0], [3]]
    # a false alarm on a crack-free image is an error, so no metric gets the empty credit
    assert M.iou(tp, fp, fn).item() == 0.0
    assert M.recall(tp, fp, fn).item() == 0.0
    assert M.precision(tp, fp, fn).item() == 0.0
    s = M.summarize(tp, fp, fn, tn)
    assert s["recall"] is None and s["iou"] == 0.0 and s["specificity"] == pytest.approx(0.75)


def test_all_predictions_empty():
    target = img([[1, 1], [0, 0]])
    tp, fp, fn, tn = M.confusion_counts(torch.zeros(1, 1, 2, 2), target)
    assert as_ints((tp, fp, fn, tn)) == [[0], [0], [2], [2]]
    assert M.precision(tp, fp, fn).item() == 0.0  # missed cracks: no credit for silence
    assert M.iou(tp, fp, fn).item() == 0.0
    s = M.summarize(tp, fp, fn, tn)
    assert s["precision"] is None and s["recall"] == 0.0 and s["f1"] == 0.0


def test_both_empty():
    z = torch.zeros(2, 1, 3, 3)
    tp, fp, fn, tn = M.confusion_counts(z, z)
    for fn_ in (M.iou, M.f1, M.precision, M.recall, M.specificity, M.accuracy):
        assert fn_(tp, fp, fn, tn).tolist() == [1.0, 1.0]
    assert math.isnan(M.iou(tp, fp, fn, empty=math.nan)[0])
    s = M.summarize(tp, fp, fn, tn)
    assert s["iou"] is None and s["f1"] is None and s["precision"] is None and s["recall"] is None
    assert s["accuracy"] == 1.0 and s["specificity"] == 1.0
    assert s["iou_mean"] == 1.0 and s["iou_std"] == 0.0 and s["n_images"] == 2


def test_micro_and_macro_differ():
    # image A: one crack pixel found (IoU 1); image B: three crack pixels all missed (IoU 0)
    target = torch.cat([img([[1, 0], [0, 0]]), img([[1, 1], [1, 0]])])
    prob = torch.cat([img([[1, 0], [0, 0]]), torch.zeros(1, 1, 2, 2)])
    s = M.summarize(*M.confusion_counts(prob, target))
    assert (s["tp"], s["fp"], s["fn"], s["tn"]) == (1, 0, 3, 4)
    assert s["iou"] == pytest.approx(1 / 4)
    assert s["iou_mean"] == pytest.approx(0.5) and s["iou_std"] == pytest.approx(0.5)
    assert s["f1"] == pytest.approx(2 / 5) and s["f1_mean"] == pytest.approx(0.5)


def test_from_logits_agrees_with_sigmoid():
    g = torch.Generator().manual_seed(1)
    logits, target = torch.randn(2, 1, 6, 6, generator=g) * 3, torch.rand(2, 1, 6, 6) > 0.5
    for th in (0.2, 0.5, 0.8):
        a = M.confusion_counts(logits, target, th, from_logits=True)
        b = M.confusion_counts(torch.sigmoid(logits), target, th)
        assert as_ints(a) == as_ints(b)
    sweep_l, sweep_p = M.ThresholdSweep(9, from_logits=True), M.ThresholdSweep(9)
    sweep_l.update(logits, target)
    sweep_p.update(torch.sigmoid(logits), target)
    np.testing.assert_array_equal(
        sweep_l.compute()["exact"]["f1"], sweep_p.compute()["exact"]["f1"]
    )


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        M.confusion_counts(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 3))
    with pytest.raises(ValueError):
        M.tolerance_counts(torch.zeros(2, 2), torch.zeros(2, 2), 1)


def test_meter_streaming_equals_concatenation():
    batches = random_batches()
    meter = M.ConfusionMeter(threshold=0.4, keep_rows=True)
    for i, (prob, target) in enumerate(batches):
        meter.update(prob, target, names=[f"b{i}_{j}" for j in range(len(prob))])
    whole = M.summarize(*M.confusion_counts(*map(torch.cat, zip(*batches, strict=True)), 0.4))
    got = meter.compute()
    assert got.keys() == whole.keys()
    for key, value in whole.items():
        assert got[key] == pytest.approx(value), key
    assert [r[0] for r in meter.rows] == ["b0_0", "b0_1", "b1_0", "b1_1", "b2_0", "b2_1"]
    assert M.summarize(*torch.tensor([r[1:] for r in meter.rows]).T)["iou"] == got["iou"]


def test_meter_state_size_is_fixed():
    meter = M.ConfusionMeter()
    prob, target = random_batches(n_batches=1)[0]
    meter.update(prob, target)
    small = {k: v.shape for k, v in meter.state_dict().items()}
    for _ in range(20):
        meter.update(prob, target)
    assert {k: v.shape for k, v in meter.state_dict().items()} == small
    assert meter.rows == [] and meter.compute()["n_images"] == 42


def test_detection_stats_hand_case():
    # flagged at >= 4 px: images 1 and 4; truly cracked: images 2, 3, 4
    d = M.detection_stats(torch.tensor([0, 5, 3, 0, 10]), torch.tensor([0, 0, 7, 4, 9]), min_area=4)
    assert (d["tp"], d["fp"], d["fn"], d["tn"]) == (1, 1, 2, 1)
    assert (d["n_images"], d["n_cracked"], d["n_clean"]) == (5, 3, 2)
    assert d["precision"] == 0.5 and d["recall"] == pytest.approx(1 / 3)
    assert d["f1"] == pytest.approx(0.4) and d["fpr"] == 0.5 and d["accuracy"] == 0.4
    assert M.detection_stats(torch.zeros(2), torch.zeros(2))["recall"] is None


def test_kept_area_drops_components_under_min_area():
    """Image 1: 4 isolated specks and a 3-px diagonal (8-connected: one crack). Image 2:
    a 5-px bar. Image 3: nothing."""
    pred = torch.zeros(3, 1, 6, 6, dtype=torch.bool)
    for r, c in ((0, 0), (0, 5), (5, 0), (5, 5)):
        pred[0, 0, r, c] = True
    for k in range(3):
        pred[0, 0, 1 + k, 2 + k] = True
    pred[1, 0, 2, :5] = True
    assert M.kept_area(pred, 1).tolist() == [7, 5, 0]
    assert M.kept_area(pred, 2).tolist() == [3, 5, 0]
    assert M.kept_area(pred, 4).tolist() == [0, 5, 0]
    assert M.kept_area(pred, 6).tolist() == [0, 0, 0]
