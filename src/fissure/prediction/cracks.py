"""One record per crack: where it is, its length and width, orientation and width class,
and its outline.

Holds :func:`analyse_cracks`, its :class:`CrackAnalysis` and :class:`CrackRecord`, the
width classes (:func:`width_class`), the orientation (:func:`principal_angle`,
:func:`orientation_label`) and :func:`crack_outline`, a crack's outline as polygon rings.
Lengths and widths are measured as :mod:`fissure.prediction.measure` measures the image.

Records and totals
    Each crack is measured on its own bounding box, and its record holds exactly what
    :func:`~fissure.prediction.measure.measure_cracks` says of a mask holding only that
    crack. The image's summary is made from the same skeleton pixels, so ``area_px`` and
    ``n_segments`` are the sum and the count of the records and ``max_width_px`` the
    largest of their maxima, exactly; ``length_px`` is the sum of their lengths and
    ``mean_width_px`` their means weighted by ``skeleton_px`` (the image's mean is over
    all its skeleton pixels), equal up to floating-point rounding, since the image's
    figures are summed over all pixels at once, in image order, as they always were: a
    relative difference far below 1e-12.

Orientation and width class
    A crack's orientation is the angle of the principal axis of its pixels (the
    eigenvector of their covariance with the larger eigenvalue), in degrees in [0, 180),
    counter-clockwise from the image's x axis as the photo is seen (y up on the screen):
    ``horizontal`` within 22.5 degrees of 0, ``vertical`` within 22.5 of 90, ``diagonal``
    between. A shape without a principal direction (a dot, a square) reads 0 degrees. The
    width class needs the scale: the crack's maximum width in mm against
    ``width_bounds`` (default 0.1, 0.3, 1.0 mm) gives ``hairline`` (below the first),
    ``fine``, ``medium`` or ``wide`` (from the last on); without ``px_per_mm`` it is None.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
from skimage.measure import find_contours

from ..errors import FissureError
from .measure import (
    CrackLine,
    CrackMeasurements,
    check_measure_args,
    crack_pixels,
    skeleton_length,
    summarise,
    trace_cracks,
)

WIDTH_CLASSES = ("hairline", "fine", "medium", "wide")
"""The width classes, narrowest first; ``width_bounds`` (mm) separate them."""
DEFAULT_WIDTH_BOUNDS = (0.1, 0.3, 1.0)
"""Upper bounds in mm of hairline, fine and medium cracks; wide from the last on."""
ORIENTATIONS = ("horizontal", "vertical", "diagonal")
_SECTOR = 22.5  # half the angle of the horizontal and vertical sectors, in degrees


@dataclass(frozen=True)
class CrackRecord:
    """One crack: where it is, its size and shape; ``*_mm*`` fields only with a scale.

    ``id`` counts from 1 in the order the cracks' first pixels come in the image (row by
    row). The bounding box ``x_min``..``x_max``, ``y_min``..``y_max`` holds pixel indices,
    both ends included. ``skeleton_px`` is the number of centre-line pixels the widths are
    read on; ``orientation_deg`` and ``orientation``, and ``width_class`` (None without
    a scale) are described in the module docstring.
    """

    id: int
    x_min: int
    y_min: int
    x_max: int
    y_max: int
    area_px: int
    skeleton_px: int
    length_px: float
    max_width_px: float
    mean_width_px: float
    orientation_deg: float
    orientation: str
    width_class: str | None = None
    area_mm2: float | None = None
    length_mm: float | None = None
    max_width_mm: float | None = None
    mean_width_mm: float | None = None

    def as_dict(self) -> dict[str, int | float | str | None]:
        """Plain ``{field: value}`` dict, ready for JSON or a table row."""
        return asdict(self)


@dataclass(frozen=True)
class CrackAnalysis:
    """A mask's cracks: the image summary, one record per crack and the crack labels.

    Shapes:
        labels: (H, W) int32; 0 for background and removed specks, else the crack's ``id``.
    """

    measurements: CrackMeasurements
    cracks: tuple[CrackRecord, ...]
    labels: np.ndarray


def check_width_bounds(bounds: Sequence[float]) -> tuple[float, float, float]:
    """``bounds`` as a tuple if they are three increasing positive mm, else a FissureError."""
    values = tuple(float(b) for b in bounds)
    increasing = all(lo < hi for lo, hi in zip(values, values[1:], strict=False))
    if len(values) != len(WIDTH_CLASSES) - 1 or not (values[0] > 0 and increasing):
        raise FissureError(
            "width bounds must be three increasing widths in mm (hairline, fine and medium "
            f"upper bounds, e.g. 0.1,0.3,1), got {','.join(map(str, bounds)) or 'none'}"
        )
    return values  # type: ignore[return-value]


def width_class(
    width_mm: float | None, bounds: Sequence[float] = DEFAULT_WIDTH_BOUNDS
) -> str | None:
    """The class of a crack ``width_mm`` wide: the first whose upper bound exceeds it.

    None when the width is unknown (no scale).
    """
    if width_mm is None:
        return None
    return WIDTH_CLASSES[int(np.searchsorted(np.asarray(bounds), width_mm, side="right"))]


def principal_angle(ys: np.ndarray, xs: np.ndarray) -> float:
    """Angle in degrees in [0, 180) of the principal axis of pixels ``(ys, xs)``.

    Counter-clockwise from the x axis with y pointing up, as a photo is seen; 0 when the
    pixels have no principal direction.

    Shapes:
        ys, xs: (N,) int, N >= 1.
    """
    u = xs - xs.mean()
    v = ys.mean() - ys  # rows grow downwards; the angle is read with y up
    uu, vv, uv = float(np.mean(u * u)), float(np.mean(v * v)), float(np.mean(u * v))
    angle = 0.5 * math.degrees(math.atan2(2.0 * uv, uu - vv))
    return angle % 180.0


def orientation_label(angle_deg: float) -> str:
    """``horizontal``, ``vertical`` or ``diagonal`` for an angle in [0, 180)."""
    if angle_deg < _SECTOR or angle_deg >= 180.0 - _SECTOR:
        return "horizontal"
    if 90.0 - _SECTOR <= angle_deg < 90.0 + _SECTOR:
        return "vertical"
    return "diagonal"


def _record(
    crack_id: int, box: tuple[slice, slice], crack: np.ndarray, line: CrackLine
) -> CrackRecord:
    """The pixel measurements of one crack from its pixels and centre line."""
    ys, xs = np.nonzero(crack)
    angle = principal_angle(ys, xs)
    has_line = line.widths.size > 0
    return CrackRecord(
        id=crack_id,
        x_min=box[1].start,
        y_min=box[0].start,
        x_max=box[1].stop - 1,
        y_max=box[0].stop - 1,
        area_px=int(ys.size),
        skeleton_px=int(line.widths.size),
        length_px=skeleton_length(line.links, line.end_distances),
        max_width_px=float(line.widths.max()) if has_line else 0.0,
        mean_width_px=float(line.widths.mean()) if has_line else 0.0,
        orientation_deg=angle,
        orientation=orientation_label(angle),
    )


def _in_millimetres(
    record: CrackRecord, px_per_mm: float | None, bounds: Sequence[float]
) -> CrackRecord:
    if px_per_mm is None:
        return record
    max_width_mm = record.max_width_px / px_per_mm
    return replace(
        record,
        width_class=width_class(max_width_mm, bounds),
        area_mm2=record.area_px / px_per_mm**2,
        length_mm=record.length_px / px_per_mm,
        max_width_mm=max_width_mm,
        mean_width_mm=record.mean_width_px / px_per_mm,
    )


def analyse_cracks(
    mask: np.ndarray,
    min_area: int = 20,
    px_per_mm: float | None = None,
    width_bounds: Sequence[float] = DEFAULT_WIDTH_BOUNDS,
) -> CrackAnalysis:
    """Measure every crack in ``mask`` (nonzero means crack), and the image as a whole.

    Components (8-connected) smaller than ``min_area`` px are dropped first; each of the
    rest is one :class:`CrackRecord`. Lengths and widths are in px, and also in mm when
    ``px_per_mm`` is given, which also sets each crack's width class from
    ``width_bounds`` (mm). ``measurements`` is what
    :func:`~fissure.prediction.measure.measure_cracks` returns; see the module docstring
    for how it adds up from the records.

    Shapes:
        mask: (H, W) bool or integer.
    """
    mask = check_measure_args(mask, min_area, px_per_mm)
    bounds = check_width_bounds(width_bounds)
    labels, boxes, lines = trace_cracks(mask, min_area)
    records = [
        _in_millimetres(_record(k, box, crack_pixels(labels, box, k), line), px_per_mm, bounds)
        for k, (box, line) in enumerate(zip(boxes, lines, strict=True), start=1)
    ]
    return CrackAnalysis(summarise(labels, lines, px_per_mm), tuple(records), labels)


def _signed_area(ring: np.ndarray) -> float:
    """Shoelace area of a closed ring of (x, y) points; positive when counter-clockwise."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))


def _drop_collinear(ring: np.ndarray) -> np.ndarray:
    """The closed ``ring`` without the points that lie on a straight run of its edges."""
    points = ring[:-1]
    before, after = np.roll(points, 1, axis=0), np.roll(points, -1, axis=0)
    a, b = points - before, after - points
    turns = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0] != 0
    kept = points[turns]
    return np.vstack([kept, kept[:1]])


def crack_outline(labels: np.ndarray, record: CrackRecord) -> list[np.ndarray]:
    """The outline of crack ``record`` in ``labels``, as closed polygon rings.

    The outline runs through the midpoints between the crack's pixel centres and the
    background's (marching squares at level 0.5, crack pixels 8-connected), in pixel
    coordinates: x = column, y = row, pixel centres on whole numbers. The exterior comes
    first, then one ring per hole; each ring ends on its first point, the exterior turns
    counter-clockwise and holes clockwise in (x, y) as numbers (the right-hand rule of
    GeoJSON, RFC 7946). Points on a straight run of edges are left out.

    Shapes:
        labels: (H, W) int, as :attr:`CrackAnalysis.labels`.
        returns: rings of shape (K, 2) float, K >= 4.
    """
    box = (slice(record.y_min, record.y_max + 1), slice(record.x_min, record.x_max + 1))
    crack = crack_pixels(labels, box, record.id).astype(np.float32)
    offset = np.array([record.x_min - 1, record.y_min - 1], dtype=np.float64)
    rings = [
        _drop_collinear(contour[:, ::-1] + offset)
        for contour in find_contours(crack, 0.5, fully_connected="high")
    ]
    areas = [_signed_area(ring) for ring in rings]
    outer = int(np.argmax(np.abs(areas)))
    ordered = [outer] + [i for i in range(len(rings)) if i != outer]
    return [
        rings[i] if (areas[i] > 0) == (rank == 0) else rings[i][::-1]
        for rank, i in enumerate(ordered)
    ]
