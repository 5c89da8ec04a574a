"""Files that appear whole or not at all.

Every file another process (or a later run) may read while it is being written (a
checkpoint, an export, a decoded-cache entry, a manifest, the stage cache's index) is
written under a temporary name in the same folder and renamed over its target only once
complete. A rename within one filesystem is atomic, so a reader sees the old file or the
new one, never a torn mix, however the writer dies (``kill -9`` and a full disk included).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(target: str | Path, *, suffix: str = ".tmp", durable: bool = False) -> Iterator[Path]:
    """A fresh temporary path beside ``target``, renamed over it when the block succeeds.

    The block writes the whole file to the yielded path. If it raises, the temporary file
    is removed and ``target`` is left as it was; the exception propagates, so each caller
    words its own error, except that an ``OSError`` naming the temporary file is raised
    again naming ``target``, the file the user knows (one naming no file, a full disk, is
    left as it is: its callers name the file themselves). ``suffix`` ends the temporary
    name (writers that choose a format by extension need the target's). With ``durable``
    the file and its folder are flushed to disk (fsync) around the rename, so the new file
    also survives a power cut.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Unique per process and call, so concurrent writers of one target never share a
    # temporary file. Named, not created (mkstemp would create it 0600): the writer creates
    # it, so the finished file gets the user's umask like any other file they write.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")
    try:
        yield tmp
        if durable:
            _fsync(tmp)
        os.replace(tmp, target)
    except OSError as exc:
        if exc.filename not in (str(tmp), tmp) or exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, str(target)) from exc
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        _fsync_folder(target.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDWR)  # writable: Windows cannot flush a read-only handle
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Persist the rename itself; best effort (some platforms cannot open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
