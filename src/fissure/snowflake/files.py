"""Files in a Snowflake stage: names, errors, retries, and manifest tables.

What a failure means decides what happens next: a missing file is reported at once and
never retried (:func:`is_missing_file`), a network or service hiccup is retried with
backoff (:func:`is_transient`), and a session the server dropped is opened again by the
caller (:func:`is_session_gone`). Files are moved by :mod:`fissure.snowflake.transfer`.

The stage is spelled fully qualified everywhere (:func:`stage_name`): the local-testing
emulator treats ``@STAGE`` and ``@DB.SCH.STAGE`` as two stages.
"""

from __future__ import annotations

import errno
import re
import time
import unicodedata
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from ..config import SnowflakeConfig
from ..data import is_stage_path
from ..errors import ConfigError, DataError, SourceUnavailable

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
# The connector's ER_FILE_NOT_EXISTS: GET of a path with no file under it (OperationalError,
# raw through Snowpark) or PUT of a missing local file (ProgrammingError).
FILE_NOT_EXISTS = 253006
# The session is gone: expired (390112), its login expired (390114), no longer exists
# (390111), or the connection was closed (250002, ER_CONNECTION_IS_CLOSED).
_SESSION_GONE = {390111, 390112, 390114, 250002}
# Snowpark's own: session expired (1402), session closed (1404).
_SNOWPARK_SESSION_GONE = {"1402", "1404"}
# A safe SQL identifier: unquoted, or quoted without quotes inside (names go into SQL text).
_IDENT = re.compile(r'^(?:[A-Za-z_][A-Za-z0-9_$]*|"[^"]+")$')


class StageFileMissing(DataError):
    """A file the manifest names is not in the stage."""


class SessionGone(SourceUnavailable):
    """The session expired or was closed: a new session can go on, another try cannot."""


def reason(exc: BaseException) -> str:
    """First line of an exception's message, for one-line errors.

    Snowflake's SQL errors put the cause on the second line ("SQL compilation error:" then
    "Stage '...' does not exist or not authorized."): a first line ending in ':' takes the
    next one with it.
    """
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    first = lines[0]
    if first.endswith(":") and len(lines) > 1:
        first = f"{first} {lines[1]}"
    return first[:300]


def listed(items: Iterable[str], limit: int = 10) -> str:
    """``a, b, c and 4 more``: up to ``limit`` items, so that an error stays one line."""
    items = list(items)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _errnos(exc: BaseException) -> set[int]:
    """The connector error numbers ``exc`` carries, itself or wrapped by Snowpark."""
    found: set[int] = set()
    for err in (exc, getattr(exc, "conn_error", None)):
        number = getattr(err, "errno", None) if err is not None else None
        if isinstance(number, int) and not isinstance(err, OSError):
            found.add(number)
    code = getattr(exc, "sql_error_code", None)
    if isinstance(code, int):
        found.add(code)
    return found


def is_missing_file(exc: BaseException) -> bool:
    """Whether ``exc`` says a stage file is not there, which no retry can change.

    A real account says it with the connector's ``OperationalError`` errno 253006 ("the file
    does not exist"), raised raw through ``session.file.get``; the emulator with its own
    ``SnowparkLocalTestingException``, in the same words.
    """
    if FILE_NOT_EXISTS in _errnos(exc):
        return True
    return type(exc).__name__ == "SnowparkLocalTestingException" and (
        "does not exist" in str(exc).lower()
    )


def is_session_gone(exc: BaseException) -> bool:
    """Whether ``exc`` says the session itself has expired or closed: reconnect, not retry."""
    if _errnos(exc) & _SESSION_GONE:
        return True
    return str(getattr(exc, "error_code", "")) in _SNOWPARK_SESSION_GONE


def transfer_error(exc: BaseException, what: str, doing: str) -> SourceUnavailable:
    """The one-line error of a failed transfer of ``what``: :class:`SessionGone` when the
    session is the cause, :func:`stage_unreadable` when the stage is, else a
    SourceUnavailable saying what could not be done."""
    if is_session_gone(exc):
        return SessionGone(f"{what}: the Snowflake session has expired or closed ({reason(exc)})")
    if is_missing_stage(exc):
        return stage_unreadable(exc, what)
    return SourceUnavailable(f"{what}: cannot {doing} ({reason(exc)})")


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` looks like a network or service hiccup worth another try.

    Never a missing file nor a gone session, although the connector raises the first as an
    ``OperationalError``, the class of its network errors.
    """
    if isinstance(exc, DataError) or is_missing_file(exc) or is_session_gone(exc):
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
                raise SourceUnavailable(f"{what}: failed after {tries} tries "
                                        f"({reason(exc)})") from None
            sleep(base_delay * 2**attempt)
    raise AssertionError("unreachable")


OBJECT_NOT_FOUND = 2003
"""SQL error 002003: "<Object> '...' does not exist or not authorized"."""


def is_missing_stage(exc: BaseException) -> bool:
    """Whether ``exc`` says the stage itself does not exist, or that the role may not use it.

    A real account answers a GET from such a stage with SQL error 002003 ("Stage '...' does
    not exist or not authorized") for every file alike. Telling it apart from a missing file
    (errno 253006) stops a misspelt stage from becoming one failed GET per file and a list
    of "missing" files.
    """
    if is_missing_file(exc):
        return False
    return OBJECT_NOT_FOUND in _errnos(exc) or "not authorized" in str(exc).lower()


def stage_unreadable(exc: BaseException, stage_path: str) -> SourceUnavailable:
    """The one-line error for a transfer that failed as :func:`is_missing_stage` says."""
    stage = stage_path.split("/", 1)[0]
    return SourceUnavailable(f"{stage}: the stage does not exist, or this role may not read "
                             f"it ({reason(exc)})")


def is_missing_error(exc: BaseException) -> bool:
    """Snowflake's (and the emulator's) way of saying an object (a table, a stage) or a file
    is not there, in words: for tables and views, whose errors carry no file errno."""
    if is_missing_file(exc):
        return True
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


def canonical_stage(path: str) -> str:
    """``path`` with its stage spelt as a real account resolves it: the unquoted parts of
    ``@db.sch.stage`` upper-cased, quoted ones kept, the path below the stage unchanged
    (``@db.sch.stage/Photos/`` -> ``@DB.SCH.STAGE/Photos/``).

    A real account folds unquoted identifiers to upper case, so two spellings of one stage
    must compare equal where results are matched by path. Snowpark's emulator keys stages
    by their literal spelling, so names it uses are not rewritten.
    """
    if not is_stage_path(path):
        return path
    stage, sep, rest = path.partition("/")
    parts = re.findall(r'"[^"]*"|[^.]+', stage[1:])
    return "@" + ".".join(p if p.startswith('"') else p.upper() for p in parts) + sep + rest


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
