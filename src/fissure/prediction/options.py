"""The options of a prediction run, built once (by the CLI or a notebook) and passed down.

:class:`PredictOptions` says how images go through the network and are measured;
:class:`OutputOptions` which files :func:`~fissure.prediction.predict_files` takes and
writes. Both are frozen and check their values when built, so a bad value fails before any
model is loaded, with the same message wherever it came from.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import check_threshold
from ..errors import FissureError
from .autobatch import AUTO, check_batch_size
from .cracks import DEFAULT_WIDTH_BOUNDS, check_width_bounds
from .measure import check_min_area, check_px_per_mm
from .tiles import check_overlap, check_tile


@dataclass(frozen=True)
class PredictOptions:
    """How to predict; ``None`` means "what the checkpoint says".

    ``threshold``: decision threshold (a pixel is crack where its probability is above it),
    default the checkpoint's tuned one. ``tile``/``overlap``: tiling in px (see
    :func:`~fissure.prediction.tiling.default_tiling`); ``tile`` is a multiple of 32 and
    giving it always tiles. ``tta``: also run left-right and top-bottom flips and average
    (3x the compute), default the checkpoint's ``eval.tta``. ``batch_size``: network inputs
    per forward pass, or ``auto`` (8 off CUDA; on CUDA the largest batch that fits, see
    :mod:`~fissure.prediction.autobatch`).
    ``prefetch``: images decoded and tiled ahead of the network in a background thread
    (0: none, in the caller's thread); the results do not depend on it. ``min_area``: crack
    components smaller than this many px are left out of the measurements, default the
    checkpoint's ``eval.min_area``. ``px_per_mm``: the image scale, which adds mm figures.
    ``width_bounds``: upper bounds in mm of the hairline, fine and medium width classes of
    the crack records (see :mod:`~fissure.prediction.cracks`).
    ``amp``: mixed precision, default the checkpoint's ``train.amp``. ``device``: where a
    checkpoint is loaded (``auto`` picks one); a loaded :class:`Predictor` stays where it is.
    """

    threshold: float | None = None
    tile: int | None = None
    overlap: int | None = None
    tta: bool | None = None
    batch_size: int | str = AUTO
    prefetch: int = 2
    min_area: int | None = None
    px_per_mm: float | None = None
    amp: bool | None = None
    device: str = "auto"
    width_bounds: tuple[float, float, float] = DEFAULT_WIDTH_BOUNDS

    def __post_init__(self) -> None:
        if self.threshold is not None:
            object.__setattr__(self, "threshold", check_threshold(self.threshold, "--threshold"))
        if self.tile is not None:
            check_tile(self.tile)
        if self.overlap is not None:
            check_overlap(self.overlap, self.tile)
        check_batch_size(self.batch_size)
        if isinstance(self.prefetch, bool) or not isinstance(self.prefetch, int) or (
            self.prefetch < 0
        ):
            raise FissureError(f"prefetch must be an int >= 0, got {self.prefetch!r}")
        if self.min_area is not None:
            check_min_area(self.min_area)
        if self.px_per_mm is not None:
            check_px_per_mm(self.px_per_mm)
        object.__setattr__(self, "width_bounds", check_width_bounds(self.width_bounds))


@dataclass(frozen=True)
class OutputOptions:
    """What a file run reads and writes besides the masks.

    ``overlay``: ``<name>_overlay.jpg``, the photo with cracks in magenta. ``save_prob``:
    ``<name>_prob.png``, the probability scaled to 0-255. ``glob``: the files taken from
    input folders (image suffixes only). ``cracks``: ``cracks.csv``, one row per crack of
    every image. ``geojson``: ``<name>.geojson``, each crack's outline and record as a
    GeoJSON FeatureCollection in pixel coordinates.
    """

    overlay: bool = True
    save_prob: bool = False
    glob: str = "**/*"
    cracks: bool = True
    geojson: bool = False
