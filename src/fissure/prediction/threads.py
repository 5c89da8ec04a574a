"""Background threads that keep the device busy: one reads ahead, one writes behind.

:func:`prefetch` runs a function (decode an image, cut its tiles) over a stream in a
background thread, at most ``depth`` results ahead of the caller; :class:`BackgroundWriter`
runs the writing of results (measure, encode, save) in a background thread, at most
``depth`` items behind. The network runs in the caller's thread in between, so it waits for
neither. Both keep their order, hand any exception back to the caller's thread, and stop
their thread when the caller stops early.

Threads rather than processes: the heavy parts (JPEG/PNG codecs, zlib, numpy, torch)
release the GIL, and decoded photos and probability maps would otherwise be pickled
between processes.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from ..errors import FissureError

T = TypeVar("T")
U = TypeVar("U")

POLL_S = 0.1
"""How often a blocked thread checks whether it was told to stop."""

_END = object()


class _Failure:
    """An exception raised in the background thread, to be raised again in the caller's."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetcher(Iterator[U], Generic[T, U]):
    """``fn(item)`` for each item of ``items``, computed in a background thread.

    Yields in the order of ``items``. At most ``depth`` results wait in the queue, plus the
    one the thread is computing. An exception from ``items`` or ``fn`` is raised by
    ``next`` where its result would have been. :meth:`close` (also on garbage collection of
    a generator that holds it, through its ``finally``) stops the thread.
    """

    def __init__(self, items: Iterable[T], fn: Callable[[T], U], depth: int) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(
            target=self._fill, args=(items, fn), name="fissure-prefetch", daemon=True
        )
        self._thread.start()

    def _put(self, entry: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, items: Iterable[T], fn: Callable[[T], U]) -> None:
        try:
            for item in items:
                if self._stop.is_set() or not self._put(fn(item)):
                    return
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
            self._put(_Failure(error))
            return
        self._put(_END)

    def __next__(self) -> U:
        if self._done:
            raise StopIteration
        entry = self._queue.get()
        if entry is _END or isinstance(entry, _Failure):
            self._done = True
            self._thread.join()
            if isinstance(entry, _Failure):
                raise entry.error
            raise StopIteration
        return entry

    def close(self) -> None:
        """Stop the thread and drop what it read ahead."""
        self._done = True
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=POLL_S)
        self._thread.join()


class _Inline(Iterator[U], Generic[T, U]):
    """:class:`Prefetcher`'s interface, computed in the caller's thread when asked for."""

    def __init__(self, items: Iterable[T], fn: Callable[[T], U]) -> None:
        self._items, self._fn = iter(items), fn

    def __next__(self) -> U:
        return self._fn(next(self._items))

    def close(self) -> None:
        """Nothing runs ahead, so nothing to stop."""


def prefetch(items: Iterable[T], fn: Callable[[T], U], depth: int) -> Prefetcher | _Inline:
    """``fn`` over ``items``, ``depth`` results ahead in a background thread; ``depth == 0``:
    in the caller's thread, one at a time. Call ``close()`` when done."""
    if depth < 0:
        raise FissureError(f"prefetch must be >= 0, got {depth}")
    return Prefetcher(items, fn, depth) if depth else _Inline(items, fn)


class BackgroundWriter:
    """Runs ``fn(*args)`` of each :meth:`submit` in one background thread, in order.

    At most ``depth`` submissions wait; :meth:`submit` blocks beyond that, so a slow disk
    holds back the network instead of filling memory. The first exception stops the
    writing (later submissions are dropped) and is raised in the caller's thread, by the
    next :meth:`submit` or by :meth:`close`, as a :class:`FissureError` that starts with the
    submission's ``label`` (the file being written). Use it as a context manager: leaving
    the block normally waits for every submission to be written; leaving on an exception
    drops what is still queued.
    """

    def __init__(self, depth: int = 2) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._failure: tuple[str, Exception] | None = None
        self._abandon = False
        self._thread = threading.Thread(target=self._drain, name="fissure-writer", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while True:
            entry = self._queue.get()
            if entry is _END:
                return
            if self._failure is not None or self._abandon:
                continue
            label, fn, args = entry
            try:
                fn(*args)
            except Exception as error:  # noqa: BLE001 - handed to the caller's thread
                self._failure = (label, error)

    def _raise_failure(self) -> None:
        if self._failure is not None:
            label, error = self._failure
            raise FissureError(f"{label}: {error}") from error

    def submit(self, label: str, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)``; raises the failure of an earlier submission, if any."""
        self._raise_failure()
        self._queue.put((label, fn, args))

    def close(self) -> None:
        """Wait until everything submitted is written; raise the first failure, if any."""
        if self._thread.is_alive():
            self._queue.put(_END)
            self._thread.join()
        self._raise_failure()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
            return
        self._abandon = True
        if self._thread.is_alive():
            self._queue.put(_END)
            self._thread.join()
