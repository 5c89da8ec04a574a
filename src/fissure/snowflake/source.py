"""Image/mask pairs in a Snowflake stage (``images/{IMAGE_NAME}.gz``, ``masks/...``),
listed by a manifest whose ``IMAGE_GROUP`` says TRAIN, VAL or TEST.

The stage is spelled fully qualified everywhere: the local-testing emulator treats
``@STAGE`` and ``@DB.SCH.STAGE`` as two stages. Inside Snowflake's Python sandbox files
are streamed with ``SnowflakeFile``; elsewhere they are fetched once into a local cache
(:class:`~fissure.data.stage_cache.StageCache`), so DataLoader workers need no session
and Snowpark's ``get_stream`` collision bug never applies.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import SnowflakeConfig
from ..data.image import image_stem
from ..data.sources import SPLITS, Sample
from ..errors import ConfigError, DataError
from . import files as stage_files
from .cache import StageCache
from .files import (
    Sleep,
    is_local_testing,
    is_missing_error,
    is_null,
    listed,
    match_columns,
    name_problem,
    read_table,
    reason,
)

if TYPE_CHECKING:
    from snowflake.snowpark import Session

# Re-exported: callers (the CLI) take every stage operation from this module.
fetch_file, push_files = stage_files.fetch_file, stage_files.push_files
is_stage_path, validate_stage_name = stage_files.is_stage_path, stage_files.validate_stage_name
put_bytes, with_retries = stage_files.put_bytes, stage_files.with_retries


def __getattr__(name: str) -> Any:
    # upload_dataset lives in stage_upload, which imports this module: loaded on first use.
    if name == "upload_dataset":
        from .upload import upload_dataset

        return upload_dataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


LOCAL = "local"
READER_ENV = "FISSURE_STAGE_READER"
GROUPS = {"TRAIN": "train", "VAL": "val", "TEST": "test"}
# Written by upload_dataset. When a manifest has them, a cached file is fetched again as
# soon as the hash the manifest claims for it changes (the data was re-uploaded).
IMAGE_SHA, MASK_SHA = "IMAGE_SHA256", "MASK_SHA256"
_IDENT = re.compile(r'^(?:[A-Za-z_][A-Za-z0-9_$]*|"[^"]+")$')
# The session connect() chose, and the sessions opened by connection name in this process.
_CHOSEN: dict[str, Any] = {}
_NAMED: dict[str, Any] = {}


# -- sessions and environment -------------------------------------------------------------


def _active_session() -> Session | None:
    from snowflake.snowpark.context import get_active_session
    from snowflake.snowpark.exceptions import SnowparkSessionException

    try:
        return get_active_session()
    except SnowparkSessionException:  # none, or several: neither is "the" session
        return None


def _is_open(session: Any) -> bool:
    try:
        return not session._conn.is_closed()
    except Exception:  # an unknown session type: assume it is usable
        return True


def _open(connection: str | None) -> Session:
    from snowflake.snowpark import Session

    if connection and connection != LOCAL:
        known = _NAMED.get(connection)
        if known is not None and _is_open(known):
            return known
        try:
            session = Session.builder.config("connection_name", connection).create()
        except Exception as exc:  # the connector raises its own Error types
            raise ConfigError(
                f"Snowflake connection '{connection}': cannot connect ({reason(exc)})"
            ) from None
        _NAMED[connection] = session
        return session
    active = _active_session()
    if active is not None and (connection != LOCAL or is_local_testing(active)):
        return active
    if connection == LOCAL:
        return Session.builder.config("local_testing", True).create()
    raise ConfigError(
        "no Snowflake session: pass --connection NAME (an entry of "
        "~/.snowflake/connections.toml), run inside Snowflake where a session is active, "
        "or set data.snowflake.connection: local for the offline emulator"
    )


def resolve_session(connection: str | None = None) -> Session:
    """The session to use: the one :func:`connect` chose, else ``connection`` (a
    connections.toml name), else the active one.

    ``connection="local"`` means the local-testing emulator: an active emulator session
    is reused, a real one never is. A named session is opened once per process and
    reused. No connection and no active session is a ConfigError.
    """
    chosen = _CHOSEN.get("session")
    if chosen is not None and _is_open(chosen):
        return chosen  # --connection on the command line beats the config's connection
    return _open(connection)


def connect(connection: str) -> Session:
    """Open the session for ``connection`` and make every later stage operation use it.

    What ``--connection NAME`` does: the session wins over ``data.snowflake.connection``
    of any config or checkpoint read afterwards. Only the name is ever kept, never a
    credential (connections.toml holds those).
    """
    _CHOSEN.clear()
    session = _open(connection)
    _CHOSEN["session"] = session
    return session


def forget_session() -> None:
    """Undo :func:`connect`: sessions are resolved from configs and the active one again."""
    _CHOSEN.clear()


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
    """``"stream"`` or ``"cache"``: as asked, else as $FISSURE_STAGE_READER says, else detected."""
    choice = reader if reader != "auto" else os.environ.get(READER_ENV, "auto").strip().lower()
    if choice == "auto":
        return "stream" if running_in_snowflake() else "cache"
    if choice not in ("stream", "cache"):
        raise ConfigError(f"stage reader {choice!r}: use auto, stream or cache ({READER_ENV})")
    return choice


# -- names and tables ----------------------------------------------------------------------


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


def _rel(prefix: str, name: str, suffix: str) -> str:
    return "/".join(part for part in (prefix.strip("/"), name + suffix) if part)


def read_manifest(
    session: Any, cfg: SnowflakeConfig, manifest: str, stage: str
) -> tuple[dict[str, list[Sample]], dict[str, str | None]]:
    """Samples per split, and the content hash the manifest claims per stage file.

    Every bad row (unsafe or duplicate name, unknown group) is collected, and up to ten
    are named in one DataError.
    """
    frame = read_table(session, manifest)
    if frame is None:
        raise DataError(
            f"{manifest}: manifest table or view not found or not authorized "
            "(see data.snowflake.database / schema / manifest)"
        )
    ic, mc, gc = cfg.image_column, cfg.mask_column, cfg.group_column
    cols = match_columns(frame, manifest, (ic, mc, gc), "set data.snowflake.*_column")
    sha = {c.upper(): c for c in map(str, frame.columns)}
    if frame.empty:
        raise DataError(f"{manifest}: the manifest has no rows")
    issues: list[str] = []
    splits: dict[str, list[Sample]] = {split: [] for split in SPLITS}
    src: dict[str, str | None] = {}
    stems: dict[str, int] = {}
    masks: dict[str, int] = {}
    for row, rec in enumerate(frame.to_dict("records"), start=1):
        image, mask, group = rec[cols[ic]], rec[cols[mc]], rec[cols[gc]]
        mask = None if is_null(mask) else mask
        checks = [(ic, image)] + ([(mc, mask)] if mask is not None else [])
        bad = [f"row {row} {c} {v!r} ({name_problem(v)})" for c, v in checks if name_problem(v)]
        split = None if is_null(group) else GROUPS.get(str(group).strip().upper())
        if split is None:
            bad.append(f"row {row} {gc} {group!r} (expected TRAIN, VAL or TEST)")
        elif not bad and image_stem(image) in stems:
            first = stems[image_stem(image)]
            bad.append(f"row {row} {ic} {image!r} (same name as row {first})")
        elif not bad and mask is not None and mask in masks:
            bad.append(f"row {row} {mc} {mask!r} (same mask as row {masks[mask]})")
        if bad:
            issues.extend(bad)
            continue
        stems[image_stem(image)] = row
        image_rel = _rel(cfg.image_prefix, image, cfg.suffix)
        src[image_rel] = _hash(rec, sha.get(IMAGE_SHA))
        mask_path = None
        if mask is not None:
            masks[mask] = row
            mask_rel = _rel(cfg.mask_prefix, mask, cfg.suffix)
            src[mask_rel] = _hash(rec, sha.get(MASK_SHA))
            mask_path = f"{stage}/{mask_rel}"
        splits[split].append(Sample(image_stem(image), f"{stage}/{image_rel}", mask_path))
    if issues:
        raise DataError(f"{manifest}: {len(issues)} bad row(s): {listed(issues)}")
    return {k: sorted(v, key=lambda s: s.name) for k, v in splits.items()}, src


def _hash(rec: dict[str, Any], column: str | None) -> str | None:
    value = rec.get(column) if column else None
    return None if is_null(value) else str(value)


# -- the source ------------------------------------------------------------------------------


class StageSource:
    """A :class:`~fissure.data.sources.PairSource` over a stage and its manifest.

    ``Sample.image`` / ``Sample.mask`` are stage paths, so every error names the file in
    the stage. In cache mode ``samples(split)`` makes sure the split's files are cached
    (fetching what is missing or stale, once, under a file lock) and ``read`` only reads
    local files; the object pickles without its session, for DataLoader workers.
    """

    def __init__(
        self,
        session: Any,
        cfg: SnowflakeConfig,
        refresh: bool = False,
        reader: str = "auto",
        workers: int = 4,
        progress: bool = True,
        sleep: Sleep = time.sleep,
    ) -> None:
        self.cfg = cfg
        self.stage = stage_name(cfg)
        self.manifest = qualified(cfg, cfg.manifest)
        self.description = f"{self.stage} (manifest {self.manifest})"
        self.reader = choose_reader(reader)
        self.workers, self.progress = workers, progress
        self._session, self._sleep = session, sleep
        # Files fetched after this moment count as refreshed, so DDP ranks share a refresh.
        self._since = time.time() if (refresh or cfg.refresh) else None
        self._splits, self._src = read_manifest(session, cfg, self.manifest, self.stage)
        self._filled: set[str] = set()
        self.cache: StageCache | None = None
        if self.reader == "cache":
            try:  # the account keeps two accounts' same-named stages apart
                account = str(session.get_current_account()).strip('"') or "default"
            except Exception:
                account = "default"
            safe = [re.sub(r"[^A-Za-z0-9._-]", "_", p) for p in (account, self.stage[1:])]
            self.cache = StageCache(Path(cfg.cache_dir).expanduser().joinpath(*safe), self.stage)

    @classmethod
    def from_config(
        cls,
        cfg: SnowflakeConfig,
        refresh: bool = False,
        session: Any = None,
        connection: str | None = None,
        reader: str = "auto",
        workers: int = 4,
        progress: bool = True,
    ) -> StageSource:
        """Source for ``cfg``, on ``session`` or the one :func:`resolve_session` finds."""
        if session is None:
            session = resolve_session(connection or cfg.connection)
        return cls(session, cfg, refresh, reader=reader, workers=workers, progress=progress)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_session"] = None  # a Snowpark session cannot be pickled
        state["_sleep"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._sleep = time.sleep

    def samples(self, split: str) -> list[Sample]:
        if split == "all":
            found = sorted((s for k in SPLITS for s in self._splits[k]), key=lambda s: s.name)
        elif split in SPLITS:
            found = self._splits[split]
        else:
            raise DataError(f"unknown split '{split}' (use train, val, test or all)")
        if not found:
            raise DataError(f"{self.manifest}: split '{split}' has no rows")
        self._ensure_cached([p for s in found for p in (s.image, s.mask) if p])
        return list(found)

    def _ensure_cached(self, locators: list[str]) -> None:
        if self.cache is None:
            return
        rels = (self._relative(p) for p in locators)
        wanted = {rel: self._src.get(rel) for rel in rels if rel not in self._filled}
        if not wanted:
            return
        if self._session is not None:  # without one (a worker), read() reports what lacks
            self.cache.fill(
                self._session, wanted, self._since, self.workers, self.progress, self._sleep
            )
            self._filled.update(wanted)

    def _relative(self, locator: str) -> str:
        prefix = self.stage + "/"
        if not isinstance(locator, str) or not locator.startswith(prefix):
            raise DataError(f"{locator!r}: not a file of stage {self.stage}")
        problem = name_problem(locator[len(prefix) :])
        if problem:
            raise DataError(f"{locator!r}: unsafe stage path ({problem})")
        return locator[len(prefix) :]

    def read(self, locator: str) -> bytes:
        rel = self._relative(locator)
        if self.cache is None:
            return self._stream(locator)
        if rel not in self._filled:
            self._ensure_cached([locator])
        path = self.cache.path(rel)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise DataError(f"{locator}: not in the local cache {self.cache.root}") from None
        except OSError as exc:
            raise DataError(f"{locator}: cannot read {path} ({exc.strerror or exc})") from None

    def _stream(self, locator: str) -> bytes:
        from snowflake.snowpark.files import SnowflakeFile

        def go() -> bytes:
            with SnowflakeFile.open(locator, "rb", require_scoped_url=False) as f:
                return f.read()

        try:
            return with_retries(go, locator, sleep=self._sleep)
        except DataError:
            raise
        except Exception as exc:
            if is_missing_error(exc):
                raise DataError(f"{locator}: file not found in the stage") from None
            raise DataError(f"{locator}: cannot read from the stage ({reason(exc)})") from None
