"""Fixtures of the Snowflake tests: an emulator session per test module, and a staged dataset.

Everything runs on Snowpark's local-testing emulator: no account, no network. The
emulator allows one active session per process, so each module gets one session, closed
at its end; modules do not share stage contents or tables.
"""

from __future__ import annotations

import gzip
import io
import sys
import tempfile
from pathlib import Path

import pytest
from stage_helpers import DB, GROUPS, MANIFEST, STAGE, pair, png, write_manifest

from fissure.config import SnowflakeConfig
from fissure.snowflake.environment import (
    ACCOUNT_ENV,
    HOST_ENV,
    READER_ENV,
    TOKEN_FILE_ENV,
)


@pytest.fixture(autouse=True)
def private_tempdir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """The emulator's ``SnowflakeFile`` reads a stage file through ``gettempdir()/<basename>``
    and leaves it there: point that at a folder of this test's own, so that tests do not
    litter the machine's temp folder or race another run over ``/tmp/x.png``."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path_factory.mktemp("gettempdir")))


@pytest.fixture(scope="module")
def session():
    from snowflake.snowpark import Session

    s = Session.builder.config("local_testing", True).create()
    yield s
    s.close()


@pytest.fixture(scope="module")
def staged(session) -> dict[str, bytes]:
    """Six gzip pairs under the notebook's exact names; images/X and masks/X share basenames."""
    files: dict[str, bytes] = {}
    rows = []
    for i, group in GROUPS.items():
        name = f"{i:03d}.png"
        image, mask = pair(i)
        for prefix, array in (("images", image), ("masks", mask)):
            data = gzip.compress(png(array), mtime=0)
            rel = f"{prefix}/{name}.gz"
            session.file.put_stream(
                io.BytesIO(data), f"{STAGE}/{rel}", auto_compress=False, overwrite=True
            )
            files[f"{STAGE}/{rel}"] = data
        rows.append([name, name, group])
    write_manifest(session, f"{DB}.TRAINING_DATA", rows)
    session.table(f"{DB}.TRAINING_DATA").create_or_replace_view(MANIFEST)
    return files


@pytest.fixture()
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SnowflakeConfig:
    """The default names, with a cache of the test's own; the reader is detected."""
    monkeypatch.delenv(READER_ENV, raising=False)
    return SnowflakeConfig(cache_dir=str(tmp_path / "cache"))


@pytest.fixture()
def outside(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process outside Snowflake, whatever the machine running the tests holds."""
    monkeypatch.delitem(sys.modules, "_snowflake", raising=False)
    for name in (TOKEN_FILE_ENV, HOST_ENV, ACCOUNT_ENV, READER_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(TOKEN_FILE_ENV, "/nonexistent/fissure/token")
