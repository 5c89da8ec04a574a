"""Datasets and runs between this machine and a Snowflake stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import SnowflakeConfig, read_yaml
from ..snowflake import runs as stage_runs
from ..snowflake.runs import check_push_target
from ..snowflake.session import Sessions
from ..snowflake.upload import upload_data as upload_dataset
from .runs import Log


def upload_data(data_dir: str | Path, names: SnowflakeConfig | None = None, *,
                connection: str | None = None, replace_view: bool = False,
                progress: bool = True) -> dict[str, Any]:
    """Put a local dataset (any layout ``train`` reads) into a stage and build the manifest
    view training reads; ``names`` gives the database, schema, stage and manifest (default:
    the notebook's). Idempotent. Returns ``uploaded``/``skipped`` counts, manifest ``rows``
    and the qualified ``stage`` and ``manifest`` names."""
    names = names or SnowflakeConfig()
    with Sessions(connection) as sessions:
        return upload_dataset(sessions.get(names.connection), data_dir, names,
                              replace_view=replace_view, progress=progress)


def push_run(run_dir: str | Path, prefix: str, *, connection: str | None = None,
             log: Log = print) -> list[str]:
    """Upload a run's ``best.pt``, ``config.yaml`` and metrics under the stage folder
    ``prefix``; ``connection`` defaults to the one the run's config names."""

    run_dir = Path(run_dir)
    check_push_target(prefix)
    configured = None
    if (run_dir / "config.yaml").is_file():
        stored = read_yaml(run_dir / "config.yaml").get("data") or {}
        configured = (stored.get("snowflake") or {}).get("connection")
    with Sessions(connection, log=log) as sessions:
        return stage_runs.push_run(sessions.get(configured), run_dir, prefix, log=log,
                                   reopen=lambda: sessions.reopen(configured))


def pull(stage_path: str, out: str | Path = ".", *, connection: str | None = None) -> Path:
    """Download one stage file (a model, a mask) into folder ``out``, gunzipped when it was
    gzip; returns the local path (``best_model.pth.gz`` arrives as ``best_model.pth``)."""
    with Sessions(connection) as sessions:
        return stage_runs.pull(sessions.get(), stage_path, out)
