"""The notebook's workflow through the CLI and the library, on Snowpark's local-testing stage.

Upload a dataset under the notebook's exact names, train from the stage, push the model,
then evaluate and predict from the stage and write predictions back to it. No account:
the emulator allows one active session per process, so one module-scoped session serves
every test (and is what ``open_session()`` finds, as a notebook's session would be).

These go through ``fissure.cli`` and ``fissure.api``, which open the one session an
operation uses and pass it to :mod:`fissure.snowflake`.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image
from stage_helpers import MANIFEST, STAGE, CountingGets, gzip_dataset, staged_names

from fissure import api as workflow
from fissure.api import build_source
from fissure.cli import cli
from fissure.config import DataConfig, SnowflakeConfig, load_config
from fissure.snowflake import session as sessions
from fissure.snowflake.environment import READER_ENV
from fissure.snowflake.session import open_session
from fissure.snowflake.source import StageSource
from fissure.snowflake.transfer import fetch_file, push_files

MODELS = f"{STAGE}/models/run1"
OVERRIDES = [
    "model.encoder=resnet18",
    "data.size=64",
    "train.epochs=1",
    "train.batch_size=2",
    "train.num_workers=0",
    "eval.thresholds=19",
]


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def sets(overrides: list[str]) -> list[str]:
    return [x for item in overrides for x in ("--set", item)]


def one_line_error(result, needle: str) -> None:
    assert result.exit_code != 0
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and needle in errors[0], result.output


@pytest.fixture(autouse=True)
def detected_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stage reader is detected (the cache, here), whatever the environment says."""
    monkeypatch.delenv(READER_ENV, raising=False)


@pytest.fixture(scope="module")
def dataset(session, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 gzip pairs (8 train, 2 val, 2 test) uploaded under the default names."""
    root = gzip_dataset(tmp_path_factory.mktemp("gzdata") / "ds")
    result = run("snowflake", "upload", root, "--quiet")
    assert result.exit_code == 0, result.output
    assert f"uploaded 24 file(s), 0 already there; {MANIFEST} lists 12 pair(s)" in result.output
    return root


@pytest.fixture(scope="module")
def stage_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config reading the stage; its cache lives under the test's temporary folder."""
    folder = tmp_path_factory.mktemp("stagecfg")
    path = folder / "stage.yaml"
    cache = folder / "cache"
    path.write_text(f"data:\n  source: stage\n  snowflake:\n    cache_dir: {cache}\n")
    return path


@pytest.fixture(scope="module")
def trained(dataset, stage_yaml, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch trained from the stage through the CLI, pushed to ``MODELS``."""
    out = tmp_path_factory.mktemp("stagerun") / "run"
    result = run(
        "train", "--config", stage_yaml, "--out", out, "--quiet", "--push", MODELS + "/",
        *sets(OVERRIDES),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"pushed best.pt, config.yaml, history.csv, curves.png to {MODELS}/" in result.output
    return out


def test_upload_twice_gives_the_same_files_and_rows(session, dataset, tmp_path) -> None:
    result = run("snowflake", "upload", dataset, "--quiet")
    assert result.exit_code == 0, result.output
    assert "uploaded 0 file(s), 24 already there" in result.output
    assert "lists 12 pair(s)" in result.output
    for prefix in ("images", "masks"):
        names = staged_names(session, STAGE, prefix, tmp_path / prefix)
        assert len(names) == 12 and all(n.endswith(".png.gz") for n in names)
    assert session.table(MANIFEST).count() == 12
    assert session.table(f"{MANIFEST}_TABLE").count() == 12
    groups = session.table(MANIFEST).to_pandas()["IMAGE_GROUP"].value_counts().to_dict()
    assert groups == {"TRAIN": 8, "VAL": 2, "TEST": 2}


def test_train_from_the_stage_pushes_the_run(session, trained, tmp_path) -> None:
    for name in ("best.pt", "last.pt", "history.csv", "config.yaml"):
        assert (trained / name).is_file(), name
    text = (trained / "config.yaml").read_text()
    stored = yaml.safe_load(text)["data"]
    assert stored["source"] == "stage" and stored["snowflake"]["connection"] is None
    assert "password" not in text.lower() and "token" not in text.lower()
    for name in ("best.pt", "config.yaml", "history.csv"):
        got = fetch_file(session, f"{MODELS}/{name}", tmp_path)
        assert got.read_bytes() == (trained / name).read_bytes(), name


def test_library_train_refreshes_the_cache(session, dataset, stage_yaml, tmp_path, monkeypatch):
    cfg = load_config(stage_yaml, OVERRIDES)
    gets = CountingGets(session, monkeypatch)
    fresh = load_config(stage_yaml, [*OVERRIDES, "data.snowflake.refresh=true"])
    result = workflow.train(fresh, tmp_path / "run", progress=False, log=print)
    assert result.best.is_file() and len(result.history) == 1
    assert len(gets.calls) == 20  # train and val pairs fetched again, test not needed yet
    # A refresh is done once: the run's config.yaml does not ask a resume for another.
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]["snowflake"][
        "refresh"] is False

    gets = CountingGets(session, monkeypatch)
    workflow.train(cfg, tmp_path / "run2", progress=False, log=print)
    assert gets.calls == []  # from the cache


def test_data_stats_of_a_stage_config(session, dataset, stage_yaml) -> None:
    """`fissure data stats CONFIG` reads the stage through the operation's session, which
    stays the notebook's (the emulator's) afterwards."""
    result = run("data", "stats", stage_yaml, "--quiet")
    assert result.exit_code == 0, result.output
    assert "train" in result.output and "test" in result.output
    assert open_session() is session


def test_evaluate_from_the_stage(trained, stage_yaml) -> None:
    for args in ([trained / "best.pt"], [trained / "best.pt", "--data", stage_yaml]):
        result = run("evaluate", *args, "--split", "test", "--quiet")
        assert result.exit_code == 0, result.output
        assert f"test split: 2 images from {STAGE} (manifest {MANIFEST})" in result.output


def test_stage_checkpoints_plain_and_gzip(session, trained, stage_yaml, tmp_path) -> None:
    packed = tmp_path / "best_model.pth.gz"
    packed.write_bytes(gzip.compress((trained / "best.pt").read_bytes()))
    push_files(session, [packed], f"{STAGE}/models")
    for ckpt in (f"{MODELS}/best.pt", f"{STAGE}/models/best_model.pth.gz"):
        result = run("evaluate", ckpt, "--data", stage_yaml, "--quiet")
        assert result.exit_code == 0, result.output
        assert f"test split: 2 images from {STAGE}" in result.output
    model, ckpt = workflow.load_model(f"{STAGE}/models/best_model.pth.gz")
    assert ckpt.encoder == "resnet18" and not model.training
    one_line_error(
        run("evaluate", f"{STAGE}/models/absent.pt", "--quiet"), "absent.pt: file not found"
    )


def test_predict_from_and_to_the_stage(session, trained, dataset, tmp_path) -> None:
    photos = sorted((dataset / "test" / "images").glob("*.png.gz"))
    out = f"{STAGE}/predictions/run1/"
    result = run("predict", f"{STAGE}/models/best_model.pth.gz", *photos, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert f"{out}predictions.csv" in result.output

    pulled = tmp_path / "pulled"
    result = run("snowflake", "pull", f"{out}predictions.json", "--out", pulled)
    assert result.exit_code == 0, result.output
    records = json.loads((pulled / "predictions.json").read_text())
    assert len(records) == len(photos)
    first = records[0]
    assert first["mask"].startswith(out) and first["overlay"].startswith(out)
    mask_path = fetch_file(session, first["mask"], pulled)
    mask = np.asarray(Image.open(mask_path))
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}

    local = tmp_path / "local"  # a stage checkpoint with a local --out
    result = run("predict", f"{MODELS}/best.pt", photos[0], "--out", local, "--quiet")
    assert result.exit_code == 0, result.output
    assert (local / "predictions.csv").is_file()


def test_connection_option(session, trained, tmp_path, monkeypatch) -> None:
    result = run("evaluate", f"{MODELS}/best.pt", "--connection", "local", "--quiet")
    assert result.exit_code == 0, result.output
    assert open_session() is session  # still the active one, not closed by the command

    monkeypatch.setenv("SNOWFLAKE_HOME", str(tmp_path))  # no connections.toml there
    one_line_error(
        run("predict", f"{MODELS}/best.pt", tmp_path, "--out", tmp_path / "p", "--connection",
            "nope"),
        "Snowflake connection 'nope': cannot connect",
    )  # fmt: skip
    monkeypatch.setattr(sessions, "active_session", lambda: None)
    one_line_error(run("snowflake", "pull", f"{MODELS}/best.pt"), "no Snowflake session")


def test_bad_push_target_fails_before_training(dataset, stage_yaml, tmp_path) -> None:
    out = tmp_path / "run"
    result = run("train", "--config", stage_yaml, "--out", out, "--push", "models/run1/")
    one_line_error(result, "'models/run1/': not a stage path")
    assert not out.exists()
    result = run("train", "--config", stage_yaml, "--out", out, "--push", f"{STAGE}/../x/")
    one_line_error(result, "'..'")
    result = run("train", "--resume", out, "--refresh")
    assert result.exit_code != 0 and "--refresh applies to new runs" in result.output


def test_resume_can_push(session, trained, tmp_path) -> None:
    copy = shutil.copytree(trained, tmp_path / "run")  # resuming rewrites the run folder
    result = run("train", "--resume", copy, "--push", f"{STAGE}/models/run1b", "--quiet")
    assert result.exit_code == 0, result.output
    got = fetch_file(session, f"{STAGE}/models/run1b/best.pt", tmp_path / "got")
    assert got.read_bytes() == (copy / "best.pt").read_bytes()


# -- a real account ------------------------------------------------------------------------------


@pytest.mark.snowflake
def test_live_upload_train_push_evaluate(tmp_path) -> None:
    """Needs FISSURE_SNOWFLAKE_CONNECTION, and writes only to FISSURE_CI_STAGE / V_FISSURE_CI
    in FISSURE_SNOWFLAKE_DATABASE.FISSURE_SNOWFLAKE_SCHEMA (never the notebook's names)."""
    connection = os.environ.get("FISSURE_SNOWFLAKE_CONNECTION")
    database = os.environ.get("FISSURE_SNOWFLAKE_DATABASE")
    schema = os.environ.get("FISSURE_SNOWFLAKE_SCHEMA")
    if not (connection and database and schema):
        pytest.skip("set FISSURE_SNOWFLAKE_CONNECTION, _DATABASE and _SCHEMA")
    names = ["--database", database, "--schema", schema]
    root = gzip_dataset(tmp_path / "ds")
    for _ in range(2):
        result = run(
            "snowflake",
            "upload",
            root,
            "--stage",
            "FISSURE_CI_STAGE",
            "--manifest",
            "V_FISSURE_CI",
            "--connection",
            connection,
            *names,
        )
        assert result.exit_code == 0, result.output
    assert "uploaded 0 file(s), 24 already there" in result.output
    cfg = tmp_path / "live.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "source": "stage",
                    "snowflake": {
                        "database": database,
                        "schema": schema,
                        "stage": "FISSURE_CI_STAGE",
                        "manifest": "V_FISSURE_CI",
                        "cache_dir": str(tmp_path / "cache"),
                    },
                }
            }
        )
    )
    stage = f"@{database}.{schema}.FISSURE_CI_STAGE/models/ci"
    result = run(
        "train",
        "--config",
        cfg,
        "--out",
        tmp_path / "run",
        "--quiet",
        "--connection",
        connection,
        "--push",
        stage,
        *sets(OVERRIDES),
    )
    assert result.exit_code == 0, result.output
    result = run("evaluate", f"{stage}/best.pt", "--data", cfg, "--connection", connection)
    assert result.exit_code == 0, result.output


def test_predict_a_stage_image(session, trained, stage_yaml, tmp_path) -> None:
    data = load_config(stage_yaml).data
    source = StageSource.from_config(data.snowflake, session=session, progress=False)
    image = source.samples("test")[0].image  # @.../images/<name>.gz
    out = tmp_path / "pred"
    result = run("predict", f"{MODELS}/best.pt", image, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    records = json.loads((out / "predictions.json").read_text())
    assert records[0]["image"] == image
    assert Image.open(out / Path(records[0]["mask"]).name).size == (64, 64)
    folder = image.rsplit("/", 1)[0] + "/"
    one_line_error(
        run("predict", f"{MODELS}/best.pt", folder, "--out", out, "--quiet"),
        "cannot be listed in Snowpark's local emulator",
    )


def test_build_source_on_a_local_connection(session, dataset, tmp_path) -> None:
    data = DataConfig(
        source="stage",
        snowflake=SnowflakeConfig(connection="local", cache_dir=str(tmp_path / "cache")),
    )
    source = build_source(data)
    assert isinstance(source, StageSource) and source._session is session
    sample = source.samples("test")[0]
    plain = fetch_file(session, sample.image, tmp_path).read_bytes()
    assert gzip.decompress(source.read(sample.image)) == plain
