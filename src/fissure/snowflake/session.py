"""Snowpark sessions: which one an operation uses, opened once and passed down.

A session is opened by whoever starts an operation (the CLI through :mod:`fissure.api`, or
a notebook) and passed down explicitly: no other function of :mod:`fissure.snowflake`
finds one on its own, and none is kept in a module global. :func:`open_session` says which
session a connection name leads to:

* **inside Snowflake** (a notebook on either runtime, a stored procedure, the Container
  Runtime, see :mod:`~fissure.snowflake.environment`): the active session; a connection
  name given or stored in a config or checkpoint is ignored there, with one line saying
  so. A Container Runtime process without one (a torchrun rank) opens its own from the
  runtime's token file and ``SNOWFLAKE_*`` variables, as Snowpark does for its workers.
* **outside**: the connection given (``--connection``, else the config's), else the
  process's own active session (one made earlier in the same notebook), else the
  connector's default connection (``default_connection_name`` or
  ``$SNOWFLAKE_DEFAULT_CONNECTION_NAME``, in the ``connections.toml`` the connector finds);
* ``"local"``, anywhere: Snowpark's local-testing emulator.

Sessions fissure opens keep themselves alive (``client_session_keep_alive``): training
reads only the local cache, and Snowflake closes a session idle for 4 hours, which would
fail the ``--push`` at the end of a long run. :class:`Sessions` also reopens one that has
closed anyway.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .environment import (
    ACCOUNT_ENV,
    HOST_ENV,
    Log,
    inside_snowflake,
    on_container_runtime,
    runtime_name,
    token_file,
)
from .files import reason

if TYPE_CHECKING:
    from snowflake.snowpark import Session

LOCAL = "local"
"""The connection name that means Snowpark's local-testing emulator."""
KEEP_ALIVE = "client_session_keep_alive"
# Container Runtime variables a token session takes, when set (the Snowpark/SPCS names).
_RUNTIME_ENV = {
    "port": "SNOWFLAKE_PORT",
    "protocol": "SNOWFLAKE_PROTOCOL",
    "database": "SNOWFLAKE_DATABASE",
    "schema": "SNOWFLAKE_SCHEMA",
    "warehouse": "SNOWFLAKE_WAREHOUSE",
    "role": "SNOWFLAKE_ROLE",
}


def connections_file() -> str:
    """The ``connections.toml`` the connector reads: in ``$SNOWFLAKE_HOME`` (default
    ``~/.snowflake``) when that folder exists, else in the platform's config folder."""
    try:
        from snowflake.connector.constants import CONNECTIONS_FILE
    except ImportError:
        return "~/.snowflake/connections.toml"
    return str(CONNECTIONS_FILE)


def no_session_message() -> str:
    """The one-line error for "no session could be found", naming what would give one."""
    return (
        f"no Snowflake session: pass --connection NAME (an entry of {connections_file()}), "
        "set default_connection_name there, run inside Snowflake where a session is active, "
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


def is_alive(session: Any) -> bool:
    """Whether ``session`` can still run a query: not closed, and its login not expired.

    Only what the client knows: a session the server dropped shows up at the next query
    (see :func:`fissure.snowflake.files.is_session_gone`).
    """
    conn = getattr(session, "_conn", None)
    try:
        if conn is None or conn.is_closed():
            return False
    except Exception:
        return False
    return getattr(getattr(conn, "_conn", None), "expired", False) is not True


def default_connection() -> str | None:
    """The connector's default connection name, if ``connections.toml`` defines it.

    The connector's own resolution: ``$SNOWFLAKE_DEFAULT_CONNECTION_NAME``, else
    ``default_connection_name`` in its ``config.toml``, else ``default``.
    ``Session.builder.create()`` uses it only when given no option at all, so it is looked
    up here to open it with keep-alive.
    """
    try:
        from snowflake.connector.config_manager import CONFIG_MANAGER

        name = CONFIG_MANAGER["default_connection_name"]
        return name if name in CONFIG_MANAGER["connections"] else None
    except Exception:  # an unreadable config file: as if there were none
        return None


def token_options() -> dict[str, Any]:
    """Connection options of a Container Runtime process: its OAuth token and variables.

    The token is read afresh at each call: the runtime renews the file. It is never logged
    nor written anywhere.
    """
    path = token_file()
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the session token ({exc.strerror})") from None
    options: dict[str, Any] = {
        "host": os.environ[HOST_ENV],
        "account": os.environ[ACCOUNT_ENV],
        "authenticator": "oauth",
        "token": token,
        KEEP_ALIVE: True,
    }
    for key, env in _RUNTIME_ENV.items():
        if os.environ.get(env):
            options[key] = os.environ[env]
    return options


def connect(options: dict[str, Any]) -> Session:
    """A new session from connector ``options`` (the one place fissure opens one)."""
    from snowflake.snowpark import Session

    return Session.builder.configs(options).create()


def _opened(options: dict[str, Any], what: str) -> Session:
    try:
        return connect(options)
    except Exception as exc:  # the connector raises its own Error types
        raise ConfigError(f"{what}: cannot connect ({reason(exc)})") from None


def resolve_session(connection: str | None = None, log: Log = print) -> tuple[Session, bool]:
    """``(session, opened)``: the session ``connection`` leads to (see the module docstring),
    and whether it was opened here, for the caller to close at the end."""
    from snowflake.snowpark import Session

    if connection == LOCAL:
        active = active_session()
        if active is not None and is_local_testing(active):
            return active, False
        # A real active session is never used for "local": the emulator's tests must never
        # touch an account. An emulator session is not closed: its stage lives with it.
        return Session.builder.config("local_testing", True).create(), False
    if inside_snowflake():
        return _inside(connection, log)
    if connection:
        options = {"connection_name": connection, KEEP_ALIVE: True}
        return _opened(options, f"Snowflake connection '{connection}'"), True
    active = active_session()
    if active is not None:
        return active, False
    default = default_connection()
    if default is None:
        raise ConfigError(no_session_message())
    log(f"using the default Snowflake connection '{default}' ({connections_file()})")
    options = {"connection_name": default, KEEP_ALIVE: True}
    return _opened(options, f"Snowflake connection '{default}'"), True


def _inside(connection: str | None, log: Log) -> tuple[Session, bool]:
    """The session inside Snowflake: the active one, else the Container Runtime's token."""
    where = f"inside Snowflake ({runtime_name()} runtime)"
    active = active_session()
    if active is not None:
        if connection:
            log(f"connection '{connection}' ignored {where}: using the active session")
        return active, False
    if on_container_runtime():
        if connection:
            log(f"connection '{connection}' ignored {where}: using its session token")
        return _opened(token_options(), f"Container Runtime session ({token_file()})"), True
    raise ConfigError(
        f"no Snowflake session {where}: none is active; in a stored procedure pass the "
        "session it receives"
    )


def open_session(connection: str | None = None, log: Log = print) -> Session:
    """The session ``connection`` leads to (see the module docstring); the caller owns it.

    Only a connection name is ever kept, never a credential. A connection that fails, or
    none found, is a one-line ConfigError.
    """
    return resolve_session(connection, log)[0]


class Sessions:
    """The Snowflake sessions of one operation, each opened at its first use and then reused.

    ``connection`` beats the name a config or checkpoint holds (outside Snowflake; inside,
    the active session beats both). A session that has closed meanwhile (a long run) is
    opened again at the next :meth:`get`. As a context manager it closes, at the end, the
    sessions it opened; an active session (a notebook's) is the caller's and stays open,
    and so does an emulator session, whose stage lives only as long as the session.
    ``log`` receives the one-line notes (a connection ignored inside Snowflake).
    """

    def __init__(self, connection: str | None = None, log: Log | None = print) -> None:
        self.connection = connection
        self.log: Log = log or (lambda line: None)
        self._open: dict[str | None, Any] = {}
        self._owned: list[Any] = []
        self._said: set[str] = set()

    def _note(self, line: str) -> None:
        if line not in self._said:  # once per operation, however many lookups
            self._said.add(line)
            self.log(line)

    def get(self, configured: str | None = None) -> Session:
        """The session for ``connection``, else for ``configured``, else the default one."""
        name = self.connection or configured
        session = self._open.get(name)
        if session is None or not is_alive(session):
            session, opened = resolve_session(name, self._note)
            self._open[name] = session
            if opened:
                self._owned.append(session)
        return session

    def reopen(self, configured: str | None = None) -> Session:
        """A new session in place of the one :meth:`get` gives, which the server dropped."""
        name = self.connection or configured
        old = self._open.pop(name, None)
        if old is not None and any(old is s for s in self._owned):
            _close(old)
        return self.get(configured)

    def close(self) -> None:
        """Close the sessions opened here; forget all of them."""
        for session in self._owned:
            _close(session)
        self._owned.clear()
        self._open.clear()

    def __enter__(self) -> Sessions:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close(session: Any) -> None:
    with contextlib.suppress(Exception):  # already gone on the server: nothing to close
        session.close()


def describe_session(connection: str | None = None) -> str:
    """Which session an operation would use, in words, without opening one: a connection
    name, the active session or the runtime's, never a credential."""
    if inside_snowflake():
        ignored = f" (connection '{connection}' would be ignored)" if connection else ""
        return f"the active session of Snowflake's {runtime_name()}{ignored}"
    if connection == LOCAL:
        return "Snowpark's local-testing emulator"
    if connection:
        return f"connection '{connection}' from {connections_file()}"
    if active_session() is not None:
        return "this process's active session"
    default = default_connection()
    if default:
        return f"the default connection '{default}' from {connections_file()}"
    return f"none: pass --connection NAME (an entry of {connections_file()})"
