"""Where this process runs, and the defaults that follow from it.

Snowflake runs Python in two places, and they differ in what a program may do:

* **the warehouse sandbox**: stored procedures, UDFs and notebooks on the warehouse
  runtime. Snowpark finds the server through the ``_snowflake`` module, and the connector
  reports its platform as ``XP``. Python's multiprocessing is refused there, so DataLoader
  workers must be 0, and ``SnowflakeFile`` streams straight from the stage.
* **the Container Runtime** (Snowpark Container Services: notebooks on the container
  runtime, ML Jobs, torchrun's ranks). A process there gets an OAuth token file
  (``/snowflake/session/token``) and ``SNOWFLAKE_HOST``, ``SNOWFLAKE_ACCOUNT`` and
  similar variables instead of a ``connections.toml``; it has a disk and may fork.

Either way the working folder may be read-only (Snowflake Workspaces notebooks), while
``/tmp`` is writable: :func:`writable_dir` moves run folders and caches there.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import ConfigError

Log = Callable[[str], None]

READER_ENV = "FISSURE_STAGE_READER"
"""Environment variable overriding how stage files are read: ``auto``, ``stream``, ``cache``."""
TOKEN_FILE = "/snowflake/session/token"
"""Where the Container Runtime puts the OAuth token of its service user."""
TOKEN_FILE_ENV = "FISSURE_SNOWFLAKE_TOKEN_FILE"
"""Environment variable naming another token file (tests, or a runtime that moves it)."""
HOST_ENV, ACCOUNT_ENV = "SNOWFLAKE_HOST", "SNOWFLAKE_ACCOUNT"


def in_warehouse_sandbox() -> bool:
    """Whether this process runs in Snowflake's warehouse sandbox (see the module docstring).

    Container Runtime notebooks are not in it: their ``SnowflakeFile`` is the client one,
    with Snowpark's download collision bug, and they have a disk and may fork.
    """
    if "_snowflake" in sys.modules:
        return True
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


def token_file() -> Path:
    """The Container Runtime's OAuth token file (``$FISSURE_SNOWFLAKE_TOKEN_FILE`` if set)."""
    return Path(os.environ.get(TOKEN_FILE_ENV) or TOKEN_FILE)


def on_container_runtime() -> bool:
    """Whether this process runs on Snowflake's Container Runtime: its token file is there,
    and so are ``SNOWFLAKE_HOST`` and ``SNOWFLAKE_ACCOUNT``, which a session needs."""
    return bool(os.environ.get(HOST_ENV) and os.environ.get(ACCOUNT_ENV)) and token_file().is_file()


def inside_snowflake() -> bool:
    """Whether this process runs inside Snowflake: the warehouse sandbox or the Container
    Runtime. There the active session comes first, and no ``connections.toml`` is expected."""
    return in_warehouse_sandbox() or on_container_runtime()


def runtime_name() -> str | None:
    """``"warehouse"``, ``"container"`` or None (outside Snowflake), for messages."""
    if in_warehouse_sandbox():
        return "warehouse"
    return "container" if on_container_runtime() else None


def choose_reader(reader: str = "auto") -> str:
    """``"stream"`` or ``"cache"``: as asked, else as $FISSURE_STAGE_READER says, else detected.

    The sandbox's ``SnowflakeFile`` streams from the stage; elsewhere it is the client one,
    whose downloads of same-named files collide, and a local cache also spares DataLoader
    workers a session.
    """
    choice = reader if reader != "auto" else os.environ.get(READER_ENV, "auto").strip().lower()
    if choice == "auto":
        return "stream" if in_warehouse_sandbox() else "cache"
    if choice not in ("stream", "cache"):
        raise ConfigError(f"stage reader {choice!r}: use auto, stream or cache ({READER_ENV})")
    return choice


def loader_workers(requested: int | None, log: Log = print) -> int | None:
    """DataLoader workers to use: ``requested``, except 0 in the warehouse sandbox.

    The sandbox refuses Python's multiprocessing, so workers there would fail the first
    epoch; a request for some is overridden with one line saying so. None (unset) stays
    None elsewhere, for :func:`fissure.data.loader.default_workers` to decide.
    """
    if not in_warehouse_sandbox() or requested == 0:
        return requested
    if requested:
        log(f"num_workers={requested} -> 0: Snowflake's warehouse sandbox forbids multiprocessing")
    return 0


def _can_write(folder: Path) -> bool:
    """Whether a file can be made in ``folder``, or in its nearest existing parent.

    Tried for real rather than with ``os.access``: a read-only mount or a sandbox's rules
    are only known by trying, and nothing is left behind.
    """
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return True  # a file in the way: the caller reports it, with its own words
    try:
        fd, name = tempfile.mkstemp(dir=probe, prefix=".fissure-probe-")
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


def writable_dir(
    path: str | Path,
    log: Log = print,
    *,
    inside: bool | None = None,
    base: str | Path | None = None,
) -> Path:
    """``path``, or the same path below the temporary folder when it cannot be written there.

    Only inside Snowflake (``inside``, detected by default), where a Workspaces notebook's
    working folder is read-only while ``/tmp`` is writable: ``runs/nb1`` becomes
    ``/tmp/runs/nb1``, ``/home/u/.cache/x`` becomes ``/tmp/home/u/.cache/x``, and one line
    says where. Elsewhere an unwritable folder is the user's to fix, so ``path`` is returned
    and its own error follows. ``base`` replaces the temporary folder.
    """
    path = Path(path).expanduser()
    if not (inside_snowflake() if inside is None else inside) or _can_write(path):
        return path
    target = Path(base or tempfile.gettempdir()) / path.relative_to(path.anchor or ".")
    log(f"{path}: not writable here; using {target}")
    return target
