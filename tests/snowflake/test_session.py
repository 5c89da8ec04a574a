"""Tests for fissure.snowflake.session: opening sessions, and detecting the environment."""

from __future__ import annotations

import sys
import types

import pytest

from fissure.errors import ConfigError
from fissure.snowflake import session as sessions
from fissure.snowflake.session import (
    LOCAL,
    READER_ENV,
    Sessions,
    choose_reader,
    is_local_testing,
    open_session,
    running_in_snowflake,
)


def test_reader_detection(monkeypatch) -> None:
    monkeypatch.delenv(READER_ENV, raising=False)
    monkeypatch.delitem(sys.modules, "_snowflake", raising=False)
    assert not running_in_snowflake() and choose_reader() == "cache"
    monkeypatch.setitem(sys.modules, "_snowflake", types.ModuleType("_snowflake"))
    assert running_in_snowflake() and choose_reader() == "stream"
    assert choose_reader("cache") == "cache"
    monkeypatch.setenv(READER_ENV, "cache")
    assert choose_reader() == "cache"
    monkeypatch.setenv(READER_ENV, "bogus")
    with pytest.raises(ConfigError, match="bogus"):
        choose_reader()


def test_open_session(session, monkeypatch, tmp_path) -> None:
    assert is_local_testing(session) and not is_local_testing(object())
    assert open_session() is session
    assert open_session(LOCAL) is session  # the active emulator session is reused
    monkeypatch.setattr(sessions, "active_session", lambda: None)
    with pytest.raises(ConfigError) as info:
        open_session()
    assert "--connection NAME" in str(info.value) and "connection: local" in str(info.value)
    assert "\n" not in str(info.value)
    monkeypatch.setenv("SNOWFLAKE_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="^Snowflake connection 'nope': cannot connect"):
        open_session("nope")


def test_local_never_means_a_real_active_session(session, monkeypatch) -> None:
    real = object()  # not an emulator session
    monkeypatch.setattr(sessions, "active_session", lambda: real)
    assert open_session() is real
    made = open_session(LOCAL)  # a new emulator session, never the account's
    try:
        assert made is not real and is_local_testing(made)
    finally:
        made.close()


def test_sessions_reuse_and_close_only_what_they_opened(session, monkeypatch) -> None:
    with Sessions() as found:
        assert found.get() is session and found.get() is found.get()
    with Sessions(LOCAL) as found:
        assert found.get("prod") is session  # the connection beats a configured name
    assert open_session() is session  # neither the active nor an emulator session is closed

    opened, closed = [], []

    class Named:  # what a connections.toml session is to Sessions: something to close
        def __init__(self, name: str | None) -> None:
            self.name = name
            opened.append(self)

        def close(self) -> None:
            closed.append(self)

    monkeypatch.setattr(sessions, "open_session", Named)
    with Sessions() as found:
        prod = found.get("prod")
        assert found.get("prod") is prod and prod.name == "prod"
        assert found.get(None).name is None and not closed
    assert closed == [prod] and len(opened) == 2
