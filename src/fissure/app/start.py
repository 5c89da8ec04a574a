"""Starting the app: ``streamlit run`` on :mod:`fissure.app.main`, in a child process.

This module imports nothing of Streamlit, so that ``fissure app`` can say in one line
which extra is missing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ..data import is_stage_path
from ..errors import DataError
from ..extras import require
from ..snowflake.registry import is_registry_reference

APP_SCRIPT = Path(__file__).with_name("main.py")
"""The script ``streamlit run`` is given."""


def streamlit_command(
    checkpoint: str | Path | None = None,
    runs: str | Path | None = None,
    *,
    port: int | None = None,
    address: str | None = None,
    headless: bool = False,
) -> list[str]:
    """The command line that serves the app (usage statistics off, no deploy button).

    ``port`` and ``address`` say where (default: Streamlit's, 8501 on all interfaces);
    ``headless`` serves without opening a browser.
    """
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP_SCRIPT),
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "minimal",
    ]
    if port is not None:
        command += ["--server.port", str(port)]
    if address is not None:
        command += ["--server.address", address]
    if headless:
        command += ["--server.headless", "true"]
    command.append("--")
    if checkpoint is not None:
        command += ["--checkpoint", str(checkpoint)]
    if runs is not None:
        command += ["--runs", str(runs)]
    return command


def check_app_inputs(checkpoint: str | Path | None, runs: str | Path | None) -> None:
    """DataError unless a local ``checkpoint`` is a file and ``runs`` a folder; stage and
    registry checkpoints are read when the page opens, through its session."""
    local = checkpoint is not None and not (
        is_stage_path(str(checkpoint)) or is_registry_reference(str(checkpoint)))
    if local and not Path(str(checkpoint)).is_file():
        raise DataError(f"{checkpoint}: no such checkpoint file")
    if runs is not None and not Path(runs).is_dir():
        raise DataError(f"{runs}: no such runs folder")


def launch(
    checkpoint: str | Path | None = None,
    runs: str | Path | None = None,
    *,
    port: int | None = None,
    address: str | None = "127.0.0.1",
    headless: bool = False,
) -> int:
    """Serve the app until it is stopped (Ctrl+C); returns Streamlit's exit status.

    ``checkpoint`` is the model the Inspect page opens with, ``runs`` the folder the Runs
    page reads. It serves this machine only unless ``address`` says otherwise (None:
    Streamlit's default, every interface): the pages read any file the user can, and use
    the user's Snowflake connections. A missing ``app`` extra or a missing file is a
    one-line FissureError before anything starts.
    """
    require("app", "fissure app")
    check_app_inputs(checkpoint, runs)
    command = streamlit_command(checkpoint, runs, port=port, address=address, headless=headless)
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:  # Streamlit has stopped on the same signal
        return 0
