"""train-job (fissure.snowflake.jobs): the payload, the entry script's torchrun command, the
ML Jobs submit call through a stand-in with the installed library's signature, the streamed
log and the run folder pulled back from the emulator's stage."""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path
from unittest import mock

import pytest
import yaml
from click.testing import CliRunner
from stage_helpers import STAGE

from fissure.cli import cli
from fissure.errors import ConfigError, FissureError

pytest.importorskip("snowflake.ml")
from snowflake.ml import jobs as ml_jobs  # noqa: E402
from snowflake.ml.jobs import MLJob  # noqa: E402

from fissure.snowflake import jobs  # noqa: E402
from fissure.snowflake.jobs import (  # noqa: E402
    ENTRY,
    ENTRY_SCRIPT,
    SPEC,
    JobSpec,
    TrainJob,
    check_train_job,
    follow,
    train_job,
    write_payload,
)

JOBS = f"{STAGE}/jobs/"


def _config(tmp_path: Path, source: str = "stage") -> Path:
    path = tmp_path / "stage.yaml"
    path.write_text(yaml.safe_dump({"data": {"source": source,
                                             "snowflake": {"connection": "prod"}},
                                    "train": {"epochs": 3}}))
    return path


def _wheel(tmp_path: Path) -> Path:
    wheel = tmp_path / "fissure-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"a wheel")
    return wheel


def _job(lines: list[list[str]], statuses: list[str]) -> mock.MagicMock:
    """A stand-in MLJob whose status and log move on at each look."""
    job = mock.create_autospec(MLJob, instance=True)
    job.id = "DB.SC.FISSURE_TRAIN_X_123"
    type(job).status = mock.PropertyMock(side_effect=statuses)
    job.get_logs.side_effect = [*lines, lines[-1]]
    return job


def _command(spec: dict, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The command the real entry script builds for ``spec`` under ``env``."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    namespace: dict = {"__name__": "fissure_job", "__file__": "/mnt/job_stage/app/" + ENTRY}
    exec(compile(ENTRY_SCRIPT, ENTRY, "exec"), namespace)
    return namespace["command"](spec)


def test_the_entry_script_runs_fissure_through_torchrun_on_several_instances(monkeypatch):
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    spec = {"args": ["fissure", "train", "--config", "{payload}/config.yaml"],
            "distributed": True, "master_port": 29500}
    env = {"SNOWFLAKE_JOBS_COUNT": "3", "SNOWFLAKE_JOB_INDEX": "2", "MLRS_HEAD_IP": "10.1.2.3"}
    assert _command(spec, env, monkeypatch) == [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=1", "--nnodes=3",
        "--node-rank=2", "--master-addr=10.1.2.3", "--master-port=29500", "-m", "fissure",
        "train", "--config", "/mnt/job_stage/app/config.yaml"]
    monkeypatch.setattr("torch.cuda.device_count", lambda: 4)
    single = _command(spec, {"SNOWFLAKE_JOBS_COUNT": "1"}, monkeypatch)
    assert single[3:6] == ["--nproc-per-node=4", "--standalone", "-m"]
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    assert _command(spec, {}, monkeypatch)[1:3] == ["-m", "fissure"]
    assert _command({**spec, "distributed": False}, {}, monkeypatch)[1:3] == ["-m", "fissure"]


def test_the_payload_holds_the_wheel_the_files_the_spec_and_the_entry(tmp_path):
    config = _config(tmp_path)
    spec = JobSpec(("fissure", "train"), {"config.yaml": config}, instances=2, distributed=True)
    folder = write_payload(tmp_path / "payload", spec, _wheel(tmp_path))
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["fissure-0.1.0-py3-none-any.whl", "config.yaml", SPEC, ENTRY])
    document = json.loads((folder / SPEC).read_text())
    assert document["args"] == ["fissure", "train"] and document["distributed"] is True
    assert "torch" in document["modules"]
    compile((folder / ENTRY).read_text(), ENTRY, "exec")
    with pytest.raises(ConfigError, match="missing.yaml"):
        write_payload(tmp_path / "p2", JobSpec(("x",), {"c": tmp_path / "missing.yaml"}),
                      _wheel(tmp_path))


@pytest.mark.parametrize(("change", "match"), [
    ({"source": "folder"}, "reads its data from a stage"),
    ({"stage": "jobs/"}, "not a stage path"),
    ({"instances": 0}, "at least 1")])
def test_what_a_job_cannot_run_is_refused_before_anything_is_sent(tmp_path, change, match):
    config = _config(tmp_path, change.pop("source", "stage"))
    request = TrainJob(config, "POOL", change.get("stage", JOBS), change.get("instances", 1))
    with pytest.raises(FissureError, match=match):
        check_train_job(request)


def test_train_job_submits_streams_and_pulls_the_run_back(session, tmp_path, monkeypatch):
    seen: dict = {}
    lines = [[], ["installing fissure"], ["installing fissure", "epoch 1", "epoch 2"]]
    job = _job(lines, ["PENDING", "RUNNING", "DONE"])

    def submitted(dir_path, compute_pool, **kwargs):
        payload = Path(dir_path)
        seen.update(kwargs, compute_pool=compute_pool,
                    files={p.name: p.read_bytes() for p in payload.iterdir()})
        run = json.loads((payload / SPEC).read_text())["args"]
        push = run[run.index("--push") + 1]
        for name in ("best.pt", "config.yaml", "history.csv"):  # what the job's --push sends
            session.file.put_stream(io.BytesIO(name.encode()), push + name,
                                    auto_compress=False, overwrite=True)
        return job

    stand_in = mock.create_autospec(ml_jobs.submit_directory, side_effect=submitted)
    monkeypatch.setattr("snowflake.ml.jobs.submit_directory", stand_in)
    logged: list[str] = []
    request = TrainJob(_config(tmp_path), "GPU_POOL", JOBS, instances=2,
                       overrides=("train.epochs=1",), out=tmp_path / "run",
                       wheel=_wheel(tmp_path), poll_s=0)
    result = train_job(session, request, logged.append)  # poll_s=0: no wait between looks

    assert seen["compute_pool"] == "GPU_POOL" and seen["stage_name"] == JOBS
    assert seen["entrypoint"] == ENTRY and seen["target_instances"] == 2
    assert seen["parallel"] is True and seen["min_instances"] == 2
    assert seen["session"] is session and "pip_requirements" not in seen
    assert seen["name"].startswith("FISSURE_TRAIN_")
    assert sorted(seen["files"]) == sorted(
        ["fissure-0.1.0-py3-none-any.whl", "config.yaml", SPEC, ENTRY])
    spec = json.loads(seen["files"][SPEC])
    prefix = f"{STAGE}/jobs/{seen['name']}/run/"
    assert spec["args"] == ["fissure", "train", "--config", "{payload}/config.yaml", "--out",
                            "/tmp/fissure-job-run", "--push", prefix, "--quiet", "--set",
                            "train.epochs=1"]
    assert spec["distributed"] is True
    assert seen["files"]["config.yaml"] == request.config.read_bytes()
    assert not any(b"password" in data.lower() or b"token" in data.lower()
                   for name, data in seen["files"].items() if name != ENTRY)
    assert [line for line in logged if line in ("installing fissure", "epoch 1", "epoch 2")] == [
        "installing fissure", "epoch 1", "epoch 2"]  # each line once, in order
    assert sorted(p.name for p in result.files) == ["best.pt", "config.yaml", "history.csv"]
    assert (tmp_path / "run" / "best.pt").read_bytes() == b"best.pt"
    assert result.job_id == job.id


def test_a_failed_job_is_an_error_naming_it(session, tmp_path, monkeypatch):
    job = _job([["boom"]], ["FAILED"])
    monkeypatch.setattr("snowflake.ml.jobs.submit_directory",
                        mock.create_autospec(ml_jobs.submit_directory, return_value=job))
    request = TrainJob(_config(tmp_path), "POOL", JOBS, wheel=_wheel(tmp_path), poll_s=0)
    with pytest.raises(FissureError, match="FISSURE_TRAIN_X_123 ended FAILED"):
        train_job(session, request, lambda line: None)


def test_follow_keeps_up_when_the_log_window_moves():
    job = _job([["a", "b"], ["b", "c", "d"]], ["RUNNING", "DONE"])
    logged: list[str] = []
    assert follow(job, logged.append, sleep=lambda s: None) == "DONE"
    assert logged == ["a", "b", "c", "d"]


def test_the_wheel_is_built_from_a_copy_of_the_source_tree(tmp_path):
    root = jobs.source_tree()
    before = sorted(p.name for p in root.iterdir())
    wheel = jobs.build_wheel(tmp_path / "wheel")
    assert wheel.name.startswith("fissure-") and wheel.suffix == ".whl"
    names = zipfile.ZipFile(wheel).namelist()
    assert "fissure/snowflake/jobs.py" in names and "fissure/cli/__init__.py" in names
    assert not any("__pycache__" in n for n in names)
    assert sorted(p.name for p in root.iterdir()) == before  # no build/ left in the tree


def test_cli_refuses_a_folder_config_in_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["snowflake", "train-job", "--config",
                                      str(_config(tmp_path, "folder")), "--compute-pool", "P",
                                      "--stage", JOBS])
    assert result.exit_code == 1
    assert "data.source is 'folder'" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cli_help_names_the_issue_options():
    for command, options in (("train-job", ["--config", "--compute-pool", "--instances",
                                            "--stage", "--set", "--out", "--connection"]),
                             ("predict-stage", ["--table", "--masks", "--version",
                                                "--compute-pool", "--redo", "--connection"])):
        result = CliRunner().invoke(cli, ["snowflake", command, "--help"])
        assert result.exit_code == 0
        assert all(option in result.output for option in options), command
