"""Tests for prediction over files and folders (fissure.prediction.files), directly and
through ``fissure predict``."""

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
from prediction_stand_ins import random_rgb, tiny_checkpoint, tiny_model
from torch import nn

from fissure.cli import cli
from fissure.errors import DataError, FissureError
from fissure.prediction import files as files_module
from fissure.prediction.cracks import analyse_cracks
from fissure.prediction.files import (
    encode_mask,
    encode_overlay,
    encode_probability,
    overlay_image,
    predict_files,
    write_outputs,
)
from fissure.prediction.options import OutputOptions, PredictOptions
from fissure.prediction.predictor import Predictor, predict_image
from fissure.prediction.records import (
    CRACK_FIELDS,
    crack_geojson,
    crack_rows,
    cracks_csv,
    prediction_record,
)


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _photo_folder(root: Path) -> None:
    """Six awkward inputs: a stem clash, gzip, EXIF rotation, RGBA and 16-bit gray."""
    (root / "sub").mkdir(parents=True)
    Image.fromarray(random_rgb(70, 90)).save(root / "a.png")
    Image.fromarray(random_rgb(33, 47, seed=1)).save(root / "sub" / "a.png")
    (root / "b.png.gz").write_bytes(gzip.compress(_png_bytes(Image.fromarray(random_rgb(50, 64)))))
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(random_rgb(40, 60)).save(root / "c.jpg", exif=exif)
    with_alpha = np.dstack([random_rgb(45, 45), np.zeros((45, 45), np.uint8)])
    Image.fromarray(with_alpha).save(root / "d.png")
    gray16 = np.random.default_rng(2).integers(0, 65535, (48, 52)).astype(np.uint16)
    Image.fromarray(gray16).save(root / "e.png")


def test_predict_files_writes_what_the_output_options_ask(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path, all_crack=True)
    _photo_folder(tmp_path / "photos")
    out = tmp_path / "out"
    options = PredictOptions(px_per_mm=2.0, min_area=3, device="cpu")
    output = OutputOptions(overlay=False, save_prob=True, glob="*.png")
    records = predict_files(ckpt, [tmp_path / "photos"], out, options, output, progress=False)
    assert [Path(r["image"]).name for r in records] == ["a.png", "d.png", "e.png"]
    assert sorted(p.name for p in out.iterdir()) == [
        "a.png",
        "a_prob.png",
        "cracks.csv",
        "d.png",
        "d_prob.png",
        "e.png",
        "e_prob.png",
        "predictions.csv",
        "predictions.json",
    ]
    for record in records:
        assert record["overlay"] is None and record["probability"].endswith("_prob.png")
        assert (record["min_area"], record["px_per_mm"], record["tta"]) == (3, 2.0, False)
        assert record["threshold"] == 0.5 and record["mode"] == "tiled"
    assert json.loads((out / "predictions.json").read_text()) == records
    # a rerun into the same folder does not predict its own masks
    again = predict_files(ckpt, [tmp_path / "photos", out], out, options, output, progress=False)
    assert len(again) == 3


def test_predict_files_takes_the_checkpoint_defaults(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path)
    Image.fromarray(random_rgb(40, 50)).save(tmp_path / "p.png")
    records = predict_files(ckpt, [tmp_path / "p.png"], tmp_path / "out", progress=False)
    record = records[0]
    assert (record["min_area"], record["threshold"], record["tile"], record["overlap"]) == (
        20,
        0.5,
        64,
        16,
    )
    assert Path(record["overlay"]).name == "p_overlay.jpg" and record["probability"] is None


def test_tta_follows_the_checkpoint_unless_an_option_says(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path, tta=True)
    Image.fromarray(random_rgb(40, 50)).save(tmp_path / "p.png")
    runs = {}
    for name, tta in (("default", None), ("off", False)):
        runs[name] = predict_files(ckpt, [tmp_path / "p.png"], tmp_path / name,
                                   PredictOptions(tta=tta), progress=False)[0]
    assert (runs["default"]["tta"], runs["off"]["tta"]) == (True, False)
    (tmp_path / "plain").mkdir()
    plain = predict_image(str(tiny_checkpoint(tmp_path / "plain")), random_rgb(40, 50))
    averaged = predict_image(str(ckpt), random_rgb(40, 50))
    assert averaged.tta and not plain.tta
    assert not np.array_equal(averaged.probability, plain.probability)
    result = CliRunner().invoke(cli, ["predict", str(ckpt), str(tmp_path / "p.png"), "--out",
                                      str(tmp_path / "cli"), "--no-tta", "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "cli" / "predictions.json").read_text())[0]["tta"] is False


def test_records_and_outputs_follow_the_prediction(tmp_path: Path) -> None:
    rgb = random_rgb(40, 30)
    prediction = predict_image(Predictor(tiny_model(all_crack=True)), rgb,
                               PredictOptions(tile=64, tta=True))
    paths = write_outputs(tmp_path, "x", rgb, prediction, OutputOptions(overlay=False))
    assert paths == {"mask": str(tmp_path / "x.png"), "probability": None, "overlay": None}
    assert np.asarray(Image.open(tmp_path / "x.png")).min() == 255
    record = prediction_record("x.png", paths, prediction, PredictOptions())
    assert list(record)[:14] == [
        "image",
        "mask",
        "probability",
        "overlay",
        "width",
        "height",
        "threshold",
        "mode",
        "tile",
        "overlap",
        "tiles",
        "tta",
        "min_area",
        "px_per_mm",
    ]
    assert (record["width"], record["height"], record["tta"], record["min_area"]) == (
        30,
        40,
        True,
        prediction.min_area,
    )


def test_cli_predicts_a_folder_end_to_end(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path, all_crack=True)
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
    ckpt = tiny_checkpoint(tmp_path)
    Image.fromarray(random_rgb(40, 50)).save(tmp_path / "p.png")
    out = tmp_path / "out"
    runner = CliRunner()
    args = ["predict", str(ckpt), str(tmp_path / "p.png"), "--out", str(out), "--quiet"]
    result = runner.invoke(
        cli,
        [*args, "--no-overlay", "--tile", "32", "--overlap", "0", "--tta", "--threshold", "0.3"],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "cracks.csv",
        "p.png",
        "predictions.csv",
        "predictions.json",
    ]
    record = json.loads((out / "predictions.json").read_text())[0]
    assert (record["tile"], record["overlap"], record["tiles"], record["tta"]) == (32, 0, 4, True)
    assert record["threshold"] == 0.3 and record["area_mm2"] is None
    bad = runner.invoke(cli, [*args, "--tile", "50"])
    assert bad.exit_code == 1 and "--tile must be a positive multiple of 32" in bad.output
    missing = runner.invoke(cli, ["predict", str(ckpt), str(tmp_path / "nope"), "--out", str(out)])
    assert missing.exit_code == 1 and "no such file or folder" in missing.output


def test_an_unreadable_image_is_reported_and_the_run_goes_on(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path, all_crack=True)
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    Image.fromarray(random_rgb(40, 50)).save(photos / "a.png")
    (photos / "b.jpg").write_bytes(b"half a JPEG")
    Image.fromarray(random_rgb(30, 40, seed=1)).save(photos / "c.png")
    result = CliRunner().invoke(cli, ["predict", str(ckpt), str(photos), "--out", str(out),
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    assert "2 of 2 image(s) with cracks" in result.output
    assert "1 image(s) could not be read" in result.output and "b.jpg: not a readable" in (
        result.output)
    assert (out / "a.png").is_file() and (out / "c.png").is_file()
    assert not (out / "b.png").exists()
    with (out / "predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [Path(r["image"]).name for r in rows] == ["a.png", "b.jpg", "c.png"]
    assert [r["error"] for r in rows[::2]] == ["", ""]
    assert rows[1]["error"].endswith("b.jpg: not a readable image (unknown format)")
    assert rows[1]["mask"] == "" and rows[1]["n_segments"] == ""
    records = json.loads((out / "predictions.json").read_text())
    assert records[1]["mask"] is None and set(records[1]) == set(records[0])


def test_a_failing_source_stops_the_run(tmp_path: Path) -> None:
    # A network down after its retries, or a lost session: every other image would fail
    # alike, so it is no per-image error row.
    from fissure.errors import SourceUnavailable
    from fissure.prediction.inputs import InputImage

    ckpt = tiny_checkpoint(tmp_path)
    good = _png_bytes(Image.fromarray(random_rgb(40, 50)))

    def down() -> bytes:
        raise SourceUnavailable("@S/photos/b.png: failed after 5 tries (connection reset)")

    images = [InputImage("@S/photos/a.png", lambda: good, PurePosixPath("@S/photos/a.png")),
              InputImage("@S/photos/b.png", down, PurePosixPath("@S/photos/b.png"))]
    with pytest.raises(SourceUnavailable, match="failed after 5 tries"):
        predict_files(ckpt, ["@S/photos"], tmp_path / "out", fetch=lambda spec, glob: images,
                      progress=False)


def test_a_run_of_only_unreadable_images_fails_and_keeps_the_last_tables(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path)
    out = tmp_path / "out"
    Image.fromarray(random_rgb(40, 50)).save(tmp_path / "good.png")
    predict_files(ckpt, [tmp_path / "good.png"], out, progress=False)
    before = (out / "predictions.csv").read_text()
    (tmp_path / "bad.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"^no image could be read: .*bad.png: empty file$"):
        predict_files(ckpt, [tmp_path / "bad.png"], out, progress=False)
    # no mask of the failed run was written, so the last run's tables still hold
    assert (out / "predictions.csv").read_text() == before


def test_a_new_run_removes_the_old_tables_before_its_first_mask(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path)
    out = tmp_path / "out"
    Image.fromarray(random_rgb(40, 50)).save(tmp_path / "a.png")
    predict_files(ckpt, [tmp_path / "a.png"], out, progress=False)
    seen: list[list[str]] = []
    real = files_module.write_outputs

    def watching(out_dir, *args, **kwargs):
        seen.append(sorted(p.name for p in out_dir.iterdir() if p.suffix in (".csv", ".json")))
        return real(out_dir, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(files_module, "write_outputs", watching)
        predict_files(ckpt, [tmp_path / "a.png"], out, progress=False)
    assert seen == [[]]  # no predictions.csv/.json or cracks.csv beside the new mask
    assert (out / "predictions.csv").is_file() and (out / "cracks.csv").is_file()


def test_a_photo_longer_than_jpeg_allows_gets_a_png_overlay(tmp_path: Path) -> None:
    rgb = np.full((2, files_module.JPEG_MAX_SIDE + 1, 3), 128, np.uint8)
    mask = np.zeros(rgb.shape[:2], bool)
    mask[:, :10] = True
    data = encode_overlay(rgb, mask)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(io.BytesIO(data)).size == (files_module.JPEG_MAX_SIDE + 1, 2)


# -- the files' bytes, cracks.csv and GeoJSON ------------------------------------------------


class _DarkIsCrack(nn.Module):
    """Logits from brightness alone: dark pixels (below mid-grey) are crack."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(8.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.scale * x.mean(dim=1, keepdim=True)


def _cracked_photo(height: int = 90, width: int = 120) -> np.ndarray:
    """Grey photo with three dark cracks: a 1-px diagonal, a 5-px bar and a border crack."""
    rgb = np.full((height, width, 3), 200, np.uint8)
    idx = np.arange(10, 50)
    rgb[idx, idx + 5] = 10
    rgb[60:65, 20:100] = 10
    rgb[:, width - 3 :] = 10
    return rgb


def _saved(image: Image.Image, tmp_path: Path, name: str, **kw) -> bytes:
    image.save(tmp_path / name, **kw)
    return (tmp_path / name).read_bytes()


def test_encoded_files_are_the_bytes_pil_writes_to_a_path(tmp_path: Path) -> None:
    rgb, mask = random_rgb(37, 53), random_rgb(37, 53)[..., 0] > 128
    prob = np.random.default_rng(3).random((37, 53)).astype(np.float32)
    assert encode_mask(mask) == _saved(
        Image.fromarray(mask.astype(np.uint8) * 255), tmp_path, "m.png"
    )
    prob8 = Image.fromarray(np.round(prob * 255).astype(np.uint8))
    assert encode_probability(prob) == _saved(prob8, tmp_path, "p.png")
    overlay = Image.fromarray(overlay_image(rgb, mask))
    assert encode_overlay(rgb, mask) == _saved(
        overlay, tmp_path, "o.jpg", quality=90, subsampling=0
    )


def test_cracks_csv_sums_up_to_predictions_csv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With cracks.csv asked for, the summary is the crack analysis's: the mask is traced once.
    def traced_twice(*args: object, **kwargs: object) -> None:
        raise AssertionError("the summary was measured apart from the crack analysis")

    monkeypatch.setattr("fissure.prediction.predictor.measure_cracks", traced_twice)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(_cracked_photo()).save(photos / "cracked.png")
    Image.fromarray(np.full((40, 50, 3), 200, np.uint8)).save(photos / "clean.png")
    options = PredictOptions(px_per_mm=10.0, min_area=5, tile=64)
    records = predict_files(
        Predictor(_DarkIsCrack()), [photos], tmp_path / "out", options, progress=False
    )
    with (tmp_path / "out" / "cracks.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == CRACK_FIELDS
        rows = list(reader)
    assert [r["image"] for r in records] == [str(photos / "clean.png"), str(photos / "cracked.png")]
    assert records[0]["n_segments"] == 0
    assert {r["image"] for r in rows} == {str(photos / "cracked.png")}
    cracked = records[1]
    assert cracked["n_segments"] == len(rows) == 3
    assert cracked["area_px"] == sum(int(r["area_px"]) for r in rows)
    assert cracked["length_px"] == pytest.approx(sum(float(r["length_px"]) for r in rows))
    assert cracked["max_width_px"] == max(float(r["max_width_px"]) for r in rows)
    by_orientation = {r["orientation"]: r for r in rows}
    assert set(by_orientation) == {"diagonal", "horizontal", "vertical"}
    assert float(by_orientation["horizontal"]["max_width_px"]) == 5.0
    assert float(by_orientation["horizontal"]["length_px"]) == pytest.approx(80, rel=0.03)
    assert by_orientation["horizontal"]["width_class"] == "medium"  # 0.5 mm
    assert float(by_orientation["diagonal"]["length_px"]) == pytest.approx(40 * 2**0.5, rel=0.03)
    assert by_orientation["diagonal"]["width_class"] == "fine"  # 0.1 mm
    assert float(by_orientation["vertical"]["length_px"]) == pytest.approx(90, rel=0.05)


def test_crack_rows_follow_the_prediction_and_no_crack_is_a_header() -> None:
    rgb = _cracked_photo()
    options = PredictOptions(tile=64, min_area=5, px_per_mm=4.0, width_bounds=(0.5, 1, 2))
    prediction = predict_image(Predictor(_DarkIsCrack()), rgb, options)
    analysis = analyse_cracks(
        prediction.mask, prediction.min_area, options.px_per_mm, options.width_bounds
    )
    assert analysis.measurements == prediction.measurements
    rows = crack_rows("p.png", analysis.cracks)
    # ids in the order of first pixels: border crack (0.75 mm), diagonal (0.25), bar (1.25)
    assert [r["width_class"] for r in rows] == ["fine", "hairline", "medium"]
    assert rows == [{"image": "p.png", **c.as_dict()} for c in analysis.cracks]
    text = cracks_csv(rows)
    assert text.splitlines()[0] == ",".join(CRACK_FIELDS)
    assert len(text.splitlines()) == 4 and "\r\n" in text
    assert cracks_csv([]) == ",".join(CRACK_FIELDS) + "\r\n"


def test_geojson_outlines_every_crack(tmp_path: Path) -> None:
    Image.fromarray(_cracked_photo()).save(tmp_path / "p.png")
    out = tmp_path / "out"
    options = PredictOptions(tile=64, min_area=5)
    plain = predict_files(
        Predictor(_DarkIsCrack()), [tmp_path / "p.png"], out, options, progress=False
    )
    assert "geojson" not in plain[0] and not list(out.glob("*.geojson"))
    output = OutputOptions(overlay=False, geojson=True)
    records = predict_files(
        Predictor(_DarkIsCrack()), [tmp_path / "p.png"], out, options, output, progress=False
    )
    assert records[0]["geojson"] == str(out / "p.geojson")
    assert list(records[0])[:5] == ["image", "mask", "probability", "overlay", "geojson"]
    collection = json.loads((out / "p.geojson").read_text())
    assert collection["type"] == "FeatureCollection"
    assert (collection["width"], collection["height"]) == (120, 90)
    with (out / "cracks.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    features = collection["features"]
    assert [f["id"] for f in features] == [int(r["id"]) for r in rows] == [1, 2, 3]
    for feature, row in zip(features, rows, strict=True):
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
        assert feature["properties"]["length_px"] == pytest.approx(float(row["length_px"]))
        for ring in feature["geometry"]["coordinates"]:
            assert len(ring) >= 4 and ring[0] == ring[-1]
            assert all(len(point) == 2 for point in ring)
        xs = [x for x, _ in feature["geometry"]["coordinates"][0]]
        assert min(xs) == int(row["x_min"]) - 0.5 and max(xs) == int(row["x_max"]) + 0.5


def test_geojson_of_no_crack_is_an_empty_collection() -> None:
    collection = crack_geojson(analyse_cracks(np.zeros((5, 6), dtype=bool)), "x.png")
    assert collection == {
        "type": "FeatureCollection",
        "image": "x.png",
        "width": 6,
        "height": 5,
        "features": [],
    }


def test_cracks_csv_can_be_left_out(tmp_path: Path) -> None:
    Image.fromarray(_cracked_photo()).save(tmp_path / "p.png")
    output = OutputOptions(overlay=False, cracks=False)
    predict_files(
        Predictor(_DarkIsCrack()),
        [tmp_path / "p.png"],
        tmp_path / "out",
        PredictOptions(tile=64),
        output,
        progress=False,
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "p.png",
        "predictions.csv",
        "predictions.json",
    ]


def test_cracks_csv_is_written_as_the_run_goes_and_whole_or_not_at_all(
    tmp_path: Path,
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, height in (("a", 90), ("b", 60), ("c", 80)):
        Image.fromarray(_cracked_photo(height=height)).save(photos / f"{name}.png")
    out = tmp_path / "out"
    options = PredictOptions(tile=64, min_area=5)
    predict_files(Predictor(_DarkIsCrack()), [photos], out, options, progress=False)
    with (out / "cracks.csv").open(newline="") as handle:
        images = [Path(r["image"]).stem for r in csv.DictReader(handle)]
    assert images == sorted(images) and set(images) == {"a", "b", "c"}  # input order
    before = (out / "cracks.csv").read_bytes()
    calls: list[str] = []
    real = files_module.write_outputs

    def failing_on_the_second(out_dir, name, *args, **kwargs):
        calls.append(name)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(out_dir, name, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(files_module, "write_outputs", failing_on_the_second)
        with pytest.raises(FissureError, match=r"b\.png .*No space left on device"):
            predict_files(Predictor(_DarkIsCrack()), [photos], out, options, progress=False)
    # the first mask of the failed run replaced the old one, so the old table went too;
    # no half-written table or its temporary file is left
    assert not (out / "cracks.csv").exists() and before
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_cli_predict_writes_geojson(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path, all_crack=True)
    Image.fromarray(random_rgb(40, 50)).save(tmp_path / "p.png")
    out = tmp_path / "out"
    args = ["predict", str(ckpt), str(tmp_path / "p.png"), "--out", str(out), "--quiet"]
    result = CliRunner().invoke(cli, [*args, "--geojson"])
    assert result.exit_code == 0, result.output
    collection = json.loads((out / "p.geojson").read_text())
    assert len(collection["features"]) == 1
    with (out / "cracks.csv").open(newline="") as handle:
        assert [int(r["area_px"]) for r in csv.DictReader(handle)] == [40 * 50]
