"""Tests for prediction in memory on photos of any size (fissure.prediction.predictor)."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from prediction_stand_ins import Recorder, random_rgb, tiny_checkpoint, tiny_model

from fissure.checkpoint import checkpoint_from_dict, make_checkpoint
from fissure.config import config_from_dict
from fissure.data.transforms import image_to_tensor
from fissure.errors import FissureError
from fissure.prediction.measure import measure_cracks
from fissure.prediction.options import PredictOptions
from fissure.prediction.predictor import (
    Predictor,
    as_predictor,
    default_tiling,
    predict_image,
    predict_many,
)
from fissure.prediction.tiles import plan_tiles
from fissure.runtime import InputPolicy, predict_probs


def test_default_tiling_follows_the_checkpoint() -> None:
    crop = default_tiling(InputPolicy("crop", 100))
    assert (crop.tile, crop.overlap, crop.resize_size, crop.large_tile) == (96, 24, None, 512)
    resize = default_tiling(InputPolicy("resize", 256))
    assert (resize.tile, resize.overlap, resize.resize_size, resize.large_tile) == (
        256,
        64,
        256,
        None,
    )
    assert resize.resizes(512, 300) and not resize.resizes(513, 300)
    # no side stretched more than twice: a strip is tiled
    assert resize.resizes(128, 512) and not resize.resizes(127, 512)
    assert default_tiling(InputPolicy("resize", 256), PredictOptions(tile=128)).resize_size is None
    with pytest.raises(FissureError, match="--tile"):
        default_tiling(InputPolicy("crop", 64), PredictOptions(tile=100))
    with pytest.raises(FissureError, match="--overlap"):
        default_tiling(InputPolicy("crop", 64), PredictOptions(tile=64, overlap=64))
    # an overlap that fits no tile of the checkpoint's size fails once the tile is known
    with pytest.raises(FissureError, match=r"--overlap must be in \[0, tile=64\), got 64"):
        default_tiling(InputPolicy("crop", 64), PredictOptions(overlap=64))


def test_one_tile_matches_the_untiled_model_away_from_the_borders() -> None:
    model, image = tiny_model(), random_rgb(192, 192)
    with torch.no_grad():
        untiled = torch.sigmoid(model(image_to_tensor(image)[None]))[0, 0].numpy()
    fp32 = Predictor(model, amp=False)  # the reference above runs in fp32
    # overlap 64 pads 32 px per side, so the 32-px grid of the encoder stays aligned.
    padded = predict_image(fp32, image, PredictOptions(tile=256, overlap=64))
    assert padded.tiles == 1 and padded.probability.shape == (192, 192)
    margin = 48
    interior = np.s_[margin:-margin, margin:-margin]
    np.testing.assert_allclose(padded.probability[interior], untiled[interior], atol=1e-5)
    exact = predict_image(fp32, image, PredictOptions(tile=192, overlap=0))
    np.testing.assert_allclose(exact.probability, untiled, atol=1e-6)
    # the default, mixed precision where the CPU has bf16, stays close to it
    mixed = predict_image(model, image, PredictOptions(tile=192, overlap=0))
    np.testing.assert_allclose(mixed.probability, untiled, atol=0.02)


def test_resize_checkpoint_shrinks_small_images_like_evaluate(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path, mode="resize", size=32)
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    small = random_rgb(50, 40)
    result = predict_image(predictor, small)
    assert (result.mode, result.tiles, result.tile) == ("resize", 1, None)
    expected = predict_probs(predictor.model, image_to_tensor(small)[None], predictor.policy)
    np.testing.assert_allclose(result.probability, expected[0, 0].numpy(), atol=1e-5)
    # Beyond twice the training size the photo is tiled at native resolution.
    large = predict_image(predictor, random_rgb(70, 40))
    assert (large.mode, large.tile, large.overlap, large.tiles) == ("tiled", 32, 8, 6)
    assert large.probability.shape == (70, 40)


@pytest.mark.parametrize(
    ("options", "tile", "n_tiles"),
    [
        (PredictOptions(batch_size=4), 512, 63),  # the default: fewer, larger tiles
        (PredictOptions(batch_size=4, tile=256), 256, 336),  # the training tile, given
    ],
)
def test_a_12_megapixel_photo_goes_through_in_bounded_batches(
    options: PredictOptions, tile: int, n_tiles: int
) -> None:
    recorder = Recorder()
    predictor = Predictor(recorder, InputPolicy("crop", 256))
    photo = np.full((3000, 4000, 3), 128, dtype=np.uint8)
    result = predict_image(predictor, photo, options)
    plan = plan_tiles(3000, 4000, tile, 64)
    assert result.tiles == plan.n_tiles == len(plan.origins_y) * len(plan.origins_x) == n_tiles
    assert (result.tile, result.overlap) == (tile, 64)
    # Never more than one batch of tiles in the network at a time.
    assert {s[1:] for s in recorder.shapes} == {(3, tile, tile)}
    assert max(s[0] for s in recorder.shapes) == 4
    assert sum(s[0] for s in recorder.shapes) == plan.n_tiles
    assert result.mask.shape == result.probability.shape == (3000, 4000)
    assert result.probability.dtype == np.float32 and not result.mask.any()


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_images_as_paths_pil_and_arrays_agree(tmp_path: Path) -> None:
    model, rgb = Recorder(bias=0.0), random_rgb(70, 50)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    (tmp_path / "x.png.gz").write_bytes(gzip.compress(_png_bytes(Image.fromarray(rgb))))
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    options = PredictOptions(tile=64)
    results = [
        predict_image(model, source, options)
        for source in (
            rgb,
            rgba,
            tmp_path / "x.png",
            str(tmp_path / "x.png.gz"),
            Image.fromarray(rgb),
            Image.fromarray(rgba),
        )
    ]
    for result in results[1:]:
        np.testing.assert_array_equal(result.probability, results[0].probability)
    with pytest.raises(FissureError, match="uint8"):
        predict_image(model, rgb.astype(np.float32))


def test_exif_orientation_is_applied_to_pil_images() -> None:
    stored = Image.fromarray(random_rgb(40, 60))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif)
    image = Image.open(io.BytesIO(buffer.getvalue()))
    result = predict_image(Recorder(), image, PredictOptions(tile=64))
    assert result.mask.shape == (60, 40)


def test_a_bare_module_keeps_its_training_mode() -> None:
    model = Recorder().train()
    predict_image(model, random_rgb(40, 40), PredictOptions(tile=64))
    assert model.training
    with pytest.raises(FissureError, match="threshold"):
        predict_image(model, random_rgb(40, 40), PredictOptions(threshold=1.5))


def test_measurements_use_the_scale() -> None:
    options = PredictOptions(tile=64, px_per_mm=4.0)
    result = predict_image(Recorder(bias=6.0), random_rgb(64, 80), options)
    assert result.mask.all() and result.measurements.area_px == 64 * 80
    assert result.measurements.area_mm2 == pytest.approx(64 * 80 / 16)
    assert result.measurements == measure_cracks(result.mask, 20, 4.0)
    assert result.min_area == 20


def test_options_resolve_against_the_checkpoint_once() -> None:
    predictor = Predictor(Recorder(), threshold=0.4, min_area=7, amp=True)
    same = predictor.configured(PredictOptions())
    assert (same.threshold, same.min_area, same.amp, same.model) == (0.4, 7, True, predictor.model)
    over = predictor.configured(PredictOptions(threshold=0.6, min_area=0, amp=False))
    assert (over.threshold, over.min_area, over.amp) == (0.6, 0, False)
    assert (predictor.threshold, predictor.min_area, predictor.amp) == (0.4, 7, True)
    result = predict_image(predictor, random_rgb(40, 40), PredictOptions(tile=64))
    assert (result.threshold, result.min_area) == (0.4, 7)


def test_amp_option_overrides_the_predictor(monkeypatch: pytest.MonkeyPatch) -> None:
    from fissure.prediction import predictor as module

    seen: list[bool | None] = []

    def spy(model, tiles, policy, amp=None):
        seen.append(amp)
        return torch.zeros(tiles.shape[0], 1, *tiles.shape[-2:])

    monkeypatch.setattr(module, "forward_logits", spy)
    predictor = Predictor(Recorder(), amp=True)
    images = [(0, random_rgb(40, 40))]
    list(predict_many(predictor, images, PredictOptions(tile=64)))
    list(predict_many(predictor, images, PredictOptions(tile=64, amp=False)))
    assert seen == [True, False] and predictor.amp


def test_predict_many_yields_payloads_and_leaves_no_inference_mode() -> None:
    images = ((name, random_rgb(30 + i, 40)) for i, name in enumerate("abc"))
    seen = []
    results = predict_many(Predictor(Recorder()), images, PredictOptions(tile=64))
    for payload, prediction in results:
        assert not torch.is_inference_mode_enabled()
        seen.append((payload, prediction.mask.shape))
    assert sorted(seen) == [("a", (30, 40)), ("b", (31, 40)), ("c", (32, 40))]


def test_as_predictor_takes_a_loaded_checkpoint(tmp_path: Path) -> None:
    from fissure.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tiny_checkpoint(tmp_path, mode="resize", size=32))
    predictor = as_predictor(ckpt, "cpu")
    assert predictor.policy == ckpt.policy and predictor.threshold == ckpt.threshold
    assert predictor.min_area == ckpt.config.eval.min_area
    assert next(predictor.model.parameters()).is_contiguous(memory_format=torch.channels_last)
    assert as_predictor(predictor) is predictor


def test_precision_comes_from_the_checkpoint(tmp_path: Path) -> None:
    bare = {"format": "fissure-checkpoint", "model": {"encoder": "resnet18"}, "state_dict": {}}
    assert checkpoint_from_dict(bare).policy.amp
    assert not checkpoint_from_dict({**bare, "config": {"train": {"amp": False}}}).policy.amp
    cfg = config_from_dict({"model": {"encoder": "resnet18"}, "train": {"amp": False}})
    path = tmp_path / "fp32.pt"
    make_checkpoint(tiny_model(), cfg, epoch=0).save(path)
    assert not Predictor.from_checkpoint(path, "cpu").amp
    assert Predictor.from_checkpoint(tiny_checkpoint(tmp_path), "cpu").amp
