"""The Snowflake side of runs: stage checkpoints, pushing runs and predictions, pulling files,
and stage images as prediction inputs.

These are the operations :mod:`fissure.api` builds on; each takes the session it works on.
The stage files themselves are moved by :mod:`fissure.snowflake.files`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from ..checkpoint import Checkpoint, load_checkpoint
from ..data import is_stage_path
from ..data.image import is_image_name
from ..errors import CheckpointError, ConfigError, DataError, FissureError
from ..prediction.files import Fetch, InputImage
from ..training.distributed import is_main_process
from .files import fetch_file, push_files, validate_stage_name

if TYPE_CHECKING:
    from snowflake.snowpark import Session

PUSH_FILES = ("best.pt", "config.yaml", "history.csv", "metrics.json", "curves.png")
"""What ``--push`` uploads from a run folder, those that exist; ``best.pt`` must."""
# predictions.csv and .json name their outputs by path: these are rewritten to stage paths.
_LISTINGS = (".csv", ".json")


def read_checkpoint(checkpoint: str | Path, session: Session | None = None) -> Checkpoint:
    """The checkpoint from a file, or a stage path (plain or gzip: ``best_model.pth.gz``).

    A local file needs no ``session``; a stage path is read on it. A stage checkpoint is
    fetched into a private temporary folder and removed once read, so a model pushed again
    under the same name is never served stale from a cache.
    """
    text = str(checkpoint)
    if not is_stage_path(text):
        return load_checkpoint(checkpoint, map_location="cpu")
    if session is None:
        raise ConfigError(f"{text}: a stage checkpoint needs a Snowflake session")
    with tempfile.TemporaryDirectory(prefix="fissure-ckpt-") as tmp:
        local = fetch_file(session, text, Path(tmp))
        try:
            return load_checkpoint(local, map_location="cpu")
        except CheckpointError as exc:  # name the file the user gave, not our copy
            raise CheckpointError(str(exc).replace(str(local), text)) from None


def check_push_target(prefix: str) -> str:
    """``prefix`` (a stage folder such as ``@DB.SCHEMA.STAGE/models/run1/``) if it is safe.

    Checked before training or predicting, so that a typo fails in seconds, not after
    hours; DataError otherwise.
    """
    if not is_stage_path(prefix):
        raise DataError(f"{prefix!r}: not a stage path (e.g. @DB.SCHEMA.STAGE/models/run1/)")
    validate_stage_name(prefix.rstrip("/") + "/best.pt")
    return prefix


def push_run(
    session: Session, run_dir: str | Path, prefix: str, *, log: Callable[[str], None] = print
) -> list[str]:
    """Upload a run's ``best.pt``, ``config.yaml`` and metrics (:data:`PUSH_FILES`) under
    ``prefix``; returns their stage paths (none on a torchrun rank other than 0)."""
    if not is_main_process():  # under torchrun every rank gets here; one upload is enough
        return []
    run_dir = Path(run_dir)
    if not (run_dir / "best.pt").is_file():
        raise CheckpointError(f"{run_dir}: no best.pt to push")
    files = [run_dir / name for name in PUSH_FILES if (run_dir / name).is_file()]
    pushed = push_files(session, files, check_push_target(prefix))
    log(f"pushed {', '.join(f.name for f in files)} to {prefix.rstrip('/')}/")
    return pushed


def push_outputs(
    session: Session, folder: str | Path, prefix: str, records: Iterable[dict[str, Any]] = ()
) -> list[dict[str, Any]]:
    """Upload the prediction outputs written to ``folder`` under stage ``prefix``.

    Paths below ``folder`` in predictions.csv/json, and in the returned copies of
    ``records``, are rewritten to name the stage copies. Only the folder's own files go up.
    """
    base = str(folder) + "/"
    target = check_push_target(prefix).rstrip("/") + "/"

    def staged(text: str) -> str:
        return text.replace(base, target)

    files = sorted(p for p in Path(folder).iterdir() if p.is_file())
    for file in files:
        if file.suffix in _LISTINGS:
            file.write_text(staged(file.read_text("utf-8")), "utf-8")
    push_files(session, files, target.rstrip("/"))
    return [{k: staged(v) if isinstance(v, str) else v for k, v in r.items()} for r in records]


def stage_fetcher(session: Session) -> Fetch:
    """The ``fetch`` hook of :func:`fissure.prediction.files.find_inputs` for stage inputs.

    A stage file named as an input (``@STAGE/photos/a.jpg.gz``) is read on demand, on
    ``session``. Listing a stage folder needs SQL (``LIST``), which Snowpark's local
    emulator lacks, so inputs must name files; the glob pattern does not apply to them.
    """

    def fetch(stage_path: str, pattern: str = "**/*") -> list[InputImage]:
        if not is_image_name(stage_path):
            raise FissureError(
                f"{stage_path}: name stage images one by one (a stage folder cannot be "
                "listed here); or fetch them with `fissure snowflake pull`"
            )

        def read() -> bytes:
            with tempfile.TemporaryDirectory(prefix="fissure-input-") as tmp:
                return fetch_file(session, stage_path, Path(tmp)).read_bytes()

        return [InputImage(stage_path, read, PurePosixPath(stage_path.lstrip("@")))]

    return fetch


def pull(session: Session, stage_path: str, out: str | Path = ".") -> Path:
    """Download one stage file (a model, a mask) into folder ``out``, gunzipped when it was
    gzip; returns the local path (``best_model.pth.gz`` arrives as ``best_model.pth``)."""
    return fetch_file(session, stage_path, Path(out))
