"""Hand-checked cases for fissure.metrics.tolerance: matching within a Euclidean disk."""

import torch
from metric_cases import as_ints, line_pair

from fissure import metrics as M


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
