"""Tests for the app's model loading and prediction with progress (fissure.app.models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fissure.app.models import (
    CountingPredictor,
    model_info,
    network_inputs,
    predict_photo,
    predictor_for,
    read_model,
    read_uploaded_model,
)
from fissure.checkpoint import load_checkpoint
from fissure.errors import CheckpointError, ConfigError
from fissure.prediction import PredictOptions, predict_image


def test_prediction_is_predict_images_with_a_progress_report(
    dark_checkpoint: Path, photo_rgb: np.ndarray
) -> None:
    predictor = predictor_for(read_model(dark_checkpoint), "cpu")
    for options in (PredictOptions(), PredictOptions(tile=64, overlap=0, tta=True)):
        reports: list[tuple[int, int]] = []
        photo = predict_photo(
            predictor,
            "p.png",
            photo_rgb,
            options,
            lambda done, total, r=reports: r.append((done, total)),
        )
        expected = predict_image(str(dark_checkpoint), photo_rgb, options)
        assert np.array_equal(photo.probability, expected.probability)
        assert (photo.mode, photo.tiles, photo.tile) == ("tiled", expected.tiles, expected.tile)
        total = network_inputs(predictor, photo_rgb.shape[:2], options)
        assert total == expected.tiles * (3 if options.tta else 1)
        assert reports[-1] == (total, total)
        assert [done for done, _ in reports] == sorted(done for done, _ in reports)
    assert predictor.report is None  # the reporting copy was a copy


def test_resize_checkpoints_count_one_input(tmp_path: Path, dark_checkpoint: Path) -> None:
    predictor = predictor_for(read_model(dark_checkpoint), "cpu")
    from dataclasses import replace

    resized = replace(predictor, policy=replace(predictor.policy, mode="resize"))
    assert network_inputs(resized, (100, 120), PredictOptions()) == 1
    assert network_inputs(resized, (1000, 1200), PredictOptions()) > 1  # too big: tiled


def test_model_info_and_uploads(dark_checkpoint: Path) -> None:
    data = dark_checkpoint.read_bytes()
    uploaded = read_uploaded_model("mine.pt", data)
    assert uploaded.origin == "mine.pt"
    info = model_info(uploaded, "mine.pt")
    assert (info.checkpoint, info.encoder, info.mode, info.size) == (
        "mine.pt",
        "resnet18",
        "crop",
        64,
    )
    assert (info.epoch, info.threshold, info.min_area) == (3, 0.5, 20)
    assert model_info(load_checkpoint(dark_checkpoint), "x") == info.__class__(
        **{**info.__dict__, "checkpoint": "x"}
    )
    assert isinstance(predictor_for(uploaded, "cpu"), CountingPredictor)
    with pytest.raises(CheckpointError, match="^broken.pt: "):
        read_uploaded_model("broken.pt", b"not a checkpoint")


def test_stage_and_registry_checkpoints_need_a_session() -> None:
    with pytest.raises(ConfigError, match="@DB.S.STAGE/m.pt: a Snowflake checkpoint needs"):
        read_model("@DB.S.STAGE/m.pt")
    with pytest.raises(ConfigError, match="snowflake://CRACKS/V1: a Snowflake checkpoint needs"):
        read_model("snowflake://CRACKS/V1")


def test_registry_versions_are_read_through_the_registry(
    dark_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fissure.app import models

    calls: list[tuple[object, str]] = []

    def registered(session: object, reference: str):  # stands in for ModelVersion.export
        calls.append((session, reference))
        return load_checkpoint(dark_checkpoint)

    monkeypatch.setattr(models, "read_registered", registered)
    session = object()
    checkpoint = read_model(" snowflake://CRACKS/default ", session)
    assert calls == [(session, "snowflake://CRACKS/default")]
    assert checkpoint.threshold == load_checkpoint(dark_checkpoint).threshold
