"""Tests for crack measurements (fissure.prediction.measure): per image and per crack."""

from __future__ import annotations

import math

import numpy as np
import pytest
from drawn_masks import horizontal_crack, oblique_crack, random_mask
from scipy import ndimage
from skimage.morphology import skeletonize

from fissure.errors import DataError, FissureError
from fissure.metrics import remove_small_components
from fissure.prediction.measure import (
    CrackMeasurements,
    _ridge_distance,
    check_min_area,
    check_px_per_mm,
    measure_cracks,
    prune_spurs,
    skeleton_length,
    skeleton_links,
)


@pytest.mark.parametrize("width", [1, 3, 5])
def test_straight_crack_length_and_width(width: int) -> None:
    result = measure_cracks(horizontal_crack(200, width))
    assert result.n_segments == 1
    assert result.area_px == 200 * width
    assert result.length_px == pytest.approx(200, rel=0.05)
    assert result.max_width_px == pytest.approx(width, rel=0.05)
    assert result.mean_width_px == pytest.approx(width, rel=0.05)


@pytest.mark.parametrize("angle", [45.0, 30.0, 10.0])
@pytest.mark.parametrize("width", [1.0, 3.0])
def test_oblique_crack_length(angle: float, width: float) -> None:
    # From (20, 20) down and to the right: centred 125 px along, turning clockwise.
    centre = (20 + 125 * math.sin(math.radians(angle)), 20 + 125 * math.cos(math.radians(angle)))
    mask = oblique_crack((300, 300), centre, -angle, 250.0, width)
    result = measure_cracks(mask)
    assert result.n_segments == 1
    assert result.length_px == pytest.approx(250.0, rel=0.05)


@pytest.mark.parametrize(("angle", "width"), [(30.0, 9.0), (10.0, 15.0), (30.0, 15.0)])
def test_wide_oblique_cracks_lose_their_corner_spurs(angle: float, width: float) -> None:
    # A capsule: a 120-px segment, `width` wide, so 120 + width from tip to tip. Thinning
    # leaves branches into the rasterised corners; unpruned, they measured 133.6 (9 px at
    # 30 degrees), 142.6 and 141.1 px long.
    mask = oblique_crack((300, 300), (150, 150), -angle, 120.0, width)
    result = measure_cracks(mask, 0)
    assert 120.0 <= result.length_px <= 120.0 + width
    assert result.max_width_px <= width


def test_a_branch_longer_than_the_crack_is_wide_is_kept() -> None:
    mask = np.zeros((80, 140), dtype=bool)
    mask[20:23, 20:120] = True  # 3 px wide, 100 long
    mask[23:53, 69:72] = True  # a 30-px branch down from its middle
    result = measure_cracks(mask, 0)
    assert result.n_segments == 1
    assert result.length_px == pytest.approx(100 + 30, rel=0.03)
    skeleton = skeletonize(np.pad(mask, 1))
    distance = ndimage.distance_transform_edt(np.pad(mask, 1))
    assert (prune_spurs(skeleton, distance) == skeleton).all()


def test_diagonal_one_pixel_line() -> None:
    mask = np.eye(150, dtype=bool)
    result = measure_cracks(mask)
    assert result.length_px == pytest.approx(150 * math.sqrt(2), rel=0.05)
    assert result.max_width_px == pytest.approx(1.0)


def test_empty_mask_gives_zeros() -> None:
    result = measure_cracks(np.zeros((40, 50), dtype=bool), px_per_mm=3.0)
    assert result == CrackMeasurements(
        area_px=0,
        area_pct=0.0,
        n_segments=0,
        length_px=0.0,
        max_width_px=0.0,
        mean_width_px=0.0,
        area_mm2=0.0,
        length_mm=0.0,
        max_width_mm=0.0,
        mean_width_mm=0.0,
    )


def test_two_separate_cracks() -> None:
    mask = np.zeros((100, 300), dtype=bool)
    mask[20:23, 10:200] = True
    mask[60:65, 50:250] = True
    result = measure_cracks(mask)
    assert result.n_segments == 2
    assert result.length_px == pytest.approx(390, rel=0.05)
    assert result.max_width_px == pytest.approx(5.0)
    assert result.area_pct == pytest.approx(100 * (3 * 190 + 5 * 200) / mask.size)


def test_diagonally_touching_pixels_are_one_segment() -> None:
    mask = np.zeros((20, 20), dtype=bool)
    mask[5:10, 5] = True
    mask[10:15, 6] = True
    assert measure_cracks(mask, min_area=0).n_segments == 1


def test_small_specks_are_removed() -> None:
    mask = horizontal_crack(200, 3)
    specks = [(2, 2), (50, 10), (5, 280)]
    for y, x in specks:
        mask[y : y + 2, x : x + 2] = True  # 4 px each, below the default min_area
    clean = measure_cracks(mask)
    assert clean.n_segments == 1
    assert clean.area_px == 600
    assert clean == measure_cracks(horizontal_crack(200, 3))
    assert measure_cracks(mask, min_area=4).n_segments == 1 + len(specks)


def test_remove_small_components_returns_mask_and_count() -> None:
    mask = np.zeros((10, 10), dtype=bool)
    mask[0, 0] = True
    mask[5:8, 5:8] = True
    kept, count = remove_small_components(mask, min_area=2)
    assert count == 1
    assert kept.sum() == 9
    assert not kept[0, 0]


def test_millimetre_conversion() -> None:
    mask = horizontal_crack(200, 5)
    px = measure_cracks(mask)
    mm = measure_cracks(mask, px_per_mm=2.0)
    assert px.length_mm is None and px.area_mm2 is None
    assert mm.length_mm == pytest.approx(mm.length_px / 2)
    assert mm.area_mm2 == pytest.approx(mm.area_px / 4)
    assert mm.max_width_mm == pytest.approx(mm.max_width_px / 2)
    assert mm.mean_width_mm == pytest.approx(mm.mean_width_px / 2)
    assert mm.length_px == px.length_px


def test_as_dict_is_plain() -> None:
    values = measure_cracks(horizontal_crack(100, 3), px_per_mm=1.5).as_dict()
    assert set(values) == {
        "area_px",
        "area_pct",
        "n_segments",
        "length_px",
        "max_width_px",
        "mean_width_px",
        "area_mm2",
        "length_mm",
        "max_width_mm",
        "mean_width_mm",
    }
    assert all(isinstance(v, (int, float)) for v in values.values())


def test_crack_touching_the_image_border() -> None:
    mask = np.zeros((30, 100), dtype=bool)
    mask[10:13, :] = True
    result = measure_cracks(mask)
    assert result.length_px == pytest.approx(100, rel=0.05)
    assert result.max_width_px == pytest.approx(3.0)


def test_all_crack_mask_is_measurable() -> None:
    result = measure_cracks(np.ones((9, 9), dtype=bool))
    assert result.n_segments == 1
    assert result.area_pct == pytest.approx(100.0)
    assert result.max_width_px == pytest.approx(9.0)


def test_integer_mask_is_accepted() -> None:
    mask = horizontal_crack(200, 3).astype(np.uint8) * 255
    assert measure_cracks(mask) == measure_cracks(mask.astype(bool))


def test_bad_inputs() -> None:
    with pytest.raises(DataError, match=r"\(H, W\)"):
        measure_cracks(np.zeros((2, 3, 4), dtype=bool))
    with pytest.raises(FissureError, match="px_per_mm"):
        measure_cracks(np.zeros((3, 4), dtype=bool), px_per_mm=0)
    with pytest.raises(FissureError, match="min_area"):
        measure_cracks(np.zeros((3, 4), dtype=bool), min_area=-1)


def test_checks_pass_good_values_through() -> None:
    assert check_min_area(0) == 0 and check_min_area(20) == 20
    assert check_px_per_mm(0.5) == 0.5
    with pytest.raises(FissureError, match="min_area must be >= 0, got -3"):
        check_min_area(-3)
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(FissureError, match="px_per_mm must be a positive number"):
            check_px_per_mm(bad)


# -- the one pass, crack by crack ----------------------------------------------------------


def _one_pass_reference(mask: np.ndarray, min_area: int) -> tuple[int, int, float, float, float]:
    """The image measurement as it was before per-crack records: one skeleton and one
    distance transform over the box of all cracks. Kept to pin its floats bit for bit."""
    kept, n_segments = remove_small_components(mask.astype(bool), min_area)
    area = int(np.count_nonzero(kept))
    if not area:
        return 0, n_segments, 0.0, 0.0, 0.0
    rows, cols = np.flatnonzero(kept.any(axis=1)), np.flatnonzero(kept.any(axis=0))
    crop = np.pad(kept[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], 1)
    distance = ndimage.distance_transform_edt(crop)
    ys, xs, links = skeleton_links(prune_spurs(skeletonize(crop), distance))
    widths = 2.0 * _ridge_distance(distance, ys, xs) - 1.0
    length = skeleton_length(links, distance[ys, xs])
    return area, n_segments, length, float(widths.max()), float(widths.mean())


@pytest.mark.parametrize("seed", range(40))
def test_image_measurements_are_the_one_pass_floats_bit_for_bit(seed: int) -> None:
    mask, min_area = random_mask(seed), seed % 7
    result = measure_cracks(mask, min_area)
    expected = _one_pass_reference(mask, min_area)
    got = (
        result.area_px,
        result.n_segments,
        result.length_px,
        result.max_width_px,
        result.mean_width_px,
    )
    assert got == expected  # exact: predictions.csv must not change by a bit


@pytest.mark.parametrize("seed", range(12))
def test_the_whole_mask_pass_traces_what_the_boxes_do(seed: int) -> None:
    from fissure.metrics import label_cracks
    from fissure.prediction.measure import _whole_mask_lines, crack_line, crack_pixels

    mask = random_mask(seed)
    labels, count = label_cracks(mask, seed % 5)
    boxes = ndimage.find_objects(labels) if count else []
    by_box = [crack_line(crack_pixels(labels, box, i), box[0].start, box[1].start)
              for i, box in enumerate(boxes, start=1)]
    whole = _whole_mask_lines(labels, count)
    assert len(whole) == len(by_box) == count
    for a, b in zip(whole, by_box, strict=True):
        for field in ("ys", "xs", "links", "end_distances", "widths"):
            assert np.array_equal(getattr(a, field), getattr(b, field)), field
