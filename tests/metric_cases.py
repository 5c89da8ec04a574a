"""Small hand-checkable tensors shared by the tests of fissure.metrics."""

from __future__ import annotations

import torch


def img(rows) -> torch.Tensor:
    """A (1, 1, H, W) float tensor from nested lists."""
    return torch.tensor(rows, dtype=torch.float32)[None, None]


def as_ints(counts):
    return [c.tolist() for c in counts]


def line_pair(h=6, w=8, col_true=3, col_pred=4):
    """A vertical true crack at ``col_true`` and a prediction one column off."""
    target, pred = torch.zeros(1, 1, h, w), torch.zeros(1, 1, h, w)
    target[..., col_true] = 1
    pred[..., col_pred] = 1
    return pred, target


def random_batches(seed=2, n_batches=3, size=(2, 1, 10, 12)):
    """``(prob, target)`` batches; probabilities on a 0.05 grid so some land on a threshold."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        prob = torch.randint(0, 21, size, generator=g).float() / 20
        target = (torch.rand(size, generator=g) + 0.3 * prob) > 0.9
        out.append((prob, target))
    return out
