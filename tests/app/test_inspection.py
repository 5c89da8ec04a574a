"""Tests for the Inspect page's logic without Streamlit (fissure.app.inspection)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fissure.app.inspection import (
    OVERLAY_COLOR,
    SELECTED_COLOR,
    SPECK_COLOR,
    Inspection,
    PhotoPrediction,
    Tuning,
    View,
    crack_centre,
    cracks_table,
    inspect,
    mask_png,
    overlay_jpeg,
    render_view,
    stem,
    window,
)
from fissure.prediction import PredictOptions, predict_image
from fissure.prediction.cracks import analyse_cracks
from fissure.prediction.files import encode_mask, encode_overlay


def _photo(probability: np.ndarray, name: str = "site/p1.jpg") -> PhotoPrediction:
    rgb = np.full((*probability.shape, 3), 128, np.uint8)
    return PhotoPrediction(name, rgb, probability.astype(np.float32))


def _lines() -> np.ndarray:
    """Probabilities: a 1-px hairline (0.9), a 3-px crack (0.6) and a 2x2 speck (0.9)."""
    prob = np.zeros((100, 400), np.float32)
    prob[20, 10:390] = 0.9
    prob[60:63, 50:350] = 0.6
    prob[90:92, 5:7] = 0.9
    return prob


def test_inspect_is_predict_at_that_threshold(dark_checkpoint: Path, photo_rgb: np.ndarray) -> None:
    rgb = photo_rgb
    prediction = predict_image(str(dark_checkpoint), rgb, PredictOptions(device="cpu"))
    photo = PhotoPrediction("p.png", rgb, prediction.probability)
    for threshold in (0.2, 0.5, 0.9):
        again = predict_image(
            str(dark_checkpoint),
            rgb,
            PredictOptions(threshold=threshold, min_area=7, px_per_mm=3.0),
        )
        seen = inspect(photo, Tuning(threshold, 7, 3.0))
        assert np.array_equal(seen.mask, again.mask)
        assert seen.analysis.measurements == again.measurements
        assert seen.analysis.cracks == analyse_cracks(again.mask, 7, 3.0).cracks


def test_threshold_min_area_and_scale_retune_without_the_model() -> None:
    photo = _photo(_lines())
    assert len(inspect(photo, Tuning(0.5, 10)).analysis.cracks) == 2
    assert len(inspect(photo, Tuning(0.7, 10)).analysis.cracks) == 1
    assert len(inspect(photo, Tuning(0.5, 0)).analysis.cracks) == 3
    classes = [c.width_class for c in inspect(photo, Tuning(0.5, 10, 10.0)).analysis.cracks]
    assert classes == ["fine", "medium"]  # 0.1 mm and 0.3 mm
    bounds = Tuning(0.5, 10, 10.0, (0.2, 0.5, 1.0))
    assert [c.width_class for c in inspect(photo, bounds).analysis.cracks] == ["hairline", "fine"]


def test_window_fits_or_follows_the_zoom_and_centre() -> None:
    assert window((3000, 4000), View()) == (slice(0, 3000), slice(0, 4000), 1100 / 4000)
    assert window((100, 200), View())[2] == 5.5  # small photos are enlarged to the width
    assert window((10, 20), View())[2] == 8.0  # ...at most 8x
    assert window((20000, 500), View())[2] == 4 * 760 / 20000  # a long scan: 4 windows tall
    rows, cols, scale = window((3000, 4000), View(2.0, 0.5, 0.5, width=1000, height=600))
    assert (rows, cols, scale) == (slice(1350, 1650), slice(1750, 2250), 2.0)
    rows, cols, _ = window((3000, 4000), View(1.0, 1.0, 0.0, width=1000, height=600))
    assert (rows, cols) == (slice(0, 600), slice(3000, 4000))  # clamped to the photo


def test_fitted_view_keeps_hairlines_and_paints_each_kind() -> None:
    photo = _photo(_lines())
    seen = inspect(photo, Tuning(0.5, 10))
    image = render_view(photo, seen, View(width=100))  # shrunk 4x
    assert image.shape == (25, 100, 3)
    magenta = (image[..., 0] > 200) & (image[..., 1] < 100) & (image[..., 2] > 200)
    assert magenta[5].sum() >= 90  # the 1-px hairline survives a 4x shrink
    amber = (image[..., 0] > 200) & (image[..., 1] > 100) & (image[..., 2] < 100)
    assert amber[22:24, 1].any()  # the speck, below the minimum area
    assert not (image == np.array(SELECTED_COLOR, np.uint8)).all(axis=2).any()


def test_zoomed_view_shows_single_pixels_and_the_selected_crack() -> None:
    photo = _photo(_lines())
    seen = inspect(photo, Tuning(0.5, 10))
    view = View(4.0, 200 / 400, 20 / 100, width=80, height=40)  # 20 x 10 px around the hairline
    image = render_view(photo, seen, view, selected=1)
    assert image.shape == (40, 80, 3)
    column = image[:, 40].astype(int)
    crack = np.flatnonzero(np.abs(column - SELECTED_COLOR).sum(axis=1) < 60)
    box = np.flatnonzero((column == SELECTED_COLOR).all(axis=1))
    assert box.tolist() == [17, 18, 25, 26]  # the box, clear of the crack
    assert sorted(set(crack) - set(box)) == [20, 21, 22, 23]  # one photo row, 4 screen rows
    plain = render_view(photo, seen, view)
    magenta = np.round(128 * 0.25 + 0.75 * np.array(OVERLAY_COLOR))
    assert np.array_equal(plain[20, 0], magenta)
    assert SPECK_COLOR != OVERLAY_COLOR


def test_selected_crack_gets_a_box_and_a_centre() -> None:
    photo = _photo(_lines())
    seen = inspect(photo, Tuning(0.5, 10))
    image = render_view(photo, seen, View(1.0, 0.5, 0.5, width=400, height=100), selected=2)
    box = (image == np.array(SELECTED_COLOR, np.uint8)).all(axis=2)
    assert np.flatnonzero(box[:, 200]).tolist() == [57, 58, 64, 65]  # crack rows 60-62
    assert np.flatnonzero(box[61]).tolist() == [47, 48, 351, 352]  # crack columns 50-349
    assert crack_centre(seen, 2, (100, 400)) == (200 / 400, 61.5 / 100)
    render_view(photo, seen, View(), selected=99)  # an id that is gone draws nothing


def test_downloads_are_fissure_predicts_files() -> None:
    photo = _photo(_lines())
    seen = inspect(photo, Tuning(0.5, 10, 2.0))
    assert mask_png(seen) == encode_mask(photo.probability > 0.5)
    assert overlay_jpeg(photo, seen) == encode_overlay(photo.rgb, photo.probability > 0.5)
    text = cracks_table(photo, seen)
    assert text.splitlines()[1].startswith("site/p1.jpg,1,10,20,389,20,")
    assert len(text.splitlines()) == 3
    assert stem(photo) == "p1" and stem(_photo(_lines(), "x.png.gz")) == "x"


@pytest.mark.parametrize("shape", [(1, 1), (5, 3000)])
def test_odd_shapes_render(shape: tuple[int, int]) -> None:
    photo = _photo(np.ones(shape, np.float32))
    seen = Inspection(photo.probability > 0.5, analyse_cracks(photo.probability > 0.5, 0))
    for zoom in (None, 0.25, 1.0, 8.0):
        image = render_view(photo, seen, View(zoom), selected=1)
        assert image.ndim == 3 and image.shape[2] == 3 and image.size > 0
