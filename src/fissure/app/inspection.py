"""What the Inspect page shows and exports, without Streamlit: tuning, the view, downloads.

A photo is predicted once (:class:`PhotoPrediction` keeps its probability map); moving
the threshold, the minimum area or the scale only re-thresholds and re-measures it
(:func:`inspect`), which is what ``fissure predict --threshold`` would write: the mask is
``probability > threshold`` and the cracks are
:func:`~fissure.prediction.cracks.analyse_cracks` of it.

The photo is shown through a :class:`View`: a zoom (screen pixels per photo pixel, or
fit-to-width) and a centre, rendered by :func:`render_view` into a window of at most
``View.width x View.height`` screen pixels. Only the visible part of a large photo is
painted and sent to the browser.

Colours: cracks magenta as in ``fissure predict``'s overlays, components below the
minimum area (left out of the measurements) amber, the selected crack cyan with its box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ..data.image import image_stem
from ..prediction.cracks import DEFAULT_WIDTH_BOUNDS, CrackAnalysis, analyse_cracks
from ..prediction.files import OVERLAY_ALPHA, OVERLAY_COLOR, encode_mask, encode_overlay
from ..prediction.records import crack_rows, cracks_csv

SPECK_COLOR = (255, 176, 0)
SELECTED_COLOR = (0, 229, 255)
ZOOMS = {"fit": None, "25%": 0.25, "50%": 0.5, "100%": 1.0, "200%": 2.0, "400%": 4.0, "800%": 8.0}
"""The zoom choices: screen pixels per photo pixel; ``fit`` shows the whole photo."""
MAX_FIT = 8.0
"""Fitting a small photo to the window enlarges it at most this much."""
FIT_HEIGHTS = 4
"""Fitting the width never makes a photo taller than this many windows: a 500x20000 px
scan would be a 44,000 px image, encoded again at every change."""


@dataclass(frozen=True)
class ModelInfo:
    """What the report says about the model: the checkpoint as given and its settings."""

    checkpoint: str
    encoder: str
    mode: str
    size: int
    epoch: int
    threshold: float
    min_area: int
    fissure_version: str


@dataclass(frozen=True)
class PhotoPrediction:
    """One photo and its crack probabilities, predicted once.

    ``mode``, ``tiles``, ``tile`` and ``overlap`` say how it went through the network.

    Shapes:
        rgb: (H, W, 3) uint8.
        probability: (H, W) float32 in [0, 1].
    """

    name: str
    rgb: np.ndarray
    probability: np.ndarray
    mode: str = "tiled"
    tiles: int = 1
    tile: int | None = None
    overlap: int | None = None


@dataclass(frozen=True)
class Tuning:
    """The page's sliders: decision threshold, minimum crack area, scale and width classes."""

    threshold: float
    min_area: int
    px_per_mm: float | None = None
    width_bounds: tuple[float, float, float] = DEFAULT_WIDTH_BOUNDS


@dataclass(frozen=True)
class Inspection:
    """A photo at one :class:`Tuning`: its mask and its cracks.

    Shapes:
        mask: (H, W) bool, ``probability > threshold`` (``fissure predict``'s mask).
    """

    mask: np.ndarray
    analysis: CrackAnalysis


@dataclass(frozen=True)
class View:
    """Which part of the photo is shown: ``zoom`` screen px per photo px (None: fit the
    width, at most :data:`FIT_HEIGHTS` windows tall), centred at ``centre_x``,
    ``centre_y`` (fractions of the photo's width and height), in a window of at most
    ``width`` x ``height`` screen px."""

    zoom: float | None = None
    centre_x: float = 0.5
    centre_y: float = 0.5
    width: int = 1100
    height: int = 760


def inspect(photo: PhotoPrediction, tuning: Tuning) -> Inspection:
    """Threshold and measure ``photo`` as ``fissure predict`` does with ``tuning``."""
    mask = photo.probability > tuning.threshold
    analysis = analyse_cracks(mask, tuning.min_area, tuning.px_per_mm, tuning.width_bounds)
    return Inspection(mask, analysis)


def window(shape: tuple[int, int], view: View) -> tuple[slice, slice, float]:
    """The rows and columns of a photo of ``shape`` that ``view`` shows, and its scale."""
    height, width = shape
    if view.zoom is None:
        fit = min(MAX_FIT, view.width / width, FIT_HEIGHTS * view.height / height)
        return slice(0, height), slice(0, width), fit
    span_y = min(height, max(1, round(view.height / view.zoom)))
    span_x = min(width, max(1, round(view.width / view.zoom)))
    top = int(np.clip(round(view.centre_y * height - span_y / 2), 0, height - span_y))
    left = int(np.clip(round(view.centre_x * width - span_x / 2), 0, width - span_x))
    return slice(top, top + span_y), slice(left, left + span_x), view.zoom


def _paint(rgb: np.ndarray, where: np.ndarray, color: Sequence[int], alpha: float) -> None:
    blended = rgb[where].astype(np.float32) * (1 - alpha) + alpha * np.asarray(color)
    rgb[where] = np.round(blended).astype(np.uint8)


def _resize(array: np.ndarray, size: tuple[int, int], shrink: bool) -> np.ndarray:
    """``array`` resized to ``size`` (width, height): area-averaged when shrinking,
    nearest when enlarging, so that single photo pixels stay sharp."""
    method = Image.Resampling.BOX if shrink else Image.Resampling.NEAREST
    return np.array(Image.fromarray(array).resize(size, method))


def render_view(
    photo: PhotoPrediction, inspection: Inspection, view: View, selected: int | None = None
) -> np.ndarray:
    """The part of the photo ``view`` shows, with the cracks painted (see the module).

    Shrunk views paint a screen pixel wherever any photo pixel under it is crack, so that
    hairlines stay visible in a whole 4000 x 3000 photo.

    Shapes:
        returns: (h, w, 3) uint8, at most ``view.width`` wide when fitted.
    """
    rows, cols, scale = window(photo.probability.shape, view)
    labels = inspection.analysis.labels[rows, cols]
    layers = [
        (inspection.mask[rows, cols] & (labels == 0), SPECK_COLOR, 0.6),
        (labels > 0, OVERLAY_COLOR, OVERLAY_ALPHA),
    ]
    if selected is not None:
        layers.append((labels == selected, SELECTED_COLOR, 0.9))
    crop = photo.rgb[rows, cols]
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    shrink = scale < 1
    out = _resize(crop, size, shrink) if shrink else crop.copy()
    for where, color, alpha in layers:
        if shrink:
            where = _resize(where.astype(np.uint8) * 255, size, True) > 0
        _paint(out, where, color, alpha)
    if not shrink and size != (crop.shape[1], crop.shape[0]):
        out = _resize(out, size, False)
    if selected is not None:
        _draw_box(out, inspection, selected, rows, cols, scale)
    return out


def _draw_box(
    out: np.ndarray, inspection: Inspection, selected: int, rows: slice, cols: slice, scale: float
) -> None:
    """Outline the selected crack's bounding box (in place): two screen pixels wide, one
    screen pixel clear of the crack, so that it never hides a crack pixel."""
    crack = next((c for c in inspection.analysis.cracks if c.id == selected), None)
    if crack is None:
        return
    left, top = (crack.x_min - cols.start) * scale - 3, (crack.y_min - rows.start) * scale - 3
    right = (crack.x_max + 1 - cols.start) * scale + 2
    bottom = (crack.y_max + 1 - rows.start) * scale + 2
    image = Image.fromarray(out)
    ImageDraw.Draw(image).rectangle([left, top, right, bottom], outline=SELECTED_COLOR, width=2)
    out[...] = np.asarray(image)


def crack_centre(
    inspection: Inspection, crack_id: int, shape: tuple[int, int]
) -> tuple[float, float]:
    """The centre of crack ``crack_id``'s box as fractions of the photo (x, y)."""
    crack = next(c for c in inspection.analysis.cracks if c.id == crack_id)
    height, width = shape
    return (crack.x_min + crack.x_max + 1) / 2 / width, (crack.y_min + crack.y_max + 1) / 2 / height


def stem(photo: PhotoPrediction) -> str:
    """The base name of a photo's downloads (``site/001.jpg`` -> ``001``)."""
    return image_stem(photo.name) or "photo"


def mask_png(inspection: Inspection) -> bytes:
    """The mask PNG, byte for byte what ``fissure predict`` writes as ``<name>.png``."""
    return encode_mask(inspection.mask)


def overlay_jpeg(photo: PhotoPrediction, inspection: Inspection) -> bytes:
    """The overlay JPEG, byte for byte ``fissure predict``'s ``<name>_overlay.jpg``."""
    return encode_overlay(photo.rgb, inspection.mask)


def cracks_table(photo: PhotoPrediction, inspection: Inspection) -> str:
    """``cracks.csv`` of this photo: ``fissure predict``'s rows, the upload's name as image."""
    return cracks_csv(crack_rows(photo.name, inspection.analysis.cracks))
