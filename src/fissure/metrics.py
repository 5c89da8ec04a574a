"""Segmentation metrics for crack masks, as small pure functions plus two streaming accumulators.

Shapes and conventions
----------------------
* ``pred_prob``: ``(N, 1, H, W)`` float probabilities (or logits with ``from_logits=True``),
  upcast to at least float32 so every function compares the same numbers.
* ``target``: ``(N, 1, H, W)`` bool, or float/int in {0, 1}; crack where ``target > 0.5``.
* A pixel is *predicted* crack where ``prob > threshold`` (strict); NaN is never crack.
* Counts (``tp, fp, fn, tn``) are int64 tensors of any shape, usually ``(N,)``: one entry per image.
  The ratio functions work elementwise on them and return float64 tensors of the same shape.

Empty rule (per image)
----------------------
A ratio whose denominator is zero returns ``empty`` (default 1.0) when the prediction made no error
of any kind in that image (``fp == fn == 0``), and 0.0 otherwise. So an image with no true and no
predicted crack scores IoU = F1 = precision = recall = 1, while an image that misses all of its
cracks gets precision 0 (not 1) for predicting nothing. Pass ``empty=float("nan")`` to exclude such
images from a ``nanmean`` instead.

Dataset level (micro)
---------------------
:func:`summarize`, :class:`ConfusionMeter` and :class:`ThresholdSweep` sum the counts over all
images first and then divide. Here a zero denominator means the metric is undefined and is reported
as ``None`` (NaN inside arrays), e.g. dataset IoU when there are neither true nor predicted crack
pixels. Macro (per-image) means and population standard deviations use the empty rule above.

Tolerance matching
------------------
As in the crack literature, a predicted crack pixel is correct if a true crack pixel lies within
Euclidean distance ``tolerance`` (a disk, not a square), and a true pixel is recalled if a predicted
pixel lies within the same disk. Precision is ``matched_pred / n_pred``, recall is
``matched_true / n_true`` and F1 is their harmonic mean. ``tolerance=0`` is exact matching.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

Counts = tuple[Tensor, Tensor, Tensor, Tensor]
OptTensor = Tensor | None
_ALWAYS = torch.tensor(True)


def _as_prob(pred: Tensor, from_logits: bool) -> Tensor:
    if pred.dtype not in (torch.float32, torch.float64):
        pred = pred.float()
    return torch.sigmoid(pred) if from_logits else pred


def _as_mask(target: Tensor) -> Tensor:
    return target if target.dtype == torch.bool else target > 0.5


def _check_pair(pred: Tensor, target: Tensor, spatial: bool = False) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target {tuple(target.shape)}")
    if pred.ndim < 2 or (spatial and (pred.ndim != 4 or pred.shape[1] != 1)):
        raise ValueError(f"expected (N, 1, H, W) tensors, got shape {tuple(pred.shape)}")


def confusion_counts(
    pred_prob: Tensor, target: Tensor, threshold: float = 0.5, from_logits: bool = False
) -> Counts:
    """Per-image ``tp, fp, fn, tn``, each int64 ``(N,)``; positive where ``prob > threshold``.

    ``pred_prob`` and ``target`` are ``(N, 1, H, W)``; with ``from_logits`` the threshold still
    applies to ``sigmoid(pred_prob)``.
    """
    _check_pair(pred_prob, target)
    pred = (_as_prob(pred_prob, from_logits) > threshold).flatten(1)
    true = _as_mask(target).flatten(1)
    tp = (pred & true).sum(1)
    fp = (pred & ~true).sum(1)
    fn = (~pred & true).sum(1)
    tn = true.shape[1] - tp - fp - fn
    return tp, fp, fn, tn


def _ratio(num: Tensor, den: Tensor, no_error: Tensor, empty: float) -> Tensor:
    num, den = torch.as_tensor(num).double(), torch.as_tensor(den).double()
    fallback = torch.where(torch.as_tensor(no_error), empty, 0.0).double()
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), fallback)


def iou(tp: Tensor, fp: Tensor, fn: Tensor, tn: OptTensor = None, empty: float = 1.0) -> Tensor:
    """Jaccard index ``tp / (tp + fp + fn)``, elementwise on counts of any shape."""
    return _ratio(tp, tp + fp + fn, _ALWAYS, empty)


def f1(tp: Tensor, fp: Tensor, fn: Tensor, tn: OptTensor = None, empty: float = 1.0) -> Tensor:
    """F1 / Dice ``2 tp / (2 tp + fp + fn)``, elementwise on counts of any shape."""
    return _ratio(2 * tp, 2 * tp + fp + fn, _ALWAYS, empty)


def precision(
    tp: Tensor, fp: Tensor, fn: Tensor, tn: OptTensor = None, empty: float = 1.0
) -> Tensor:
    """``tp / (tp + fp)``; with no predicted crack: ``empty`` if ``fn == 0`` else 0."""
    return _ratio(tp, tp + fp, torch.as_tensor(fn) == 0, empty)


def recall(tp: Tensor, fp: Tensor, fn: Tensor, tn: OptTensor = None, empty: float = 1.0) -> Tensor:
    """``tp / (tp + fn)``; with no true crack: ``empty`` if ``fp == 0`` else 0."""
    return _ratio(tp, tp + fn, torch.as_tensor(fp) == 0, empty)


def specificity(tp: Tensor, fp: Tensor, fn: Tensor, tn: Tensor, empty: float = 1.0) -> Tensor:
    """``tn / (tn + fp)``; for an all-crack image: ``empty`` if ``fn == 0`` else 0."""
    tn = torch.as_tensor(tn)
    return _ratio(tn, tn + fp, torch.as_tensor(fn) == 0, empty)


def accuracy(tp: Tensor, fp: Tensor, fn: Tensor, tn: Tensor, empty: float = 1.0) -> Tensor:
    """``(tp + tn) / (tp + fp + fn + tn)``; ``empty`` for a zero-pixel image."""
    return _ratio(tp + tn, tp + fp + fn + tn, _ALWAYS, empty)


def _defined(num: float, den: float) -> float | None:
    return None if den == 0 else float(num) / float(den)


def _moments(tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
    """Sums of per-image IoU, IoU^2, F1, F1^2 (float64 ``(4,)``), so macro stats can stream."""
    i, d = iou(tp, fp, fn).flatten(), f1(tp, fp, fn).flatten()
    return torch.stack([i.sum(), (i * i).sum(), d.sum(), (d * d).sum()])


def _summary(sums: Tensor, moments: Tensor, n: int) -> dict[str, float | int | None]:
    tp, fp, fn, tn = (int(v) for v in sums)
    out: dict[str, float | int | None] = {"n_images": n, "tp": tp, "fp": fp, "fn": fn, "tn": tn}
    out["iou"] = _defined(tp, tp + fp + fn)
    out["precision"] = _defined(tp, tp + fp)
    out["recall"] = _defined(tp, tp + fn)
    out["f1"] = _defined(2 * tp, 2 * tp + fp + fn)
    out["accuracy"] = _defined(tp + tn, tp + fp + fn + tn)
    out["specificity"] = _defined(tn, tn + fp)
    for k, name in enumerate(("iou", "f1")):
        mean = float(moments[2 * k]) / n if n else None
        # sum-of-squares can dip a hair below mean^2 in floating point
        var = max(float(moments[2 * k + 1]) / n - mean * mean, 0.0) if n else None
        out[f"{name}_mean"] = mean
        out[f"{name}_std"] = math.sqrt(var) if var is not None else None
    return out


def summarize(tp: Tensor, fp: Tensor, fn: Tensor, tn: Tensor) -> dict[str, float | int | None]:
    """Dataset (micro) and per-image (macro) metrics from per-image counts of shape ``(N,)``.

    Keys: ``n_images, tp, fp, fn, tn`` (ints); micro ``iou, precision, recall, f1, accuracy,
    specificity`` (``None`` when the denominator is 0); macro ``iou_mean, iou_std, f1_mean,
    f1_std`` (empty rule, population std; ``None`` when there are no images).
    """
    tp, fp, fn, tn = (torch.as_tensor(c).flatten().long() for c in (tp, fp, fn, tn))
    sums = torch.stack([tp.sum(), fp.sum(), fn.sum(), tn.sum()])
    return _summary(sums, _moments(tp, fp, fn), tp.numel())


class ConfusionMeter:
    """Streaming :func:`summarize` over batches.

    State is four int64 sums and four float64 moment sums, whatever the number of pixels or images
    (:meth:`state_dict`; the tensors add up across processes). With ``keep_rows`` it also keeps one
    ``(name, tp, fp, fn, tn)`` row per image, which is O(images) only.
    """

    def __init__(
        self, threshold: float = 0.5, from_logits: bool = False, keep_rows: bool = False
    ) -> None:
        self.threshold, self.from_logits, self.keep_rows = threshold, from_logits, keep_rows
        self.reset()

    def reset(self) -> None:
        self._sums = torch.zeros(4, dtype=torch.int64)
        self._moments = torch.zeros(4, dtype=torch.float64)
        self._n = 0
        self.rows: list[tuple[str, int, int, int, int]] = []

    def update(
        self,
        pred_prob: Tensor,
        target: Tensor,
        threshold: float | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        """Add a batch of ``(N, 1, H, W)`` predictions; ``threshold`` overrides the meter's."""
        th = self.threshold if threshold is None else threshold
        counts = [c.cpu() for c in confusion_counts(pred_prob, target, th, self.from_logits)]
        n = counts[0].numel()
        if names is not None and len(names) != n:
            raise ValueError(f"got {len(names)} names for a batch of {n} images")
        self._sums += torch.stack([c.sum() for c in counts])
        self._moments += _moments(*counts[:3])
        if self.keep_rows:
            labels = names if names is not None else [str(self._n + i) for i in range(n)]
            rows = torch.stack(counts, 1).tolist()
            self.rows.extend((str(lab), *row) for lab, row in zip(labels, rows, strict=True))
        self._n += n

    def compute(self) -> dict[str, float | int | None]:
        """Same keys as :func:`summarize`."""
        return _summary(self._sums, self._moments, self._n)

    def state_dict(self) -> dict[str, Tensor]:
        return {"sums": self._sums.clone(), "moments": self._moments.clone(),
                "n_images": torch.tensor(self._n)}  # fmt: skip


def detection_stats(pred_area: Tensor, true_area: Tensor, min_area: int = 1) -> dict:
    """Image-level crack presence from per-image areas (``(N,)`` pixel counts).

    An image is predicted cracked when ``pred_area >= min_area`` (raise ``min_area`` to ignore
    speckle) and truly cracked when ``true_area > 0``. Returns image counts ``tp, fp, fn, tn,
    n_images, n_cracked, n_clean`` and ``precision, recall, f1, accuracy`` plus ``fpr``, the share
    of crack-free images flagged; each ratio is ``None`` when its denominator is 0.
    """
    pred = torch.as_tensor(pred_area).flatten() >= min_area
    true = torch.as_tensor(true_area).flatten() > 0
    if pred.shape != true.shape:
        raise ValueError(f"pred_area has {pred.numel()} images, true_area {true.numel()}")
    tp, fp = int((pred & true).sum()), int((pred & ~true).sum())
    fn, tn = int((~pred & true).sum()), int((~pred & ~true).sum())
    return {
        "tp": tp, "fp": fp, "fn": fn, "tn": tn, "min_area": min_area,
        "n_images": tp + fp + fn + tn, "n_cracked": tp + fn, "n_clean": fp + tn,
        "precision": _defined(tp, tp + fp), "recall": _defined(tp, tp + fn),
        "f1": _defined(2 * tp, 2 * tp + fp + fn), "fpr": _defined(fp, fp + tn),
        "accuracy": _defined(tp + tn, tp + fp + fn + tn),
    }  # fmt: skip


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
    12x faster on CPU than a max-pool per row (BENCHMARKS.md, fix C).
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
    """Per-image ``matched_pred, matched_true, n_pred, n_true``, each int64 ``(N,)``.

    ``pred_bin`` and ``target`` are ``(N, 1, H, W)`` binary masks; ``matched_pred`` counts predicted
    pixels within ``tolerance`` of a true pixel, ``matched_true`` true pixels within ``tolerance``
    of a predicted pixel. Tolerance precision is ``matched_pred / n_pred``, recall
    ``matched_true / n_true``; use :func:`tolerance_f1` for the per-image F1.
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
    """
    mp, mt, npred, ntrue = (torch.as_tensor(c).double() for c in (matched_pred, matched_true,
                                                                  n_pred, n_true))  # fmt: skip
    no_error = (mp == npred) & (mt == ntrue)
    p = _ratio(mp, npred, no_error, empty)
    r = _ratio(mt, ntrue, no_error, empty)
    f = torch.where(p + r > 0, 2 * p * r / torch.where(p + r > 0, p + r, 1.0), 0.0)
    return torch.where((npred == 0) & (ntrue == 0), torch.as_tensor(empty).double(), f)


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
    """Dataset PR curve, ODS and AP from per-threshold sums ``(T,)``."""
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
    if snt > 0:
        # thresholds ascend so recall descends; like sklearn, the curve ends at recall 0 with
        # precision 1, and an undefined precision only ever carries zero recall weight
        r_next = np.append(r[1:], 0.0)
        out["ap"] = float(np.sum((r - r_next) * np.nan_to_num(p, nan=1.0)))
    return out


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
    values = (None if math.isnan(bf) else bf, _defined(bmp, bnp), _defined(bmt, snt),
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
        t = len(self.thresholds)
        self._sums = torch.zeros(4, t, dtype=torch.int64)
        self._n_true, self._n = 0, 0
        self._tables: list[Tensor] = []  # (n, 4, T) per batch
        self._true: list[Tensor] = []
        self.names: list[str] = []

    def reduce_(self, reduce: Callable[[Tensor], Tensor]) -> None:
        """Apply an in-place sum (e.g. ``torch.distributed.all_reduce``) to the running totals.

        Only the dataset-level sums take part; per-image tables stay local to each process.
        """
        totals = torch.cat([self._sums.flatten(), torch.tensor([self._n_true, self._n])])
        reduce(totals)
        t = len(self.thresholds)
        self._sums = totals[: 4 * t].reshape(4, t).clone()
        self._n_true, self._n = int(totals[-2]), int(totals[-1])

    def update(self, pred_prob: Tensor, target: Tensor, names: Sequence[str] | None = None) -> None:
        """Add a batch of ``(N, 1, H, W)`` probabilities (or logits) and masks."""
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
        image at its own best threshold, counts summed, then F1), ``ap`` (step-wise area under
        the PR points, as sklearn's average precision), ``image_best_f1, image_best_threshold``
        arrays (N,). ``exact`` also has ``iou`` (T,). Scalars are ``None`` when undefined; OIS
        keys are ``None`` without ``per_image``.

        OIS >= ODS is typical but not guaranteed: per-image optima need not maximise the pooled F1.
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
            out[mode].update(_ois(tab[:, i_mp], tab[:, 1], tab[:, i_mt], ntrue, th))
        out["exact"]["iou"] = _nan_div(s[0], s[1] + self._n_true - s[0])
        out["best_threshold"] = out["exact"]["ods_threshold"]
        return out
