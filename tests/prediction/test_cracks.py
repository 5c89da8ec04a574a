"""Tests for the per-crack records (fissure.prediction.cracks): hand-drawn masks with known
lines, totals that add up, width classes, orientation and outlines."""

from __future__ import annotations

import math

import numpy as np
import pytest
from drawn_masks import horizontal_crack, oblique_crack, random_mask
from matplotlib.path import Path as PolygonPath

from fissure.errors import FissureError
from fissure.metrics import remove_small_components
from fissure.prediction.cracks import (
    DEFAULT_WIDTH_BOUNDS,
    CrackRecord,
    analyse_cracks,
    check_width_bounds,
    crack_outline,
    orientation_label,
    principal_angle,
    width_class,
)
from fissure.prediction.measure import measure_cracks


@pytest.mark.parametrize("seed", range(40))
def test_image_totals_are_the_sums_over_the_records(seed: int) -> None:
    mask, min_area = random_mask(seed), seed % 7
    analysis = analyse_cracks(mask, min_area, px_per_mm=2.5)
    total, cracks = analysis.measurements, analysis.cracks
    assert total == measure_cracks(mask, min_area, px_per_mm=2.5)
    assert total.n_segments == len(cracks)
    assert total.area_px == sum(c.area_px for c in cracks)
    assert total.max_width_px == max((c.max_width_px for c in cracks), default=0.0)
    assert total.length_px == pytest.approx(math.fsum(c.length_px for c in cracks), rel=1e-12)
    n_skeleton = sum(c.skeleton_px for c in cracks)
    weighted = math.fsum(c.mean_width_px * c.skeleton_px for c in cracks)
    assert total.mean_width_px == pytest.approx(
        weighted / n_skeleton if n_skeleton else 0.0, rel=1e-12
    )
    assert np.array_equal(analysis.labels > 0, remove_small_components(mask, min_area)[0])
    assert [c.id for c in cracks] == list(range(1, len(cracks) + 1))


@pytest.mark.parametrize("seed", range(12))
def test_each_record_is_the_crack_measured_alone(seed: int) -> None:
    analysis = analyse_cracks(random_mask(seed), 0)
    for crack in analysis.cracks:
        alone = measure_cracks(analysis.labels == crack.id, 0)
        assert (crack.area_px, crack.length_px, crack.max_width_px, crack.mean_width_px) == (
            alone.area_px,
            alone.length_px,
            alone.max_width_px,
            alone.mean_width_px,
        )
        ys, xs = np.nonzero(analysis.labels == crack.id)
        assert (crack.x_min, crack.x_max, crack.y_min, crack.y_max) == (
            xs.min(),
            xs.max(),
            ys.min(),
            ys.max(),
        )


def _only(mask: np.ndarray, **kw) -> CrackRecord:
    cracks = analyse_cracks(mask, 0, **kw).cracks
    assert len(cracks) == 1
    return cracks[0]


def test_one_pixel_diagonal() -> None:
    mask = np.zeros((60, 60), dtype=bool)
    mask[np.arange(5, 55), np.arange(5, 55)] = True  # top-left to bottom-right: "\\"
    crack = _only(mask)
    assert crack.length_px == pytest.approx(50 * math.sqrt(2), rel=0.02)
    assert (crack.max_width_px, crack.mean_width_px) == (1.0, 1.0)
    assert (crack.orientation_deg, crack.orientation) == (135.0, "diagonal")
    assert (crack.x_min, crack.y_min, crack.x_max, crack.y_max) == (5, 5, 54, 54)
    flipped = _only(mask[::-1])  # bottom-left to top-right: "/"
    assert (flipped.orientation_deg, flipped.orientation) == (45.0, "diagonal")


def test_five_pixel_bar() -> None:
    mask = np.zeros((20, 120), dtype=bool)
    mask[5:10, 10:110] = True
    crack = _only(mask, px_per_mm=20.0)
    assert crack.length_px == pytest.approx(100, rel=0.02)
    assert (crack.max_width_px, crack.mean_width_px, crack.area_px) == (5.0, 5.0, 500)
    assert (crack.orientation_deg, crack.orientation) == (0.0, "horizontal")
    assert crack.max_width_mm == 0.25 and crack.width_class == "fine"
    assert crack.length_mm == crack.length_px / 20 and crack.area_mm2 == 500 / 400
    upright = _only(mask.T.copy())
    assert (upright.orientation_deg, upright.orientation) == (90.0, "vertical")
    assert upright.length_px == pytest.approx(100, rel=0.02)  # thinning is not symmetric


def test_two_touching_cracks_are_one_record() -> None:
    mask = np.zeros((40, 110), dtype=bool)
    mask[20, 10:60] = True
    mask[21, 60:100] = True  # touches the first one corner to corner
    crack = _only(mask)
    assert crack.length_px == pytest.approx(90, rel=0.02)
    assert crack.max_width_px == 1.0 and crack.orientation == "horizontal"
    mask[21, 60] = False  # one pixel apart: two cracks
    apart = analyse_cracks(mask, 0).cracks
    assert [(c.x_min, c.x_max) for c in apart] == [(10, 59), (61, 99)]
    assert [c.length_px for c in apart] == pytest.approx([50, 39], rel=0.02)


def test_crack_touching_the_border() -> None:
    mask = np.zeros((50, 30), dtype=bool)
    mask[:, 0:3] = True  # along the left edge, top to bottom
    crack = _only(mask)
    assert crack.length_px == pytest.approx(50, rel=0.05)
    assert (crack.max_width_px, crack.mean_width_px) == (3.0, 3.0)
    assert (crack.orientation_deg, crack.orientation) == (90.0, "vertical")
    assert (crack.x_min, crack.y_min, crack.x_max, crack.y_max) == (0, 0, 2, 49)


@pytest.mark.parametrize("angle", [0, 15, 30, 45, 60, 80, 100, 135, 160])
def test_orientation_of_oblique_cracks(angle: float) -> None:
    mask = oblique_crack((260, 260), (130, 130), angle, 100.0, 3.0)
    crack = _only(mask)
    assert crack.orientation_deg == pytest.approx(angle, abs=1.5)
    assert crack.orientation == orientation_label(angle)


def test_orientation_labels_and_dots() -> None:
    labels = [orientation_label(a) for a in (0, 22.4, 22.5, 67.4, 67.5, 112.4, 112.5, 157.5)]
    assert labels == [
        "horizontal",
        "horizontal",
        "diagonal",
        "diagonal",
        "vertical",
        "vertical",
        "diagonal",
        "horizontal",
    ]
    assert principal_angle(np.array([4]), np.array([7])) == 0.0
    square = np.ones((4, 4), dtype=bool)
    assert _only(np.pad(square, 2)).orientation_deg == 0.0


def test_width_classes() -> None:
    assert DEFAULT_WIDTH_BOUNDS == (0.1, 0.3, 1.0)
    widths = [0.05, 0.1, 0.29, 0.3, 0.99, 1.0, 7.0]
    assert [width_class(w) for w in widths] == [
        "hairline",
        "fine",
        "fine",
        "medium",
        "medium",
        "wide",
        "wide",
    ]
    assert width_class(None) is None
    assert width_class(0.5, (0.2, 0.4, 0.6)) == "medium"
    mask = np.zeros((20, 60), dtype=bool)
    mask[5:8, 5:55] = True  # 3 px wide
    assert _only(mask).width_class is None  # no scale, no class
    assert _only(mask, px_per_mm=40.0).width_class == "hairline"  # 0.075 mm
    assert _only(mask, px_per_mm=2.0).width_class == "wide"  # 1.5 mm
    assert _only(mask, px_per_mm=2.0, width_bounds=(1, 2, 3)).width_class == "fine"


def test_width_bounds_are_checked() -> None:
    assert check_width_bounds([0.2, 0.5, 2]) == (0.2, 0.5, 2.0)
    for bad in ([0.3, 0.1, 1.0], [0, 0.3, 1], [0.1, 0.3], [0.1, 0.1, 1], [float("nan"), 1, 2]):
        with pytest.raises(FissureError, match="width bounds must be three increasing"):
            check_width_bounds(bad)
    with pytest.raises(FissureError, match="width bounds"):
        analyse_cracks(np.zeros((3, 3), dtype=bool), width_bounds=(1, 2))


def test_empty_mask_has_no_records() -> None:
    analysis = analyse_cracks(np.zeros((30, 40), dtype=bool), px_per_mm=2.0)
    assert analysis.cracks == () and analysis.measurements.n_segments == 0
    assert analysis.labels.shape == (30, 40) and not analysis.labels.any()
    assert analysis.measurements == measure_cracks(np.zeros((30, 40), dtype=bool), px_per_mm=2.0)


def test_record_as_dict_is_plain() -> None:
    row = _only(horizontal_crack(50, 3), px_per_mm=10.0).as_dict()
    assert list(row)[:7] == ["id", "x_min", "y_min", "x_max", "y_max", "area_px", "skeleton_px"]
    assert row["width_class"] == "medium" and row["orientation"] == "horizontal"
    assert all(isinstance(v, (int, float, str)) for v in row.values())


# -- outlines ------------------------------------------------------------------------------


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))


def _check_rings(rings: list[np.ndarray], labels: np.ndarray, crack: CrackRecord) -> None:
    """Valid GeoJSON rings, and the pixel centres inside them are exactly the crack's."""
    for rank, ring in enumerate(rings):
        assert ring.shape[1] == 2 and len(ring) >= 4
        assert np.array_equal(ring[0], ring[-1])
        assert len(np.unique(ring[:-1], axis=0)) == len(ring) - 1  # no repeated vertex
        assert (_signed_area(ring) > 0) == (rank == 0)  # exterior CCW, holes CW
    yy, xx = np.mgrid[: labels.shape[0], : labels.shape[1]]
    centres = np.column_stack([xx.ravel(), yy.ravel()])
    inside = PolygonPath(rings[0]).contains_points(centres)
    for hole in rings[1:]:
        inside &= ~PolygonPath(hole).contains_points(centres)
    assert np.array_equal(inside.reshape(labels.shape), labels == crack.id)


def test_outline_of_a_dot_and_a_bar() -> None:
    mask = np.zeros((20, 30), dtype=bool)
    mask[3, 4] = True
    mask[10:15, 5:25] = True
    analysis = analyse_cracks(mask, 0)
    dot, bar = analysis.cracks
    (diamond,) = crack_outline(analysis.labels, dot)
    assert diamond.tolist() == [[4.0, 3.5], [3.5, 3.0], [4.0, 2.5], [4.5, 3.0], [4.0, 3.5]]
    (box,) = crack_outline(analysis.labels, bar)
    assert len(box) == 9 and _signed_area(box) == 20 * 5 - 0.5  # four corners cut by 1/8
    for crack in analysis.cracks:
        _check_rings(crack_outline(analysis.labels, crack), analysis.labels, crack)


def test_outline_with_a_hole_and_diagonal_steps() -> None:
    mask = np.zeros((40, 40), dtype=bool)
    mask[5, 5:25] = mask[24, 5:25] = mask[5:25, 5] = mask[5:25, 24] = True  # a square ring
    mask[np.arange(26, 38), np.arange(26, 38)] = True  # a diagonal touching nothing
    mask[25, 25] = True  # ...but for this pixel, which joins the two corner to corner
    analysis = analyse_cracks(mask, 0)
    (crack,) = analysis.cracks
    rings = crack_outline(analysis.labels, crack)
    assert len(rings) == 2
    _check_rings(rings, analysis.labels, crack)


@pytest.mark.parametrize("seed", range(8))
def test_outlines_of_random_masks_hold_their_pixels(seed: int) -> None:
    analysis = analyse_cracks(random_mask(seed), 0)
    for crack in analysis.cracks:
        _check_rings(crack_outline(analysis.labels, crack), analysis.labels, crack)
