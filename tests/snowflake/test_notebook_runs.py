"""The library API inside Snowflake, on the emulator: notebook paths, the active session,
loader workers in the warehouse sandbox (fissure.api with fissure.snowflake.environment)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from stage_helpers import STAGE, gzip_dataset, in_warehouse, on_container, read_only

from fissure import api
from fissure.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
OVERRIDES = ["model.encoder=resnet18", "data.size=64", "train.epochs=1", "train.batch_size=2",
             "eval.thresholds=19", "data.source=stage", "data.snowflake.connection=prod"]


def test_a_notebook_run_goes_to_tmp_and_ignores_a_configured_connection(
    outside, session, tmp_path, monkeypatch
) -> None:
    data = gzip_dataset(tmp_path / "data", count=12)
    api.upload_data(data, connection="local", progress=False)
    work, tmp = tmp_path / "notebook", tmp_path / "tmp"
    read_only(work, monkeypatch)
    monkeypatch.chdir(work)
    on_container(monkeypatch, tmp_path / "runtime")  # a Container Runtime notebook
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    cfg = load_config(CONFIGS / "snowflake.yaml",
                      [*OVERRIDES, f"data.snowflake.cache_dir={work / 'cache'}"])
    lines: list[str] = []
    try:
        run = api.train(cfg, "runs/nb1", push=f"{STAGE}/models/nb1/", progress=False,
                        log=lines.append)
    finally:
        work.chmod(0o755)
    assert run.run_dir == tmp / "runs" / "nb1" and run.best.is_file()
    assert ("connection 'prod' ignored inside Snowflake (container runtime): using the active "
            "session") in lines
    assert f"runs/nb1: not writable here; using {tmp / 'runs' / 'nb1'}" in lines
    assert any(line.startswith("pushed best.pt") for line in lines)


def test_warehouse_sandbox_trains_with_no_loader_workers(outside, session, tmp_path, monkeypatch):
    data = gzip_dataset(tmp_path / "data", count=12)
    cfg = load_config(None, ["model.encoder=resnet18", "data.size=64", "train.epochs=1",
                             "train.batch_size=2", f"data.root={data}", "train.num_workers=4"])
    in_warehouse(monkeypatch)
    lines: list[str] = []
    api.train(cfg, tmp_path / "run", progress=False, log=lines.append)
    assert "num_workers=4 -> 0: Snowflake's warehouse sandbox forbids multiprocessing" in lines
    assert any("0 loader workers" in line for line in lines)
