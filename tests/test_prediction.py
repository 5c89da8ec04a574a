"""Tests for prediction on photos of any size (fissure.prediction, fissure.prediction_files)."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import Tensor, nn

from fissure.checkpoint import make_checkpoint
from fissure.cli import cli
from fissure.config import config_from_dict
from fissure.data.transforms import image_to_tensor
from fissure.errors import FissureError
from fissure.model import build_model
from fissure.prediction.files import InputImage, find_inputs, output_names
from fissure.prediction.measure import measure_cracks
from fissure.prediction.predictor import Predictor, default_tiling, predict_image, predict_many
from fissure.prediction.tiling import plan_tiles, predict_tiled
from fissure.runtime import InputPolicy, predict_probs


def _model(seed: int = 0, all_crack: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model("resnet18").eval()
    if all_crack:
        # Logit +6 everywhere: every pixel is crack, whatever the image.
        with torch.no_grad():
            model.final.weight.zero_()
            model.final.bias.fill_(6.0)
    return model


def _checkpoint(tmp_path: Path, mode: str = "crop", size: int = 64, **kw) -> Path:
    cfg = config_from_dict({"model": {"encoder": "resnet18"}, "data": {"size": size, "mode": mode}})
    path = tmp_path / f"{mode}{size}.pt"
    make_checkpoint(_model(**kw), cfg, epoch=0).save(path)
    return path


def _rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class _Recorder(nn.Module):
    """Cheap stand-in for the U-Net: a 1x1 conv that logs the batch shapes it is fed."""

    def __init__(self, bias: float = -5.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(0.1)
            self.conv.bias.fill_(bias)
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: Tensor) -> Tensor:
        self.shapes.append(tuple(x.shape))
        return self.conv(x)


def test_default_tiling_follows_the_checkpoint() -> None:
    crop = default_tiling(InputPolicy("crop", 100))
    assert (crop.tile, crop.overlap, crop.resize_size) == (96, 24, None)
    resize = default_tiling(InputPolicy("resize", 256))
    assert (resize.tile, resize.overlap, resize.resize_size) == (256, 64, 256)
    assert resize.resizes(512, 300) and not resize.resizes(513, 300)
    assert default_tiling(InputPolicy("resize", 256), tile=128).resize_size is None
    with pytest.raises(FissureError, match="--tile"):
        default_tiling(InputPolicy("crop", 64), tile=100)
    with pytest.raises(FissureError, match="--overlap"):
        default_tiling(InputPolicy("crop", 64), tile=64, overlap=64)


def test_one_tile_matches_the_untiled_model_away_from_the_borders() -> None:
    model, image = _model(), _rgb(192, 192)
    with torch.no_grad():
        untiled = torch.sigmoid(model(image_to_tensor(image)[None]))[0, 0].numpy()
    fp32 = Predictor(model, amp=False)  # the reference above runs in fp32
    # overlap 64 pads 32 px per side, so the 32-px grid of the encoder stays aligned.
    padded = predict_image(fp32, image, tile=256, overlap=64)
    assert padded.tiles == 1 and padded.probability.shape == (192, 192)
    margin = 48
    interior = np.s_[margin:-margin, margin:-margin]
    np.testing.assert_allclose(padded.probability[interior], untiled[interior], atol=1e-5)
    exact = predict_image(fp32, image, tile=192, overlap=0)
    np.testing.assert_allclose(exact.probability, untiled, atol=1e-6)
    # the default, mixed precision where the CPU has bf16, stays close to it
    mixed = predict_image(model, image, tile=192, overlap=0)
    np.testing.assert_allclose(mixed.probability, untiled, atol=0.02)


@pytest.mark.parametrize("tta", [False, True])
def test_tiles_of_several_images_share_batches(tta: bool) -> None:
    """Batching across images changes nothing: each result equals predict_tiled's."""
    recorder = _Recorder(bias=0.0)
    predictor = Predictor(recorder, InputPolicy("crop", 64), amp=False)
    sizes = [(100, 150), (50, 40), (64, 64), (130, 70)]
    images = [_rgb(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    results = dict(predict_many(predictor, enumerate(images), tta=tta, batch_size=5, overlap=16))
    n_tiles = sum(plan_tiles(h, w, 64, 16).n_tiles for h, w in sizes)
    views = 3 if tta else 1
    assert [s[0] for s in recorder.shapes] == [5] * (n_tiles // 5 * views) + [n_tiles % 5] * views
    for i, image in enumerate(images):
        expected = predict_tiled(recorder, image_to_tensor(image), 64, 16, tta=tta)[0].numpy()
        assert results[i].probability.shape == sizes[i]
        np.testing.assert_allclose(results[i].probability, expected, atol=1e-6)
        assert results[i].tiles == plan_tiles(*sizes[i], 64, 16).n_tiles


def test_resize_checkpoint_shrinks_small_images_like_evaluate(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path, mode="resize", size=32)
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    small = _rgb(50, 40)
    result = predict_image(predictor, small)
    assert (result.mode, result.tiles, result.tile) == ("resize", 1, None)
    expected = predict_probs(predictor.model, image_to_tensor(small)[None], predictor.policy)
    np.testing.assert_allclose(result.probability, expected[0, 0].numpy(), atol=1e-5)
    # Beyond twice the training size the photo is tiled at native resolution.
    large = predict_image(predictor, _rgb(70, 40))
    assert (large.mode, large.tile, large.overlap, large.tiles) == ("tiled", 32, 8, 6)
    assert large.probability.shape == (70, 40)


def test_a_12_megapixel_photo_goes_through_in_bounded_batches() -> None:
    recorder = _Recorder()
    predictor = Predictor(recorder, InputPolicy("crop", 256))
    photo = np.full((3000, 4000, 3), 128, dtype=np.uint8)
    result = predict_image(predictor, photo, batch_size=4)
    plan = plan_tiles(3000, 4000, 256, 64)
    assert result.tiles == plan.n_tiles == len(plan.origins_y) * len(plan.origins_x) == 336
    # Never more than one batch of 256-px tiles in the network at a time.
    assert {s[1:] for s in recorder.shapes} == {(3, 256, 256)}
    assert max(s[0] for s in recorder.shapes) == 4
    assert sum(s[0] for s in recorder.shapes) == plan.n_tiles
    assert result.mask.shape == result.probability.shape == (3000, 4000)
    assert result.probability.dtype == np.float32 and not result.mask.any()


def test_images_as_paths_pil_and_arrays_agree(tmp_path: Path) -> None:
    model, rgb = _Recorder(bias=0.0), _rgb(70, 50)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    (tmp_path / "x.png.gz").write_bytes(gzip.compress((tmp_path / "x.png").read_bytes()))
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    results = [
        predict_image(model, source, tile=64)
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
    stored = Image.fromarray(_rgb(40, 60))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif)
    result = predict_image(_Recorder(), Image.open(io.BytesIO(buffer.getvalue())), tile=64)
    assert result.mask.shape == (60, 40)


def test_a_bare_module_keeps_its_training_mode() -> None:
    model = _Recorder().train()
    predict_image(model, _rgb(40, 40), tile=64)
    assert model.training
    with pytest.raises(FissureError, match="threshold"):
        predict_image(model, _rgb(40, 40), threshold=1.5)


def test_measurements_use_the_scale() -> None:
    result = predict_image(_Recorder(bias=6.0), _rgb(64, 80), tile=64, px_per_mm=4.0)
    assert result.mask.all() and result.measurements.area_px == 64 * 80
    assert result.measurements.area_mm2 == pytest.approx(64 * 80 / 16)
    assert result.measurements == measure_cracks(result.mask, 20, 4.0)


def _image(location: str) -> InputImage:
    return InputImage(location, bytes, PurePosixPath(location))


def test_output_names_tell_same_stems_apart() -> None:
    names = output_names(
        [
            _image(loc)
            for loc in ("/d/a/x.png", "/d/b/x.png", "/d/b/x.jpg", "/d/y.png.gz", "/d/z.png")
        ]
    )
    assert names == ["a__x", "b__x__png", "b__x__jpg", "y", "z"]
    awkward = [
        "/d/a/x.png",
        "/d/b/x.png",
        "/d/a__x.png",
        "/d/y.png",
        "/d/y_prob.png",
        "/d/Z.png",
        "/d/z.png",
    ]
    names = output_names([_image(loc) for loc in awkward])
    files = [f"{n}{s}".casefold() for n in names for s in ("", "_prob", "_overlay")]
    assert len(set(files)) == len(files)


def test_find_inputs_walks_folders_and_needs_fetch_for_stages(tmp_path: Path) -> None:
    (tmp_path / "in" / "deep").mkdir(parents=True)
    (tmp_path / "in" / "out").mkdir()
    for name in ("in/a.png", "in/deep/b.jpg.gz", "in/notes.txt", "in/out/a.png"):
        (tmp_path / name).write_bytes(b"x")
    found = find_inputs([tmp_path / "in", tmp_path / "in" / "a.png"], exclude=tmp_path / "in/out")
    assert [Path(i.source).name for i in found] == ["a.png", "b.jpg.gz"]
    assert len(find_inputs([tmp_path / "in"], "*.png")) == 1
    assert len(find_inputs([tmp_path / "in"])) == 3
    with pytest.raises(FissureError, match="stage inputs need the Snowflake source"):
        find_inputs(["@MY_STAGE/photos"])
    staged = _image("@MY_STAGE/photos/c.png")
    assert find_inputs(["@MY_STAGE/photos"], fetch=lambda spec, pattern: [staged]) == [staged]


def _photo_folder(root: Path) -> None:
    """Six awkward inputs: a stem clash, gzip, EXIF rotation, RGBA and 16-bit gray."""
    (root / "sub").mkdir(parents=True)
    Image.fromarray(_rgb(70, 90)).save(root / "a.png")
    Image.fromarray(_rgb(33, 47, seed=1)).save(root / "sub" / "a.png")
    (root / "b.png.gz").write_bytes(gzip.compress(_png_bytes(Image.fromarray(_rgb(50, 64)))))
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_rgb(40, 60)).save(root / "c.jpg", exif=exif)
    Image.fromarray(np.dstack([_rgb(45, 45), np.zeros((45, 45), np.uint8)])).save(root / "d.png")
    gray16 = np.random.default_rng(2).integers(0, 65535, (48, 52)).astype(np.uint16)
    Image.fromarray(gray16).save(root / "e.png")


def test_cli_predicts_a_folder_end_to_end(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path, all_crack=True)
    _photo_folder(tmp_path / "photos")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli,
        [
            "predict",
            str(ckpt),
            str(tmp_path / "photos"),
            "--out",
            str(out),
            "--px-per-mm",
            "2",
            "--save-prob",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "6 of 6 image(s) with cracks" in result.output
    sizes = {
        "a": (90, 70),
        "sub__a": (47, 33),
        "b": (64, 50),
        "c": (40, 60),
        "d": (45, 45),
        "e": (52, 48),
    }
    for name, size in sizes.items():
        mask = Image.open(out / f"{name}.png")
        assert (mask.mode, mask.size) == ("L", size)
        assert set(np.unique(np.asarray(mask))) == {255}
        assert Image.open(out / f"{name}_prob.png").size == size
        overlay = np.asarray(Image.open(out / f"{name}_overlay.jpg"), dtype=float)
        assert overlay.shape == (size[1], size[0], 3)
        assert overlay[..., 0].mean() > 180 and overlay[..., 1].mean() < 80
    with (out / "predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    records = json.loads((out / "predictions.json").read_text())
    assert [Path(r["image"]).name for r in records] == [
        "a.png",
        "b.png.gz",
        "c.jpg",
        "d.png",
        "e.png",
        "a.png",
    ]
    assert [r["mask"] for r in rows] == [r["mask"] for r in records]
    for record in records:
        width, height = sizes[Path(record["mask"]).stem]
        assert (record["width"], record["height"]) == (width, height)
        assert record["area_px"] == width * height and record["n_segments"] == 1
        assert record["area_mm2"] == pytest.approx(width * height / 4)
        assert record["length_mm"] == pytest.approx(record["length_px"] / 2)
        assert (record["threshold"], record["mode"], record["tile"]) == (0.5, "tiled", 64)


def test_cli_predict_options_and_errors(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    Image.fromarray(_rgb(40, 50)).save(tmp_path / "p.png")
    out = tmp_path / "out"
    runner = CliRunner()
    args = ["predict", str(ckpt), str(tmp_path / "p.png"), "--out", str(out), "--quiet"]
    result = runner.invoke(
        cli,
        [*args, "--no-overlay", "--tile", "32", "--overlap", "0", "--tta", "--threshold", "0.3"],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["p.png", "predictions.csv", "predictions.json"]
    record = json.loads((out / "predictions.json").read_text())[0]
    assert (record["tile"], record["overlap"], record["tiles"], record["tta"]) == (32, 0, 4, True)
    assert record["threshold"] == 0.3 and record["area_mm2"] is None
    bad = runner.invoke(cli, [*args, "--tile", "50"])
    assert bad.exit_code == 1 and "--tile must be a positive multiple of 32" in bad.output
    missing = runner.invoke(cli, ["predict", str(ckpt), str(tmp_path / "nope"), "--out", str(out)])
    assert missing.exit_code == 1 and "no such file or folder" in missing.output


def test_mixed_precision_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    from fissure import runtime as inference

    cpu, x, conv = torch.device("cpu"), torch.randn(1, 3, 8, 8), nn.Conv2d(3, 1, 3)
    monkeypatch.setattr(inference, "cpu_has_bf16", lambda: False)
    assert inference.autocast_dtype(cpu) == torch.float32  # emulated bf16 is slower
    monkeypatch.setattr(inference, "cpu_has_bf16", lambda: True)
    assert inference.autocast_dtype(cpu) == torch.bfloat16
    assert inference.autocast_dtype(cpu, enabled=False) == torch.float32
    with inference.autocast_for(cpu):
        assert conv(x).dtype == torch.bfloat16
    with inference.autocast_for(cpu, enabled=False):
        assert conv(x).dtype == torch.float32


def test_precision_comes_from_the_checkpoint(tmp_path: Path) -> None:
    assert InputPolicy.from_checkpoint({}).amp
    assert not InputPolicy.from_checkpoint({"config": {"train": {"amp": False}}}).amp
    cfg = config_from_dict({"model": {"encoder": "resnet18"}, "train": {"amp": False}})
    path = tmp_path / "fp32.pt"
    make_checkpoint(_model(), cfg, epoch=0).save(path)
    assert not Predictor.from_checkpoint(path, "cpu").amp
    assert Predictor.from_checkpoint(_checkpoint(tmp_path), "cpu").amp
