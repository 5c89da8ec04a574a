"""Losses for binary crack segmentation, as small pure functions.

Shape conventions, shared by every loss here:

* ``logits``: ``(N, 1, H, W)`` float, the raw model output (before the sigmoid).
* ``target``: ``(N, 1, H, W)`` float with values in ``{0, 1}`` (1 = crack).

* ``valid``: ``(N, 1, H, W)`` bool or float in ``{0, 1}``, or None: the pixels that count.
  Zero padding of images smaller than the training crop is not part of any photo, so it is
  left out of every sum and mean (``None``: every pixel counts).

Any shape works as long as ``logits``, ``target`` and ``valid`` match exactly (no
broadcasting); the first dimension is the batch. Every loss returns a 0-dim float32 tensor,
whatever the input dtype: inputs are cast to float32 first so the losses are safe under
autocast.

Region losses (Dice, Tversky) sum over the whole batch by default, as if the batch were
one large image. Cracks cover a small, very uneven share of each photo, and per-image
ratios are dominated by the images with only a few crack pixels (or none).

:func:`build_loss` turns the ``train.loss`` section of a config into a
``loss(logits, target, valid=None)`` callable, raising :class:`~fissure.errors.ConfigError`
on bad keys.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import typing
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fissure.errors import ConfigError

__all__ = [
    "LOSSES",
    "auto_pos_weight",
    "bce_dice_loss",
    "bce_loss",
    "build_loss",
    "focal_loss",
    "focal_tversky_loss",
    "soft_dice_loss",
    "tversky_loss",
]

# A fractional power has an infinite slope at 0; flooring its base keeps the gradient finite
# when a prediction is saturated (e.g. logits of +-100 give exactly zero error in float32).
_POW_FLOOR = 1e-12


def _as_float32(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    # Broadcasting (N,1,H,W) against (N,H,W) would silently produce an (N,N,H,W) loss.
    if logits.shape != target.shape:
        raise ValueError(
            f"logits and target must have the same shape, got {tuple(logits.shape)} "
            f"and {tuple(target.shape)}"
        )
    return logits.float(), target.float()


def _weights(valid: Tensor | None, like: Tensor) -> Tensor | None:
    """``valid`` as float32 weights, or None; a ValueError if its shape is not ``like``'s."""
    if valid is None:
        return None
    if valid.shape != like.shape:
        raise ValueError(
            f"valid must have the shape of logits, got {tuple(valid.shape)} "
            f"and {tuple(like.shape)}"
        )
    return valid.float()


def _mean(values: Tensor, weights: Tensor | None) -> Tensor:
    """Mean of ``values`` over the pixels that count (all of them when ``weights`` is None)."""
    if weights is None:
        return values.mean()
    # An all-padding batch cannot occur from a crop, but must not divide by zero.
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def _batch_stats(
    logits: Tensor, target: Tensor, valid: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Soft true positives, false positives and false negatives summed over the batch.

    Shapes:
        logits: (N, 1, H, W) float, raw scores.
        target: (N, 1, H, W) float in {0, 1}.
        valid: (N, 1, H, W) or None.
        returns: ``(tp, fp, fn)``, each 0-dim float32.
    """
    logits, target = _as_float32(logits, target)
    prob = torch.sigmoid(logits)
    weights = _weights(valid, logits)
    if weights is not None:
        prob, target = prob * weights, target * weights
    tp = (prob * target).sum()
    fp = (prob * (1.0 - target)).sum()
    fn = ((1.0 - prob) * target).sum()
    return tp, fp, fn


def bce_loss(
    logits: Tensor, target: Tensor, pos_weight: float | None = None, valid: Tensor | None = None
) -> Tensor:
    """Binary cross-entropy from logits, averaged over the pixels that count.

    ``pos_weight`` multiplies the crack-pixel (``target == 1``) term; ``None`` means 1.
    Values above 1 trade precision for recall, offsetting how rare cracks are (see
    :func:`auto_pos_weight`).

    Shapes:
        logits: (N, 1, H, W) float, raw scores.
        target: (N, 1, H, W) float in {0, 1}.
        returns: 0-dim float32.
    """
    logits, target = _as_float32(logits, target)
    weights = _weights(valid, logits)
    weight = None
    if pos_weight is not None:
        weight = torch.as_tensor(pos_weight, device=logits.device, dtype=logits.dtype)
    if weights is None:
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight)
    # Padding's target may be anything (the ignore value): zero it before the log terms.
    per_pixel = F.binary_cross_entropy_with_logits(
        logits, target * weights, pos_weight=weight, reduction="none"
    )
    return _mean(per_pixel, weights)


def soft_dice_loss(
    logits: Tensor,
    target: Tensor,
    smooth: float = 1.0,
    per_image: bool = False,
    valid: Tensor | None = None,
) -> Tensor:
    """``1 - dice`` with dice ``= (2*sum(p*t) + smooth) / (sum(p) + sum(t) + smooth)``.

    ``p = sigmoid(logits)``. By default the sums run over the whole batch (one dice for
    the batch, as a dataset-level score is computed), so images without cracks neither
    dominate nor produce an undefined ratio. With ``per_image``, one dice per image (sums
    over every dimension but the first) and the mean of the ``N`` losses instead.
    ``smooth``, added to numerator and denominator, keeps the ratio defined when the batch
    has no crack pixels and none are predicted (loss 0 then).

    Shapes:
        logits: (N, 1, H, W) float, raw scores.
        target: (N, 1, H, W) float in {0, 1}.
        returns: 0-dim float32 in [0, 1].
    """
    logits, target = _as_float32(logits, target)
    prob = torch.sigmoid(logits)
    weights = _weights(valid, logits)
    if weights is not None:
        prob, target = prob * weights, target * weights
    dims = tuple(range(1, prob.dim())) if per_image else tuple(range(prob.dim()))
    intersection = (prob * target).sum(dim=dims)
    cardinality = prob.sum(dim=dims) + target.sum(dim=dims)
    dice = (2.0 * intersection + smooth) / (cardinality + smooth)
    return (1.0 - dice).mean()


def bce_dice_loss(
    logits: Tensor,
    target: Tensor,
    bce_weight: float = 0.5,
    dice_weight: float = 0.5,
    pos_weight: float | None = None,
    valid: Tensor | None = None,
) -> Tensor:
    """``bce_weight * bce_loss + dice_weight * soft_dice_loss`` (batch-level dice, smooth 1).

    ``pos_weight`` is passed to :func:`bce_loss`, ``valid`` to both.

    Shapes:
        logits: (N, 1, H, W) float, raw scores.
        target: (N, 1, H, W) float in {0, 1}.
        returns: 0-dim float32.
    """
    bce = bce_loss(logits, target, pos_weight=pos_weight, valid=valid)
    dice = soft_dice_loss(logits, target, valid=valid)
    return bce_weight * bce + dice_weight * dice


def focal_loss(
    logits: Tensor,
    target: Tensor,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    valid: Tensor | None = None,
) -> Tensor:
    """Focal loss ``-alpha_t * (1 - p_t)**gamma * log(p_t)``, averaged over the pixels.

    ``p_t`` is the predicted probability of the true class; ``log(p_t)`` comes from
    ``logsigmoid`` so saturated logits give no ``log(0)``. The mean runs over all pixels
    (not over crack pixels as in Lin et al.), so the scale does not jump with the number
    of cracks in a batch.

    ``alpha`` weighs crack pixels and ``1 - alpha`` background pixels; ``None`` weighs both
    classes 1, so ``gamma=0, alpha=None`` is plain BCE. ``gamma`` is the focusing exponent:
    larger values down-weight easy pixels more.

    Shapes:
        logits: (N, 1, H, W) float, raw scores.
        target: (N, 1, H, W) float in {0, 1}.
        returns: 0-dim float32.
    """
    logits, target = _as_float32(logits, target)
    weights = _weights(valid, logits)
    if weights is not None:
        target = target * weights
    log_pt = target * F.logsigmoid(logits) + (1.0 - target) * F.logsigmoid(-logits)
    # -expm1(log_pt) is 1 - p_t without the cancellation of 1 - exp(log_pt) near p_t = 1.
    modulator = (-torch.expm1(log_pt)).clamp_min(_POW_FLOOR).pow(gamma)
    loss = -modulator * log_pt
    if alpha is not None:
        loss = (alpha * target + (1.0 - alpha) * (1.0 - target)) * loss
    return _mean(loss, weights)


def tversky_loss(
    logits: Tensor,
    target: Tensor,
    alpha: float = 0.3,
    beta: float = 0.7,
    smooth: float = 1.0,
    valid: Tensor | None = None,
) -> Tensor:
    """``1 - TI`` with Tversky index ``TI = (TP + smooth) / (TP + alpha*FP + beta*FN + smooth)``.

    Soft counts from ``p = sigmoid(logits)``, summed over the whole batch:
    ``TP = sum(p*t)``, ``FP = sum(p*(1-t))``, ``FN = sum((1-p)*t)``. ``alpha`` weighs false
    positives and ``beta`` false negatives (Salehi et al., 2017), so ``beta > alpha`` (the
    default) penalises missed crack pixels more and favours recall. With
    ``alpha = beta = 0.5`` this is :func:`soft_dice_loss` with twice the ``smooth``.
    ``smooth``, added to numerator and denominator, keeps the ratio defined when the batch
    has no crack pixels.

    Shapes:
        logits: (N, 1, H, W) float, raw scores.
        target: (N, 1, H, W) float in {0, 1}.
        returns: 0-dim float32 in [0, 1].
    """
    tp, fp, fn = _batch_stats(logits, target, valid)
    index = (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)
    return 1.0 - index


def focal_tversky_loss(
    logits: Tensor,
    target: Tensor,
    alpha: float = 0.3,
    beta: float = 0.7,
    gamma: float = 0.75,
    smooth: float = 1.0,
    valid: Tensor | None = None,
) -> Tensor:
    """``tversky_loss ** gamma`` (Abraham & Khan, 2019, who write the exponent as ``1/gamma``).

    ``gamma < 1`` raises the loss, and its gradient, on batches that are already mostly
    right, which pushes on the thin, hard crack pixels late in training. ``alpha``,
    ``beta`` and ``smooth`` are :func:`tversky_loss`'s; ``gamma`` is the exponent applied
    to ``1 - TI``.

    Shapes:
        logits: (N, 1, H, W) float, raw scores.
        target: (N, 1, H, W) float in {0, 1}.
        returns: 0-dim float32 in [0, 1].
    """
    loss = tversky_loss(logits, target, alpha=alpha, beta=beta, smooth=smooth, valid=valid)
    return loss.clamp_min(_POW_FLOOR).pow(gamma)


def auto_pos_weight(crack_fraction: float, cap: float = 50.0) -> float:
    """BCE ``pos_weight`` that balances the two classes: ``(1 - p) / p`` clipped to ``[1, cap]``.

    ``p`` is ``crack_fraction``, the share of crack pixels in the training masks, in
    ``(0, 1]``. ``cap`` bounds the weight: very thin cracks would otherwise give weights in
    the hundreds, which make training unstable and flood predictions with false positives.
    A ValueError says when ``crack_fraction`` is not in ``(0, 1]`` or ``cap`` is below 1.
    """
    p = float(crack_fraction)
    if not (math.isfinite(p) and 0.0 < p <= 1.0):
        raise ValueError(f"crack_fraction must be in (0, 1], got {crack_fraction!r}")
    if not cap >= 1.0:
        raise ValueError(f"cap must be at least 1, got {cap!r}")
    return min(max((1.0 - p) / p, 1.0), float(cap))


LOSSES: dict[str, Callable[..., Tensor]] = {
    "bce": bce_loss,
    "dice": soft_dice_loss,
    "bce_dice": bce_dice_loss,
    "focal": focal_loss,
    "tversky": tversky_loss,
    "focal_tversky": focal_tversky_loss,
}


def _suggestion(word: object, choices: list[str]) -> str:
    close = difflib.get_close_matches(str(word).lower(), choices, n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    return "choose from " + ", ".join(choices)


def _check_value(loss: str, key: str, value: Any, hint: Any) -> Any:
    """Validate one config value against its annotation; return it as the function wants."""
    where = f"train.loss.params.{key}"
    allowed = typing.get_args(hint) or (hint,)
    if value is None:
        if type(None) in allowed:
            return None
        raise ConfigError(f"{where}: must be set, got null")
    if bool in allowed:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    # bool is an int subclass, but `smooth: true` is surely a mistake.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        expected = "a number or 'auto'" if key == "pos_weight" else "a number"
        raise ConfigError(f"{where}: expected {expected}, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0.0:
        raise ConfigError(f"{where}: expected a finite number >= 0, got {value!r}")
    if key == "pos_weight" and number == 0.0:
        raise ConfigError(f"{where}: must be > 0 (0 would ignore crack pixels), got {value!r}")
    if loss == "focal" and key == "alpha" and number > 1.0:
        raise ConfigError(f"{where}: must be in [0, 1], got {value!r}")
    return number


def build_loss(
    name: str,
    params: Mapping[str, Any] | None = None,
    crack_fraction: float | None = None,
) -> Callable[..., Tensor]:
    """Make ``loss(logits, target, valid=None)`` from the ``train.loss`` config section.

    ``name`` is a key of :data:`LOSSES` (``train.loss.name``); ``params`` are that loss's
    keyword arguments (the ``train.loss.params.*`` keys), checked against its signature and
    types. ``pos_weight: auto`` is replaced by :func:`auto_pos_weight` of ``crack_fraction``,
    the share of crack pixels in the training masks, which only it needs. The result is a
    :func:`functools.partial` of the loss with the parameters bound. A ConfigError names the
    key for an unknown name or parameter, a value of the wrong type or range, or
    ``pos_weight: auto`` without a usable ``crack_fraction``.

    Shapes:
        returns: a callable taking (N, 1, H, W) logits and target, returning 0-dim float32.
    """
    names = list(LOSSES)
    if not isinstance(name, str) or name not in LOSSES:
        raise ConfigError(f"train.loss.name: unknown loss {name!r} ({_suggestion(name, names)})")
    fn = LOSSES[name]
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise ConfigError(f"train.loss.params: expected a mapping of parameters, got {params!r}")

    hints = typing.get_type_hints(fn)
    # ``valid`` is per batch, passed by the loop, never a config value.
    valid = [
        p for p in inspect.signature(fn).parameters if p not in ("logits", "target", "valid")
    ]
    kwargs: dict[str, Any] = {}
    for key, value in params.items():
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            guess = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"train.loss.params.{key}: unknown parameter for loss {name!r} "
                f"({guess}valid: {', '.join(valid)})"
            )
        if key == "pos_weight" and isinstance(value, str) and value == "auto":
            value = _auto_from_fraction(crack_fraction)
        kwargs[key] = _check_value(name, key, value, hints[key])
    return functools.partial(fn, **kwargs)


def _auto_from_fraction(crack_fraction: float | None) -> float:
    if crack_fraction is None:
        raise ConfigError(
            "train.loss.params.pos_weight: 'auto' needs the crack fraction of the training "
            "masks, which was not given; set a number instead"
        )
    try:
        return auto_pos_weight(crack_fraction)
    except ValueError as exc:
        raise ConfigError(
            f"train.loss.params.pos_weight: 'auto' cannot be used ({exc}); set a number instead"
        ) from None
