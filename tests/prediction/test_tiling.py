"""Tests for the choice of tiles per image (fissure.prediction.tiling)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fissure.prediction.options import PredictOptions
from fissure.prediction.predictor import Predictor, predict_image
from fissure.prediction.tiles import plan_tiles
from fissure.prediction.tiling import LARGE_TILE, Tiling, default_tiling
from fissure.runtime import InputPolicy


def test_crop_checkpoints_may_use_large_tiles_with_the_training_overlap() -> None:
    tiling = default_tiling(InputPolicy("crop", 256))
    assert tiling == Tiling(256, 64, None, LARGE_TILE) and LARGE_TILE == 512
    # a large training size is its own large tile
    assert default_tiling(InputPolicy("crop", 640)).large_tile == 640
    # resize checkpoints, and any tile given, stay at one tile
    assert default_tiling(InputPolicy("resize", 256)).large_tile is None
    given = default_tiling(InputPolicy("crop", 256), PredictOptions(tile=256))
    assert given == Tiling(256, 64, None, None)
    assert default_tiling(InputPolicy("crop", 256), PredictOptions(overlap=32)).overlap == 32


@pytest.mark.parametrize(
    ("shape", "tile", "tiles"),
    [
        ((3000, 4000), 512, 63),  # 63 x 512^2 = 16.5 Mpx against 336 x 256^2 = 22.0 Mpx
        ((320, 480), 256, 6),  # CFD: 6 x 256^2 against 2 x 512^2
        ((100, 100), 256, 1),  # one tile either way: the smaller one
        ((1000, 1000), 256, 36),  # a tie, 9 x 512^2 = 36 x 256^2: the training tile
        ((700, 900), 256, 20),  # 20 x 256^2 = 1.3 Mpx against 6 x 512^2 = 1.6 Mpx
    ],
)
def test_the_large_tile_is_taken_where_it_computes_fewer_pixels(
    shape: tuple[int, int], tile: int, tiles: int
) -> None:
    tiling = default_tiling(InputPolicy("crop", 256))
    assert tiling.tile_for(*shape) == tile
    plan = tiling.plan(*shape)
    assert (plan.tile, plan.overlap, plan.n_tiles) == (tile, 64, tiles)
    small = plan_tiles(*shape, 256, 64)
    large = plan_tiles(*shape, 512, 64)
    fewer = large.n_tiles * 512**2 < small.n_tiles * 256**2
    assert (tile == 512) == fewer


def test_predictions_report_the_tile_each_image_took() -> None:
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 1, 1)
    predictor = Predictor(net, InputPolicy("crop", 64), amp=False)
    rng = np.random.default_rng(0)
    big = predict_image(predictor, rng.integers(0, 256, (700, 900, 3), dtype=np.uint8))
    small = predict_image(predictor, rng.integers(0, 256, (90, 60, 3), dtype=np.uint8))
    assert (big.tile, big.overlap, big.tiles) == (512, 16, plan_tiles(700, 900, 512, 16).n_tiles)
    assert (small.tile, small.overlap) == (64, 16)
