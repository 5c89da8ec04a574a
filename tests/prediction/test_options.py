"""Tests for the prediction option objects (fissure.prediction.options)."""

from __future__ import annotations

import dataclasses

import pytest

from fissure.errors import ConfigError, FissureError
from fissure.prediction.options import OutputOptions, PredictOptions


def test_defaults_leave_the_checkpoint_in_charge() -> None:
    options = PredictOptions()
    assert (options.threshold, options.tile, options.overlap, options.min_area) == (None,) * 4
    assert (options.amp, options.px_per_mm) == (None, None)
    assert (options.tta, options.batch_size, options.prefetch) == (None, "auto", 2)
    assert options.device == "auto"
    assert OutputOptions() == OutputOptions(overlay=True, save_prob=False, glob="**/*")


def test_options_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        PredictOptions().tta = True  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        OutputOptions().overlay = False  # type: ignore[misc]


def test_threshold_is_checked_once_and_made_a_float() -> None:
    assert type(PredictOptions(threshold=0.25).threshold) is float
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(ConfigError, match=r"--threshold: must be within \(0, 1\)"):
            PredictOptions(threshold=bad)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"tile": 50}, "--tile must be a positive multiple of 32, got 50"),
        ({"tile": 0}, "--tile must be a positive multiple of 32, got 0"),
        ({"tile": 64, "overlap": 64}, r"--overlap must be in \[0, tile=64\), got 64"),
        ({"overlap": -1}, r"--overlap must be in \[0, tile\), got -1"),
        ({"batch_size": 0}, "--batch-size must be >= 1 or 'auto', got 0"),
        ({"prefetch": -1}, "prefetch must be an int >= 0, got -1"),
        ({"min_area": -1}, "min_area must be >= 0, got -1"),
        ({"px_per_mm": 0.0}, "px_per_mm must be a positive number, got 0.0"),
    ],
)
def test_bad_values_fail_when_built(values: dict, message: str) -> None:
    with pytest.raises(FissureError, match=message):
        PredictOptions(**values)


def test_replace_checks_again() -> None:
    options = PredictOptions(tile=64, overlap=16, tta=True)
    assert dataclasses.replace(options, overlap=0).overlap == 0
    with pytest.raises(FissureError, match="--overlap"):
        dataclasses.replace(options, overlap=80)
