"""Precision, recall and F1 at many thresholds, exact and tolerant, from one pass over a split.

Conventions as in :mod:`fissure.metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .functional import _as_mask, _as_prob, _check_pair, defined_ratio
from .tolerance import _disk_max, tolerance_f1


def _above(idx: Tensor, mask: Tensor | None, n_th: int) -> Tensor:
    """``(N, T)`` counts of (masked) pixels whose bucket index exceeds each threshold index.

    ``idx`` ``(N, P)`` counts the thresholds strictly below each pixel's value, so the pixel is
    above threshold ``k`` exactly when ``idx > k``: a suffix sum of the per-image histogram.
    """
    n = idx.shape[0]
    flat = idx + (n_th + 1) * torch.arange(n, device=idx.device)[:, None]
    flat = flat.flatten() if mask is None else flat[mask]
    hist = torch.bincount(flat, minlength=n * (n_th + 1)).reshape(n, n_th + 1)
    return hist.flip(1).cumsum(1).flip(1)[:, 1:].cpu()


def _nan_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _curve(smp: np.ndarray, snp: np.ndarray, smt: np.ndarray, snt: int, th: np.ndarray) -> dict:
    """Dataset PR curve and ODS from per-threshold sums; ``ap`` is left for the caller.

    Shapes:
        smp, snp, smt, th: (T,) matched predicted, predicted and matched true pixels, and
            the ascending thresholds.
        returns: ``precision, recall, f1`` (T,) float64, NaN where undefined.
    """
    p, r = _nan_div(smp, snp), _nan_div(smt, np.full_like(smt, snt))
    # precision is undefined only with no predictions, hence no matches: F1 is then 0 unless
    # there is nothing to find either
    pz, rz = np.nan_to_num(p), np.nan_to_num(r)
    f = np.where(pz + rz > 0, 2 * pz * rz / np.where(pz + rz > 0, pz + rz, 1), 0.0)
    f = np.where((snp == 0) & (snt == 0), np.nan, f)
    out = {"precision": p, "recall": r, "f1": f, "ods_f1": None, "ods_threshold": None, "ap": None}
    if not np.all(np.isnan(f)):
        k = int(np.nanargmax(f))
        out["ods_f1"], out["ods_threshold"] = float(f[k]), float(th[k])
    return out


def step_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """Step-wise area under PR points taken at ascending thresholds, ending at recall 0.

    Like sklearn's average precision, the curve ends at recall 0 with precision 1, and an
    undefined (NaN) precision only ever carries zero recall weight. Unlike it, the curve
    has no point for "every pixel is crack" (recall 1) below the lowest threshold.

    Shapes:
        precision, recall: (T,) float64, at ascending thresholds (so recall descends).
    """
    r_next = np.append(recall[1:], 0.0)
    return float(np.sum((recall - r_next) * np.nan_to_num(precision, nan=1.0)))


def bucket_ap(true_above: np.ndarray, all_above: np.ndarray, n_true: int, n_pixels: int) -> float:
    """sklearn's :func:`~sklearn.metrics.average_precision_score` of the bucketed pixels.

    A pixel's score is its bucket: the number of thresholds strictly below its probability,
    ``0..T``. The per-bucket counts of crack and background pixels, recovered from the
    counts above each threshold, are the sample weights of ``2 (T + 1)`` samples, so no
    pixel array is built. The result is the AP of every pixel scored by its bucket; it
    differs from :func:`step_ap` of the same sweep by ``(1 - r_0) * n_true / n_pixels``
    (``r_0`` the recall at the lowest threshold), the area under the point where every
    pixel is called crack.

    Shapes:
        true_above, all_above: (T,) int, crack and all pixels above each ascending threshold.
    """
    # sklearn.metrics pulls in scipy, a second or more at import: only its callers pay.
    from sklearn.metrics import average_precision_score

    buckets = np.arange(len(true_above) + 1)
    pos = -np.diff(np.concatenate([[n_true], true_above, [0]]))
    neg = -np.diff(np.concatenate([[n_pixels - n_true], all_above - true_above, [0]]))
    labels = np.concatenate([np.ones_like(buckets), np.zeros_like(buckets)])
    return float(average_precision_score(
        labels, np.concatenate([buckets, buckets]), sample_weight=np.concatenate([pos, neg])
    ))


def _ois(mp: np.ndarray, npred: np.ndarray, mt: np.ndarray, ntrue: np.ndarray, th: np.ndarray):
    """OIS from per-image tables ``(N, T)`` and ``ntrue`` ``(N,)``: best threshold per image."""
    keys = ("ois_f1", "ois_precision", "ois_recall", "image_best_f1", "image_best_threshold")
    if mp.shape[0] == 0:
        return dict.fromkeys(keys)
    per = tolerance_f1(*(torch.as_tensor(a) for a in (mp, mt, npred, ntrue[:, None])))
    best = per.numpy().argmax(1)
    rows = np.arange(mp.shape[0])
    bmp, bnp, bmt = (int(a[rows, best].sum()) for a in (mp, npred, mt))
    snt = int(ntrue.sum())
    bf = float(tolerance_f1(*(torch.tensor(v) for v in (bmp, bmt, bnp, snt)), empty=math.nan))
    values = (None if math.isnan(bf) else bf, defined_ratio(bmp, bnp), defined_ratio(bmt, snt),
              per.numpy()[rows, best], th[best])  # fmt: skip
    return dict(zip(keys, values, strict=True))


class ThresholdSweep:
    """Precision/recall/F1 at many thresholds, exact and with tolerance, in one pass over the data.

    Each batch costs O(pixels * (log T + tolerance)): probabilities are bucketed by the sorted
    thresholds and counted with ``bincount``, and tolerance matching needs no per-threshold
    dilation because a true pixel is recalled at threshold ``t`` exactly when the disk-maximum of
    the probabilities around it exceeds ``t``. Memory is O(T) running sums plus, with
    ``per_image`` (needed for OIS), four int64 ``(N_images, T)`` tables: never O(pixels).
    """

    def __init__(
        self,
        thresholds: Sequence[float] | int = 99,
        tolerance: int = 2,
        from_logits: bool = False,
        per_image: bool = True,
    ) -> None:
        """``thresholds``: explicit values, or a count ``n`` for ``k / (n + 1)``, ``k = 1..n``."""
        if isinstance(thresholds, int):
            if thresholds < 1:
                raise ValueError(f"need at least one threshold, got {thresholds}")
            th = np.arange(1, thresholds + 1) / (thresholds + 1)
        else:
            th = np.unique(np.asarray(thresholds, dtype=np.float64))
            if th.size == 0 or not np.all(np.isfinite(th)):
                raise ValueError("thresholds must be a non-empty sequence of finite numbers")
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        self.thresholds, self.tolerance = th, int(tolerance)
        self.from_logits, self.per_image = from_logits, per_image
        self.reset()

    def reset(self) -> None:
        """Forget every batch added so far."""
        t = len(self.thresholds)
        self._sums = torch.zeros(4, t, dtype=torch.int64)
        self._n_true, self._n, self._n_pixels = 0, 0, 0
        self._tables: list[Tensor] = []  # (n, 4, T) per batch
        self._true: list[Tensor] = []
        self.names: list[str] = []

    def reduce_(self, reduce: Callable[[Tensor], Tensor]) -> None:
        """Apply an in-place sum (e.g. ``torch.distributed.all_reduce``) to the running totals.

        Only the dataset-level sums take part; per-image tables stay local to each process.

        Shapes:
            reduce: takes and sums in place a (4 T + 3,) int64 tensor: the four (T,) sums,
                then the crack-pixel, image and pixel counts.
        """
        scalars = torch.tensor([self._n_true, self._n, self._n_pixels])
        totals = torch.cat([self._sums.flatten(), scalars])
        reduce(totals)
        t = len(self.thresholds)
        self._sums = totals[: 4 * t].reshape(4, t).clone()
        self._n_true, self._n, self._n_pixels = (int(v) for v in totals[-3:])

    def update(self, pred_prob: Tensor, target: Tensor, names: Sequence[str] | None = None) -> None:
        """Add a batch; ``names`` label its images for the per-image tables.

        Shapes:
            pred_prob: (N, 1, H, W) float probabilities (logits with ``from_logits``).
            target: (N, 1, H, W) bool, or float/int in {0, 1}.
        """
        _check_pair(pred_prob, target, spatial=True)
        p = _as_prob(pred_prob, self.from_logits)
        p = torch.where(torch.isnan(p), -math.inf, p)
        true = _as_mask(target)
        n, n_th = p.shape[0], len(self.thresholds)
        if names is not None and len(names) != n:
            raise ValueError(f"got {len(names)} names for a batch of {n} images")
        th = torch.as_tensor(self.thresholds, dtype=p.dtype, device=p.device)
        flat_true = true.flatten(1)
        idx = torch.bucketize(p.flatten(1), th)
        idx_near = torch.bucketize(_disk_max(p, self.tolerance).flatten(1), th)
        near_true = (_disk_max(true.to(p.dtype), self.tolerance) > 0.5).flatten(1)
        # columns: exact tp, n_pred, tolerant matched_pred, tolerant matched_true
        pairs = ((idx, flat_true), (idx, None), (idx, near_true), (idx_near, flat_true))
        table = torch.stack([_above(i, m, n_th) for i, m in pairs], 1)
        n_true = flat_true.sum(1).cpu()
        self._sums += table.sum(0)
        self._n_true += int(n_true.sum())
        self._n_pixels += flat_true.numel()
        if self.per_image:
            self._tables.append(table)
            self._true.append(n_true)
            self.names.extend(names if names is not None else [str(self._n + i) for i in range(n)])
        self._n += n

    def compute(self) -> dict:
        """Sweep results.

        Top level: ``thresholds`` (T,), ``tolerance``, ``n_images``, ``names``, ``best_threshold``
        (exact ODS threshold, for tuning), and ``exact`` / ``tolerant`` dicts with ``precision,
        recall, f1`` float64 arrays (T,) (NaN where undefined), ``ods_f1, ods_threshold`` (best
        single threshold; ties go to the lowest), ``ois_f1, ois_precision, ois_recall`` (each
        image at its own best threshold, counts summed, then F1), ``ap`` (average precision:
        exact by :func:`bucket_ap`, sklearn's, tolerant by :func:`step_ap`),
        ``image_best_f1, image_best_threshold`` arrays (N,). ``exact`` also has ``iou`` (T,).
        Scalars are ``None`` when undefined; OIS keys are ``None`` without ``per_image``.

        OIS >= ODS is typical but not guaranteed: per-image optima need not maximise the pooled F1.

        Shapes:
            returns: per-threshold arrays (T,) float64, per-image arrays (N,).
        """
        th, s = self.thresholds, self._sums.numpy()
        if self._tables:
            tab, ntrue = torch.cat(self._tables).numpy(), torch.cat(self._true).numpy()
        else:
            tab, ntrue = np.zeros((0, 4, len(th)), dtype=np.int64), np.zeros(0, dtype=np.int64)
        out: dict = {"thresholds": th.copy(), "tolerance": self.tolerance, "n_images": self._n,
                     "names": list(self.names)}  # fmt: skip
        for mode, (i_mp, i_mt) in (("exact", (0, 0)), ("tolerant", (2, 3))):
            out[mode] = _curve(s[i_mp], s[1], s[i_mt], self._n_true, th)
            if self._n_true > 0 and mode == "exact":
                out[mode]["ap"] = bucket_ap(s[0], s[1], self._n_true, self._n_pixels)
            elif self._n_true > 0:
                # Tolerant precision counts predicted pixels near a true one and recall true
                # pixels near a predicted one: two pixel sets, not one labelled list of
                # scores, so there is nothing to hand sklearn.
                out[mode]["ap"] = step_ap(out[mode]["precision"], out[mode]["recall"])
            out[mode].update(_ois(tab[:, i_mp], tab[:, 1], tab[:, i_mt], ntrue, th))
        out["exact"]["iou"] = _nan_div(s[0], s[1] + self._n_true - s[0])
        out["best_threshold"] = out["exact"]["ods_threshold"]
        return out
