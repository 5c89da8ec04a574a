"""The Snowflake side of runs: sessions, stage checkpoints, pushing runs, datasets up, files down.

Snowpark is imported inside these functions: it is heavy and only stage users need it. The
stage itself is read and written by :mod:`fissure.data.snowflake`; these are the operations
the CLI and :mod:`fissure.workflow` build on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from ..checkpoint import Checkpoint, load_checkpoint
from ..config import read_yaml
from ..errors import CheckpointError, DataError, FissureError
from ..prediction.files import InputImage
from ..training.distributed import is_main_process

# What --push uploads from a run folder, those that exist; best.pt must.
PUSH_FILES = ("best.pt", "config.yaml", "history.csv", "metrics.json", "curves.png")


def connect(connection: str | None = None) -> Any:
    """``--connection NAME``: open that ``~/.snowflake/connections.toml`` entry and use it
    for every stage operation from now on, whatever a config or checkpoint names.

    With no name nothing changes: stage operations use the config's
    ``data.snowflake.connection`` (``local`` is the offline emulator) or the active session
    (a Snowflake notebook's). Returns the session, or None. Only the name is ever kept.
    """
    if not connection:
        return None
    from .source import connect as open_session

    return open_session(connection)


def read_checkpoint(checkpoint: str | Path) -> Checkpoint:
    """The checkpoint from a file or a stage path (plain or gzip: ``best_model.pth.gz``).

    A stage checkpoint is fetched into a private temporary folder and removed once read, so
    a model pushed again under the same name is never served stale from a cache.
    """
    text = str(checkpoint)
    if not text.startswith("@"):
        return load_checkpoint(checkpoint, map_location="cpu")
    import tempfile

    from .source import fetch_file, resolve_session

    session = resolve_session()
    with tempfile.TemporaryDirectory(prefix="fissure-ckpt-") as tmp:
        local = fetch_file(session, text, Path(tmp))
        try:
            return load_checkpoint(local, map_location="cpu")
        except CheckpointError as exc:  # name the file the user gave, not our copy
            raise CheckpointError(str(exc).replace(str(local), text)) from None


def check_push_target(prefix: str, connection: str | None = None) -> str:
    """``prefix`` (a stage folder such as ``@DB.SCHEMA.STAGE/models/run1/``) if it is safe
    and a session to reach it exists; DataError or ConfigError otherwise."""
    from .source import is_stage_path, resolve_session, validate_stage_name

    if not is_stage_path(prefix):
        raise DataError(f"{prefix!r}: not a stage path (e.g. @DB.SCHEMA.STAGE/models/run1/)")
    validate_stage_name(prefix.rstrip("/") + "/best.pt")
    resolve_session(connection)
    return prefix


def push_run(run_dir: str | Path, prefix: str, *, connection: str | None = None,
             log: Callable[[str], None] = print) -> list[str]:
    """Upload a run's ``best.pt``, ``config.yaml`` and metrics (:data:`PUSH_FILES`) under
    ``prefix``; returns their stage paths. ``connection`` defaults to the run config's."""
    from .source import push_files, resolve_session

    if not is_main_process():  # under torchrun every rank gets here; one upload is enough
        return []
    run_dir = Path(run_dir)
    if not (run_dir / "best.pt").is_file():
        raise CheckpointError(f"{run_dir}: no best.pt to push")
    if connection is None and (run_dir / "config.yaml").is_file():
        stored = read_yaml(run_dir / "config.yaml").get("data") or {}
        connection = (stored.get("snowflake") or {}).get("connection")
    files = [run_dir / name for name in PUSH_FILES if (run_dir / name).is_file()]
    pushed = push_files(resolve_session(connection), files, check_push_target(prefix))
    log(f"pushed {', '.join(f.name for f in files)} to {prefix.rstrip('/')}/")
    return pushed


def fetch_stage_image(stage_path: str, pattern: str = "**/*") -> list[InputImage]:
    """A stage file named as a predict input (``@STAGE/photos/a.jpg.gz``), read on demand.

    Listing a stage folder needs SQL (``LIST``), which Snowpark's local emulator lacks, so
    inputs must name files; ``pattern`` does not apply to them.
    """
    import tempfile

    from ..data.image import is_image_name
    from .source import fetch_file, resolve_session

    if not is_image_name(stage_path):
        raise FissureError(f"{stage_path}: name stage images one by one (a stage folder "
                           "cannot be listed here); or fetch them with `fissure snowflake pull`")
    session = resolve_session()

    def read() -> bytes:
        with tempfile.TemporaryDirectory(prefix="fissure-input-") as tmp:
            return fetch_file(session, stage_path, Path(tmp)).read_bytes()

    return [InputImage(stage_path, read, PurePosixPath(stage_path.lstrip("@")))]


def upload_data(data_dir: str | Path, *, connection: str | None = None,
                database: str = "PROJET_FISSURES", schema: str = "STORAGE_SCHEMA",
                stage: str = "MY_FISSURE_STAGE", manifest: str = "V_TRAINING_DATA",
                replace_view: bool = False, progress: bool = True) -> dict[str, Any]:
    """Put a local dataset (any layout ``train`` reads) into a stage and build its manifest
    view; idempotent. Returns ``uploaded``/``skipped`` file counts, manifest ``rows``, and
    the fully qualified ``stage`` and ``manifest`` names."""
    from ..config import SnowflakeConfig
    from .source import qualified, resolve_session, stage_name
    from .upload import upload_dataset

    cfg = SnowflakeConfig(connection=connection, database=database, schema=schema,
                          stage=stage, manifest=manifest)
    counts = upload_dataset(data_dir, resolve_session(connection), cfg, progress=progress,
                            replace_view=replace_view)
    return {**counts, "stage": stage_name(cfg), "manifest": qualified(cfg, manifest)}


def pull(stage_path: str, out: str | Path = ".", *, connection: str | None = None) -> Path:
    """Download one stage file (a model, a mask) into folder ``out``, gunzipped when it was
    gzip; returns the local path (``best_model.pth.gz`` arrives as ``best_model.pth``)."""
    from .source import fetch_file, resolve_session

    return fetch_file(resolve_session(connection), stage_path, Path(out))
