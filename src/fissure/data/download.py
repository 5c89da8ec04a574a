"""Downloading one file over HTTP(S): resumable, with a progress bar and a SHA-256.

Bytes go to ``DEST.part`` first and the file is renamed to ``DEST`` only once it is
complete, so ``DEST`` never holds a partial download. A broken connection leaves the
``.part`` file behind; the next attempt, in the same call or a later run, asks the server
for the rest with an HTTP ``Range`` request. A server that ignores ``Range`` (it answers
200 instead of 206) is downloaded again from the start.
"""

from __future__ import annotations

import hashlib
import http.client
import re
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm import tqdm

from ..errors import DataError
from ..progress import LOG_INTERVAL, is_terminal

CHUNK = 1 << 20
USER_AGENT = "fissure-data-get"
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class _Interrupted(Exception):
    """The connection broke mid-file; what arrived is kept in the ``.part`` file."""


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file, as 64 lowercase hex digits.

    Reads in 1 MiB chunks, so archives of any size hash in constant memory.
    """
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def part_path(dest: Path) -> Path:
    """Where the incomplete download of ``dest`` is kept: ``dest`` with ``.part`` appended."""
    return dest.with_name(dest.name + ".part")


def download(url: str, dest: Path, *, progress: bool = True, retries: int = 3,
             timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest``, resuming a previous partial download.

    A connection that breaks mid-file is resumed up to ``retries`` times within this call;
    after that a :class:`DataError` says so and the ``.part`` file stays for the next run.
    An HTTP error (a 404, say) or an unreachable host is a :class:`DataError` naming
    ``url``. Returns ``dest``.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    for attempt in range(retries + 1):
        try:
            _fetch(url, part, progress=progress, timeout=timeout)
        except _Interrupted as exc:
            if attempt == retries:
                raise DataError(f"{url}: the download broke off ({exc}); run the same command "
                                f"again to resume from {part}") from None
            continue
        part.replace(dest)
        return dest
    raise AssertionError("unreachable")  # the loop returns or raises


def _open(url: str, have: int, timeout: float):
    """The HTTP response for ``url``, asking for the bytes from ``have`` on when ``have > 0``.

    None when the server answers 416 (nothing past ``have``).
    """
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        return urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as exc:
        if exc.code == 416 and have:
            return None
        raise DataError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except URLError as exc:
        raise DataError(f"{url}: cannot download ({exc.reason})") from None
    except (OSError, http.client.HTTPException) as exc:
        raise DataError(f"{url}: cannot download ({exc})") from None


def _fetch(url: str, part: Path, *, progress: bool, timeout: float) -> None:
    """Append the rest of ``url`` to ``part``; :class:`_Interrupted` when it ends early."""
    have = part.stat().st_size if part.exists() else 0
    response = _open(url, have, timeout)
    if response is None:
        # 416: the server has nothing past `have`, so the .part is longer than the file
        # now is (it changed upstream): start again from the first byte.
        part.unlink()
        have, response = 0, _open(url, 0, timeout)
    with response:
        start, total = _extent(response, url)
        if start not in (0, have):
            raise DataError(f"{url}: asked for bytes from {have} on, the server sent them "
                            f"from {start}")
        # start 0: a fresh download, or a server that ignored Range and sends it all again
        with part.open("ab" if start else "wb") as out, \
                _bar(part, total, start, progress) as bar:
            while chunk := _read(response):
                out.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size < total:
        raise _Interrupted(f"{size} of {total} bytes arrived")
    if total is not None and size > total:
        part.unlink()
        raise DataError(f"{url}: received {size} bytes where the server announced {total}")


def _extent(response, url: str) -> tuple[int, int | None]:
    """(first byte offset, total size or None) of a 200 or 206 response."""
    if response.status != 206:
        # 200: the whole file, whatever was asked for.
        length = response.headers.get("Content-Length")
        return 0, int(length) if length and length.isdigit() else None
    match = _CONTENT_RANGE.fullmatch((response.headers.get("Content-Range") or "").strip())
    if match is None:
        raise DataError(f"{url}: a partial response without a usable Content-Range header")
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), total


def _read(response) -> bytes:
    """The next chunk of the body; a dropped connection becomes :class:`_Interrupted`."""
    try:
        return response.read(CHUNK)
    except (ConnectionError, TimeoutError, http.client.HTTPException) as exc:
        raise _Interrupted(str(exc) or type(exc).__name__) from None


def _bar(part: Path, total: int | None, initial: int, progress: bool) -> tqdm:
    """A byte progress bar on stderr, starting at ``initial`` when a download resumes.

    Outside a terminal it redraws every :data:`~fissure.progress.LOG_INTERVAL` seconds
    instead of ten times a second, so captured logs do not fill with updates.
    """
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc=part.name.removesuffix(".part"), disable=not progress,
                mininterval=0.1 if is_terminal() else LOG_INTERVAL)
