"""Tests for starting the app (fissure.app.start)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import fissure.app.start as starting
from fissure.app import APP_SCRIPT, launch, streamlit_command
from fissure.errors import DataError, MissingExtra


def test_command_runs_streamlit_on_the_app_script() -> None:
    assert APP_SCRIPT.is_file() and APP_SCRIPT.name == "main.py"
    assert streamlit_command() == [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP_SCRIPT),
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "minimal",
        "--",
    ]
    command = streamlit_command("m.pt", "runs", port=8600, address="127.0.0.1", headless=True)
    assert command[9:] == [
        "--server.port",
        "8600",
        "--server.address",
        "127.0.0.1",
        "--server.headless",
        "true",
        "--",
        "--checkpoint",
        "m.pt",
        "--runs",
        "runs",
    ]


def test_launch_checks_its_inputs_then_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(starting.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    monkeypatch.setattr("fissure.extras.is_installed", lambda module: True)
    with pytest.raises(DataError, match="nope.pt: no such checkpoint file"):
        launch(tmp_path / "nope.pt")
    with pytest.raises(DataError, match="runs: no such runs folder"):
        launch(None, tmp_path / "runs")
    assert calls == []
    (tmp_path / "m.pt").write_bytes(b"")
    assert launch(tmp_path / "m.pt", tmp_path, port=9000) == 0
    assert launch("@DB.S.STAGE/m.pt") == 0  # read later, through the page's session
    assert launch("snowflake://CRACKS/V1") == 0  # a registry version, likewise
    assert calls[0][-4:] == ["--checkpoint", str(tmp_path / "m.pt"), "--runs", str(tmp_path)]
    assert calls[1][-2:] == ["--checkpoint", "@DB.S.STAGE/m.pt"]
    assert calls[2][-2:] == ["--checkpoint", "snowflake://CRACKS/V1"]


def test_launch_names_the_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fissure.extras.is_installed", lambda module: module != "streamlit")
    with pytest.raises(MissingExtra, match=r"pip install 'fissure\[app\]'"):
        launch()
