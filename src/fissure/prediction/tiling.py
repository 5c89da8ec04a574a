"""Which tiles an image goes through the network in: the checkpoint's defaults and options.

:func:`default_tiling` turns a checkpoint's :class:`~fissure.runtime.InputPolicy` and the
``tile``/``overlap`` of :class:`~fissure.prediction.options.PredictOptions` into a
:class:`Tiling`, which makes each image's :class:`~fissure.prediction.tiles.Job`:

* Native-resolution tiles (:mod:`fissure.prediction.tiles`): windows of ``tile`` px
  overlapping by ``overlap`` px, blended smoothly. Defaults: ``tile`` = the checkpoint's
  training size rounded to a multiple of 32, ``overlap = tile // 4``. Images smaller than a
  tile are padded into one.
* Larger tiles for ``crop``-mode checkpoints (trained on native-resolution crops; the U-Net
  is fully convolutional, so it sees a larger window at the scale it learnt). With the
  default tiling an image may go through in tiles of :data:`LARGE_TILE` (or the training
  tile, if larger) with the same overlap in px, where that computes fewer pixels than the
  training tile (:meth:`Tiling.tile_for`): fewer, larger windows lose less to their
  overlaps, so a 4000x3000 photo of a 256-px model costs 63 tiles of 512 (16.5 Mpx)
  instead of 336 of 256 (22.0 Mpx), while a 480x320 photo keeps its 6 tiles of 256. The
  overlap stays a quarter of the *training* tile because the border a tile predicts
  poorly, for want of context, does not grow with the tile.
* Whole image shrunk to the training size, exactly as ``evaluate`` does. Only for
  ``resize``-mode checkpoints (trained on whole images shrunk to ``size x size``), only with
  the default tiling, and only when both sides are within ``RESIZE_LIMIT`` times the
  training size (at most that multiple, at least that fraction): there the shrink costs at
  most a factor two of resolution, no side is stretched more than twice, and the model
  sees cracks at the scale it learnt; a 512x10 strip is tiled, not stretched 25-fold. A
  larger photo shrunk that way would lose hairline cracks, so it is tiled at native
  resolution instead, in tiles of the training size (a resize-mode model learnt shrunk
  images, so a larger window shows it a different scale).

Passing ``tile`` always tiles, in that tile only, with ``overlap`` default ``tile // 4``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..runtime import InputPolicy
from .options import PredictOptions
from .tiles import TILE_MULTIPLE, Job, ResizedJob, TiledJob, TilePlan, check_overlap, plan_tiles

RESIZE_LIMIT = 2
"""Resize-mode checkpoints see a whole image shrunk when both sides are <= this x size."""

LARGE_TILE = 512
"""The larger tile crop-mode checkpoints may use by default (a multiple of 32)."""


@dataclass(frozen=True)
class Tiling:
    """How images go through the network.

    Windows of ``tile`` px overlapping by ``overlap`` px; ``large_tile`` set: also windows
    of that size, with the same overlap, where they compute fewer pixels
    (:meth:`tile_for`); ``resize_size`` set: shrink small images whole (:meth:`resizes`).
    """

    tile: int
    overlap: int
    resize_size: int | None = None
    large_tile: int | None = None

    def resizes(self, height: int, width: int) -> bool:
        """Whether an image of ``height x width`` is shrunk whole rather than tiled."""
        size = self.resize_size or 0
        return (max(height, width) <= RESIZE_LIMIT * size
                and min(height, width) * RESIZE_LIMIT >= size)

    def tile_for(self, height: int, width: int) -> int:
        """The tile of an image of ``height x width``: ``large_tile`` where its windows hold
        fewer pixels in all than those of ``tile`` (ties keep ``tile``), else ``tile``."""
        large = self.large_tile
        if large is None or large <= self.tile:
            return self.tile
        small_px = plan_tiles(height, width, self.tile, self.overlap).n_tiles * self.tile**2
        large_px = plan_tiles(height, width, large, self.overlap).n_tiles * large**2
        return large if large_px < small_px else self.tile

    def plan(self, height: int, width: int) -> TilePlan:
        """The tile plan of an image of ``height x width`` that is tiled."""
        return plan_tiles(height, width, self.tile_for(height, width), self.overlap)

    def job(self, image: Tensor) -> Job:
        """The job that takes ``image`` through the network.

        Shapes:
            image: (3, H, W) float, normalised.
        """
        height, width = image.shape[-2:]
        if self.resizes(height, width):
            assert self.resize_size is not None
            return ResizedJob(image, self.resize_size)
        return TiledJob(image, self.tile_for(height, width), self.overlap)


def round_tile(size: int) -> int:
    """The multiple of 32 nearest to ``size``, at least 32."""
    return max(TILE_MULTIPLE, TILE_MULTIPLE * round(size / TILE_MULTIPLE))


def default_tiling(policy: InputPolicy, options: PredictOptions | None = None) -> Tiling:
    """Tiling for a checkpoint's ``policy`` and the ``tile``/``overlap`` of ``options``.

    See the module docstring for the defaults. ``overlap`` is checked here against the tile
    in effect, which may be the checkpoint's.
    """
    options = options or PredictOptions()
    tile = round_tile(policy.size) if options.tile is None else options.tile
    overlap = tile // 4 if options.overlap is None else check_overlap(options.overlap, tile)
    default = options.tile is None
    resize = policy.size if policy.mode == "resize" and default else None
    large = max(tile, LARGE_TILE) if policy.mode == "crop" and default else None
    return Tiling(tile, overlap, resize, large)
