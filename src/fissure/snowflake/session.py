"""Snowpark sessions, and where this process runs.

A session is opened once by whoever starts an operation (the CLI through :mod:`fissure.api`,
or a notebook) and passed down explicitly: no function of :mod:`fissure.snowflake` finds
one on its own, and none is kept in a module global.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .files import reason

if TYPE_CHECKING:
    from snowflake.snowpark import Session

LOCAL = "local"
"""The connection name that means Snowpark's local-testing emulator."""
READER_ENV = "FISSURE_STAGE_READER"
"""Environment variable overriding how stage files are read: ``auto``, ``stream``, ``cache``."""

NO_SESSION = (
    "no Snowflake session: pass --connection NAME (an entry of "
    "~/.snowflake/connections.toml), run inside Snowflake where a session is active, "
    "or set data.snowflake.connection: local for the offline emulator"
)


def active_session() -> Session | None:
    """The process's one active Snowpark session (a notebook's), or None.

    Several active sessions count as none: neither of them is "the" session.
    """
    from snowflake.snowpark.context import get_active_session
    from snowflake.snowpark.exceptions import SnowparkSessionException

    try:
        return get_active_session()
    except SnowparkSessionException:
        return None


def is_local_testing(session: Any) -> bool:
    """Whether ``session`` is Snowpark's in-process emulator."""
    return type(getattr(session, "_conn", None)).__module__.startswith("snowflake.snowpark.mock")


def open_session(connection: str | None = None) -> Session:
    """The session for ``connection``; the caller owns it and passes it on.

    * a ``connections.toml`` name: a new session on that connection (only the name is ever
      kept, never a credential);
    * ``"local"``: the active emulator session, else a new one. A real active session is
      never used for it, so the emulator's tests cannot touch an account;
    * None: the active session (a Snowflake notebook's).

    A connection that fails, or no connection and no active session, is a one-line
    ConfigError.
    """
    from snowflake.snowpark import Session

    if connection and connection != LOCAL:
        try:
            return Session.builder.config("connection_name", connection).create()
        except Exception as exc:  # the connector raises its own Error types
            raise ConfigError(
                f"Snowflake connection '{connection}': cannot connect ({reason(exc)})"
            ) from None
    active = active_session()
    if active is not None and (connection != LOCAL or is_local_testing(active)):
        return active
    if connection == LOCAL:
        return Session.builder.config("local_testing", True).create()
    raise ConfigError(NO_SESSION)


def running_in_snowflake() -> bool:
    """Whether this process runs in Snowflake's Python sandbox.

    The sandbox (stored procedures, UDFs, warehouse notebooks) provides the ``_snowflake``
    module, which Snowpark itself probes to find the server, and the connector reports
    its platform as ``XP`` there. Container-runtime notebooks (SPCS) have neither: their
    ``SnowflakeFile`` is the client one with the collision bug, and they have a disk.
    """
    try:
        import _snowflake  # noqa: F401

        return True
    except ImportError:
        pass
    try:
        from snowflake.connector.description import PLATFORM
    except ImportError:
        return False
    return PLATFORM == "XP"


def choose_reader(reader: str = "auto") -> str:
    """``"stream"`` or ``"cache"``: as asked, else as $FISSURE_STAGE_READER says, else detected.

    The sandbox's ``SnowflakeFile`` streams from the stage; elsewhere it is the client one,
    whose downloads of same-named files collide, and a local cache also spares DataLoader
    workers a session.
    """
    choice = reader if reader != "auto" else os.environ.get(READER_ENV, "auto").strip().lower()
    if choice == "auto":
        return "stream" if running_in_snowflake() else "cache"
    if choice not in ("stream", "cache"):
        raise ConfigError(f"stage reader {choice!r}: use auto, stream or cache ({READER_ENV})")
    return choice


class Sessions:
    """The Snowflake sessions of one operation, each opened at its first use and then reused.

    ``connection`` beats the name a config or checkpoint holds; with neither, the active
    session is used. As a context manager it closes, at the end, the sessions it opened by
    connection name. An active session (a notebook's) is the caller's and stays open, and so
    does an emulator session: its stage lives only as long as the session, and later
    operations of the same process expect to find the files they uploaded.
    """

    def __init__(self, connection: str | None = None) -> None:
        self.connection = connection
        self._open: dict[str | None, Any] = {}

    def get(self, configured: str | None = None) -> Session:
        """The session for ``connection``, else for ``configured``, else the active one."""
        name = self.connection or configured
        if name not in self._open:
            self._open[name] = open_session(name)
        return self._open[name]

    def close(self) -> None:
        """Close the sessions opened here by connection name; forget all of them."""
        for name, session in self._open.items():
            if name and name != LOCAL:
                session.close()
        self._open.clear()

    def __enter__(self) -> Sessions:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
