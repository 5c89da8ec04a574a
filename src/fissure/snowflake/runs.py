"""The Snowflake side of runs: stage checkpoints, pushing runs and predictions, pulling files,
and stage images as prediction inputs.

These are the operations :mod:`fissure.api` builds on; each takes the session it works on
and keeps to it. The stage files themselves are moved by :mod:`fissure.snowflake.transfer`:
a run's files and a prediction's outputs go up in one PUT, and a stage folder given as a
prediction input is listed (``LIST``, real accounts only) and fetched in one GET.
"""

from __future__ import annotations

import re
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar

from ..checkpoint import Checkpoint, load_checkpoint
from ..data import is_stage_path
from ..data.image import is_image_name
from ..errors import CheckpointError, ConfigError, DataError
from ..prediction.inputs import Fetch, InputImage
from ..training.distributed import is_main_process
from .files import SessionGone, validate_stage_name
from .session import is_alive
from .transfer import PARALLEL, fetch_file, get_prefix, list_stage, push_files

T = TypeVar("T")
Log = Callable[[str], None]

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


def on_live_session(
    work: Callable[[Any], T], session: Session, reopen: Callable[[], Session] | None, log: Log
) -> T:
    """``work(session)``, on a new session from ``reopen`` if this one has closed.

    After hours of training on the local cache the session may be gone: closed as the
    client knows, or expired on the server, which only the next query tells. Without
    ``reopen`` the one-line :class:`~fissure.snowflake.files.SessionGone` stands.
    """
    if reopen is not None and not is_alive(session):
        log("the Snowflake session has closed; opening a new one")
        session = reopen()
    try:
        return work(session)
    except SessionGone:
        if reopen is None:
            raise
    log("the Snowflake session has expired; opening a new one")
    return work(reopen())


def push_run(
    session: Session,
    run_dir: str | Path,
    prefix: str,
    *,
    log: Log = print,
    reopen: Callable[[], Session] | None = None,
) -> list[str]:
    """Upload a run's ``best.pt``, ``config.yaml`` and metrics (:data:`PUSH_FILES`) under
    ``prefix`` in one PUT, on ``session``; returns their stage paths (none on a torchrun rank
    other than 0). ``reopen`` gives a new session when this one has closed or expired."""
    if not is_main_process():  # under torchrun every rank gets here; one upload is enough
        return []
    run_dir = Path(run_dir)
    if not (run_dir / "best.pt").is_file():
        raise CheckpointError(f"{run_dir}: no best.pt to push")
    files = [run_dir / name for name in PUSH_FILES if (run_dir / name).is_file()]
    target = check_push_target(prefix)
    pushed = on_live_session(lambda s: push_files(s, files, target), session, reopen, log)
    log(f"pushed {', '.join(f.name for f in files)} to {prefix.rstrip('/')}/")
    return pushed


def push_outputs(
    session: Session, folder: str | Path, prefix: str, records: Iterable[dict[str, Any]] = ()
) -> list[dict[str, Any]]:
    """Upload the prediction outputs written to ``folder`` under stage ``prefix``, in one PUT.

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


def _glob(pattern: str) -> re.Pattern[str]:
    """``Path.glob``'s pattern language for stage paths: ``**/`` any folders, ``*`` a name."""
    parts = re.split(r"(\*\*/|\*\*|\*|\?)", pattern)
    table = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(table.get(p, re.escape(p)) for p in parts))


class _Folder:
    """The images of one stage folder, fetched in one GET at the first read.

    GET writes files under their base name, so an image whose name another one in a
    sub-folder shares is fetched on its own; so are all of them when the images are less
    than half of what the folder holds (by size), rather than bringing the rest along.
    """

    def __init__(self, session: Session, folder: str, listing: list[tuple[str, int]]) -> None:
        self.session, self.folder = session, folder
        names = Counter(path.rsplit("/", 1)[-1].casefold() for path, _ in listing)
        self.unique = {p for p, _ in listing if names[p.rsplit("/", 1)[-1].casefold()] == 1}
        self.lock = threading.Lock()
        self.got: dict[str, tuple[Path, int]] | None = None
        self.tmp = tempfile.TemporaryDirectory(prefix="fissure-input-")  # gone with self

    def read(self, stage_path: str, whole: bool) -> bytes:
        """The bytes of ``stage_path`` (plain or gzip), from the folder's GET or its own."""
        if whole and stage_path in self.unique:
            with self.lock:
                if self.got is None:
                    dest = Path(self.tmp.name) / "folder"
                    self.got = get_prefix(self.session, self.folder, dest, PARALLEL)
            local = self.got.get(stage_path.rsplit("/", 1)[-1])
            if local is not None:
                return local[0].read_bytes()
        with tempfile.TemporaryDirectory(prefix="fissure-input-") as tmp:
            return fetch_file(self.session, stage_path, Path(tmp)).read_bytes()


def stage_fetcher(session: Session) -> Fetch:
    """The ``fetch`` hook of :func:`fissure.prediction.inputs.find_inputs` for stage inputs.

    A stage file named as an input (``@STAGE/photos/a.jpg.gz``) is read on demand. A stage
    folder (``@STAGE/photos/``) is listed with ``LIST`` on a real account, its images
    (those matching ``pattern``) read from one GET of the folder; Snowpark's emulator
    has no LIST, so there a folder is a one-line DataError.
    """

    def fetch(stage_path: str, pattern: str = "**/*") -> list[InputImage]:
        if "/" in stage_path.rstrip("/"):  # the stage itself (``@S/``) has no path to check
            validate_stage_name(stage_path.rstrip("/"))
        if is_image_name(stage_path):

            def read() -> bytes:
                with tempfile.TemporaryDirectory(prefix="fissure-input-") as tmp:
                    return fetch_file(session, stage_path, Path(tmp)).read_bytes()

            return [InputImage(stage_path, read, PurePosixPath(stage_path.lstrip("@")))]
        folder = stage_path.rstrip("/") + "/"
        listing = list_stage(session, folder)
        match = _glob(pattern)
        images = [(p, n) for p, n in listing
                  if is_image_name(p) and match.fullmatch(p[len(folder):])]
        reader = _Folder(session, folder, listing)
        whole = 2 * sum(n for _, n in images) >= sum(n for _, n in listing)
        return [InputImage(p, partial(reader.read, p, whole), PurePosixPath(p.lstrip("@")))
                for p, _ in images]

    return fetch


def pull(session: Session, stage_path: str, out: str | Path = ".") -> Path:
    """Download one stage file (a model, a mask) into folder ``out``, gunzipped when it was
    gzip; returns the local path (``best_model.pth.gz`` arrives as ``best_model.pth``)."""
    return fetch_file(session, stage_path, Path(out))
