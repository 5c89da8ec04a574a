"""The registry's CustomModel (fissure.snowflake.crack_model) predicts as ``fissure predict``
does, from image bytes, local paths and emulator stage paths, and survives the registry's
own local packaging (signature inference, pickling, artifacts) unchanged."""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("snowflake.ml")

from fissure.checkpoint import make_checkpoint  # noqa: E402
from fissure.config import config_from_dict  # noqa: E402
from fissure.model import build_model  # noqa: E402
from fissure.prediction.files import predict_files  # noqa: E402
from fissure.prediction.options import OutputOptions, PredictOptions  # noqa: E402
from fissure.prediction.predictor import predict_image  # noqa: E402
from fissure.snowflake.crack_model import (  # noqa: E402
    INPUT_COLUMNS,
    MEASURE_COLUMNS,
    OUTPUT_COLUMNS,
    CrackModel,
    input_frame,
    load_local,
    sample_input,
)

SIZES = [(48, 80), (96, 64), (70, 70)]  # (H, W): one bigger than a 64-px tile, so tiled
MEASURES = [c.lower() for c in MEASURE_COLUMNS]


def _rgb(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth blobs (not white noise), so that a random network's mask has real shapes."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((width, height), Image.BILINEAR))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A checkpoint whose threshold gives masks of several cracks, and three photos."""
    root = tmp_path_factory.mktemp("crack_model")
    torch.manual_seed(0)
    model = build_model("resnet18").eval()
    cfg = config_from_dict({"model": {"encoder": "resnet18"},
                            "data": {"size": 64, "mode": "crop"}, "eval": {"min_area": 3}})
    photos = root / "photos"
    photos.mkdir()
    for i, (h, w) in enumerate(SIZES):
        Image.fromarray(_rgb(h, w, i)).save(photos / f"p{i}.png")
    prob = predict_image(model, _rgb(*SIZES[0], 0)).probability
    threshold = float(np.quantile(prob, 0.8))  # a fifth of the pixels: blobs, not all or none
    make_checkpoint(model, cfg, epoch=3, threshold=threshold).save(root / "best.pt")
    return {"ckpt": root / "best.pt", "photos": photos, "root": root}


@pytest.fixture(scope="module")
def crack_model(files: dict[str, Path]) -> CrackModel:
    return load_local(files["ckpt"], device="cpu")


def _reference(files: dict[str, Path], out: Path, px_per_mm: float | None = None) -> list[dict]:
    options = PredictOptions(device="cpu", px_per_mm=px_per_mm)
    return predict_files(files["ckpt"], [files["photos"]], out, options,
                         OutputOptions(overlay=False), progress=False)


def _mask(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def _assert_same(result, records: list[dict]) -> None:
    assert list(result.columns) == list(OUTPUT_COLUMNS) and len(result) == len(records)
    cracked = 0
    for record, (_, row) in zip(records, result.iterrows(), strict=True):
        mask_file = Path(record["mask"]).read_bytes()
        assert row["ERROR"] == ""
        np.testing.assert_array_equal(_mask(row["MASK_PNG"]), _mask(mask_file))
        assert row["MASK_PNG"] == mask_file
        assert (row["WIDTH"], row["HEIGHT"]) == (record["width"], record["height"])
        assert row["THRESHOLD"] == pytest.approx(record["threshold"], abs=0)
        assert (row["MODE"], row["TILES"], row["MIN_AREA"]) == (record["mode"], record["tiles"],
                                                       record["min_area"])
        for name in MEASURES:
            want = record[name]
            if want is None:
                assert math.isnan(row[name.upper()]), name
            else:
                assert row[name.upper()] == pytest.approx(want, abs=1e-6), name
        cracked += record["n_segments"] > 0
    assert cracked >= 2, "the fixture should give masks with cracks to compare"


def test_image_bytes_give_what_fissure_predict_writes(files, crack_model, tmp_path):
    records = _reference(files, tmp_path / "ref")
    data = [Path(r["image"]).read_bytes() for r in records]
    _assert_same(crack_model.predict(input_frame(images=data)), records)


def test_paths_and_a_scale_give_what_fissure_predict_writes(files, crack_model, tmp_path):
    records = _reference(files, tmp_path / "ref", px_per_mm=2.5)
    assert records[0]["length_mm"] is not None
    paths = [r["image"] for r in records]
    _assert_same(crack_model.predict(input_frame(paths=paths, px_per_mm=2.5)), records)


def test_rows_with_and_without_a_scale_and_a_bad_row(files, crack_model, tmp_path):
    plain = _reference(files, tmp_path / "plain")
    paths = [r["image"] for r in plain]
    frame = input_frame(paths=[paths[0], str(tmp_path / "missing.png"), paths[0]],
                        px_per_mm=[None, None, 4.0])
    result = crack_model.predict(frame)
    first, bad, scaled = (row for _, row in result.iterrows())
    assert first["ERROR"] == "" and first["LENGTH_PX"] == pytest.approx(plain[0]["length_px"])
    assert math.isnan(first["LENGTH_MM"])
    assert scaled["LENGTH_MM"] == pytest.approx(plain[0]["length_px"] / 4.0, abs=1e-6)
    assert "missing.png" in bad["ERROR"] and "not found" in bad["ERROR"]
    assert (bad["MASK_PNG"], bad["AREA_PX"], bad["WIDTH"]) == (b"", -1, -1)
    assert math.isnan(bad["LENGTH_PX"])
    assert result["AREA_PX"].dtype == np.int64 and result["LENGTH_MM"].dtype == np.float64


def test_a_row_without_image_or_path_and_a_corrupt_image(crack_model):
    frame = input_frame(images=[b"not an image", None], paths=[None, None])
    result = crack_model.predict(frame)
    assert "not a readable image" in result["ERROR"][0]
    assert "neither IMAGE nor PATH" in result["ERROR"][1]


def test_missing_columns_count_as_null(files, crack_model):
    data = (files["photos"] / "p0.png").read_bytes()
    only_images = input_frame(images=[data])[["IMAGE"]]
    result = crack_model.predict(only_images)
    assert result["ERROR"][0] == "" and math.isnan(result["LENGTH_MM"][0])


def test_stage_paths_are_read_with_snowflake_file(files, crack_model, session, tmp_path):
    """In the emulator, as inside Snowflake: PATH cells starting with @ go to SnowflakeFile."""
    records = _reference(files, tmp_path / "ref")
    stage_paths = []
    for record in records:
        name = Path(record["image"]).name
        with open(record["image"], "rb") as handle:
            session.file.put_stream(handle, f"@CRACK_MODEL_STAGE/photos/{name}",
                                    auto_compress=False, overwrite=True)
        stage_paths.append(f"@CRACK_MODEL_STAGE/photos/{name}")
    _assert_same(crack_model.predict(input_frame(paths=stage_paths)), records)
    missing = crack_model.predict(input_frame(paths=["@CRACK_MODEL_STAGE/photos/none.png"]))
    assert missing["ERROR"][0].startswith("@CRACK_MODEL_STAGE/photos/none.png: ")


def test_the_registry_packs_and_loads_it_unchanged(files, crack_model, tmp_path):
    """``log_model``'s client half, run locally with the library's own packager: the
    signature is inferred from the sample input, the class pickled, the checkpoint stored as
    an artifact, fissure's code shipped; the loaded model predicts the same."""
    model_packager = pytest.importorskip("snowflake.ml.model._packager.model_packager")
    from snowflake.ml._internal.platform_capabilities import PlatformCapabilities

    import fissure
    from fissure.snowflake.registry import ARTIFACT_FILE, ModelRef, Registration, log_arguments

    arguments = log_arguments(fissure.load_checkpoint(files["ckpt"]),
                              Registration(ModelRef("CRACKS")), tmp_path, "test")
    packager = model_packager.ModelPackager(str(tmp_path / "pkg"))
    # mock_features: the library's own test hook; else it asks the active session (the
    # emulator's, which cannot answer) what the account supports.
    with warnings.catch_warnings(), PlatformCapabilities.mock_features():
        warnings.simplefilter("ignore")  # the registry's notes on the sample's null cells
        meta = packager.save(name="CRACKS", model=arguments["model"],
                             sample_input_data=arguments["sample_input_data"],
                             code_paths=arguments["code_paths"],
                             conda_dependencies=arguments["conda_dependencies"], options={})
    signature = meta.signatures["predict"]
    assert [(f.name, f.as_snowpark_type().__class__.__name__) for f in signature.inputs] == [
        ("IMAGE", "BinaryType"), ("PATH", "StringType"), ("PX_PER_MM", "DoubleType")]
    assert [f.name for f in signature.outputs] == list(OUTPUT_COLUMNS)
    assert (tmp_path / "pkg/models/CRACKS/artifacts" / ARTIFACT_FILE).is_file()
    assert (tmp_path / "pkg/code/fissure/snowflake/crack_model.py").is_file()
    conda = (tmp_path / "pkg/env/conda.yml").read_text("utf-8")
    assert "pytorch>=2.2" in conda and "scikit-image>=0.22" in conda
    assert Path(fissure.__file__).parent.name == "fissure"

    loaded = model_packager.ModelPackager(str(tmp_path / "pkg"))
    loaded.load()
    assert type(loaded.model).__name__ == "CrackModel"
    data = [(files["photos"] / f"p{i}.png").read_bytes() for i in range(len(SIZES))]
    frame = input_frame(images=data, px_per_mm=3.0)
    again, first = loaded.model.predict(frame), crack_model.predict(frame)
    assert again.drop(columns="MASK_PNG").equals(first.drop(columns="MASK_PNG"))
    assert list(again["MASK_PNG"]) == list(first["MASK_PNG"])


def test_sample_input_has_every_input_column_and_runs(crack_model):
    sample = sample_input()
    assert list(sample.columns) == list(INPUT_COLUMNS) and len(sample) == 2
    result = crack_model.predict(sample)
    assert list(result["ERROR"]) == ["", ""]
    assert math.isnan(result["LENGTH_MM"][0]) and result["LENGTH_MM"][1] == pytest.approx(
        result["LENGTH_PX"][1] / 4.0)
