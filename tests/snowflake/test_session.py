"""Tests for fissure.snowflake.session: which session an operation uses, and its lifetime.

No test opens a real connection: where one would be opened, ``session.connect`` (fissure's
one call of ``Session.builder.configs(...).create()``) is stood in for, and the options it
receives are checked.
"""

from __future__ import annotations

import pytest
from snowflake.snowpark import Session
from stage_helpers import in_warehouse, on_container

from fissure.errors import ConfigError
from fissure.snowflake import session as sessions
from fissure.snowflake.session import (
    KEEP_ALIVE,
    LOCAL,
    Sessions,
    connections_file,
    default_connection,
    is_alive,
    is_local_testing,
    open_session,
    resolve_session,
)


class Connects:
    """Stands in for :func:`fissure.snowflake.session.connect`: records the options."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.options: list[dict] = []
        monkeypatch.setattr(sessions, "connect", self)

    def __call__(self, options: dict) -> object:
        self.options.append(dict(options))
        return Opened()


class Opened:
    """What a connected session is to the code under test: something open, then closed."""

    def __init__(self) -> None:
        self.closed = False
        self._conn = self  # Session._conn.is_closed() is what tells a closed session

    def is_closed(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def test_open_session(outside, session, monkeypatch, tmp_path) -> None:
    assert is_local_testing(session) and not is_local_testing(object())
    assert open_session() is session
    assert open_session(LOCAL) is session  # the active emulator session is reused
    monkeypatch.setattr(sessions, "active_session", lambda: None)
    monkeypatch.setattr(sessions, "default_connection", lambda: None)
    with pytest.raises(ConfigError) as info:
        open_session()
    message = str(info.value)
    assert "--connection NAME" in message and "connection: local" in message
    assert connections_file() in message and "\n" not in message
    monkeypatch.setenv("SNOWFLAKE_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="^Snowflake connection 'nope': cannot connect"):
        open_session("nope")


def test_local_never_means_a_real_active_session(outside, session, monkeypatch) -> None:
    real = object()  # not an emulator session
    monkeypatch.setattr(sessions, "active_session", lambda: real)
    assert open_session() is real
    made = open_session(LOCAL)  # a new emulator session, never the account's
    try:
        assert made is not real and is_local_testing(made)
    finally:
        made.close()


def test_outside_snowflake_the_connection_then_active_then_default(
    outside, session, monkeypatch
) -> None:
    connects = Connects(monkeypatch)
    lines: list[str] = []
    opened, owned = resolve_session("prod", lines.append)  # --connection, or the config's
    assert owned and connects.options == [{"connection_name": "prod", KEEP_ALIVE: True}]
    assert resolve_session(None, lines.append) == (session, False)  # this process's own
    assert not lines
    monkeypatch.setattr(sessions, "active_session", lambda: None)
    # The connector's own default: $SNOWFLAKE_DEFAULT_CONNECTION_NAME, found among its
    # connections ($SNOWFLAKE_CONNECTIONS stands in for connections.toml here).
    monkeypatch.setenv("SNOWFLAKE_CONNECTIONS", '[dev]\naccount = "acme"\nuser = "u"\n')
    monkeypatch.setenv("SNOWFLAKE_DEFAULT_CONNECTION_NAME", "dev")
    assert default_connection() == "dev"
    assert resolve_session(None, lines.append)[1]
    assert connects.options[-1] == {"connection_name": "dev", KEEP_ALIVE: True}
    assert lines == [f"using the default Snowflake connection 'dev' ({connections_file()})"]
    monkeypatch.setenv("SNOWFLAKE_DEFAULT_CONNECTION_NAME", "absent")
    assert default_connection() is None
    with pytest.raises(ConfigError, match="^no Snowflake session"):
        resolve_session(None, lines.append)


def test_notebook_uses_its_active_session_over_a_configured_connection(
    outside, session, monkeypatch
) -> None:
    connects = Connects(monkeypatch)
    in_warehouse(monkeypatch)  # a warehouse notebook: no connections.toml, an active session
    lines: list[str] = []
    with Sessions(log=lines.append) as found:
        assert found.get("prod") is session  # config or checkpoint: connection: prod
        assert found.get("prod") is session
    with Sessions("prod", log=lines.append) as found:  # --connection too
        assert found.get() is session
    assert not connects.options  # nothing opened
    note = (
        "connection 'prod' ignored inside Snowflake (warehouse runtime): using the active session"
    )
    assert lines == [note, note]  # once per operation
    assert is_alive(session) and open_session() is session  # the notebook's, left open


def test_container_runtime_rank_builds_its_session_from_the_token(
    outside, monkeypatch, tmp_path
) -> None:
    connects = Connects(monkeypatch)
    on_container(monkeypatch, tmp_path, token="secret-token")
    monkeypatch.setenv("SNOWFLAKE_DATABASE", "PROJET_FISSURES")
    monkeypatch.setenv("SNOWFLAKE_SCHEMA", "STORAGE_SCHEMA")
    monkeypatch.setenv("SNOWFLAKE_WAREHOUSE", "")  # empty: not passed
    monkeypatch.setattr(sessions, "active_session", lambda: None)  # a torchrun rank has none
    lines: list[str] = []
    with Sessions(log=lines.append) as found:
        opened = found.get("prod")
    assert connects.options == [
        {
            "host": "acme.snowflakecomputing.com",
            "account": "ACME",
            "authenticator": "oauth",
            "token": "secret-token",
            KEEP_ALIVE: True,
            "database": "PROJET_FISSURES",
            "schema": "STORAGE_SCHEMA",
        }
    ]
    assert opened.closed  # opened by the operation, closed at its end
    assert lines == [
        "connection 'prod' ignored inside Snowflake (container runtime): using its session token"
    ]
    assert not any("secret-token" in line for line in lines)


def test_inside_snowflake_without_any_session_is_one_line(outside, monkeypatch) -> None:
    in_warehouse(monkeypatch)
    monkeypatch.setattr(sessions, "active_session", lambda: None)
    with pytest.raises(ConfigError, match=r"^no Snowflake session inside Snowflake \(warehouse"):
        open_session("prod")


def test_sessions_reuse_and_close_only_what_they_opened(outside, session, monkeypatch) -> None:
    with Sessions() as found:
        assert found.get() is session and found.get() is found.get()
    with Sessions(LOCAL) as found:
        assert found.get("prod") is session  # the connection beats a configured name
    assert open_session() is session  # neither the active nor an emulator session is closed

    connects = Connects(monkeypatch)
    with Sessions() as found:
        prod = found.get("prod")
        assert found.get("prod") is prod and found.get(None) is session
        assert not prod.closed
    assert prod.closed and len(connects.options) == 1


def test_a_closed_session_is_opened_again(outside, session, monkeypatch) -> None:
    made: list[Session] = []

    def fresh(name, log):  # a new emulator session each time, as if opened by name
        made.append(Session.builder.config("local_testing", True).create())
        return made[-1], True

    monkeypatch.setattr(sessions, "resolve_session", fresh)
    with Sessions() as found:
        first = found.get("prod")
        assert found.get("prod") is first and is_alive(first)
        first.close()  # what hours of idling without keep-alive do
        assert not is_alive(first)
        second = found.get("prod")
        assert second is not first and is_alive(second)
        third = found.reopen("prod")  # the server dropped it: the caller asks for another
        assert third is not second and not is_alive(second)
    assert len(made) == 3 and not any(is_alive(s) for s in made)
    assert sessions.active_session() is session


def test_snowpark_shares_sessions_between_threads() -> None:
    # Cache fills and uploads run several threads on one session: thread-safe from 1.24.
    from snowflake.snowpark.version import VERSION

    assert tuple(VERSION[:2]) >= (1, 24)


def test_describe_session_names_what_would_be_used_without_opening_it(
    outside, monkeypatch, tmp_path
) -> None:
    from stage_helpers import in_warehouse

    monkeypatch.setattr(sessions, "active_session", lambda: None)
    monkeypatch.setattr(sessions, "default_connection", lambda: None)
    monkeypatch.setattr(sessions, "resolve_session", None)  # describing never opens one
    assert sessions.describe_session("prod").startswith("connection 'prod' from ")
    assert sessions.describe_session(LOCAL) == "Snowpark's local-testing emulator"
    assert sessions.describe_session().startswith("none: pass --connection NAME")
    monkeypatch.setattr(sessions, "default_connection", lambda: "dev")
    assert sessions.describe_session().startswith("the default connection 'dev' from ")
    monkeypatch.setattr(sessions, "active_session", lambda: object())
    assert sessions.describe_session() == "this process's active session"
    in_warehouse(monkeypatch)
    text = sessions.describe_session("prod")
    assert "active session of Snowflake's" in text and "'prod' would be ignored" in text
