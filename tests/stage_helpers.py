"""Helpers for tests/snowflake/: tiny datasets, GET and PUT counters, a real account's
missing-file error, Snowflake runtimes and a read-only folder, a hashing Dataset.

Imported by name (tests/ is on the path); the shared fixtures are in
tests/snowflake/conftest.py. Not named ``snowflake``: a module of that name on the path
would shadow the Snowflake library.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import sys
import tempfile
import threading
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import Dataset

from fissure.data.synth import generate_dataset
from fissure.snowflake.environment import ACCOUNT_ENV, HOST_ENV, TOKEN_FILE_ENV
from fissure.snowflake.source import StageSource

STAGE = "@PROJET_FISSURES.STORAGE_SCHEMA.MY_FISSURE_STAGE"
MANIFEST = "PROJET_FISSURES.STORAGE_SCHEMA.V_TRAINING_DATA"
DB = "PROJET_FISSURES.STORAGE_SCHEMA"
GROUPS = {1: "TRAIN", 2: "TRAIN", 3: "TRAIN", 4: "VAL", 5: "VAL", 6: "TEST"}
COLUMNS = ["IMAGE_NAME", "MASK_NAME", "IMAGE_GROUP"]


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def pair(seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    mask = np.where(rng.random((size, size)) > 0.9, 255, 0).astype(np.uint8)
    return image, mask


def write_manifest(session, name: str, rows: list[list], columns: list[str] = COLUMNS) -> None:
    session.create_dataframe(rows, schema=columns).write.save_as_table(name, mode="overwrite")


class CountingGets:
    """Wraps ``session.file.get`` to count (and optionally fail) stage downloads.

    ``calls`` holds each GET's stage path, ``options`` its keyword arguments. Paths in
    ``missing`` fail as a real account fails them (see :func:`file_not_exists`).
    """

    def __init__(
        self,
        session,
        monkeypatch,
        fail_after: int | None = None,
        missing: set[str] = frozenset(),
        no_stage: str | None = None,
    ) -> None:
        self.real = type(session.file).get.__get__(session.file)  # never an earlier patch
        self.calls: list[str] = []
        self.options: list[dict] = []
        self.fail_after = fail_after
        self.missing = set(missing)
        self.no_stage = no_stage
        self._lock = threading.Lock()
        monkeypatch.setattr(session.file, "get", self)

    def __call__(self, stage_path, target, **kwargs):
        with self._lock:
            if self.fail_after is not None and len(self.calls) >= self.fail_after:
                raise RuntimeError("connection dropped for good")
            self.calls.append(stage_path)
            self.options.append(kwargs)
        if stage_path in self.missing:
            raise file_not_exists()
        if self.no_stage and stage_path.startswith(self.no_stage + "/"):
            raise stage_not_found(self.no_stage)
        return self.real(stage_path, target, **kwargs)

    def per_file(self) -> list[str]:
        """The GETs of one file (not of a folder prefix ending in '/')."""
        return [c for c in self.calls if not c.endswith("/")]


class CountingPuts:
    """Wraps ``session.file.put`` (folder PUTs) and ``put_stream`` (one file each)."""

    def __init__(self, session, monkeypatch) -> None:
        self.puts: list[tuple[str, str, dict]] = []
        self.streams: list[str] = []
        put = type(session.file).put.__get__(session.file)
        stream = type(session.file).put_stream.__get__(session.file)

        def counted_put(local, target, **kwargs):
            self.puts.append((local, target, kwargs))
            return put(local, target, **kwargs)

        def counted_stream(data, target, **kwargs):
            self.streams.append(target)
            return stream(data, target, **kwargs)

        monkeypatch.setattr(session.file, "put", counted_put)
        monkeypatch.setattr(session.file, "put_stream", counted_stream)


def stage_not_found(stage: str):
    """What any GET from a stage that does not exist (or that the role may not use) raises
    on a real account: the connector's ``ProgrammingError`` for SQL error 002003, which
    Snowpark wraps in a ``SnowparkSQLException`` carrying the same code."""
    from snowflake.connector.errors import ProgrammingError
    from snowflake.snowpark.exceptions import SnowparkSQLException

    name = stage.lstrip("@").upper()
    text = f"SQL compilation error:\nStage '{name}' does not exist or not authorized."
    inner = ProgrammingError(msg=text, errno=2003)
    return SnowparkSQLException(text, error_code="1304", conn_error=inner, sql_error_code=2003)


def file_not_exists():
    """What GET of a missing stage file raises on a real account.

    snowflake-connector-python 4.8, file_transfer_agent.py (``_raise_put_get_error`` is on
    by default): ``OperationalError`` with errno ``ER_FILE_NOT_EXISTS`` (253006). Snowpark
    does not wrap it (it wraps only ``ProgrammingError``).
    """
    from snowflake.connector.errors import OperationalError

    return OperationalError(
        msg="While getting file(s) there was an error: the file does not exist.", errno=253006
    )


class HashDataset(Dataset):
    """(locator, SHA-256 of the bytes ``source.read`` returns): what a worker really read."""

    def __init__(self, source: StageSource, locators: list[str]) -> None:
        self.source, self.locators = source, locators

    def __len__(self) -> int:
        return len(self.locators)

    def __getitem__(self, i: int) -> tuple[str, str]:
        data = self.source.read(self.locators[i])
        return self.locators[i], hashlib.sha256(data).hexdigest()


def local_dataset(root: Path, count: int = 6) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    pairs = {}
    for i in range(count):
        image, mask = pair(100 + i)
        Image.fromarray(image).save(root / "images" / f"{i:03d}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i:03d}.png")
        pairs[f"{i:03d}"] = (image, mask)
    return pairs


def staged_names(session, stage: str, prefix: str, tmp: Path) -> list[str]:
    session.file.get(f"{stage}/{prefix}/", str(tmp))  # LIST needs SQL; a prefix GET works
    return sorted(p.name for p in tmp.iterdir())


def gzip_dataset(root: Path, count: int = 12, size: int = 64) -> Path:
    """A synthetic train/val/test dataset whose files are all ``.png.gz``, as in the notebook."""
    generate_dataset(root, count=count, size=size, seed=0)
    for path in sorted(root.rglob("*.png")):
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes(), mtime=0))
        path.unlink()
    return root


def in_warehouse(monkeypatch: pytest.MonkeyPatch) -> None:
    """The warehouse sandbox, as Snowpark detects it: the ``_snowflake`` module exists."""
    monkeypatch.setitem(sys.modules, "_snowflake", types.ModuleType("_snowflake"))


def on_container(monkeypatch: pytest.MonkeyPatch, folder: Path, token: str = "tok") -> Path:
    """A Container Runtime process: its token file and variables, in a temporary folder."""
    path = folder / "session" / "token"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token + "\n")
    monkeypatch.setenv(TOKEN_FILE_ENV, str(path))
    monkeypatch.setenv(HOST_ENV, "acme.snowflakecomputing.com")
    monkeypatch.setenv(ACCOUNT_ENV, "ACME")
    return path


def read_only(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``folder`` refuse new files, as a Workspaces notebook's working folder does."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        # root ignores file modes: stand in for a read-only mount, which is what refuses
        # root too, at the one call that probes the folder.
        real = tempfile.mkstemp

        def refuse(*args, dir=None, **kwargs):
            if dir is not None and Path(dir).resolve() == folder.resolve():
                raise OSError(errno.EROFS, "Read-only file system")
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", refuse)
