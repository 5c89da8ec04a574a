"""Tests for the app's frame: settings, pages and the script Streamlit runs
(fissure.app.shell, fissure.app.main)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("streamlit", reason="the app's page tests need pip install 'fissure[app]'")

from streamlit.testing.v1 import AppTest  # noqa: E402

from fissure.app import APP_SCRIPT  # noqa: E402
from fissure.app.shell import AppSettings, parse_args  # noqa: E402


def test_arguments_after_the_double_dash() -> None:
    assert parse_args([]) == AppSettings()
    assert parse_args(["--checkpoint", "@S/m.pt", "--runs", "r", "--other"]) == AppSettings(
        "@S/m.pt", "r"
    )


def test_the_script_draws_the_inspect_page_and_switches_to_runs(
    monkeypatch: pytest.MonkeyPatch, runs_root: Path
) -> None:
    monkeypatch.setattr("sys.argv", ["main.py", "--runs", str(runs_root)])
    app = AppTest.from_file(str(APP_SCRIPT), default_timeout=60).run()
    assert not app.exception
    assert [h.value for h in app.header] == ["Inspect"]
    assert app.text_input(key="checkpoint").value == ""
    app.radio(key="page").set_value("Runs").run()
    assert not app.exception
    assert [h.value for h in app.header] == ["Runs"]
    assert app.text_input(key="runs_folder").value == str(runs_root)
