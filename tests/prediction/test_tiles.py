"""Tests for the tile plan, blending and batching (fissure.prediction.tiles).

``_reference_tiled`` is a plain, one-image sliding-window implementation written
independently of the production jobs: the production path (``TiledJob`` through
``TileBatcher``, what ``predict_many`` runs) is checked against it, and against the
untiled network.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from itertools import islice

import numpy as np
import pytest
import torch
from prediction_stand_ins import Recorder, random_rgb
from torch import Tensor, nn

from fissure.data.transforms import image_to_tensor
from fissure.errors import FissureError
from fissure.prediction.batching import TileBatcher
from fissure.prediction.options import PredictOptions
from fissure.prediction.predictor import Predictor, predict_many
from fissure.prediction.tiles import (
    ResizedJob,
    TiledJob,
    blend_window,
    check_overlap,
    check_tile,
    pad_to_plan,
    plan_tiles,
    tile_origins,
)
from fissure.runtime import InputPolicy, predict_probs

Forward = Callable[[Tensor], Tensor]

# Half the receptive field of _toy_net: output pixels this far from any edge see no padding.
TOY_HALF_RF = 4


def _batched(items: Iterator[tuple[int, int]], size: int) -> Iterator[list[tuple[int, int]]]:
    while batch := list(islice(items, size)):
        yield batch


def _reference_tiled(
    forward: Forward,
    image: Tensor,
    tile: int = 256,
    overlap: int = 64,
    batch_size: int = 8,
    tta: bool = False,
) -> Tensor:
    """Probabilities ``(1, H, W)`` for ``image`` ``(C, H, W)``: every tile's sigmoid
    (averaged over flips with ``tta``) blended with ``blend_window`` weights,
    ``sum(w * p) / sum(w)``."""
    plan = plan_tiles(image.shape[-2], image.shape[-1], tile, overlap)
    flips: list[tuple[int, ...]] = [(), (-1,), (-2,)] if tta else [()]
    with torch.no_grad():
        canvas = pad_to_plan(image.float(), plan)
        weight = blend_window(tile, overlap)
        weighted = torch.zeros(plan.padded_height, plan.padded_width)
        total_weight = torch.zeros_like(weighted)
        for batch in _batched(plan.windows(), batch_size):
            tiles = torch.stack([canvas[:, y : y + tile, x : x + tile] for y, x in batch])
            probs = torch.zeros(tiles.shape[0], tile, tile)
            for dims in flips:
                logits = forward(tiles.flip(dims) if dims else tiles)
                p = torch.sigmoid(logits.float())[:, 0]
                probs += p.flip(dims) if dims else p
            probs /= len(flips)
            for (y, x), prob in zip(batch, probs, strict=True):
                weighted[y : y + tile, x : x + tile] += weight * prob
                total_weight[y : y + tile, x : x + tile] += weight
    top, left = plan.pad_h[0], plan.pad_w[0]
    blended = weighted / total_weight
    return blended[top : top + plan.height, left : left + plan.width].unsqueeze(0)


def _tiled(
    forward: Forward,
    image: Tensor,
    tile: int = 256,
    overlap: int = 64,
    batch_size: int = 8,
    tta: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Tensor:
    """The production path for one image: a TiledJob through a TileBatcher, ``(1, H, W)``."""
    job = TiledJob(image, tile, overlap)
    batcher = TileBatcher(forward, batch_size, tta, progress or (lambda n: None))
    with torch.no_grad():
        done = batcher.add(job) + batcher.flush()
    assert done == [job] and job.remaining == 0
    return job.probability().unsqueeze(0)


def _toy_net() -> nn.Module:
    """Translation-equivariant conv stack (3 -> 1 channels), half receptive field 4."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(4, 4, 5, padding=2),
        nn.Tanh(),
        nn.Conv2d(4, 1, 3, padding=1),
    )
    return net.eval()


def _untiled(net: nn.Module, image: Tensor) -> Tensor:
    with torch.no_grad():
        return torch.sigmoid(net(image.unsqueeze(0)))[0]


def _image(height: int, width: int, seed: int = 1) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(3, height, width, generator=generator)


def _interior(x: Tensor, margin: int) -> Tensor:
    return x[..., margin:-margin, margin:-margin]


@pytest.mark.parametrize(
    ("length", "tile", "stride"),
    [
        (1, 64, 32),
        (64, 64, 32),
        (65, 64, 32),
        (100, 64, 32),
        (128, 64, 32),
        (4064, 256, 192),
        (999, 96, 1),
        (500, 64, 64),
    ],
)
def test_tile_origins_cover_and_end_flush(length: int, tile: int, stride: int) -> None:
    origins = tile_origins(length, tile, stride)
    assert origins[0] == 0
    assert origins == sorted(set(origins))
    if length <= tile:
        assert origins == [0]
        return
    assert origins[-1] + tile == length
    assert all(b - a <= stride for a, b in zip(origins, origins[1:], strict=False))
    covered = set()
    for origin in origins:
        covered.update(range(origin, origin + tile))
    assert covered == set(range(length))


def test_tile_origins_rejects_gapping_stride() -> None:
    with pytest.raises(FissureError):
        tile_origins(100, 32, 33)


@pytest.mark.parametrize(("tile", "overlap"), [(64, 32), (256, 64), (64, 0), (64, 63), (32, 3)])
def test_blend_window_positive_and_flat_in_the_middle(tile: int, overlap: int) -> None:
    window = blend_window(tile, overlap)
    assert window.shape == (tile, tile)
    assert window.dtype == torch.float32
    assert bool((window > 0).all())
    assert float(window.max()) <= 1.0
    assert torch.equal(window, window.flip(0))
    assert torch.equal(window, window.T)
    if tile - 2 * overlap > 0:
        assert float(window.max()) == 1.0
        middle = window[overlap : tile - overlap, overlap : tile - overlap]
        assert bool((middle == 1).all())


def test_blend_ramps_of_neighbours_sum_to_one() -> None:
    tile, overlap = 64, 32
    row = blend_window(tile, overlap)[tile // 2].double()
    seam = row[tile - overlap :] + row[:overlap]
    assert torch.allclose(seam, torch.ones(overlap, dtype=torch.float64), atol=1e-5)


def test_plan_rejects_bad_sizes() -> None:
    with pytest.raises(FissureError, match="multiple of 32"):
        plan_tiles(100, 100, 100, 10)
    with pytest.raises(FissureError, match="overlap"):
        plan_tiles(100, 100, 64, 64)
    with pytest.raises(FissureError):
        plan_tiles(0, 100, 64, 16)


def test_tile_and_overlap_checks_have_one_message_each() -> None:
    assert check_tile(64) == 64 and check_overlap(0, 64) == 0 and check_overlap(500, None) == 500
    for bad in (0, 16, 50, -32):
        message = f"--tile must be a positive multiple of 32, got {bad}"
        with pytest.raises(FissureError, match=message):
            check_tile(bad)
    with pytest.raises(FissureError, match=r"--overlap must be in \[0, tile=64\), got 64"):
        check_overlap(64, 64)
    with pytest.raises(FissureError, match=r"--overlap must be in \[0, tile\), got -1"):
        check_overlap(-1, None)


def test_tiled_equals_untiled_in_the_interior() -> None:
    net = _toy_net()
    image = _image(96, 128)
    batches: list[int] = []
    tiled = _tiled(net, image, tile=64, overlap=32, batch_size=5, progress=batches.append)
    full = _untiled(net, image)
    assert tiled.shape == (1, 96, 128)
    assert tiled.dtype == torch.float32
    assert sum(batches) == plan_tiles(96, 128, 64, 32).n_tiles > 1
    diff = (_interior(tiled, TOY_HALF_RF) - _interior(full, TOY_HALF_RF)).abs().max()
    assert float(diff) < 1e-5


@pytest.mark.parametrize(("height", "width", "overlap"), [(37, 50, 32), (300, 470, 16)])
def test_any_size_matches_untiled(height: int, width: int, overlap: int) -> None:
    net = _toy_net()
    image = _image(height, width, seed=height)
    tiled = _tiled(net, image, tile=64, overlap=overlap, batch_size=4)
    assert tiled.shape == (1, height, width)
    diff = (_interior(tiled, TOY_HALF_RF) - _interior(_untiled(net, image), TOY_HALF_RF)).abs()
    assert float(diff.max()) < 1e-5
    reference = _reference_tiled(net, image, tile=64, overlap=overlap, batch_size=4)
    assert torch.equal(tiled, reference)


@pytest.mark.parametrize(("height", "width"), [(1, 1), (5, 7), (3, 200)])
def test_tiny_images_fall_back_to_replicate_padding(height: int, width: int) -> None:
    out = _tiled(_toy_net(), _image(height, width), tile=64, overlap=32)
    assert out.shape == (1, height, width)
    assert bool(torch.isfinite(out).all())
    assert bool(((out >= 0) & (out <= 1)).all())
    assert torch.equal(out, _reference_tiled(_toy_net(), _image(height, width), 64, 32))


class _CountingForward:
    """Cheap stand-in for a model that records every batch size it is given."""

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def __call__(self, tiles: Tensor) -> Tensor:
        self.batch_sizes.append(tiles.shape[0])
        return torch.zeros(tiles.shape[0], 1, tiles.shape[-2], tiles.shape[-1])


def _check_bounded_batches(height: int, width: int, batch_size: int, tta: bool) -> None:
    tile, overlap = 256, 64
    plan = plan_tiles(height, width, tile, overlap)
    forward = _CountingForward()
    done: list[int] = []
    image = torch.zeros(3, height, width)
    out = _tiled(forward, image, tile, overlap, batch_size, tta, done.append)
    n_batches = math.ceil(plan.n_tiles / batch_size)
    assert max(forward.batch_sizes) <= batch_size
    assert len(forward.batch_sizes) == n_batches * (3 if tta else 1)
    assert len(done) == n_batches
    assert sum(done) == plan.n_tiles
    assert out.shape == (1, height, width)
    assert torch.allclose(out, torch.full_like(out, 0.5))


def test_large_photo_plan_and_bounded_batches() -> None:
    height, width, tile, overlap = 3000, 4000, 256, 64
    plan = plan_tiles(height, width, tile, overlap)
    stride = tile - overlap
    rows = math.ceil((plan.padded_height - tile) / stride) + 1
    cols = math.ceil((plan.padded_width - tile) / stride) + 1
    assert plan.n_tiles == rows * cols == 16 * 21
    # One run on the full photo (with TTA, the most calls); the plain path on a smaller one
    # keeps the suite fast.
    _check_bounded_batches(height, width, batch_size=8, tta=True)


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_bounded_batches_without_tta(batch_size: int) -> None:
    _check_bounded_batches(700, 900, batch_size, tta=False)


def _flip_equivariant_net() -> nn.Module:
    torch.manual_seed(3)
    conv = nn.Conv2d(3, 1, 5, padding=2)
    with torch.no_grad():
        kernel = conv.weight + conv.weight.flip(-1)
        conv.weight.copy_(kernel + kernel.flip(-2))
    return nn.Sequential(conv, nn.Tanh()).eval()


def test_tta_with_flip_equivariant_model_equals_plain() -> None:
    net = _flip_equivariant_net()
    image = _image(90, 130)
    plain = _tiled(net, image, tile=64, overlap=32)
    augmented = _tiled(net, image, tile=64, overlap=32, tta=True)
    assert float((plain - augmented).abs().max()) < 1e-6
    assert torch.equal(augmented, _reference_tiled(net, image, 64, 32, tta=True))


def test_wrong_forward_output_shape_is_reported() -> None:
    def bad_forward(tiles: Tensor) -> Tensor:
        return torch.zeros(tiles.shape[0], 2, tiles.shape[-2], tiles.shape[-1])

    with pytest.raises(FissureError, match="expected"):
        _tiled(bad_forward, _image(40, 40), tile=32, overlap=8)


def test_rejects_non_chw_image() -> None:
    with pytest.raises(FissureError, match=r"\(C, H, W\)"):
        _tiled(_toy_net(), torch.zeros(1, 3, 32, 32), tile=32, overlap=0)
    with pytest.raises(FissureError, match=r"\(C, H, W\)"):
        ResizedJob(torch.zeros(1, 3, 32, 32), 32)


@pytest.mark.parametrize("tta", [False, True])
def test_tiles_of_several_images_share_batches(tta: bool) -> None:
    """Batching across images changes nothing: each result equals the reference's."""
    recorder = Recorder(bias=0.0)
    predictor = Predictor(recorder, InputPolicy("crop", 64), amp=False)
    sizes = [(100, 150), (50, 40), (64, 64), (130, 70)]
    images = [random_rgb(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    options = PredictOptions(tta=tta, batch_size=5, overlap=16)
    results = dict(predict_many(predictor, enumerate(images), options))
    n_tiles = sum(plan_tiles(h, w, 64, 16).n_tiles for h, w in sizes)
    views = 3 if tta else 1
    assert [s[0] for s in recorder.shapes] == [5] * (n_tiles // 5 * views) + [n_tiles % 5] * views
    for i, image in enumerate(images):
        expected = _reference_tiled(recorder, image_to_tensor(image), 64, 16, tta=tta)[0].numpy()
        assert results[i].probability.shape == sizes[i]
        np.testing.assert_allclose(results[i].probability, expected, atol=1e-6)
        assert results[i].tiles == plan_tiles(*sizes[i], 64, 16).n_tiles


@pytest.mark.parametrize("shape", [(50, 40), (32, 32), (70, 20)])
def test_resized_job_equals_predict_probs_bit_for_bit(shape: tuple[int, int]) -> None:
    """A resized image gives exactly what ``evaluate`` computes (runtime.predict_probs)."""
    net = _toy_net()
    image = _image(*shape)
    job = ResizedJob(image, 32)
    assert [tuple(piece.shape) for _, piece in job.pieces()] == [(3, 32, 32)]
    with torch.no_grad():
        batcher = TileBatcher(net, 8, False, lambda n: None)
        done = batcher.add(job) + batcher.flush()
    expected = predict_probs(net, image[None], InputPolicy("resize", 32), amp=False)[0, 0]
    assert done == [job] and torch.equal(job.probability(), expected)


def test_jobs_of_one_shape_fill_a_batch_together() -> None:
    forward = _CountingForward()
    batcher = TileBatcher(forward, 3, False, lambda n: None)
    jobs = [ResizedJob(_image(40 + i, 30), 32) for i in range(4)]
    finished = [job for j in jobs for job in batcher.add(j)]
    assert finished == jobs[:3] and forward.batch_sizes == [3]
    assert batcher.flush() == [jobs[3]] and forward.batch_sizes == [3, 1]
    assert jobs[0].probability().shape == (40, 30)
