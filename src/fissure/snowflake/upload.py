"""Putting a local dataset into a stage: gzip files under ``images/`` and ``masks/``, and
the manifest view the stage source reads.

Idempotent by content: the table behind the view keeps each file's SHA-256, so a second
upload of the same folder transfers nothing and adds no rows, and a changed file is the
only one sent again (caches notice it through the hash, see :mod:`fissure.data.snowflake`).
"""

from __future__ import annotations

import gzip
import hashlib
import time
from pathlib import Path
from typing import Any

from ..config import SnowflakeConfig
from ..data.image import gunzip, image_stem
from ..data.sources import SPLITS, FolderSource
from ..errors import ConfigError, DataError
from . import files as stage_files
from .files import (
    Sleep,
    is_local_testing,
    is_null,
    match_columns,
    name_problem,
    put_bytes,
    read_table,
    reason,
)
from .source import IMAGE_SHA, MASK_SHA, _rel, qualified, stage_name


def _local_file(path: str) -> tuple[str, bytes]:
    """Stage name (a ``.gz`` suffix dropped) and raw, uncompressed content of a local file."""
    name = Path(path).name
    data = gunzip(Path(path).read_bytes(), path)
    return (name[:-3] if name.lower().endswith(".gz") else name), data


def upload_dataset(
    data_root: str | Path,
    session: Any,
    cfg: SnowflakeConfig,
    split_files: dict[str, str] | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    split_seed: int = 0,
    progress: bool = True,
    table: str | None = None,
    workers: int = 4,
    replace_view: bool = False,
    sleep: Sleep = time.sleep,
) -> dict[str, int]:
    """Put a local dataset (any FolderSource layout) in the stage; build the manifest.

    Files go to ``images/{name}{suffix}`` / ``masks/...`` gzip-compressed with mtime 0.
    The table (default ``<manifest>_TABLE``) keeps each file's SHA-256 (of the raw
    content); a file whose row already holds its hash is skipped, so a second run
    uploads nothing and adds no rows. The view ``cfg.manifest`` selects from the table;
    a same-named view fissure did not make is only replaced with ``replace_view``.
    Returns file counts ``uploaded`` and ``skipped``, and the table's ``rows``.
    """
    source = FolderSource(data_root, split_files, val_fraction, test_fraction, split_seed)
    stage, view = stage_name(cfg), qualified(cfg, cfg.manifest)
    table = qualified(cfg, table) if table else f"{view}_TABLE"
    if table.upper() == view.upper():
        raise ConfigError(f"upload table {table} must differ from the manifest view")
    ic, mc, gc = cfg.image_column, cfg.mask_column, cfg.group_column
    order = (ic, mc, gc, IMAGE_SHA, MASK_SHA)
    frame = read_table(session, table)
    rows: dict[str, dict[str, Any]] = {}
    if frame is not None:
        cols = match_columns(frame, table, order, "not made by fissure upload; pass another table")
        for rec in frame.to_dict("records"):
            row = {k: None if is_null(rec[c]) else rec[c] for k, c in cols.items()}
            rows[str(row[ic])] = row
    elif not replace_view and read_table(session, view) is not None:
        raise DataError(
            f"{view}: exists but fissure upload did not make it (no {table}); "
            "choose another data.snowflake.manifest or allow replacing the view"
        )
    if not is_local_testing(session):
        try:  # the emulator makes stages on first put; a real account needs them first
            session.sql(f"CREATE STAGE IF NOT EXISTS {stage[1:]}").collect()
        except Exception as exc:
            raise DataError(f"{stage}: cannot create the stage ({reason(exc)})") from None

    todo: list[tuple[str, str]] = []  # (stage path, local file)
    seen: dict[str, str] = {}
    changed, skipped = frame is None, 0
    for split in SPLITS:
        try:
            pairs = source.samples(split)
        except DataError:
            continue  # a layout without this split
        for sample in pairs:
            files = (
                (ic, IMAGE_SHA, cfg.image_prefix, sample.image),
                (mc, MASK_SHA, cfg.mask_prefix, sample.mask),
            )
            entry: dict[str, Any] = {gc: split.upper()}
            for col, sha_col, _, path in files:
                name, data = _local_file(path)
                problem = name_problem(name)
                if problem:
                    raise DataError(f"{path}: file name unusable in a stage ({problem})")
                key = f"{col}:{image_stem(name) if col == ic else name}"
                if key in seen:
                    raise DataError(f"{path}: same {col} as {seen[key]}; names must be unique")
                seen[key] = path
                entry[col], entry[sha_col] = name, hashlib.sha256(data).hexdigest()
            old = rows.get(entry[ic]) or {}
            for col, sha_col, prefix, path in files:
                if (old.get(col), old.get(sha_col)) == (entry[col], entry[sha_col]):
                    skipped += 1
                else:
                    todo.append((f"{stage}/{_rel(prefix, entry[col], cfg.suffix)}", path))
            if old != entry:
                rows[entry[ic]], changed = entry, True

    stems: dict[str, str] = {}
    for name in rows:  # rows already in the table count too: StageSource needs unique names
        first = stems.setdefault(image_stem(name), name)
        if first != name:
            raise DataError(f"{table}: images {first!r} and {name!r} would share one name")

    def upload(item: tuple[str, str]) -> None:
        put_bytes(session, item[0], gzip.compress(_local_file(item[1])[1], mtime=0), sleep)

    stage_files.run_threads(upload, todo, workers, "local -> stage", progress)
    if changed:  # files first, rows after: a crash in between re-uploads, never lies
        from snowflake.snowpark.types import StringType, StructField, StructType

        schema = StructType([StructField(c, StringType()) for c in order])
        data = [[rows[k].get(c) for c in order] for k in sorted(rows)]
        session.create_dataframe(data, schema=schema).write.save_as_table(table, mode="overwrite")
    session.table(table).create_or_replace_view(view)
    return {"uploaded": len(todo), "skipped": skipped, "rows": len(rows)}
