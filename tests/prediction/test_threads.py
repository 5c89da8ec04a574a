"""Tests for the read-ahead and write-behind threads (fissure.prediction.threads)."""

from __future__ import annotations

import threading
import time

import pytest

from fissure.errors import FissureError
from fissure.prediction.threads import BackgroundWriter, Prefetcher, prefetch


def test_prefetch_keeps_the_order_in_a_background_thread() -> None:
    threads: set[str] = set()

    def square(x: int) -> int:
        threads.add(threading.current_thread().name)
        return x * x

    it = prefetch(range(20), square, 3)
    assert isinstance(it, Prefetcher)
    assert list(it) == [x * x for x in range(20)]
    assert threads == {"fissure-prefetch"}
    assert next(it, "end") == "end"


def test_prefetch_zero_runs_in_the_callers_thread() -> None:
    threads: set[str] = set()

    def name(x: int) -> int:
        threads.add(threading.current_thread().name)
        return x

    assert list(prefetch(range(3), name, 0)) == [0, 1, 2]
    assert threads == {threading.current_thread().name}
    with pytest.raises(FissureError, match="prefetch must be >= 0, got -1"):
        prefetch([], name, -1)


def _settle(it: Prefetcher) -> None:
    """Wait (up to 5 s) until the thread has filled the queue and stands blocked on it."""
    for _ in range(100):
        if it._queue.full():
            break
        time.sleep(0.05)
    time.sleep(0.1)


def test_prefetch_reads_at_most_depth_ahead() -> None:
    made: list[int] = []

    def source():
        for i in range(50):
            made.append(i)
            yield i

    it = prefetch(source(), lambda x: x, 2)
    assert isinstance(it, Prefetcher)
    for taken in range(1, 4):
        assert next(it) == taken - 1
        _settle(it)
        # 2 in the queue and at most one more in the thread, waiting to be put
        assert taken + 2 <= len(made) <= taken + 2 + 1
    it.close()
    assert not it._thread.is_alive()
    assert len(made) < 50


def test_prefetch_raises_where_the_failing_item_was() -> None:
    def boom(x: int) -> int:
        if x == 3:
            raise ValueError("item 3 is broken")
        return x

    it = prefetch(range(10), boom, 2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="item 3 is broken"):
        next(it)
    assert next(it, "end") == "end"


def test_prefetch_close_stops_a_thread_blocked_on_a_full_queue() -> None:
    it = prefetch(iter(range(10**9)), lambda x: x, 1)
    assert next(it) == 0
    it.close()
    assert not it._thread.is_alive()


def test_writer_runs_in_order_and_flushes_on_exit() -> None:
    written: list[int] = []
    threads: set[str] = set()

    def write(x: int) -> None:
        threads.add(threading.current_thread().name)
        written.append(x)

    with BackgroundWriter(2) as writer:
        for i in range(30):
            writer.submit(f"file{i}", write, i)
    assert written == list(range(30))
    assert threads == {"fissure-writer"}


def test_writer_failure_names_the_file_and_stops_the_writing() -> None:
    written: list[int] = []

    def write(x: int) -> None:
        if x == 2:
            raise OSError("disk full")
        written.append(x)

    match = r"^out/2\.png: disk full$"
    with pytest.raises(FissureError, match=match) as info, BackgroundWriter(1) as writer:
        for i in range(100):
            writer.submit(f"out/{i}.png", write, i)
    assert isinstance(info.value.__cause__, OSError)
    assert written == [0, 1]


def test_writer_failure_on_the_last_item_is_raised_on_exit() -> None:
    def write(x: int) -> None:
        if x == 4:
            raise ValueError("cannot encode")

    writer = BackgroundWriter(4)
    for i in range(5):
        writer.submit(f"img{i}", write, i)
    with pytest.raises(FissureError, match="img4: cannot encode"):
        writer.close()


def test_writer_drops_its_queue_when_the_caller_fails() -> None:
    written: list[int] = []
    release = threading.Event()

    def write(x: int) -> None:
        release.wait(5)
        written.append(x)

    with pytest.raises(KeyError), BackgroundWriter(3) as writer:
        for i in range(3):
            writer.submit(f"f{i}", write, i)
        release.set()
        raise KeyError("caller failed")
    assert not writer._thread.is_alive()
    assert len(written) <= 1
