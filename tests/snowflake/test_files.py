"""Tests for fissure.snowflake.files: names, what an error means, retries."""

from __future__ import annotations

import pytest
from stage_helpers import STAGE, file_not_exists, stage_not_found

from fissure.config import SnowflakeConfig
from fissure.errors import ConfigError, DataError, SourceUnavailable
from fissure.snowflake.files import (
    SessionGone,
    canonical_stage,
    is_missing_error,
    is_missing_file,
    is_missing_stage,
    is_session_gone,
    is_transient,
    listed,
    qualified,
    reason,
    stage_name,
    stage_rel,
    transfer_error,
    validate_stage_name,
    with_retries,
)


def test_retries_only_transient_errors_with_backoff() -> None:
    from snowflake.connector.errors import OperationalError

    calls = []

    def fails(*args, **kwargs):
        calls.append(1)
        raise OperationalError("network is unreachable")

    delays: list[float] = []
    assert with_retries(lambda: 7, "x") == 7
    with pytest.raises(DataError, match=r"^@X/f: failed after 4 tries"):
        with_retries(fails, "@X/f", sleep=delays.append)
    assert delays == [0.5, 1.0, 2.0] and len(calls) == 4
    with pytest.raises(ValueError):  # not transient: no retry
        with_retries(lambda: (_ for _ in ()).throw(ValueError("bad")), "x", sleep=delays.append)
    assert not is_transient(DataError("x")) and not is_transient(FileNotFoundError("x"))
    assert is_transient(ConnectionResetError()) and is_transient(TimeoutError())


def test_a_missing_file_on_a_real_account_is_never_retried() -> None:
    # connector 4.8 raises OperationalError (its network-error class) with errno 253006 for
    # GET of a missing file: it must not be taken for a hiccup (4 GETs, 3.5 s of backoff).
    missing = file_not_exists()
    assert is_missing_file(missing) and is_missing_error(missing) and not is_transient(missing)
    calls: list[int] = []
    delays: list[float] = []

    def get() -> None:
        calls.append(1)
        raise missing

    with pytest.raises(type(missing)):
        with_retries(get, "@S/images/x.png.gz", sleep=delays.append)
    assert calls == [1] and delays == []


def test_the_emulators_missing_file_and_snowpark_wrapping() -> None:
    from snowflake.connector.errors import OperationalError, ProgrammingError
    from snowflake.snowpark.exceptions import SnowparkSQLException
    from snowflake.snowpark.mock.exceptions import SnowparkLocalTestingException

    assert is_missing_file(SnowparkLocalTestingException("the file does not exist: /x/a.png"))
    # Snowpark wraps a ProgrammingError (PUT of a missing local file, same errno) in its own
    # SnowparkSQLException, keeping the connector error as conn_error.
    inner = ProgrammingError(msg="File doesn't exist: /x", errno=253006)
    wrapped = SnowparkSQLException("File doesn't exist", conn_error=inner)
    assert is_missing_file(wrapped) and not is_transient(wrapped)
    assert not is_missing_file(OperationalError(msg="connection reset", errno=254000))
    assert not is_missing_file(OSError(2, "No such file"))  # a local errno, not the connector's


def test_a_stage_that_is_not_there_is_not_a_missing_file() -> None:
    gone = stage_not_found(STAGE)
    assert is_missing_stage(gone) and not is_missing_file(gone)
    assert not is_missing_stage(file_not_exists())
    # the cause is on the second line of Snowflake's SQL errors
    assert reason(gone) == (
        "(1304): SQL compilation error: Stage 'PROJET_FISSURES.STORAGE_SCHEMA.MY_FISSURE_STAGE' "
        "does not exist or not authorized."
    )
    assert reason(RuntimeError("one line\nmore detail")) == "one line"


def test_a_session_gone_is_reconnected_not_retried() -> None:
    from snowflake.connector.errors import DatabaseError, ProgrammingError
    from snowflake.snowpark.exceptions import SnowparkSessionException

    # network.py: 390114 (master token expired) after 4 hours idle without keep-alive;
    # Snowpark's own 1404 when the client already knows the session is closed.
    expired = ProgrammingError(msg="Authentication token has expired.", errno=390114)
    closed = SnowparkSessionException("the session has been closed", error_code="1404")
    for exc in (expired, closed, DatabaseError(msg="Connection is closed", errno=250002)):
        assert is_session_gone(exc) and not is_transient(exc)
    error = transfer_error(expired, "@S/models/best.pt", "upload")
    assert isinstance(error, SessionGone) and "expired or closed" in str(error)
    other = transfer_error(RuntimeError("boom"), "@S/x", "upload")
    # not a session: still the source failing, not one bad file
    assert type(other) is SourceUnavailable and str(other) == "@S/x: cannot upload (boom)"
    assert isinstance(error, SourceUnavailable)


def test_stage_names() -> None:
    assert validate_stage_name("@DB.S.STAGE/models/a..b.pth") == "@DB.S.STAGE/models/a..b.pth"
    assert validate_stage_name("images/001.png.gz") == "images/001.png.gz"
    for bad, why in [
        ("@S/../x", "'..'"),
        ("/abs/x", "absolute"),
        ("C:/x", "absolute"),
        ("a\\b", "backslash"),
        ("a\x00b", "control"),
        ("a/\x7f", "control"),
        ("@S", "empty"),
        ("a//b", "empty or '.'"),
        (" a", "leading"),
    ]:
        with pytest.raises(DataError, match=why):
            validate_stage_name(bad)
    assert stage_name(SnowflakeConfig()) == STAGE
    assert stage_name(SnowflakeConfig(stage="@OTHER.SCH.ST/")) == "@OTHER.SCH.ST"
    with pytest.raises(ConfigError, match="data.snowflake.stage"):
        stage_name(SnowflakeConfig(stage="MY STAGE; DROP"))


def test_qualified_names_and_stage_relative_paths() -> None:
    cfg = SnowflakeConfig()
    assert qualified(cfg, "V_X") == "PROJET_FISSURES.STORAGE_SCHEMA.V_X"
    assert qualified(cfg, " OTHER.SCH.T ") == "OTHER.SCH.T"
    with pytest.raises(ConfigError, match="not a valid table or view name"):
        qualified(cfg, "T; DROP TABLE X")
    assert stage_rel("/images/", "001.png", ".gz") == "images/001.png.gz"
    assert stage_rel("", "001.png", "") == "001.png"


def test_listed_names_ten_then_a_count() -> None:
    assert listed(["a", "b"]) == "a, b"
    assert listed(map(str, range(12))) == "0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 2 more"


def test_canonical_stage_is_how_an_account_resolves_the_name() -> None:
    assert canonical_stage("@db.sch.stage/Photos/a.JPG") == "@DB.SCH.STAGE/Photos/a.JPG"
    assert canonical_stage('@db."My Schema".stage/x') == '@DB."My Schema".STAGE/x'
    assert canonical_stage("@~/photos/") == "@~/photos/"
    assert canonical_stage("@%t") == "@%T"
    assert canonical_stage("local/path.png") == "local/path.png"
