"""Moving stage files: GET and PUT, one file or a whole prefix in one query.

Snowpark's ``get_stream`` downloads to ``tempfile.gettempdir()/<basename>``, so
``images/001.png.gz`` and ``masks/001.png.gz`` collide when read concurrently. Here files
are fetched with ``session.file.get`` into a private temporary folder and moved into place
with ``os.replace``, so a file only ever appears complete under its final name.

One GET per file costs a query round trip per file (22,600 for the notebook's 11,298
pairs), so many files go by prefix instead: one GET of ``images/`` with ``parallel=``
threads (:func:`get_prefix`), and one PUT of a folder's files (:func:`push_files`). GET
writes every file under its base name, sub-folders flattened (the connector 4.8 and the
emulator alike), so names that collide there are left to per-file GETs.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, TypeVar

from ..data import is_stage_path
from ..data.image import GZIP_MAGIC
from ..errors import DataError
from ..progress import progress_bar
from .files import (
    Sleep,
    StageFileMissing,
    is_missing_error,
    is_missing_file,
    is_missing_stage,
    reason,
    transfer_error,
    validate_stage_name,
    with_retries,
)
from .session import is_local_testing

T = TypeVar("T")

PARALLEL = 8
"""Connector threads per GET or PUT query (Snowpark's defaults are 10 and 4)."""


def _missing(stage_path: str) -> StageFileMissing:
    return StageFileMissing(f"{stage_path}: file not found in the stage")


def download(
    session: Any, stage_path: str, dest: Path, scratch: Path, sleep: Sleep = time.sleep
) -> int:
    """Fetch one stage file to ``dest`` atomically; returns its size in bytes.

    ``scratch`` must be on the filesystem of ``dest`` so that the final move is atomic.
    GET matches by prefix on a real stage (``a.png.gz`` also brings ``a.png.gz.bak``),
    so only the file with the exact basename is kept. A missing file is a
    :class:`StageFileMissing` at the first answer: no retry can make it appear.
    """
    basename = stage_path.rsplit("/", 1)[-1]
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix="get-") as tmp:
        got = Path(tmp) / basename

        def fetch() -> int:
            got.unlink(missing_ok=True)
            results = session.file.get(stage_path, tmp)
            mine = [r for r in results or [] if Path(str(getattr(r, "file", ""))).name == basename]
            expected = getattr(mine[0], "size", None) if mine else None
            if expected is not None and int(expected) < 0:
                raise ConnectionError("the connector reported a failed download")  # retried
            if not got.is_file():
                raise _missing(stage_path)
            size = got.stat().st_size
            if expected is not None and int(expected) != size:
                raise ConnectionError(f"got {size} bytes of {int(expected)}")  # retried
            return size

        try:
            size = with_retries(fetch, stage_path, sleep=sleep)
        except DataError:
            raise
        except Exception as exc:
            # the emulator's words for a missing file, but not a stage that is not there
            if is_missing_error(exc) and not is_missing_stage(exc):
                raise _missing(stage_path) from None
            raise transfer_error(exc, stage_path, "download") from None
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(got, dest)
        except OSError as exc:
            raise DataError(f"{dest}: cannot write ({reason(exc)})") from None
    return size


def get_prefix(
    session: Any, stage_prefix: str, dest: Path, parallel: int = PARALLEL, sleep: Sleep = time.sleep
) -> dict[str, tuple[Path, int]]:
    """GET every file under ``stage_prefix`` (a folder: ``@S/images/``) into ``dest``, in one
    query; returns ``{base name: (local file, size)}`` of those that arrived whole.

    A name that arrived twice (sub-folders are flattened; on a case-insensitive disk
    ``A.png`` and ``a.png`` are one file) or short of the size the stage reported is left
    out, for the caller to fetch one by one. An empty prefix gives ``{}``.
    """

    def go() -> list[Any]:
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        return list(session.file.get(stage_prefix, str(dest), parallel=parallel) or [])

    try:
        results = with_retries(go, stage_prefix, sleep=sleep)
    except DataError:
        raise
    except Exception as exc:
        if is_missing_file(exc):
            return {}
        raise transfer_error(exc, stage_prefix, "download") from None
    names = [Path(str(getattr(r, "file", ""))).name for r in results]
    seen = Counter(name.casefold() for name in names)
    found: dict[str, tuple[Path, int]] = {}
    for name, result in zip(names, results, strict=True):
        local = dest / name
        status = str(getattr(result, "status", "DOWNLOADED")).upper()
        if seen[name.casefold()] > 1 or status != "DOWNLOADED" or not local.is_file():
            continue
        size = local.stat().st_size
        expected = getattr(result, "size", None)
        if expected is None or int(expected) == size:
            found[name] = (local, size)
    return found


def put_bytes(session: Any, stage_path: str, data: bytes, sleep: Sleep = time.sleep) -> None:
    """Upload ``data`` as ``stage_path`` exactly as given (no compression), replacing it."""

    def go() -> Any:
        return session.file.put_stream(
            io.BytesIO(data), stage_path, auto_compress=False, overwrite=True
        )

    try:
        with_retries(go, stage_path, sleep=sleep)
    except DataError:
        raise
    except Exception as exc:
        raise transfer_error(exc, stage_path, "upload") from None


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or no hard links there
        shutil.copyfile(src, dst)


def push_files(
    session: Any,
    files: list[Path],
    stage_prefix: str,
    parallel: int = PARALLEL,
    sleep: Sleep = time.sleep,
) -> list[str]:
    """Upload local ``files`` as-is under ``stage_prefix`` in one PUT; returns their paths.

    The files are linked into a private folder first, so that one ``PUT folder/*`` sends
    exactly them (a run folder also holds ``last.pt``, which stays local).
    """
    if not is_stage_path(stage_prefix):
        raise DataError(f"{stage_prefix!r}: not a stage path (it must start with '@')")
    prefix = stage_prefix.rstrip("/")
    files = [Path(f) for f in files]
    for file in files:
        if not file.is_file():
            raise DataError(f"{file}: file not found")
    names = Counter(f.name for f in files)
    if any(count > 1 for count in names.values()):
        twice = [name for name, count in names.items() if count > 1]
        raise DataError(f"{', '.join(twice)}: two files of that name for {prefix}/")
    targets = [validate_stage_name(f"{prefix}/{f.name}") for f in files]
    if not files:
        return []
    with tempfile.TemporaryDirectory(prefix="fissure-put-") as tmp:
        for file in files:
            _link(file, Path(tmp) / file.name)

        def go() -> list[str]:
            results = session.file.put(
                f"{tmp}/*", prefix + "/", auto_compress=False, overwrite=True, parallel=parallel
            )
            status = {str(r.source): str(r.status).upper() for r in results or []}
            done = [n for n, st in status.items() if st in ("UPLOADED", "SKIPPED")]
            if len(done) != len(files):
                raise ConnectionError(f"{len(done)} of {len(files)} files uploaded")  # retried
            return [n for n, st in status.items() if st == "SKIPPED"]

        try:
            kept = with_retries(go, prefix + "/", sleep=sleep)
        except DataError:
            raise
        except Exception as exc:
            raise transfer_error(exc, prefix + "/", "upload") from None
        # Snowpark's emulator drops PUT's OVERWRITE (mock/_plan.py), so it keeps a file that
        # is already there; a real account replaces it. Such files go again, one by one.
        for name in kept:
            put_bytes(session, f"{prefix}/{name}", (Path(tmp) / name).read_bytes(), sleep)
    return targets


def list_stage(session: Any, stage_folder: str) -> list[tuple[str, int]]:
    """``(stage path, size)`` of every file under ``stage_folder`` (``@S/photos/``), sorted.

    Listing needs ``LIST``, which only a real account runs: in Snowpark's emulator this is
    a one-line DataError. LIST matches a name prefix; only the files below the folder are
    kept, spelled with its stage (see :func:`stage_relative` for how LIST names them).
    """
    folder = stage_folder.rstrip("/") + "/"
    if is_local_testing(session):
        raise DataError(
            f"{folder}: a stage folder cannot be listed in Snowpark's local emulator (it has "
            "no LIST); name the images one by one"
        )
    stage, _, below = folder.partition("/")
    try:
        rows = with_retries(lambda: session.file.list(folder), folder)
    except DataError:
        raise
    except Exception as exc:
        raise transfer_error(exc, folder, "list") from None
    names = [str(row.name) for row in rows]
    root = external_root(session, stage) if any("://" in n for n in names) else None
    found = []
    for name, row in zip(names, rows, strict=True):
        path = stage_relative(name, stage, below, root)
        if path is None:
            raise DataError(f"{folder}: LIST named a file {name!r}, which is not below the "
                            "stage as expected; name the images one by one")
        if path.startswith(below) and not path.endswith("/"):
            found.append((f"{stage}/{path}", int(row.size)))
    return sorted(found)


def stage_relative(name: str, stage: str, below: str, root: str | None) -> str | None:
    """The path below ``stage`` of a file LIST reports as ``name``; None if it cannot tell.

    LIST names a named internal stage's files ``<stage name>/<path>`` (lower case, without
    database and schema), an external stage's by their cloud URL (``root``, the stage's
    URL, then the path), and the files of a user (``@~``) or table (``@%T``) stage by their
    path alone. ``below`` is the folder that was listed, which every file's path starts
    with.
    """
    if root is not None:
        return name[len(root):] if name.startswith(root) else None
    if "://" in name:
        return None
    user_or_table = stage.startswith("@~") or stage.rsplit(".", 1)[-1].lstrip("@")[:1] == "%"
    if user_or_table and name.startswith(below):
        return name
    return name.split("/", 1)[1] if "/" in name else None


def describe_stage(session: Any, stage: str) -> list[Any]:
    """``DESC STAGE``'s rows (one per property) for ``stage``; it fails, as the connector
    raises, when the stage does not exist or the role may not use it."""
    return session.sql(f"DESC STAGE {stage.lstrip('@')}").collect()


def external_root(session: Any, stage: str) -> str:
    """The URL that starts the LIST names of external ``stage``'s files (``DESC STAGE``'s
    ``URL`` property, e.g. ``s3://bucket/prefix/``)."""
    try:
        rows = describe_stage(session, stage)
    except Exception as exc:
        raise DataError(f"{stage}: cannot describe the external stage ({reason(exc)})") from None
    for row in rows:
        fields = {str(k).lower(): v for k, v in row.as_dict().items()}
        if str(fields.get("property", "")).upper() == "URL":
            urls = json.loads(str(fields.get("property_value") or "[]"))
            if urls:
                return str(urls[0]).rstrip("/") + "/"
    raise DataError(f"{stage}: DESC STAGE gives no URL for this external stage")


def fetch_file(session: Any, stage_path: str, dest_dir: Path) -> Path:
    """Download one stage file into ``dest_dir``; gzip content (by magic) is decompressed.

    ``models/best_model.pth.gz`` arrives as ``best_model.pth`` whether or not it really
    was compressed, which is what the original notebook tripped over.
    """
    if not is_stage_path(stage_path):
        raise DataError(f"{stage_path!r}: not a stage path (it must start with '@')")
    validate_stage_name(stage_path)
    dest_dir = Path(dest_dir).expanduser()
    dest_dir.mkdir(parents=True, exist_ok=True)
    base = stage_path.rsplit("/", 1)[-1]
    target = dest_dir / (base[:-3] if base.lower().endswith(".gz") and len(base) > 3 else base)
    with tempfile.TemporaryDirectory(dir=dest_dir, prefix=".fissure-get-") as tmp:
        got = Path(tmp) / "file"
        download(session, stage_path, got, Path(tmp) / "scratch")
        os.replace(gunzipped(got, stage_path), target)
    return target


def gunzipped(path: Path, name: str) -> Path:
    """``path``, or its decompressed copy beside it when its content is gzip."""
    with path.open("rb") as f:
        if f.read(2) != GZIP_MAGIC:
            return path
    plain = path.with_name(path.name + ".plain")
    try:
        with gzip.open(path, "rb") as src, plain.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{name}: corrupt or truncated gzip data ({exc})") from None
    return plain


def run_threads(
    fn: Callable[[T], Any], items: list[T], workers: int, desc: str, progress: bool
) -> list[T]:
    """Apply ``fn`` to ``items`` on ``workers`` threads under a progress bar.

    Returns the items whose stage file is missing. Any other error stops the run at once
    (files not yet started are cancelled) rather than retrying thousands of files against
    a dead network, and is raised.
    """
    missing: list[T] = []
    if not items:
        return missing
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    bar = progress_bar(desc=desc, unit="file", total=len(items), enabled=progress)
    try:
        futures = {pool.submit(fn, item): item for item in items}
        for future in as_completed(futures):
            bar.update(1)
            exc = future.exception()
            if isinstance(exc, StageFileMissing):
                missing.append(futures[future])
            elif exc is not None:
                raise exc
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return missing
