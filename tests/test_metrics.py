"""Hand-checked cases for fissure.metrics; each tensor is small enough to verify on paper."""

import math

import numpy as np
import pytest
import torch

from fissure import metrics as M


def img(rows) -> torch.Tensor:
    """A (1, 1, H, W) float tensor from nested lists."""
    return torch.tensor(rows, dtype=torch.float32)[None, None]


TARGET_4x4 = img([[0, 1, 1, 0], [0, 1, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
PROB_4x4 = img(
    [[0.1, 0.9, 0.8, 0.2], [0.6, 0.7, 0.5, 0.1], [0.0, 0.4, 0.0, 0.0], [0.0, 0.0, 0.0, 0.9]]
)


def as_ints(counts):
    return [c.tolist() for c in counts]


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


def line_pair(h=6, w=8, col_true=3, col_pred=4):
    target, pred = torch.zeros(1, 1, h, w), torch.zeros(1, 1, h, w)
    target[..., col_true] = 1
    pred[..., col_pred] = 1
    return pred, target


def test_shifted_thin_crack_tolerance():
    pred, target = line_pair()
    assert M.f1(*M.confusion_counts(pred, target)[:3]).item() == 0.0
    assert as_ints(M.tolerance_counts(pred, target, 0)) == [[0], [0], [6], [6]]
    for tol in (1, 2, 5):
        counts = M.tolerance_counts(pred, target, tol)
        assert as_ints(counts) == [[6], [6], [6], [6]]
        assert M.tolerance_f1(*counts).item() == 1.0


def test_tolerance_is_a_disk():
    target, pred = torch.zeros(1, 1, 5, 5), torch.zeros(1, 1, 5, 5)
    target[0, 0, 2, 2], pred[0, 0, 3, 3] = 1, 1  # diagonal neighbour: distance sqrt(2)
    assert as_ints(M.tolerance_counts(pred, target, 1)) == [[0], [0], [1], [1]]
    assert as_ints(M.tolerance_counts(pred, target, 2)) == [[1], [1], [1], [1]]


def test_tolerance_zero_equals_exact():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.rand(3, 1, 7, 9, generator=g) > 0.6, torch.rand(3, 1, 7, 9, generator=g)
    tp, fp, fn, _ = M.confusion_counts(pred.float(), target > 0.7)
    mp, mt, npred, ntrue = M.tolerance_counts(pred, target > 0.7, 0)
    assert torch.equal(mp, tp) and torch.equal(mt, tp)
    assert torch.equal(npred, tp + fp) and torch.equal(ntrue, tp + fn)
    assert torch.allclose(M.tolerance_f1(mp, mt, npred, ntrue), M.f1(tp, fp, fn))


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


def random_batches(seed=2, n_batches=3, size=(2, 1, 10, 12)):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        # probabilities on a 0.05 grid so some land exactly on a threshold
        prob = torch.randint(0, 21, size, generator=g).float() / 20
        target = (torch.rand(size, generator=g) + 0.3 * prob) > 0.9
        out.append((prob, target))
    return out


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


def test_sweep_matches_fixed_threshold_metrics():
    batches = random_batches(seed=3)
    sweep = M.ThresholdSweep(thresholds=19, tolerance=1)
    for prob, target in batches:
        sweep.update(prob, target)
    out = sweep.compute()
    prob, target = map(torch.cat, zip(*batches, strict=True))
    for k, th in enumerate(out["thresholds"]):
        s = M.summarize(*M.confusion_counts(prob, target, float(th)))
        assert out["exact"]["f1"][k] == pytest.approx(s["f1"])
        assert out["exact"]["iou"][k] == pytest.approx(s["iou"])
        assert out["exact"]["ods_f1"] >= s["f1"] - 1e-12
        mp, mt, npred, ntrue = (c.sum() for c in M.tolerance_counts(prob > th, target, 1))
        assert out["tolerant"]["precision"][k] == pytest.approx((mp / npred).item())
        assert out["tolerant"]["recall"][k] == pytest.approx((mt / ntrue).item())
        assert out["tolerant"]["ods_f1"] >= out["tolerant"]["f1"][k]
    assert out["best_threshold"] == out["exact"]["ods_threshold"]
    assert out["n_images"] == 6 and out["exact"]["image_best_f1"].shape == (6,)
    for mode in ("exact", "tolerant"):
        assert 0.0 <= out[mode]["ap"] <= 1.0


def test_sweep_tolerance_zero_equals_exact():
    sweep = M.ThresholdSweep(thresholds=[0.25, 0.5, 0.75], tolerance=0)
    for prob, target in random_batches(seed=4):
        sweep.update(prob, target)
    out = sweep.compute()
    for key in ("precision", "recall", "f1", "ods_f1", "ois_f1", "ap"):
        np.testing.assert_allclose(out["tolerant"][key], out["exact"][key])


def test_sweep_shifted_crack():
    pred, target = line_pair()
    sweep = M.ThresholdSweep(tolerance=1)
    sweep.update(0.9 * pred, target)
    out = sweep.compute()
    assert out["exact"]["ods_f1"] == 0.0 and out["tolerant"]["ods_f1"] == 1.0


def test_ois_at_least_ods_on_images_with_different_optima():
    # image A separates at 0.6..0.8, image B at 0.2..0.4: no single threshold fits both
    target = torch.cat([img([[1, 0], [0, 0]]), img([[1, 0], [0, 0]])])
    prob = torch.cat([img([[0.8, 0.6], [0.6, 0.6]]), img([[0.4, 0.2], [0.2, 0.2]])])
    sweep = M.ThresholdSweep(thresholds=9, tolerance=0)
    sweep.update(prob, target, names=["a", "b"])
    out = sweep.compute()["exact"]
    assert out["ois_f1"] == 1.0 and out["ods_f1"] < 1.0 and out["ois_f1"] >= out["ods_f1"]
    assert out["image_best_threshold"].tolist() == pytest.approx([0.6, 0.2])


def test_ap_perfect_predictor_and_sklearn():
    target = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(5)) > 0.7
    sweep = M.ThresholdSweep(tolerance=1)
    sweep.update(torch.where(target, 0.9, 0.1), target)
    out = sweep.compute()
    assert out["exact"]["ap"] == pytest.approx(1.0) and out["tolerant"]["ap"] <= 1.0
    assert out["exact"]["ods_f1"] == 1.0 and out["best_threshold"] == pytest.approx(0.1)
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    batches = random_batches(seed=6)
    # scores off the threshold grid, so every distinct score gets its own PR point
    sweep = M.ThresholdSweep(thresholds=99, tolerance=0)
    for prob, target in batches:
        sweep.update(prob * 0.95 + 0.025, target)
    prob, target = map(torch.cat, zip(*batches, strict=True))
    want = sklearn_metrics.average_precision_score(
        target.flatten().numpy(), (prob * 0.95 + 0.025).flatten().numpy()
    )
    assert sweep.compute()["exact"]["ap"] == pytest.approx(want)


def test_nan_probabilities_are_negative():
    prob, target = img([[math.nan, 0.9], [0.2, 0.0]]), img([[1, 1], [0, 0]])
    assert as_ints(M.confusion_counts(prob, target)) == [[1], [0], [1], [2]]
    sweep = M.ThresholdSweep(thresholds=[0.5], tolerance=0)
    sweep.update(prob, target)
    assert sweep.compute()["exact"]["recall"].tolist() == [0.5]


def test_sweep_without_per_image_tables():
    sweep = M.ThresholdSweep(thresholds=9, per_image=False)
    for prob, target in random_batches(seed=7):
        sweep.update(prob, target)
    out = sweep.compute()
    assert out["exact"]["ois_f1"] is None and out["exact"]["ods_f1"] is not None
    assert sweep.names == []  # per-image state is skipped entirely


def test_ap_counts_recall_left_at_the_top_threshold():
    # scores of exactly 0 and 1 stay separated even at the highest threshold
    target = img([[1, 0], [0, 1]]).bool()
    sweep = M.ThresholdSweep(tolerance=0)
    sweep.update(target.float(), target)
    assert sweep.compute()["exact"]["ap"] == 1.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    results = []
    for device in ("cpu", "cuda"):
        meter, sweep = M.ConfusionMeter(keep_rows=True), M.ThresholdSweep(tolerance=2)
        for prob, target in random_batches(seed=8):
            meter.update(prob.to(device), target.to(device))
            sweep.update(prob.to(device), target.to(device))
        results.append((meter.compute(), meter.rows, sweep.compute()))
    (m_cpu, rows_cpu, s_cpu), (m_gpu, rows_gpu, s_gpu) = results
    assert m_cpu == m_gpu and rows_cpu == rows_gpu
    for mode in ("exact", "tolerant"):
        np.testing.assert_array_equal(s_cpu[mode]["f1"], s_gpu[mode]["f1"])
        assert s_cpu[mode]["ois_f1"] == s_gpu[mode]["ois_f1"]


# --------------------------------------------------------------------------- classification report


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
