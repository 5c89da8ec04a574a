"""A local copy of a stage's files, filled once and shared by runs, ranks and workers.

Files sit at their stage-relative paths and only ever appear complete (they are moved into
place whole), so DataLoader workers read them with no session and no lock. A fill fetches
a folder by prefix, in one parallel GET, when it needs most of that folder's files, and
file by file otherwise (a partial refresh, a few stale files) or for whatever the prefix
GET did not bring.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from ..errors import DataError
from ..writes import replacing
from .files import Sleep, StageFileMissing, listed
from .session import is_local_testing
from .transfer import PARALLEL, download, get_prefix, list_stage, run_threads

# Serialises index appends from fill threads; module-level so that caches still pickle.
_INDEX_LOCK = threading.Lock()


@dataclass(frozen=True)
class FillOptions:
    """How a fill fetches: ``workers`` threads for per-file GETs; one GET of a folder, with
    ``parallel`` connector threads, when it needs at least ``prefix_min`` of that folder's
    files and at least ``prefix_share`` of those the manifest lists there."""

    workers: int = 4
    parallel: int = PARALLEL
    prefix_min: int = 32
    prefix_share: float = 0.5
    progress: bool = True
    sleep: Sleep = time.sleep


def _folder(rel: str) -> str:
    return rel.rpartition("/")[0]


class StageCache:
    """Files of one stage under ``root/files``, at their stage-relative paths.

    Fills run under a file lock, so DDP ranks (or two runs) sharing a cache download each
    file once, and an interrupted fill resumes where it stopped. ``index.jsonl`` records
    per file the size the stage reported, when it was fetched and the content hash the
    manifest claimed; a file whose size or claimed hash no longer matches is fetched
    again. Downloads append to it (the last line for a path wins) and a fill ends by
    rewriting it, so an interrupted fill loses nothing it completed.
    """

    def __init__(self, root: Path, stage: str, known: dict[str, str | None] | None = None) -> None:
        self.root = Path(root)
        self.stage = stage
        # Every file the manifest lists (rel -> claimed hash): those a prefix GET brings
        # beyond the ones asked for are kept too, so the next split needs no GET.
        self.known: dict[str, str | None] = dict(known or {})
        self._index_path = self.root / "index.jsonl"
        self._index: dict[str, dict[str, Any]] = {}

    def path(self, rel: str) -> Path:
        """The local file for stage-relative path ``rel`` (which may not exist yet)."""
        return self.root / "files" / rel

    def stage_path(self, rel: str) -> str:
        """``@DB.SCHEMA.STAGE/rel``: the stage file behind ``rel``."""
        return f"{self.stage}/{rel}"

    def _load_index(self) -> None:
        self._index = {}
        try:
            lines = self._index_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return
        for line in lines:
            try:
                entry = json.loads(line)
                self._index[entry["path"]] = entry
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by an interrupted run

    def _record(self, rel: str, size: int, src: str | None) -> None:
        entry = {"path": rel, "size": size, "t": time.time(), "src": src}
        with _INDEX_LOCK:
            self._index[rel] = entry
            with self._index_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")

    def _rewrite_index(self) -> None:
        with replacing(self._index_path) as tmp:
            tmp.write_text("".join(json.dumps(e) + "\n" for e in self._index.values()), "utf-8")

    def is_current(self, rel: str, src: str | None = None, since: float | None = None) -> bool:
        """Cached, of the recorded size, for the claimed content and fetched after ``since``."""
        try:
            size = self.path(rel).stat().st_size
        except OSError:
            return False
        entry = self._index.get(rel)
        if entry is None:
            # Complete (files only appear via os.replace) but of unknown origin: trusted
            # unless a refresh was asked for or the manifest names its content.
            return since is None and src is None
        if entry.get("size") is not None and entry["size"] != size:
            return False
        if src is not None and entry.get("src") != src:
            return False
        return since is None or entry.get("t", 0.0) >= since

    def fill(
        self,
        session: Any,
        wanted: dict[str, str | None],
        since: float | None = None,
        options: FillOptions | None = None,
    ) -> int:
        """Fetch each ``rel`` of ``wanted`` (rel -> claimed hash) that is not current.

        Returns the number of files fetched for ``wanted``. Files missing from the stage are
        reported together, up to ten by name, after every other file has been cached.
        """
        opts = options or FillOptions()
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / ".lock")):
            self._load_index()  # another process may have filled it meanwhile
            todo = [rel for rel, src in wanted.items() if not self.is_current(rel, src, since)]
            if not todo:
                return 0
            scratch = self.root / ".tmp"
            shutil.rmtree(scratch, ignore_errors=True)  # leftovers of an interrupted fill

            def one(rel: str) -> None:
                size = download(session, self.stage_path(rel), self.path(rel), scratch, opts.sleep)
                self._record(rel, size, wanted[rel])

            try:
                rest = self._by_prefix(session, todo, wanted, since, opts, scratch)
                missing = run_threads(one, rest, opts.workers, "stage -> cache", opts.progress)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
                self._rewrite_index()  # one line per file again, however many refetches
            if missing:
                names = listed(sorted(self.stage_path(rel) for rel in missing))
                raise StageFileMissing(f"{names}: not found in the stage")
            return len(todo)

    def _by_prefix(
        self,
        session: Any,
        todo: list[str],
        wanted: dict[str, str | None],
        since: float | None,
        opts: FillOptions,
        scratch: Path,
    ) -> list[str]:
        """Fetch the folders most of whose files are due in one GET each; the files left."""
        folders: dict[str, list[str]] = {}
        for rel in todo:
            folders.setdefault(_folder(rel), []).append(rel)
        listed_here = {**self.known, **wanted}
        rest: list[str] = []
        for folder, rels in sorted(folders.items()):
            share = len(rels) / sum(1 for r in listed_here if _folder(r) == folder)
            if len(rels) < opts.prefix_min or share < opts.prefix_share:
                rest.extend(rels)
                continue
            prefix = self.stage_path(folder + "/") if folder else self.stage + "/"
            names = self._names(session, prefix, folder, rels, opts.prefix_share)
            if names is None:
                rest.extend(rels)
                continue
            got = get_prefix(session, prefix, scratch / "prefix", opts.parallel, opts.sleep)
            taken = {rel for rel in rels if self._take(got, names, rel, wanted[rel])}
            rest.extend(rel for rel in rels if rel not in taken)
            for rel in set(names.values()) & set(self.known):  # the manifest's other files
                if rel not in wanted and not self.is_current(rel, self.known[rel], since):
                    self._take(got, names, rel, self.known[rel])
        return rest

    def _names(
        self, session: Any, prefix: str, folder: str, rels: list[str], share: float
    ) -> dict[str, str] | None:
        """Base name -> stage-relative path of what a GET of ``prefix`` writes, or None when
        fetching the folder file by file is better.

        On a real account LIST tells exactly: files in sub-folders arrive under their base
        name too, so a name found twice is left to per-file GETs, and a folder holding
        mostly files not due (by size) is not fetched whole. The emulator has no LIST: its
        files are taken as they come, in ``folder``.
        """
        if is_local_testing(session):
            return {rel.rpartition("/")[2]: rel for rel in self.known.keys() | set(rels)
                    if _folder(rel) == folder}
        try:
            present = {p[len(self.stage) + 1 :]: size for p, size in list_stage(session, prefix)}
        except DataError:
            return None
        due = sum(present.get(rel, 0) for rel in rels)
        if due < share * sum(present.values()):
            return None
        seen = Counter(rel.rpartition("/")[2].casefold() for rel in present)
        return {rel.rpartition("/")[2]: rel for rel in present
                if seen[rel.rpartition("/")[2].casefold()] == 1}

    def _take(
        self, got: dict[str, tuple[Path, int]], names: dict[str, str], rel: str, src: str | None
    ) -> bool:
        """Move the file a prefix GET brought for ``rel`` into place; False if it lacks."""
        name = rel.rpartition("/")[2]
        local = got.get(name)
        if local is None or names.get(name) != rel:
            return False
        self.path(rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(local[0], self.path(rel))
        self._record(rel, local[1], src)
        return True
