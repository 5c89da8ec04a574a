"""Tests for device, precision and input-size handling (fissure.runtime)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fissure import runtime
from fissure.runtime import (
    InputPolicy,
    autocast_dtype,
    autocast_for,
    forward_logits,
    half_largest_fitting,
    predict_probs,
    resize_images,
    resize_logits,
    select_device,
)


class _Conv(nn.Module):
    """A 3x3 conv (3 -> 1 channels) that records the input size it saw."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 1, 3, padding=1)
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape))
        return self.conv(x)


def test_mixed_precision_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, x, conv = torch.device("cpu"), torch.randn(1, 3, 8, 8), nn.Conv2d(3, 1, 3)
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    assert autocast_dtype(cpu) == torch.float32  # emulated bf16 is slower
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    assert autocast_dtype(cpu) == torch.bfloat16
    assert autocast_dtype(cpu, enabled=False) == torch.float32
    with autocast_for(cpu):
        assert conv(x).dtype == torch.bfloat16
    with autocast_for(cpu, enabled=False):
        assert conv(x).dtype == torch.float32


def test_select_device_names_and_auto() -> None:
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type in {"cuda", "mps", "cpu"}


def test_resize_helpers_are_the_interpolations_and_skip_same_size() -> None:
    images = torch.randn(2, 3, 50, 40)
    small = resize_images(images, 32)
    expected = F.interpolate(
        images, size=(32, 32), mode="bilinear", align_corners=False, antialias=True
    )
    assert torch.equal(small, expected)
    logits = torch.randn(2, 1, 32, 32)
    up = resize_logits(logits, (50, 40))
    assert torch.equal(
        up, F.interpolate(logits, size=(50, 40), mode="bilinear", align_corners=False)
    )
    assert resize_images(small, 32) is small and resize_logits(up, (50, 40)) is up


def test_resize_mode_feeds_the_training_size_and_returns_the_input_size() -> None:
    model, images = _Conv().eval(), torch.randn(2, 3, 50, 40)
    logits = forward_logits(model, images, InputPolicy("resize", 32), amp=False)
    assert model.seen == [(2, 3, 32, 32)] and logits.shape == (2, 1, 50, 40)
    with torch.no_grad():
        expected = resize_logits(model.conv(resize_images(images, 32)), (50, 40))
    assert torch.equal(logits, expected)
    # crop mode, and resize mode at the training size, feed the image as it is
    crop = forward_logits(model, images, InputPolicy("crop", 32), amp=False)
    assert model.seen[-1] == (2, 3, 50, 40) and crop.shape == (2, 1, 50, 40)
    at_size = torch.randn(1, 3, 32, 32)
    forward_logits(model, at_size, InputPolicy("resize", 32), amp=False)
    assert model.seen[-1] == (1, 3, 32, 32)


def test_predict_probs_is_the_sigmoid_of_the_logits() -> None:
    model, images = _Conv().eval(), torch.randn(1, 3, 40, 40)
    policy = InputPolicy("resize", 32, amp=False)
    probs = predict_probs(model, images, policy)
    with torch.no_grad():
        assert torch.equal(probs, torch.sigmoid(forward_logits(model, images, policy)))
    assert probs.dtype == torch.float32 and bool(((probs >= 0) & (probs <= 1)).all())


def test_tta_averages_the_flipped_views_flipped_back() -> None:
    model, images = _Conv().eval(), torch.randn(2, 3, 24, 40)
    policy = InputPolicy("crop", 32, amp=False)
    with torch.no_grad():
        plain = torch.sigmoid(model(images))
        left_right = torch.sigmoid(model(images.flip(-1))).flip(-1)
        top_bottom = torch.sigmoid(model(images.flip(-2))).flip(-2)
    tta = predict_probs(model, images, policy, tta=True)
    assert torch.allclose(tta, (plain + left_right + top_bottom) / 3, atol=1e-6)
    assert not torch.allclose(tta, plain, atol=1e-3)  # the random conv is not symmetric
    assert model.seen[-3:] == [(2, 3, 24, 40)] * 3
    assert torch.equal(predict_probs(model, images, policy), plain)


def test_channels_last_model_gets_channels_last_input() -> None:
    model = _Conv().eval().to(memory_format=torch.channels_last)
    layouts = []
    model.register_forward_pre_hook(
        lambda m, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    forward_logits(model, torch.randn(1, 3, 32, 32), InputPolicy("crop", 32), amp=False)
    assert layouts == [True]


def test_half_largest_fitting_stops_at_the_first_misfit() -> None:
    tried: list[int] = []

    def fits(n: int) -> bool:
        tried.append(n)
        return n <= 48

    assert half_largest_fitting(fits, 1024) == 16
    assert tried == [1, 2, 4, 8, 16, 32, 64]  # memory grows with the batch: no larger one
    assert half_largest_fitting(lambda n: True, 100) == 32  # 64 is the largest <= 100
    assert half_largest_fitting(lambda n: n == 1, 100) == 1
    assert half_largest_fitting(lambda n: False, 100) == 0
