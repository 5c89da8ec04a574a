"""Tests for fissure.snowflake.environment: where the process runs, and what follows."""

from __future__ import annotations

from pathlib import Path

import pytest
from stage_helpers import in_warehouse, on_container, read_only

from fissure.errors import ConfigError
from fissure.snowflake import environment
from fissure.snowflake.environment import (
    HOST_ENV,
    READER_ENV,
    TOKEN_FILE,
    TOKEN_FILE_ENV,
    choose_reader,
    in_warehouse_sandbox,
    inside_snowflake,
    loader_workers,
    on_container_runtime,
    runtime_name,
    token_file,
    writable_dir,
)


def test_reader_detection(outside, monkeypatch) -> None:
    assert not in_warehouse_sandbox() and choose_reader() == "cache"
    in_warehouse(monkeypatch)
    assert in_warehouse_sandbox() and choose_reader() == "stream"
    assert choose_reader("cache") == "cache"
    monkeypatch.setenv(READER_ENV, "cache")
    assert choose_reader() == "cache"
    monkeypatch.setenv(READER_ENV, "bogus")
    with pytest.raises(ConfigError, match="bogus"):
        choose_reader()


def test_container_runtime_detection(outside, monkeypatch, tmp_path) -> None:
    assert not on_container_runtime() and not inside_snowflake() and runtime_name() is None
    monkeypatch.delenv(TOKEN_FILE_ENV)
    assert token_file() == Path(TOKEN_FILE)  # /snowflake/session/token unless overridden
    path = on_container(monkeypatch, tmp_path)
    assert token_file() == path
    assert on_container_runtime() and inside_snowflake() and runtime_name() == "container"
    assert not in_warehouse_sandbox() and choose_reader() == "cache"  # it has a disk
    monkeypatch.delenv(HOST_ENV)  # a token alone is not enough to connect
    assert not on_container_runtime()
    monkeypatch.setenv(HOST_ENV, "acme.snowflakecomputing.com")
    path.unlink()
    assert not on_container_runtime()
    in_warehouse(monkeypatch)
    assert inside_snowflake() and runtime_name() == "warehouse"


def test_loader_workers_are_zero_in_the_warehouse_sandbox(outside, monkeypatch, tmp_path) -> None:
    lines: list[str] = []
    assert loader_workers(4, lines.append) == 4 and loader_workers(None, lines.append) is None
    on_container(monkeypatch, tmp_path)
    assert loader_workers(4, lines.append) == 4 and not lines  # containers may fork
    in_warehouse(monkeypatch)
    assert loader_workers(4, lines.append) == 0
    assert loader_workers(None, lines.append) == 0 and loader_workers(0, lines.append) == 0
    assert lines == ["num_workers=4 -> 0: Snowflake's warehouse sandbox forbids multiprocessing"]


def test_read_only_working_folder_sends_runs_to_tmp(outside, monkeypatch, tmp_path) -> None:
    work, tmp = tmp_path / "notebook", tmp_path / "tmp"
    read_only(work, monkeypatch)
    monkeypatch.chdir(work)
    lines: list[str] = []
    try:
        assert writable_dir("runs/nb1", lines.append, base=tmp) == Path("runs/nb1")  # outside
        on_container(monkeypatch, tmp_path / "runtime")
        assert writable_dir("runs/nb1", lines.append, base=tmp) == tmp / "runs" / "nb1"
        assert lines == [f"runs/nb1: not writable here; using {tmp / 'runs' / 'nb1'}"]
        absolute = work / "cache" / "stage"
        assert writable_dir(absolute, lines.append, base=tmp) == tmp / absolute.relative_to("/")
        writable = tmp_path / "fine" / "runs"
        assert writable_dir(writable, lines.append, base=tmp) == writable
        assert len(lines) == 2 and not writable.exists()  # the probe leaves nothing behind
        monkeypatch.setattr(environment.tempfile, "tempdir", str(tmp))
        assert writable_dir("runs/nb2", inside=True, log=lines.append) == tmp / "runs" / "nb2"
    finally:
        work.chmod(0o755)
