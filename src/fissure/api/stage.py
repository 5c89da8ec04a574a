"""Datasets, runs and models between this machine and Snowflake: a stage, and the Model
Registry."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import SnowflakeConfig, read_yaml
from ..data import is_stage_path
from ..snowflake import registry
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


def register_checkpoint(
    checkpoint: str | Path,
    model: str,
    *,
    version: str | None = None,
    comment: str | None = None,
    metrics: Sequence[str | Path] | None = None,
    connection: str | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Log a checkpoint (file or stage path) as a new version of registry model ``model``
    (``[DB.SCHEMA.]NAME``; created at its first version).

    ``metrics`` are evaluation ``metrics.json`` files whose figures become version metrics
    (default: the ``metrics.json`` beside a local checkpoint, if any), besides the
    checkpoint's own validation figures. Returns ``model``, ``version``, ``reference``
    (``snowflake://...``, what ``evaluate``/``predict`` take) and ``metrics``.
    """
    ref = registry.registration_ref(model, version)
    registry.require_ml("fissure snowflake register")
    text = str(checkpoint)
    evaluations = (registry.read_evaluations(metrics) if metrics is not None
                   else [] if is_stage_path(text) else registry.evaluations_beside(text))
    with Sessions(connection, log=log) as sessions:
        session = sessions.get()
        ckpt = stage_runs.read_checkpoint(checkpoint, session if is_stage_path(text) else None)
        entry = registry.Registration(ref, comment, tuple(evaluations))
        logged = registry.register(session, ckpt, entry, source=text)
    name = logged.version_name
    return {"model": ref.qualified, "version": name,
            "reference": f"{registry.SCHEME}{ref.qualified}/{name}",
            "metrics": registry.version_metrics(ckpt, evaluations)}


def list_models(name: str | None = None, *, connection: str | None = None
                ) -> list[dict[str, Any]]:
    """The registered versions of model ``name`` (``[DB.SCHEMA.]NAME``), or of every model
    in the session's schema: ``model``, ``version``, ``default``, ``comment``, ``metrics``."""
    registry.require_ml("fissure snowflake models")
    with Sessions(connection) as sessions:
        return registry.list_versions(sessions.get(), name)
