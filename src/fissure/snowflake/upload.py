"""Putting a local dataset into a stage: gzip files under ``images/`` and ``masks/``, and
the manifest view the stage source reads.

Idempotent by content: the table behind the view keeps each file's SHA-256, so a second
upload of the same folder transfers nothing and adds no rows, and a changed file is the
only one sent again (caches notice it through the hash, see :mod:`fissure.snowflake.source`).

A stage made here has server-side encryption and a directory table (:func:`create_stage_sql`):
scoped file URLs, ``DIRECTORY(@stage)`` and image inference inside Snowflake need both. A
stage that exists already is left as it is (its encryption cannot be changed). Names that
differ only in case are refused, as the stage source refuses them.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import SPLITS, SnowflakeConfig
from ..data import FolderSource, Sample
from ..data.image import gunzip, image_stem, without_gz
from ..errors import ConfigError, DataError, SplitAbsent
from ..progress import progress_bar
from .files import (
    Sleep,
    canonical_stage,
    is_null,
    match_columns,
    name_problem,
    qualified,
    read_table,
    reason,
    stage_name,
    stage_rel,
)
from .session import is_local_testing
from .source import IMAGE_SHA, MASK_SHA
from .transfer import describe_stage, push_files

if TYPE_CHECKING:
    from snowflake.snowpark import Session


def create_stage_sql(stage: str) -> str:
    """The DDL of a stage fissure makes: SSE-encrypted, with a directory table."""
    return (
        f"CREATE STAGE IF NOT EXISTS {stage.lstrip('@')} "
        "ENCRYPTION = (TYPE = 'SNOWFLAKE_SSE') DIRECTORY = (ENABLE = TRUE)"
    )


def _local_file(path: str) -> tuple[str, bytes]:
    """Stage name (a ``.gz`` suffix dropped) and raw, uncompressed content of a local file."""
    name = Path(path).name
    data = gunzip(Path(path).read_bytes(), path)
    return without_gz(name), data


UPLOADED_TO = "UPLOADED_TO"
"""The upload table's column naming where a row's files were put (stage, prefixes, suffix):
a hash says a file is unchanged, not that it is in this stage."""


def _columns(cfg: SnowflakeConfig) -> tuple[str, ...]:
    """The upload table's columns, in order: the manifest's three, the two hashes, and
    :data:`UPLOADED_TO`."""
    return cfg.image_column, cfg.mask_column, cfg.group_column, IMAGE_SHA, MASK_SHA, UPLOADED_TO


def _location(cfg: SnowflakeConfig, stage: str) -> str:
    return f"{stage}/{cfg.image_prefix} {stage}/{cfg.mask_prefix} *{cfg.suffix}"


def _same_place(recorded: Any, here: str) -> bool:
    """Whether an ``UPLOADED_TO`` cell names this upload's place, whichever spelling of the
    stage each was made with (a real account folds unquoted names to upper case)."""
    if not isinstance(recorded, str):
        return False
    return ([canonical_stage(t) for t in recorded.split(" ")]
            == [canonical_stage(t) for t in here.split(" ")])


@dataclass
class _Plan:
    """What an upload has to do: the table's rows by image name, and the files to send."""

    rows: dict[str, dict[str, Any]]
    changed: bool
    todo: list[tuple[str, str]] = field(default_factory=list)  # (stage path, local file)
    skipped: int = 0
    # "column:name" -> the local file that first used it, to name both in an error.
    seen: dict[str, str] = field(default_factory=dict)


def _table_rows(
    session: Any, cfg: SnowflakeConfig, table: str, view: str, replace_view: bool
) -> dict[str, dict[str, Any]] | None:
    """Rows of the upload table by image name; None when the table does not exist yet.

    Without the table, a view of the manifest's name is someone else's: it is only
    replaced with ``replace_view``.
    """
    frame = read_table(session, table)
    if frame is None:
        if not replace_view and read_table(session, view) is not None:
            raise DataError(
                f"{view}: exists but fissure upload did not make it (no {table}); "
                "choose another data.snowflake.manifest or allow replacing the view"
            )
        return None
    hint = "not made by fissure upload; pass another table"
    # a table from before UPLOADED_TO: its rows name no place, so every file is sent again
    present = {str(c).upper() for c in frame.columns}
    wanted = [c for c in _columns(cfg) if c != UPLOADED_TO or UPLOADED_TO in present]
    cols = match_columns(frame, table, wanted, hint)
    rows: dict[str, dict[str, Any]] = {}
    for rec in frame.to_dict("records"):
        row = {k: None if is_null(rec[c]) else rec[c] for k, c in cols.items()}
        rows[str(row[cfg.image_column])] = row
    return rows


def _add_pair(plan: _Plan, cfg: SnowflakeConfig, stage: str, split: str, sample: Sample) -> None:
    """Hash one local pair; queue the files whose name or hash differ from the table's row."""
    ic, mc = cfg.image_column, cfg.mask_column
    files = (
        (ic, IMAGE_SHA, cfg.image_prefix, sample.image),
        (mc, MASK_SHA, cfg.mask_prefix, sample.mask),
    )
    entry: dict[str, Any] = {cfg.group_column: split.upper(), UPLOADED_TO: _location(cfg, stage)}
    for col, sha_col, _, path in files:
        name, data = _local_file(path)
        problem = name_problem(name)
        if problem:
            raise DataError(f"{path}: file name unusable in a stage ({problem})")
        key = f"{col}:{image_stem(name) if col == ic else name}".casefold()
        if key in plan.seen:
            raise DataError(
                f"{path}: same {col} as {plan.seen[key]}, or one differing only in case; "
                "names must be unique"
            )
        plan.seen[key] = path
        entry[col], entry[sha_col] = name, hashlib.sha256(data).hexdigest()
    old = plan.rows.get(entry[ic]) or {}
    here = _same_place(old.get(UPLOADED_TO), entry[UPLOADED_TO])
    for col, sha_col, prefix, path in files:
        if here and (old.get(col), old.get(sha_col)) == (entry[col], entry[sha_col]):
            plan.skipped += 1
        else:
            plan.todo.append((f"{stage}/{stage_rel(prefix, entry[col], cfg.suffix)}", path))
    if old != entry:
        plan.rows[entry[ic]], plan.changed = entry, True


def _check_unique_stems(rows: dict[str, dict[str, Any]], table: str) -> None:
    """Rows already in the table count too: StageSource needs unique image names."""
    stems: dict[str, str] = {}
    for name in rows:
        first = stems.setdefault(image_stem(name).casefold(), name)
        if first != name:
            raise DataError(f"{table}: images {first!r} and {name!r} would share one name "
                            "(on a case-insensitive disk at least)")


def _refresh_directory(session: Any, stage: str) -> None:
    """Bring the stage's directory table up to date with the files just put.

    A directory table on an internal stage is refreshed by hand. A stage made before
    fissure made them with one has none to refresh: that is not this upload's failure.
    """
    with contextlib.suppress(Exception):
        session.sql(f"ALTER STAGE {stage.lstrip('@')} REFRESH").collect()


PUT_BATCH = 500
"""Files per PUT: a dataset of 22,600 files is 46 queries, not 22,600 round trips, and a
failed batch (retried as a whole) re-sends at most this many."""


def _send(session: Any, todo: list[tuple[str, str]], workers: int, progress: bool,
          sleep: Sleep) -> None:
    """Upload each ``(stage path, local file)`` of ``todo`` gzip-compressed (mtime 0), in one
    PUT per batch of files that share a stage folder."""
    by_folder: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for target, path in todo:
        folder, _, name = target.rpartition("/")
        by_folder[folder].append((name, path))
    bar = progress_bar(desc="local -> stage", unit="file", total=len(todo), enabled=progress)
    try:
        for folder, items in by_folder.items():
            for start in range(0, len(items), PUT_BATCH):
                batch = items[start:start + PUT_BATCH]
                with tempfile.TemporaryDirectory(prefix="fissure-upload-") as tmp:
                    files = [Path(tmp) / name for name, _ in batch]
                    for file, (_, path) in zip(files, batch, strict=True):
                        file.write_bytes(gzip.compress(_local_file(path)[1], mtime=0))
                    push_files(session, files, folder, parallel=max(1, workers), sleep=sleep)
                bar.update(len(batch))
    finally:
        bar.close()


def _suffixed(name: str, suffix: str) -> str:
    """``DB.SCH.V`` -> ``DB.SCH.V_TABLE``; a quoted last part keeps the suffix inside its
    quotes (``DB.SCH."My view"`` -> ``DB.SCH."My view_TABLE"``)."""
    return f"{name[:-1]}{suffix}\"" if name.endswith('"') else f"{name}{suffix}"


def _ensure_stage(session: Any, stage: str) -> None:
    """Create ``stage`` unless it exists.

    ``CREATE STAGE IF NOT EXISTS`` needs the CREATE STAGE privilege on the schema even when
    the stage is there, which a role that may only write to an existing stage lacks: when
    it is refused, a stage that ``DESC STAGE`` finds is used as it is.
    """
    try:
        session.sql(create_stage_sql(stage)).collect()
    except Exception as exc:
        try:
            describe_stage(session, stage)
        except Exception:
            raise DataError(f"{stage}: cannot create the stage ({reason(exc)})") from None


def _write_table(session: Any, cfg: SnowflakeConfig, table: str, rows: dict[str, Any]) -> None:
    from snowflake.snowpark.types import StringType, StructField, StructType

    order = _columns(cfg)
    schema = StructType([StructField(c, StringType()) for c in order])
    data = [[rows[k].get(c) for c in order] for k in sorted(rows)]
    # "overwrite" drops the old table (Snowpark's DataFrameWriter.mode), so a table from
    # before UPLOADED_TO gets the new column on a real account as in the emulator
    session.create_dataframe(data, schema=schema).write.save_as_table(table, mode="overwrite")


def upload_dataset(
    session: Session,
    data: FolderSource | str | Path,
    cfg: SnowflakeConfig,
    *,
    table: str | None = None,
    replace_view: bool = False,
    workers: int = 4,
    progress: bool = True,
    sleep: Sleep = time.sleep,
) -> dict[str, int]:
    """Put a local dataset in the stage ``cfg`` names; build the manifest view.

    ``data`` is a :class:`~fissure.data.FolderSource`, or a folder read as one with its
    default split settings (any layout ``train`` reads). Files go to
    ``images/{name}{suffix}`` / ``masks/...`` gzip-compressed with mtime 0. The table
    (default ``<manifest>_TABLE``) keeps each file's SHA-256 (of the raw content) and where
    it was put; a file whose row already holds its hash, for this stage, prefix and suffix,
    is skipped, so a second run uploads nothing and adds no rows. The view ``cfg.manifest``
    selects from the table; a same-named view fissure did not make is only replaced with
    ``replace_view``. Files go up in batches, one PUT of up to :data:`PUT_BATCH` files per
    stage folder, each PUT on ``workers`` threads. Returns file counts ``uploaded`` and
    ``skipped``, and the table's ``rows``.
    """
    source = data if isinstance(data, FolderSource) else FolderSource(data)
    stage, view = stage_name(cfg), qualified(cfg, cfg.manifest)
    table = qualified(cfg, table) if table else _suffixed(view, "_TABLE")
    if table.upper() == view.upper():
        raise ConfigError(f"upload table {table} must differ from the manifest view")
    rows = _table_rows(session, cfg, table, view, replace_view)
    real = not is_local_testing(session)
    if real:  # the emulator makes stages on first put; a real account needs them first
        _ensure_stage(session, stage)
    plan = _Plan(rows or {}, changed=rows is None)
    for split in SPLITS:
        try:
            pairs = source.samples(split)
        except SplitAbsent:
            continue  # a layout without this split
        for sample in pairs:
            _add_pair(plan, cfg, stage, split, sample)
    _check_unique_stems(plan.rows, table)

    _send(session, plan.todo, workers, progress, sleep)
    if real and plan.todo:
        _refresh_directory(session, stage)
    if plan.changed:  # files first, rows after: a crash in between re-uploads, never lies
        try:
            _write_table(session, cfg, table, plan.rows)
        except Exception as exc:
            raise DataError(f"{table}: cannot write the upload table ({reason(exc)})") from None
    try:
        session.table(table).create_or_replace_view(view)
    except Exception as exc:
        raise DataError(f"{view}: cannot create the manifest view ({reason(exc)})") from None
    return {"uploaded": len(plan.todo), "skipped": plan.skipped, "rows": len(plan.rows)}


def upload_data(
    session: Session,
    data_dir: str | Path,
    cfg: SnowflakeConfig | None = None,
    *,
    replace_view: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """What ``fissure snowflake upload`` does: :func:`upload_dataset` of a folder.

    ``cfg`` names the stage and manifest (default: the notebook's names). Returns
    ``uploaded``/``skipped`` file counts, manifest ``rows``, and the fully qualified
    ``stage`` and ``manifest`` names.
    """
    cfg = cfg or SnowflakeConfig()
    counts = upload_dataset(session, data_dir, cfg, replace_view=replace_view, progress=progress)
    return {**counts, "stage": stage_name(cfg), "manifest": qualified(cfg, cfg.manifest)}
