"""A local copy of a stage's files, filled once and shared by runs, ranks and workers.

Files sit at their stage-relative paths and only ever appear complete (they are moved into
place by :func:`~fissure.snowflake.files.download`), so DataLoader workers read them with
no session and no lock.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from filelock import FileLock

from .files import Sleep, StageFileMissing, download, listed, run_threads

# Serialises index appends from fill threads; module-level so that caches still pickle.
_INDEX_LOCK = threading.Lock()


class StageCache:
    """Files of one stage under ``root/files``, at their stage-relative paths.

    Fills run under a file lock, so DDP ranks (or two runs) sharing a cache download each
    file once, and an interrupted fill resumes where it stopped. ``index.jsonl`` records
    per file the size the stage reported, when it was fetched and the content hash the
    manifest claimed; a file whose size or claimed hash no longer matches is fetched
    again. Downloads append to it (the last line for a path wins) and a fill ends by
    rewriting it, so an interrupted fill loses nothing it completed.
    """

    def __init__(self, root: Path, stage: str) -> None:
        self.root = Path(root)
        self.stage = stage
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
        tmp = self._index_path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(e) + "\n" for e in self._index.values()), "utf-8")
        os.replace(tmp, self._index_path)

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
        workers: int = 4,
        progress: bool = True,
        sleep: Sleep = time.sleep,
    ) -> int:
        """Fetch each ``rel`` of ``wanted`` (rel -> claimed hash) that is not current.

        Returns the number of files downloaded. Files missing from the stage are reported
        together, after every other file has been cached.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / ".lock")):
            self._load_index()  # another process may have filled it meanwhile
            todo = [rel for rel, src in wanted.items() if not self.is_current(rel, src, since)]
            if not todo:
                return 0
            scratch = self.root / ".tmp"
            shutil.rmtree(scratch, ignore_errors=True)  # leftovers of an interrupted fill

            def one(rel: str) -> None:
                size = download(session, self.stage_path(rel), self.path(rel), scratch, sleep)
                self._record(rel, size, wanted[rel])

            try:
                missing = run_threads(one, todo, workers, "stage -> cache", progress)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
                self._rewrite_index()  # one line per file again, however many refetches
            if missing:
                names = listed(sorted(self.stage_path(rel) for rel in missing))
                raise StageFileMissing(f"{names}: not found in the stage")
            return len(todo)
