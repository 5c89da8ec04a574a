"""fissure.metrics.sweep: every threshold in one pass, against fixed-threshold metrics and
scikit-learn's average precision."""

import math

import numpy as np
import pytest
import torch
from metric_cases import as_ints, img, line_pair, random_batches

from fissure import metrics as M


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
    for key in ("precision", "recall", "f1", "ods_f1", "ois_f1"):
        np.testing.assert_allclose(out["tolerant"][key], out["exact"][key])
    # the exact AP (sklearn's) adds the point "every pixel is crack" below 0.25, where the
    # tolerant (step-wise) one stops; pixels of 0.0..0.25 are there, so the two differ by it
    exact = out["exact"]
    n_true = sum(int(t.sum()) for _, t in random_batches(seed=4))
    base_rate = n_true / (3 * 2 * 10 * 12)
    assert exact["recall"][0] < 1
    assert out["tolerant"]["ap"] == pytest.approx(_todays_ap(exact["precision"], exact["recall"]))
    assert exact["ap"] == pytest.approx(
        out["tolerant"]["ap"] + (1 - exact["recall"][0]) * base_rate, abs=1e-12)


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


# ------------------------------------------------------------------- average precision


def _todays_ap(p, r):
    """Reference: the exact AP before scikit-learn computed it (step-wise over the sweep)."""
    r_next = np.append(r[1:], 0.0)
    return float(np.sum((r - r_next) * np.nan_to_num(p, nan=1.0)))


def _pixels(seed, n=3, size=(2, 1, 9, 11)):
    """Batches of probabilities in [0, 1) and masks, crack pixels biased upward."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        target = torch.rand(size, generator=g) < 0.2
        prob = torch.rand(size, generator=g) * 0.7 + target * 0.3 * torch.rand(size, generator=g)
        out.append((prob, target))
    return out


@pytest.mark.parametrize("thresholds", [9, 99, [0.1, 0.33, 0.5, 0.9]])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_ap_is_sklearns_on_the_bucketed_pixels(thresholds, seed):
    from sklearn.metrics import average_precision_score

    sweep = M.ThresholdSweep(thresholds, tolerance=1)
    batches = _pixels(seed)
    for prob, target in batches:
        sweep.update(prob, target)
    out = sweep.compute()
    prob, target = map(torch.cat, zip(*batches, strict=True))
    # a pixel's score is the number of thresholds below its probability
    bucket = torch.bucketize(prob.flatten().double(), torch.as_tensor(out["thresholds"]))
    want = average_precision_score(target.flatten().numpy(), bucket.numpy())
    assert out["exact"]["ap"] == pytest.approx(want, abs=1e-12)
    # today's step-wise sum misses the area under "every pixel is crack" (recall 1)
    r0, base_rate = out["exact"]["recall"][0], target.float().mean().item()
    old = _todays_ap(out["exact"]["precision"], out["exact"]["recall"])
    assert out["exact"]["ap"] - old == pytest.approx((1 - r0) * base_rate, abs=1e-7)


@pytest.mark.parametrize("thresholds", [9, [0.1, 0.33, 0.5, 0.9]])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_ap_equals_todays_where_every_crack_pixel_clears_the_lowest_threshold(
    thresholds, seed
):
    sweep = M.ThresholdSweep(thresholds, tolerance=0)
    for prob, target in _pixels(seed):
        sweep.update(torch.where(target, prob.clamp_min(0.2), prob), target)
    exact = sweep.compute()["exact"]
    assert exact["recall"][0] == 1.0
    # equal but for the order of a float sum
    assert exact["ap"] == pytest.approx(_todays_ap(exact["precision"], exact["recall"]), abs=1e-15)


def test_bucket_ap_from_counts_by_hand():
    # thresholds 0.5: bucket 1 holds 2 crack + 1 background pixels, bucket 0 1 crack + 4 others
    ap = M.bucket_ap(np.array([2]), np.array([3]), n_true=3, n_pixels=8)
    # points: (recall 2/3, precision 2/3), then (recall 1, precision 3/8)
    assert ap == pytest.approx(2 / 3 * 2 / 3 + 1 / 3 * 3 / 8)
    assert M.step_ap(np.array([2 / 3]), np.array([2 / 3])) == pytest.approx(2 / 3 * 2 / 3)


def test_sweep_state_reduces_with_the_pixel_count():
    batches = random_batches(seed=9)
    whole, first, second = (M.ThresholdSweep(9, per_image=False) for _ in range(3))
    for prob, target in batches:
        whole.update(prob, target)
    first.update(*batches[0])
    for prob, target in batches[1:]:
        second.update(prob, target)
    totals = []
    second.reduce_(lambda t: totals.append(t.clone()))
    first.reduce_(lambda t: t.add_(totals[0]))
    a, b = first.compute()["exact"], whole.compute()["exact"]
    assert a["ap"] == b["ap"] and a["ods_f1"] == b["ods_f1"]
    assert first.compute()["n_images"] == 6
