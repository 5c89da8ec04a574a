"""Tests for fissure.losses: hand-computed values, gradients, dtypes and build_loss."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from fissure.errors import ConfigError
from fissure.losses import (
    LOSSES,
    auto_pos_weight,
    bce_dice_loss,
    bce_loss,
    build_loss,
    focal_loss,
    focal_tversky_loss,
    soft_dice_loss,
    tversky_loss,
)

# One 2x2 image; expected values below are worked out with `math` from these numbers.
LOGITS = [2.0, -1.0, 0.5, -3.0]
TARGET = [1.0, 0.0, 0.0, 1.0]


def as_image(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, 2, 2)


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def hand_counts(logits: list[float], target: list[float]) -> tuple[float, float, float]:
    probs = [sig(x) for x in logits]
    tp = sum(p * t for p, t in zip(probs, target, strict=True))
    fp = sum(p * (1 - t) for p, t in zip(probs, target, strict=True))
    fn = sum((1 - p) * t for p, t in zip(probs, target, strict=True))
    return tp, fp, fn


def hand_bce(logits: list[float], target: list[float], pos_weight: float = 1.0) -> float:
    terms = [
        -pos_weight * math.log(sig(x)) if t == 1 else -math.log(1 - sig(x))
        for x, t in zip(logits, target, strict=True)
    ]
    return sum(terms) / len(terms)


def hand_dice(logits: list[float], target: list[float], smooth: float) -> float:
    tp, fp, fn = hand_counts(logits, target)
    cardinality = (tp + fp) + (tp + fn)
    return 1 - (2 * tp + smooth) / (cardinality + smooth)


def hand_tversky(alpha: float, beta: float, smooth: float) -> float:
    tp, fp, fn = hand_counts(LOGITS, TARGET)
    return 1 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


def perfect(target: torch.Tensor) -> torch.Tensor:
    return (target * 2 - 1) * 20.0


# --- hand-computed values -----------------------------------------------------------------


def test_bce_at_zero_logits_is_log2():
    target = as_image(TARGET)
    assert bce_loss(torch.zeros_like(target), target).item() == pytest.approx(math.log(2))


def test_bce_matches_hand_value():
    got = bce_loss(as_image(LOGITS), as_image(TARGET)).item()
    assert got == pytest.approx(hand_bce(LOGITS, TARGET), rel=1e-6)


def test_pos_weight_scales_only_crack_pixels():
    got = bce_loss(as_image(LOGITS), as_image(TARGET), pos_weight=3.0).item()
    assert got == pytest.approx(hand_bce(LOGITS, TARGET, pos_weight=3.0), rel=1e-6)
    # At logits 0 every pixel costs log 2: two crack pixels weighted 3, two background 1.
    target = as_image(TARGET)
    at_zero = bce_loss(torch.zeros_like(target), target, pos_weight=3.0).item()
    assert at_zero == pytest.approx((3 * 2 + 2) * math.log(2) / 4)


def test_dice_at_zero_logits():
    # p = 0.5 everywhere, two crack pixels: intersection 1, sum(p) 2, sum(t) 2.
    target = as_image(TARGET)
    logits = torch.zeros_like(target)
    assert soft_dice_loss(logits, target).item() == pytest.approx(1 - 3 / 5)
    assert soft_dice_loss(logits, target, smooth=0.0).item() == pytest.approx(0.5)


def test_dice_matches_hand_value():
    for smooth in (0.0, 1.0):
        got = soft_dice_loss(as_image(LOGITS), as_image(TARGET), smooth=smooth).item()
        assert got == pytest.approx(hand_dice(LOGITS, TARGET, smooth), rel=1e-6)


def test_dice_batch_sums_versus_per_image_mean():
    # Image 0 has no crack, image 1 is all crack; p = 0.5 everywhere.
    target = torch.tensor([0.0, 0, 0, 0, 1, 1, 1, 1]).reshape(2, 1, 2, 2)
    logits = torch.zeros_like(target)
    batch = soft_dice_loss(logits, target).item()
    per_image = soft_dice_loss(logits, target, per_image=True).item()
    # Batch: intersection 2, sum(p) 4, sum(t) 4.
    assert batch == pytest.approx(1 - 5 / 9)
    # Per image: (0 + 1) / (2 + 0 + 1) and (4 + 1) / (2 + 4 + 1).
    assert per_image == pytest.approx(((1 - 1 / 3) + (1 - 5 / 7)) / 2)


def test_bce_dice_is_weighted_sum():
    logits, target = as_image(LOGITS), as_image(TARGET)
    got = bce_dice_loss(logits, target, bce_weight=0.3, dice_weight=2.0, pos_weight=2.0).item()
    expected = 0.3 * hand_bce(LOGITS, TARGET, pos_weight=2.0) + 2.0 * hand_dice(
        LOGITS, TARGET, smooth=1.0
    )
    assert got == pytest.approx(expected, rel=1e-6)


def test_focal_matches_hand_value():
    alpha, gamma = 0.25, 2.0
    terms = []
    for x, t in zip(LOGITS, TARGET, strict=True):
        p = sig(x)
        if t == 1:
            terms.append(-alpha * (1 - p) ** gamma * math.log(p))
        else:
            terms.append(-(1 - alpha) * p**gamma * math.log(1 - p))
    got = focal_loss(as_image(LOGITS), as_image(TARGET), alpha=alpha, gamma=gamma).item()
    assert got == pytest.approx(sum(terms) / 4, rel=1e-5)


def test_focal_at_zero_logits():
    # p_t = 0.5: each pixel costs 0.25 * log 2, times alpha or 1 - alpha (two of each).
    target = as_image(TARGET)
    got = focal_loss(torch.zeros_like(target), target, alpha=0.25, gamma=2.0).item()
    assert got == pytest.approx((2 * 0.25 + 2 * 0.75) * 0.25 * math.log(2) / 4)


def test_focal_without_focusing_is_bce():
    logits, target = as_image(LOGITS), as_image(TARGET)
    bce = hand_bce(LOGITS, TARGET)
    unweighted = focal_loss(logits, target, alpha=None, gamma=0.0).item()
    halved = focal_loss(logits, target, alpha=0.5, gamma=0.0).item()
    assert unweighted == pytest.approx(bce, rel=1e-6)
    assert halved == pytest.approx(0.5 * bce, rel=1e-6)


def test_tversky_matches_hand_value():
    got = tversky_loss(as_image(LOGITS), as_image(TARGET), alpha=0.3, beta=0.7).item()
    assert got == pytest.approx(hand_tversky(0.3, 0.7, 1.0), rel=1e-6)


def test_tversky_alpha_weighs_false_positives():
    # Background predicted as crack, crack never predicted as background: only FP.
    target = torch.tensor([1.0, 0, 0, 0]).reshape(1, 1, 2, 2)
    logits = torch.full_like(target, 20.0)
    fp_heavy = tversky_loss(logits, target, alpha=0.9, beta=0.1, smooth=0.0).item()
    fn_heavy = tversky_loss(logits, target, alpha=0.1, beta=0.9, smooth=0.0).item()
    # TP ~ 1, FP ~ 3, FN ~ 0.
    assert fp_heavy == pytest.approx(1 - 1 / (1 + 0.9 * 3), rel=1e-4)
    assert fn_heavy == pytest.approx(1 - 1 / (1 + 0.1 * 3), rel=1e-4)


def test_tversky_with_equal_weights_is_dice():
    logits, target = as_image(LOGITS), as_image(TARGET)
    tversky = tversky_loss(logits, target, alpha=0.5, beta=0.5, smooth=0.0).item()
    assert tversky == pytest.approx(soft_dice_loss(logits, target, smooth=0.0).item(), rel=1e-6)
    # With smoothing the Tversky index needs half of Dice's smooth, as documented.
    tversky = tversky_loss(logits, target, alpha=0.5, beta=0.5, smooth=0.5).item()
    assert tversky == pytest.approx(soft_dice_loss(logits, target, smooth=1.0).item(), rel=1e-6)


def test_focal_tversky_matches_hand_value():
    got = focal_tversky_loss(as_image(LOGITS), as_image(TARGET), gamma=0.75).item()
    assert got == pytest.approx(hand_tversky(0.3, 0.7, 1.0) ** 0.75, rel=1e-6)
    plain = focal_tversky_loss(as_image(LOGITS), as_image(TARGET), gamma=1.0).item()
    assert plain == pytest.approx(hand_tversky(0.3, 0.7, 1.0), rel=1e-6)


# --- properties shared by every loss -----------------------------------------------------


def test_registry_names():
    assert set(LOSSES) == {"bce", "dice", "bce_dice", "focal", "tversky", "focal_tversky"}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_perfect_prediction_costs_nothing(name):
    target = as_image(TARGET)
    assert LOSSES[name](perfect(target), target).item() == pytest.approx(0.0, abs=1e-5)


def test_perfect_prediction_dice_is_zero_even_without_cracks():
    target = torch.zeros(2, 1, 2, 2)
    for per_image in (False, True):
        loss = soft_dice_loss(perfect(target), target, per_image=per_image).item()
        assert loss == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_returns_float32_scalar(name):
    loss = LOSSES[name](as_image(LOGITS), as_image(TARGET))
    assert loss.shape == ()
    assert loss.dtype == torch.float32


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradient_is_finite_and_flows(name):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 1, 8, 8, generator=generator).requires_grad_()
    target = (torch.rand(1, 1, 8, 8, generator=generator) > 0.7).float()
    LOSSES[name](logits, target).backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["right", "wrong"])
def test_saturated_logits_give_finite_loss_and_gradient(name, sign):
    target = torch.tensor([1.0, 0, 1, 0] * 16).reshape(1, 1, 8, 8)
    logits = (sign * (target * 2 - 1) * 1e4).requires_grad_()
    loss = LOSSES[name](logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.75])
def test_fractional_gamma_survives_exact_zero_error(gamma):
    target = torch.tensor([1.0, 0, 1, 0]).reshape(1, 1, 2, 2)
    logits = ((target * 2 - 1) * 200.0).requires_grad_()
    for loss_fn in (focal_loss, focal_tversky_loss):
        logits.grad = None
        loss_fn(logits, target, gamma=gamma).backward()
        assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_half_precision_logits_are_computed_in_float32(name, dtype):
    logits, target = as_image(LOGITS), as_image(TARGET)
    expected = LOSSES[name](logits, target)
    got = LOSSES[name](logits.to(dtype), target.to(dtype))
    assert got.dtype == torch.float32
    # LOGITS are exact in both half formats, so only float32 rounding remains.
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_pos_weight_with_half_precision_logits():
    logits = as_image(LOGITS).to(torch.bfloat16)
    got = bce_loss(logits, as_image(TARGET), pos_weight=3.0).item()
    assert got == pytest.approx(hand_bce(LOGITS, TARGET, pos_weight=3.0), rel=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_under_cpu_autocast(name):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = LOSSES[name](as_image(LOGITS), as_image(TARGET))
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_on_cuda_under_autocast(name):
    logits = as_image(LOGITS).cuda().requires_grad_()
    target = as_image(TARGET).cuda()
    loss_fn = build_loss(name, {"pos_weight": 2.0} if name in ("bce", "bce_dice") else None)
    with torch.autocast("cuda", dtype=torch.float16):
        loss = loss_fn(logits, target)
    loss.backward()
    expected = loss_fn(as_image(LOGITS), as_image(TARGET))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.isfinite(logits.grad).all()


def test_shape_mismatch_is_refused():
    for loss_fn in LOSSES.values():
        with pytest.raises(ValueError, match="same shape"):
            loss_fn(torch.zeros(2, 1, 4, 4), torch.zeros(2, 4, 4))


# --- padding left out (valid) -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_padding_is_left_out_as_if_the_image_were_cropped(name):
    """A 2x3 image whose last column is padding (target IGNORE there, any logit) costs what
    its 2x2 photo part costs alone: padding changes neither the sums nor the mean."""
    loss_fn = build_loss(name, {"pos_weight": 3.0} if name in ("bce", "bce_dice") else {})
    photo_logits, photo_target = as_image(LOGITS), as_image(TARGET)
    logits = torch.cat([photo_logits, torch.full((1, 1, 2, 1), 4.0)], dim=-1)
    target = torch.cat([photo_target, torch.full((1, 1, 2, 1), 255.0)], dim=-1)
    valid = target != 255
    expected = loss_fn(photo_logits, photo_target)
    assert torch.allclose(loss_fn(logits, target, valid=valid), expected, atol=1e-6)


def test_padding_gets_no_gradient():
    logits = torch.zeros(1, 1, 2, 3, requires_grad=True)
    target = torch.tensor([[[[1.0, 0.0, 255.0], [0.0, 1.0, 255.0]]]])
    bce_dice_loss(logits, target, valid=target != 255).backward()
    assert torch.all(logits.grad[..., 2] == 0) and torch.all(logits.grad[..., :2] != 0)


def test_valid_of_another_shape_is_refused():
    with pytest.raises(ValueError, match="valid must have the shape"):
        bce_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), valid=torch.ones(1, 2, 2))


def test_valid_is_not_a_config_key():
    with pytest.raises(ConfigError, match="train.loss.params.valid: unknown parameter"):
        build_loss("bce", {"valid": 1.0})


# --- auto_pos_weight ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fraction", "cap", "expected"),
    [
        (0.1, 50.0, 9.0),
        (0.2, 50.0, 4.0),
        (0.5, 50.0, 1.0),
        (0.9, 50.0, 1.0),
        (1.0, 50.0, 1.0),
        (0.001, 50.0, 50.0),
        (0.001, 2000.0, 999.0),
    ],
)
def test_auto_pos_weight(fraction, cap, expected):
    assert auto_pos_weight(fraction, cap=cap) == pytest.approx(expected)


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, math.nan, math.inf])
def test_auto_pos_weight_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="crack_fraction"):
        auto_pos_weight(fraction)


def test_auto_pos_weight_rejects_cap_below_one():
    with pytest.raises(ValueError, match="cap"):
        auto_pos_weight(0.1, cap=0.5)


# --- build_loss ---------------------------------------------------------------------------


def test_build_loss_binds_params():
    loss_fn = build_loss("focal_tversky", {"alpha": 0.4, "beta": 0.6, "gamma": 1})
    assert isinstance(loss_fn, functools.partial)
    assert loss_fn.func is focal_tversky_loss
    assert loss_fn.keywords == {"alpha": 0.4, "beta": 0.6, "gamma": 1.0}
    assert isinstance(loss_fn.keywords["gamma"], float)
    logits, target = as_image(LOGITS), as_image(TARGET)
    expected = focal_tversky_loss(logits, target, alpha=0.4, beta=0.6, gamma=1.0)
    assert loss_fn(logits, target).item() == pytest.approx(expected.item())


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_build_loss_without_params_uses_defaults(name):
    logits, target = as_image(LOGITS), as_image(TARGET)
    expected = LOSSES[name](logits, target).item()
    assert build_loss(name)(logits, target).item() == pytest.approx(expected)
    assert build_loss(name, {})(logits, target).item() == pytest.approx(expected)


def test_build_loss_unknown_name_suggests_closest():
    with pytest.raises(ConfigError) as info:
        build_loss("dise")
    assert str(info.value) == "train.loss.name: unknown loss 'dise' (did you mean 'dice'?)"


def test_build_loss_unknown_name_without_close_match_lists_names():
    with pytest.raises(ConfigError, match=r"^train\.loss\.name: .*choose from bce, dice"):
        build_loss("hinge")


def test_build_loss_unknown_param_names_key_and_lists_valid():
    with pytest.raises(ConfigError) as info:
        build_loss("dice", {"smoth": 2.0})
    message = str(info.value)
    assert message.startswith("train.loss.params.smoth: ")
    assert "did you mean 'smooth'?" in message
    assert "valid: smooth, per_image" in message
    assert "\n" not in message


def test_build_loss_param_of_another_loss_is_unknown():
    key = r"^train\.loss\.params\.pos_weight: "
    with pytest.raises(ConfigError, match=key + ".*valid: alpha, gamma"):
        build_loss("focal", {"pos_weight": 2.0})


@pytest.mark.parametrize(
    ("name", "params", "key"),
    [
        ("dice", {"smooth": "1"}, "smooth"),
        ("dice", {"smooth": True}, "smooth"),
        ("dice", {"smooth": -1.0}, "smooth"),
        ("dice", {"per_image": 1}, "per_image"),
        ("dice", {"smooth": None}, "smooth"),
        ("tversky", {"alpha": None}, "alpha"),
        ("focal", {"gamma": math.inf}, "gamma"),
        ("focal", {"alpha": 1.5}, "alpha"),
        ("bce", {"pos_weight": 0}, "pos_weight"),
        ("bce", {"pos_weight": "balanced"}, "pos_weight"),
    ],
)
def test_build_loss_rejects_bad_values(name, params, key):
    with pytest.raises(ConfigError, match=rf"^train\.loss\.params\.{key}: "):
        build_loss(name, params)


def test_build_loss_accepts_optional_nones():
    assert build_loss("focal", {"alpha": None}).keywords == {"alpha": None}
    assert build_loss("bce", {"pos_weight": None}).keywords == {"pos_weight": None}


def test_build_loss_rejects_params_that_are_not_a_mapping():
    with pytest.raises(ConfigError, match=r"^train\.loss\.params: "):
        build_loss("dice", [("smooth", 1.0)])  # type: ignore[arg-type]


def test_build_loss_auto_pos_weight_needs_crack_fraction():
    with pytest.raises(ConfigError, match=r"^train\.loss\.params\.pos_weight: 'auto' needs"):
        build_loss("bce", {"pos_weight": "auto"})


def test_build_loss_auto_pos_weight_rejects_empty_masks():
    with pytest.raises(ConfigError, match=r"^train\.loss\.params\.pos_weight: 'auto' cannot"):
        build_loss("bce_dice", {"pos_weight": "auto"}, crack_fraction=0.0)


def test_build_loss_auto_pos_weight_uses_crack_fraction():
    loss_fn = build_loss("bce_dice", {"pos_weight": "auto"}, crack_fraction=0.1)
    assert loss_fn.keywords["pos_weight"] == pytest.approx(9.0)
    capped = build_loss("bce", {"pos_weight": "auto"}, crack_fraction=1e-4)
    assert capped.keywords["pos_weight"] == pytest.approx(50.0)
