"""Files in a Snowflake stage: names, retried transfers, single-file get and put, tables.

Snowpark's ``get_stream`` downloads to ``tempfile.gettempdir()/<basename>``, so
``images/001.png.gz`` and ``masks/001.png.gz`` collide when read concurrently. Here a
file is fetched with ``session.file.get`` into a private temporary folder and moved into
place with ``os.replace``, so a file only ever appears complete under its final name.
The local cache built on this is :mod:`fissure.snowflake.cache`.

The stage is spelled fully qualified everywhere (:func:`stage_name`): the local-testing
emulator treats ``@STAGE`` and ``@DB.SCH.STAGE`` as two stages.
"""

from __future__ import annotations

import errno
import gzip
import io
import os
import re
import shutil
import tempfile
import time
import unicodedata
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, TypeVar

from tqdm.auto import tqdm

from ..config import SnowflakeConfig
from ..data import is_stage_path
from ..data.image import GZIP_MAGIC
from ..errors import ConfigError, DataError

T = TypeVar("T")
Sleep = Callable[[float], Any]

RETRY_TRIES = 4
RETRY_BASE_DELAY = 0.5
# Errors about the local disk, not the network: another try cannot help.
_LOCAL_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM}
# snowflake.connector.errors classes that mean "the network or the service hiccuped".
_RETRYABLE = (  # noqa: SIM905 (one line per name would dwarf the rule it states)
    "OperationalError InterfaceError InternalServerError ServiceUnavailableError "
    "GatewayTimeoutError RequestTimeoutError BadGatewayError TooManyRequests "
    "OtherHTTPRetryableError RequestExceedMaxRetryError PresignedUrlExpiredError"
).split()
# A safe SQL identifier: unquoted, or quoted without quotes inside (names go into SQL text).
_IDENT = re.compile(r'^(?:[A-Za-z_][A-Za-z0-9_$]*|"[^"]+")$')


class StageFileMissing(DataError):
    """A file the manifest names is not in the stage."""


def reason(exc: BaseException) -> str:
    """First line of an exception's message, for one-line errors."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]


def listed(items: Iterable[str], limit: int = 10) -> str:
    """``a, b, c and 4 more``: up to ``limit`` items, so that an error stays one line."""
    items = list(items)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` looks like a network or service hiccup worth another try."""
    if isinstance(exc, DataError):
        return False
    from snowflake.connector import errors as ce
    from snowflake.snowpark.exceptions import SnowparkSQLException

    if isinstance(exc, SnowparkSQLException):
        inner = getattr(exc, "conn_error", None)
        return inner is not None and inner is not exc and is_transient(inner)
    if isinstance(exc, ce.NonRetryableTlsError):
        return False
    retryable = tuple(getattr(ce, n) for n in _RETRYABLE if hasattr(ce, n))
    if isinstance(exc, (*retryable, ConnectionError, TimeoutError)):
        return True
    local = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
    return (
        isinstance(exc, OSError) and not isinstance(exc, local) and (exc.errno not in _LOCAL_ERRNOS)
    )


def with_retries(
    fn: Callable[[], T],
    what: str,
    tries: int = RETRY_TRIES,
    base_delay: float = RETRY_BASE_DELAY,
    sleep: Sleep = time.sleep,
) -> T:
    """``fn()``, retried with exponential backoff on transient errors only.

    After the last try a transient error becomes a DataError naming ``what``; any other
    error propagates at once.
    """
    for attempt in range(tries):
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt == tries - 1:
                raise DataError(f"{what}: failed after {tries} tries ({reason(exc)})") from None
            sleep(base_delay * 2**attempt)
    raise AssertionError("unreachable")


def is_missing_error(exc: BaseException) -> bool:
    """Snowflake's (and the emulator's) way of saying an object or file is not there."""
    text = str(exc).lower()
    return "does not exist" in text or "not found" in text


# -- names ----------------------------------------------------------------------------


def name_problem(name: Any) -> str | None:
    """Why ``name`` is unsafe as a path below a stage and in the local cache, or None.

    ``..`` is refused as a path component (``a..b.png`` is a harmless file name).
    """
    if not isinstance(name, str):
        return "not text"
    if not name.strip():
        return "empty"
    if any(unicodedata.category(c) == "Cc" for c in name):
        return "control character"
    if name != name.strip():
        return "leading or trailing spaces"  # Snowpark strips them: another file
    if "\\" in name:
        return "backslash"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    parts = name.split("/")
    if ".." in parts:
        return "'..' in the path"
    if any(part in ("", ".") for part in parts):
        return "empty or '.' path component"
    return None


def validate_stage_name(path: str) -> str:
    """Return ``path`` if safe; DataError for '..', absolute paths, backslashes, control chars.

    A full stage path (``@STAGE/dir/file``) is checked after its stage name.
    """
    rel = path
    if is_stage_path(path):
        rel = path.split("/", 1)[1] if "/" in path else ""
    problem = name_problem(rel)
    if problem:
        raise DataError(f"{path!r}: unsafe stage path ({problem})")
    return path


def stage_name(cfg: SnowflakeConfig) -> str:
    """``@DB.SCHEMA.STAGE``: the one spelling of the stage used everywhere."""
    stage = cfg.stage.strip().rstrip("/").lstrip("@")
    full = stage if "." in stage else f"{cfg.database}.{cfg.schema}.{stage}"
    if not all(_IDENT.match(part) for part in full.split(".")):
        raise ConfigError(f"data.snowflake.stage: {full!r} is not a valid stage name")
    return "@" + full


def qualified(cfg: SnowflakeConfig, name: str) -> str:
    """``DB.SCHEMA.NAME`` unless ``name`` is already qualified."""
    full = name.strip() if "." in name else f"{cfg.database}.{cfg.schema}.{name.strip()}"
    if not all(_IDENT.match(part) for part in full.split(".")):
        raise ConfigError(f"data.snowflake: {full!r} is not a valid table or view name")
    return full


def stage_rel(prefix: str, name: str, suffix: str) -> str:
    """``images/001.png.gz``: where a manifest name lives below the stage."""
    return "/".join(part for part in (prefix.strip("/"), name + suffix) if part)


# -- tables ----------------------------------------------------------------------------------


def is_null(value: Any) -> bool:
    """What a missing manifest cell looks like in pandas: None, NaN, NA or an empty string."""
    if value is None or isinstance(value, str):
        return not value
    try:
        return bool(value != value)  # only NaN differs from itself
    except TypeError:  # pandas NA refuses to become a bool
        return True


def read_table(session: Any, name: str) -> Any | None:
    """Table or view ``name`` as a pandas frame, or None when it does not exist."""
    try:
        return with_retries(lambda: session.table(name).to_pandas(), name)
    except DataError:
        raise
    except Exception as exc:
        if is_missing_error(exc):
            return None
        raise DataError(f"{name}: cannot read ({reason(exc)})") from None


def match_columns(frame: Any, name: str, wanted: Iterable[str], hint: str) -> dict[str, str]:
    """Wanted column -> actual column, matched case-insensitively; DataError if one lacks."""
    actual = {str(c).upper(): str(c) for c in frame.columns}
    missing = [w for w in wanted if w.upper() not in actual]
    if missing:
        found = ", ".join(map(str, frame.columns)) or "none"
        raise DataError(f"{name}: missing column(s) {', '.join(missing)} (found {found}); {hint}")
    return {w: actual[w.upper()] for w in wanted}


# -- single-file transfers ----------------------------------------------------------------


def download(
    session: Any, stage_path: str, dest: Path, scratch: Path, sleep: Sleep = time.sleep
) -> int:
    """Fetch one stage file to ``dest`` atomically; returns its size in bytes.

    ``scratch`` must be on the filesystem of ``dest`` so that the final move is atomic.
    GET matches by prefix on a real stage (``a.png.gz`` also brings ``a.png.gz.bak``),
    so only the file with the exact basename is kept.
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
                raise StageFileMissing(f"{stage_path}: file not found in the stage")
            size = got.stat().st_size
            if expected is not None and int(expected) != size:
                raise ConnectionError(f"got {size} bytes of {int(expected)}")  # retried
            return size

        try:
            size = with_retries(fetch, stage_path, sleep=sleep)
        except DataError:
            raise
        except Exception as exc:
            if is_missing_error(exc):
                raise StageFileMissing(f"{stage_path}: file not found in the stage") from None
            raise DataError(f"{stage_path}: cannot download ({reason(exc)})") from None
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(got, dest)
        except OSError as exc:
            raise DataError(f"{dest}: cannot write ({reason(exc)})") from None
    return size


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
        raise DataError(f"{stage_path}: cannot upload ({reason(exc)})") from None


def push_files(session: Any, files: list[Path], stage_prefix: str) -> list[str]:
    """Upload local ``files`` as-is under ``stage_prefix``; returns their stage paths."""
    if not is_stage_path(stage_prefix):
        raise DataError(f"{stage_prefix!r}: not a stage path (it must start with '@')")
    out = []
    for file in map(Path, files):
        if not file.is_file():
            raise DataError(f"{file}: file not found")
        target = validate_stage_name(f"{stage_prefix.rstrip('/')}/{file.name}")
        put_bytes(session, target, file.read_bytes())
        out.append(target)
    return out


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
        with got.open("rb") as f:
            compressed = f.read(2) == GZIP_MAGIC
        if compressed:
            plain = Path(tmp) / "plain"
            try:
                with gzip.open(got, "rb") as src, plain.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except (OSError, EOFError, zlib.error) as exc:
                raise DataError(f"{stage_path}: corrupt or truncated gzip data ({exc})") from None
            got = plain
        os.replace(got, target)
    return target


def run_threads(
    fn: Callable[[T], Any], items: list[T], workers: int, desc: str, progress: bool
) -> list[T]:
    """Apply ``fn`` to ``items`` on ``workers`` threads under a progress bar.

    Returns the items whose stage file is missing. Any other error stops the run at once
    (files not yet started are cancelled) rather than retrying thousands of files against
    a dead network, and is raised.
    """
    missing: list[T] = []
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    bar = tqdm(total=len(items), desc=desc, unit="file", disable=not progress)
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
