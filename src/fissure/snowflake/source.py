"""Image/mask pairs in a Snowflake stage (``images/{IMAGE_NAME}.gz``, ``masks/...``),
listed by a manifest whose ``IMAGE_GROUP`` says TRAIN, VAL or TEST.

:class:`StageSource` is a :class:`fissure.data.PairSource`, as local folders are, so the
dataset, training and evaluation never know where the bytes come from. Inside Snowflake's
Python sandbox files are streamed with ``SnowflakeFile``; elsewhere they are fetched once
into a local cache (:class:`~fissure.snowflake.cache.StageCache`), so DataLoader workers
need no session and Snowpark's ``get_stream`` collision bug never applies.

Names that differ only in case (``A.png``, ``a.png``) are refused in the manifest: they are
two stage files, but one file in a cache on a case-insensitive disk (macOS, Windows).
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..config import SPLITS, SnowflakeConfig
from ..data import Sample
from ..data.image import image_stem
from ..errors import DataError, SplitAbsent
from .cache import FillOptions, StageCache
from .environment import Log, choose_reader, writable_dir
from .files import (
    StageFileMissing,
    is_missing_error,
    is_missing_stage,
    is_null,
    listed,
    match_columns,
    name_problem,
    qualified,
    read_table,
    reason,
    stage_name,
    stage_rel,
    stage_unreadable,
    with_retries,
)

if TYPE_CHECKING:
    from snowflake.snowpark import Session

GROUPS = {"TRAIN": "train", "VAL": "val", "TEST": "test"}
"""Manifest ``IMAGE_GROUP`` values (case-insensitive) and the split each one feeds."""
# Written by upload_dataset. When a manifest has them, a cached file is fetched again as
# soon as the hash the manifest claims for it changes (the data was re-uploaded).
IMAGE_SHA, MASK_SHA = "IMAGE_SHA256", "MASK_SHA256"


# -- the manifest ----------------------------------------------------------------------------


class _Rows:
    """Manifest rows turned into samples, one at a time; bad rows are collected, not raised."""

    def __init__(
        self, cfg: SnowflakeConfig, cols: dict[str, str], sha: dict[str, str], stage: str
    ) -> None:
        self.cfg, self.cols, self.stage = cfg, cols, stage
        self.sha_cols = (sha.get(IMAGE_SHA), sha.get(MASK_SHA))
        self.issues: list[str] = []
        self.splits: dict[str, list[Sample]] = {split: [] for split in SPLITS}
        self.src: dict[str, str | None] = {}
        # The first row of each image name and of each mask, by the name folded to lower
        # case, to name it in a duplicate's error: see the module docstring.
        self.stems: dict[str, tuple[int, str]] = {}
        self.masks: dict[str, tuple[int, str]] = {}

    def problems(self, row: int, image: Any, mask: Any, group: Any) -> list[str]:
        """What is wrong with one row: unsafe names first, then its group or a duplicate."""
        ic, mc, gc = self.cfg.image_column, self.cfg.mask_column, self.cfg.group_column
        checks = [(ic, image)] + ([(mc, mask)] if mask is not None else [])
        bad = [f"row {row} {c} {v!r} ({name_problem(v)})" for c, v in checks if name_problem(v)]
        split = None if is_null(group) else GROUPS.get(str(group).strip().upper())
        if split is None:
            bad.append(f"row {row} {gc} {group!r} (expected TRAIN, VAL or TEST)")
        elif not bad and image_stem(image).casefold() in self.stems:
            first, name = self.stems[image_stem(image).casefold()]
            same = image_stem(name) == image_stem(image)
            bad.append(_taken(row, ic, image, first, name, "same name as" if same else ""))
        elif not bad and mask is not None and mask.casefold() in self.masks:
            first, name = self.masks[mask.casefold()]
            bad.append(_taken(row, mc, mask, first, name, "same mask as" if name == mask else ""))
        return bad

    def add(self, row: int, rec: dict[str, Any]) -> None:
        """Take manifest row number ``row`` (1-based), or note why it cannot be taken."""
        cfg, cols = self.cfg, self.cols
        image, group = rec[cols[cfg.image_column]], rec[cols[cfg.group_column]]
        mask = rec[cols[cfg.mask_column]]
        mask = None if is_null(mask) else mask
        bad = self.problems(row, image, mask, group)
        if bad:
            self.issues.extend(bad)
            return
        self.stems[image_stem(image).casefold()] = (row, image)
        image_rel = stage_rel(cfg.image_prefix, image, cfg.suffix)
        self.src[image_rel] = _hash(rec, self.sha_cols[0])
        mask_path = None
        if mask is not None:
            self.masks[mask.casefold()] = (row, mask)
            mask_rel = stage_rel(cfg.mask_prefix, mask, cfg.suffix)
            self.src[mask_rel] = _hash(rec, self.sha_cols[1])
            mask_path = f"{self.stage}/{mask_rel}"
        split = GROUPS[str(group).strip().upper()]
        self.splits[split].append(Sample(image_stem(image), f"{self.stage}/{image_rel}", mask_path))


def _taken(row: int, column: str, value: str, first: int, name: str, same: str) -> str:
    """A name row ``first`` already has (``same`` says how), or one differing only in case."""
    if same:
        return f"row {row} {column} {value!r} ({same} row {first})"
    return f"row {row} {column} {value!r} (differs only in case from row {first} {name!r})"


def _hash(rec: dict[str, Any], column: str | None) -> str | None:
    value = rec.get(column) if column else None
    return None if is_null(value) else str(value)


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
    wanted = (cfg.image_column, cfg.mask_column, cfg.group_column)
    cols = match_columns(frame, manifest, wanted, "set data.snowflake.*_column")
    sha = {c.upper(): c for c in map(str, frame.columns)}
    if frame.empty:
        raise DataError(f"{manifest}: the manifest has no rows")
    rows = _Rows(cfg, cols, sha, stage)
    for row, rec in enumerate(frame.to_dict("records"), start=1):
        rows.add(row, rec)
    if rows.issues:
        raise DataError(f"{manifest}: {len(rows.issues)} bad row(s): {listed(rows.issues)}")
    return {k: sorted(v, key=lambda s: s.name) for k, v in rows.splits.items()}, rows.src


# -- the source ------------------------------------------------------------------------------


class StageSource:
    """A :class:`fissure.data.PairSource` over a stage and its manifest.

    ``Sample.image`` / ``Sample.mask`` are stage paths, so every error names the file in
    the stage. In cache mode ``samples(split)`` makes sure the split's files are cached
    (fetching what is missing or stale, once, under a file lock) and ``read`` only reads
    local files; the object pickles without its session, for DataLoader workers.
    """

    def __init__(
        self,
        session: Session,
        cfg: SnowflakeConfig,
        refresh: bool = False,
        reader: str = "auto",
        fill: FillOptions | None = None,
        log: Log = print,
    ) -> None:
        self.cfg = cfg
        self.stage = stage_name(cfg)
        self.manifest = qualified(cfg, cfg.manifest)
        self.description = f"{self.stage} (manifest {self.manifest})"
        self.reader = choose_reader(reader)
        self.fill = fill or FillOptions()
        self._session: Any = session
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
            root = writable_dir(cfg.cache_dir, log)  # /tmp in a read-only notebook folder
            self.cache = StageCache(root.joinpath(*safe), self.stage, known=self._src)

    @classmethod
    def from_config(
        cls,
        cfg: SnowflakeConfig,
        *,
        session: Session,
        refresh: bool = False,
        reader: str = "auto",
        workers: int = 4,
        progress: bool = True,
        log: Log = print,
    ) -> StageSource:
        """The stage and manifest ``cfg`` names, read on ``session``.

        ``refresh`` (or ``cfg.refresh``) fetches cached files again; ``reader`` is ``auto``,
        ``stream`` or ``cache`` (see :func:`~fissure.snowflake.environment.choose_reader`);
        ``workers`` threads fill the cache, under a progress bar when ``progress``; ``log``
        says where the cache went when ``cfg.cache_dir`` cannot be written inside Snowflake.
        """
        fill = FillOptions(workers=workers, progress=progress)
        return cls(session, cfg, refresh, reader=reader, fill=fill, log=log)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_session"] = None  # a Snowpark session cannot be pickled
        state["fill"] = replace(self.fill, sleep=time.sleep)
        return state

    def samples(self, split: str) -> list[Sample]:
        """Pairs of ``split`` (train, val, test or all) by name, their files cached first."""
        if split == "all":
            found = sorted((s for k in SPLITS for s in self._splits[k]), key=lambda s: s.name)
        elif split in SPLITS:
            found = self._splits[split]
        else:
            raise DataError(f"unknown split '{split}' (use train, val, test or all)")
        if not found:
            raise SplitAbsent(f"{self.manifest}: split '{split}' has no rows")
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
            self.cache.fill(self._session, wanted, self._since, self.fill)
            self._filled.update(wanted)

    def _relative(self, locator: str) -> str:
        prefix = self.stage + "/"
        if not isinstance(locator, str) or not locator.startswith(prefix):
            raise DataError(f"{locator!r}: not a file of stage {self.stage}")
        problem = name_problem(locator[len(prefix) :])
        if problem:
            raise DataError(f"{locator!r}: unsafe stage path ({problem})")
        return locator[len(prefix) :]

    def identity(self, locator: str) -> str | None:
        """What names the content of ``locator`` without reading it, for the decoded cache.

        The manifest's content hash when it gives one (the cache refetches a file whose hash
        changed); else, in cache mode, the cached file's size and modification time (a
        refetch replaces the file, so both change); None when streaming: the caller then
        hashes the bytes.
        """
        rel = self._relative(locator)
        if self._src.get(rel):
            return f"{locator}#{self._src[rel]}"
        if self.cache is None:
            return None
        if rel not in self._filled:
            self._ensure_cached([locator])
        try:
            st = self.cache.path(rel).stat()
        except OSError:
            return None
        return f"{locator}:{st.st_size}:{st.st_mtime_ns}"

    def read(self, locator: str) -> bytes:
        """Raw bytes of stage file ``locator``, from the cache or streamed from the stage."""
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
            return with_retries(go, locator, sleep=self.fill.sleep)
        except DataError:
            raise
        except Exception as exc:
            if is_missing_stage(exc):
                raise stage_unreadable(exc, locator) from None
            if is_missing_error(exc):
                raise StageFileMissing(f"{locator}: file not found in the stage") from None
            raise DataError(f"{locator}: cannot read from the stage ({reason(exc)})") from None
