"""predict-stage (fissure.snowflake.batch): the stored procedure registered and called for real
in Snowpark's emulator over emulator stage files, against ``fissure predict`` on the same
images; the registry's download and the ML Jobs submit call through stand-ins whose
signatures are the installed snowflake-ml-python's."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from stage_helpers import png

from fissure.checkpoint import make_checkpoint
from fissure.config import config_from_dict
from fissure.errors import ConfigError, DataError, FissureError
from fissure.model import build_model
from fissure.prediction import predict_files

pytest.importorskip("snowflake.ml")
from snowflake.ml.jobs import MLJob  # noqa: E402
from snowflake.ml.model import Model, ModelVersion  # noqa: E402
from snowflake.ml.registry import Registry  # noqa: E402

from fissure.snowflake import batch  # noqa: E402
from fissure.snowflake.batch import (  # noqa: E402
    COLUMNS,
    BatchRequest,
    check_request,
    mask_paths,
)
from fissure.snowflake.crack_model import CrackModel  # noqa: E402, F401
from fissure.snowflake.registry import ARTIFACT_FILE  # noqa: E402

# (CrackModel is imported here so that the emulator, which drops the modules a procedure
# imported once it returns, does not import snowflake.ml's model package again at each call.)

STAGE = "@PROJET_FISSURES.STORAGE_SCHEMA.BATCH_STAGE"
FOLDER = f"{STAGE}/photos/"
TABLE = "PROJET_FISSURES.STORAGE_SCHEMA.CRACK_RESULTS"
# stage name -> (size, seed); a sub-folder, a gzip image and a file that is no image
IMAGES = {"photos/a.png": (40, 1), "photos/sub/b.png": (72, 2), "photos/c.png.gz": (50, 3)}


def _rgb(size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size + 8, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    cfg = config_from_dict({"model": {"encoder": "resnet18"}, "data": {"size": 64, "mode": "crop"}})
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    make_checkpoint(build_model("resnet18").eval(), cfg, epoch=0, threshold=0.45).save(path)
    return path


@pytest.fixture(scope="module")
def photos(session, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The images in the emulator's stage and, the same bytes, in a local folder."""
    local = tmp_path_factory.mktemp("photos")
    for name, (size, seed) in IMAGES.items():
        data = png(_rgb(size, seed))
        data = gzip.compress(data, mtime=0) if name.endswith(".gz") else data
        session.file.put_stream(io.BytesIO(data), f"{STAGE}/{name}", auto_compress=False,
                                overwrite=True)
        (local / Path(name).name).write_bytes(data)
    session.file.put_stream(io.BytesIO(b"notes"), f"{STAGE}/photos/readme.txt",
                            auto_compress=False, overwrite=True)
    return local


@pytest.fixture()
def registry(monkeypatch: pytest.MonkeyPatch, checkpoint: Path) -> mock.MagicMock:
    """The registry as a stand-in of the installed class: model CRACKS, default version V3,
    whose ``export`` writes the checkpoint where the registry would."""
    version = mock.create_autospec(ModelVersion, instance=True)
    version.version_name = "V3"

    def export(target_path: str, **kwargs) -> None:
        folder = Path(target_path) / "model" / "models" / "CRACKS"
        folder.mkdir(parents=True)
        (folder / ARTIFACT_FILE).write_bytes(checkpoint.read_bytes())

    version.export.side_effect = export
    model = mock.create_autospec(Model, instance=True)
    model.default = version
    model.version.return_value = version
    stand_in = mock.create_autospec(Registry)
    stand_in.return_value.get_model.return_value = model
    monkeypatch.setattr("snowflake.ml.registry.Registry", stand_in)
    return stand_in


def _request(**kw) -> BatchRequest:
    return BatchRequest(**{"model": "CRACKS", "version": "V3", "folder": FOLDER,
                           "table": TABLE, **kw})


def _reference(checkpoint: Path, photos: Path, out: Path) -> dict[str, dict]:
    """``fissure predict`` on the local copies: {file name: its predictions.csv row}."""
    predict_files(checkpoint, [photos], out, progress=False)
    with (out / "predictions.csv").open(newline="") as handle:
        return {Path(row["image"]).name: row for row in csv.DictReader(handle)}


def _table(session) -> list[dict]:
    return sorted(session.table(TABLE).to_pandas().to_dict("records"), key=lambda r: r["PATH"])


def test_procedure_predicts_the_stage_as_fissure_predict_does(
        session, photos, registry, checkpoint, tmp_path, monkeypatch):
    registered = []
    real_register = session.sproc.register

    def spy(*args, **kwargs):
        registered.append(kwargs)
        return real_register(*args, **kwargs)

    monkeypatch.setattr(session.sproc, "register", spy)
    request = check_request(_request(masks=f"{STAGE}/pred/"))
    summary = batch.call_procedure(session, request)

    assert registered[0]["execute_as"] == "caller"
    assert {"pytorch", "snowflake-ml-python"} <= set(registered[0]["packages"])
    assert registered[0]["imports"][0][1] == "fissure"
    assert summary | {"errors": []} == {
        "images": 3, "skipped": 0, "predicted": 3, "failed": 0, "masks": 3, "errors": [],
        "table": TABLE, "model": "CRACKS", "version": "V3"}
    rows = _table(session)
    assert [r["PATH"] for r in rows] == [f"{STAGE}/{n}" for n in sorted(IMAGES)]
    assert list(session.table(TABLE).columns) == list(COLUMNS)
    reference = _reference(checkpoint, photos, tmp_path / "ref")
    for row in rows:
        base = row["PATH"].rsplit("/", 1)[1]
        expected = reference[base]
        assert (row["WIDTH"], row["HEIGHT"]) == (int(expected["width"]), int(expected["height"]))
        for column in ("AREA_PX", "AREA_PCT", "N_SEGMENTS", "LENGTH_PX", "MAX_WIDTH_PX",
                       "MEAN_WIDTH_PX", "THRESHOLD"):
            assert row[column] == pytest.approx(float(expected[column.lower()]), abs=1e-6)
        assert row["AREA_MM2"] is None or np.isnan(row["AREA_MM2"])
        assert (row["MODEL_NAME"], row["MODEL_VERSION"]) == ("CRACKS", "V3")
        # the mask written to the stage is the one fissure predict writes
        got = tmp_path / "got" / base
        session.file.get(row["MASK_PATH"], str(got))
        mask_file = next(got.iterdir())
        assert mask_file.read_bytes() == Path(expected["mask"]).read_bytes()
        mask = np.asarray(Image.open(mask_file))
        assert mask.shape == (row["HEIGHT"], row["WIDTH"])
        assert set(np.unique(mask)) <= {0, 255}
    assert rows[1]["MASK_PATH"] == f"{STAGE}/pred/c.png"
    assert rows[2]["MASK_PATH"] == f"{STAGE}/pred/sub/b.png"
    assert (rows[2]["HEIGHT"], rows[2]["WIDTH"]) == (72, 80)


@pytest.fixture(scope="module")
def one(session) -> str:
    """A folder of one small image."""
    session.file.put_stream(io.BytesIO(png(_rgb(32, 5))), f"{STAGE}/one/z.png",
                            auto_compress=False, overwrite=True)
    return f"{STAGE}/one/"


def test_a_second_run_skips_what_the_table_holds_and_redo_replaces_it(
        session, one, registry, monkeypatch):
    table = "PROJET_FISSURES.STORAGE_SCHEMA.AGAIN_RESULTS"
    request = check_request(_request(folder=one, table=table))
    loads = []
    model = batch.load_model(session, request)  # loaded once: this test is about the table
    monkeypatch.setattr(batch, "load_model", lambda s, r: loads.append(r.version) or model)
    assert batch.call_procedure(session, request)["predicted"] == 1
    again = batch.call_procedure(session, request)
    assert (again["skipped"], again["predicted"], loads) == (1, 0, ["V3"])
    assert len(session.table(table).collect()) == 1
    redone = batch.call_procedure(session, check_request(_request(folder=one, table=table,
                                                                  redo=True)))
    assert (redone["skipped"], redone["predicted"]) == (0, 1)
    assert len(session.table(table).collect()) == 1  # replaced, not added
    other = batch.call_procedure(session, check_request(_request(folder=one, table=table,
                                                                 version="V4")))
    assert other["predicted"] == 1  # another version is another set of rows
    assert sorted(r["MODEL_VERSION"] for r in session.table(table).collect()) == ["V3", "V4"]


def test_loading_the_model_leaves_no_copy_in_the_temporary_folder(
        session, one, registry, tmp_path, monkeypatch):
    # Each call used to leave its downloaded checkpoint behind: tens of MB a run in /tmp.
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    model = batch.load_model(session, check_request(_request(folder=one)))
    assert model.checkpoint.config is not None
    assert list(tmp_path.iterdir()) == []


def test_an_unreadable_image_fails_alone(session, photos, registry, tmp_path):
    session.file.put_stream(io.BytesIO(b"not a png"), f"{STAGE}/broken/x.png",
                            auto_compress=False, overwrite=True)
    session.file.put_stream(io.BytesIO(png(_rgb(40, 9))), f"{STAGE}/broken/y.png",
                            auto_compress=False, overwrite=True)
    table = "PROJET_FISSURES.STORAGE_SCHEMA.BROKEN_RESULTS"
    summary = batch.call_procedure(
        session, check_request(_request(folder=f"{STAGE}/broken/", table=table)))
    assert (summary["predicted"], summary["failed"]) == (1, 1)
    assert "x.png" in summary["errors"][0]
    assert [r["PATH"] for r in session.table(table).collect()] == [f"{STAGE}/broken/y.png"]


def test_prepare_request_resolves_the_default_version(session, registry):
    request = batch.prepare_request(session, "snowflake://DB1.SC1.CRACKS", FOLDER, "RESULTS")
    assert (request.model, request.version, request.database, request.schema) == (
        "CRACKS", "V3", "DB1", "SC1")
    registry.assert_called_once_with(session, database_name="DB1", schema_name="SC1")
    model = registry.return_value.get_model.return_value
    batch.prepare_request(session, "CRACKS", FOLDER, "RESULTS", version="V7")
    model.version.assert_called_with("V7")


def test_on_an_account_the_folder_is_spelt_as_the_account_resolves_it(
    session, registry, monkeypatch
):
    # The table's PATH column decides what is done: @db.sch.stage and @DB.SCH.STAGE are
    # one stage on a real account, so a rerun spelt otherwise must skip the same images.
    monkeypatch.setattr(batch, "is_local_testing", lambda s: False)
    request = batch.prepare_request(session, "CRACKS", "@db.sch.batch_stage/Photos",
                                    "RESULTS", masks="@db.sch.batch_stage/Out/")
    assert request.folder == "@DB.SCH.BATCH_STAGE/Photos/"
    assert request.masks == "@DB.SCH.BATCH_STAGE/Out/"


@pytest.mark.parametrize(("change", "error"), [
    ({"table": "bad name;drop"}, ConfigError), ({"folder": "photos/"}, DataError),
    ({"masks": "pred/"}, DataError), ({"folder": f"{STAGE}/../x/"}, DataError),
    ({"px_per_mm": 0.0}, ConfigError),
    ({"masks": f"{FOLDER}masks/"}, ConfigError)])  # the next LIST would take masks for photos
def test_bad_requests_are_one_line_errors(change, error):
    with pytest.raises(error) as info:
        check_request(_request(**change))
    assert "\n" not in str(info.value)


def test_mask_names_keep_the_layout_and_never_collide():
    paths = [f"{FOLDER}a.jpg", f"{FOLDER}a.png.gz", f"{FOLDER}sub/b.tif"]
    assert mask_paths(FOLDER, "@S/pred/", paths) == {
        f"{FOLDER}a.jpg": "@S/pred/a.jpg.png", f"{FOLDER}a.png.gz": "@S/pred/a.png.png",
        f"{FOLDER}sub/b.tif": "@S/pred/sub/b.png"}
    twins = [f"{FOLDER}c.jpg", f"{FOLDER}c.jpg.GZ", f"{FOLDER}c.png"]
    assert mask_paths(FOLDER, "@S/pred/", twins) == {
        f"{FOLDER}c.jpg": "@S/pred/c.jpg.png", f"{FOLDER}c.jpg.GZ": "@S/pred/c.jpg.GZ.png",
        f"{FOLDER}c.png": "@S/pred/c.png.png"}


def test_on_a_compute_pool_the_same_work_is_submitted_as_a_job(session, tmp_path, monkeypatch):
    wheel = tmp_path / "fissure-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"wheel")
    seen = {}
    job = mock.create_autospec(MLJob, instance=True)
    job.id, job.status = "DB.SC.FISSURE_PREDICT_X", "DONE"
    summary = {"images": 2, "predicted": 2}
    job.get_logs.return_value = ["installing", batch.SUMMARY_TAG + json.dumps(summary)]

    def submitted(dir_path, compute_pool, **kwargs):
        seen.update(kwargs, compute_pool=compute_pool,
                    files=sorted(p.name for p in Path(dir_path).iterdir()),
                    request=json.loads((Path(dir_path) / "request.json").read_text()),
                    spec=json.loads((Path(dir_path) / "fissure_job.json").read_text()))
        return job

    stand_in = mock.create_autospec(__import__("snowflake.ml.jobs").ml.jobs.submit_directory,
                                    side_effect=submitted)
    monkeypatch.setattr("snowflake.ml.jobs.submit_directory", stand_in)
    request = check_request(_request(masks=f"{STAGE}/pred/"))
    lines = []
    got = batch.run_on_pool(session, request, "GPU_POOL", lines.append, wheel=wheel)
    assert got == summary
    assert seen["compute_pool"] == "GPU_POOL"
    assert seen["stage_name"] == f"{STAGE}/fissure_jobs/"
    assert seen["entrypoint"] == "fissure_job.py" and seen["target_instances"] == 1
    assert "pip_requirements" not in seen and "parallel" not in seen
    assert seen["files"] == ["fissure-0.1.0-py3-none-any.whl", "fissure_job.json",
                             "fissure_job.py", "request.json"]
    assert BatchRequest(**seen["request"]) == request
    assert seen["spec"]["args"] == ["fissure.snowflake.batch", "{payload}/request.json"]
    assert seen["spec"]["distributed"] is False


def test_a_job_without_a_summary_is_an_error(session, tmp_path, monkeypatch):
    wheel = tmp_path / "fissure-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"wheel")
    job = mock.create_autospec(MLJob, instance=True)
    job.id, job.status = "J", "DONE"
    job.get_logs.return_value = ["no summary"]
    monkeypatch.setattr("snowflake.ml.jobs.submit_directory", mock.create_autospec(
        __import__("snowflake.ml.jobs").ml.jobs.submit_directory, return_value=job))
    with pytest.raises(FissureError, match="summary"):
        batch.run_on_pool(session, check_request(_request()), "POOL", lambda line: None,
                          wheel=wheel)


def test_the_job_side_prints_its_summary(session, one, registry, tmp_path, monkeypatch,
                                         capsys):
    monkeypatch.setattr("fissure.snowflake.session.open_session", lambda *a, **k: session)
    request_file = tmp_path / "request.json"
    table = "PROJET_FISSURES.STORAGE_SCHEMA.JOB_RESULTS"
    request_file.write_text(check_request(_request(folder=one, table=table)).to_json())
    assert batch.main([str(request_file)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(line.removeprefix(batch.SUMMARY_TAG))["predicted"] == 1
