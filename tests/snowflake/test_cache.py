"""Tests for fissure.snowflake.cache: filling once, reuse, refresh, resumption, and retries."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from stage_helpers import STAGE, CountingGets

from fissure.errors import DataError
from fissure.snowflake.cache import StageCache
from fissure.snowflake.files import StageFileMissing
from fissure.snowflake.source import StageSource


def _source(session, cfg, **kwargs) -> StageSource:
    kwargs.setdefault("progress", False)
    return StageSource(session, cfg, **kwargs)


def test_cache_is_reused_and_refresh_refetches(session, staged, cfg, monkeypatch) -> None:
    gets = CountingGets(session, monkeypatch)
    _source(session, cfg).samples("all")
    assert len(gets.calls) == len(staged) == 12

    def no_stage(*args, **kwargs):
        raise AssertionError("the stage must not be called when the cache is complete")

    monkeypatch.setattr(session.file, "get", no_stage)
    monkeypatch.setattr(session.file, "get_stream", no_stage)
    again = _source(session, cfg)
    for sample in again.samples("all"):
        assert again.read(sample.image) == staged[sample.image]

    gets = CountingGets(session, monkeypatch)
    fresh = _source(session, cfg, refresh=True)
    fresh.samples("all")
    assert sorted(gets.calls) == sorted(staged)
    fresh.samples("all")  # a refresh fetches each file once per source, not per call
    assert len(gets.calls) == 12


def test_truncated_cache_file_is_fetched_again(session, staged, cfg, monkeypatch) -> None:
    source = _source(session, cfg)
    source.samples("train")
    path = f"{STAGE}/images/002.png.gz"
    cached = source.cache.path("images/002.png.gz")
    cached.write_bytes(cached.read_bytes()[:10])
    gets = CountingGets(session, monkeypatch)
    again = _source(session, cfg)
    again.samples("train")
    assert gets.calls == [path]
    assert again.read(path) == staged[path]


def test_interrupted_fill_resumes_without_refetching(session, staged, cfg, monkeypatch) -> None:
    gets = CountingGets(session, monkeypatch, fail_after=5)
    with pytest.raises(DataError, match=r"cannot download \(connection dropped"):
        _source(session, cfg, workers=1).samples("all")
    assert not list(Path(cfg.cache_dir).rglob("get-*"))  # no half-written leftovers
    gets = CountingGets(session, monkeypatch)
    source = _source(session, cfg)
    source.samples("all")
    assert len(gets.calls) == 12 - 5
    assert all(source.read(p) == data for p, data in staged.items())


def test_two_processes_sharing_a_cache_fetch_once(session, staged, cfg, monkeypatch) -> None:
    gets = CountingGets(session, monkeypatch)
    errors: list[BaseException] = []

    def rank() -> None:
        try:
            _source(session, cfg).samples("all")
        except BaseException as exc:  # surfaced below; a thread would swallow it
            errors.append(exc)

    threads = [threading.Thread(target=rank) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(gets.calls) == sorted(staged)


def test_transient_errors_are_retried_with_backoff(session, staged, cfg, monkeypatch) -> None:
    from snowflake.connector.errors import OperationalError

    real = session.file.get
    failures = {"left": 2}

    def flaky(stage_path, target, **kwargs):
        if failures["left"]:
            failures["left"] -= 1
            raise OperationalError("connection reset by peer")
        return real(stage_path, target, **kwargs)

    monkeypatch.setattr(session.file, "get", flaky)
    delays: list[float] = []
    source = _source(session, cfg, workers=1, sleep=delays.append)
    source.samples("test")
    assert delays == [0.5, 1.0]
    sample = source.samples("test")[0]
    assert source.read(sample.image) == staged[sample.image]


def test_fill_names_every_missing_file_after_caching_the_rest(session, staged, tmp_path) -> None:
    cache = StageCache(tmp_path / "cache", STAGE)
    wanted = {
        rel: None
        for rel in (
            "images/001.png.gz",
            "images/gone.png.gz",
            "masks/001.png.gz",
            "masks/gone2.png.gz",
        )
    }
    with pytest.raises(StageFileMissing) as info:
        cache.fill(session, wanted, progress=False)
    assert str(info.value) == (
        f"{STAGE}/images/gone.png.gz, {STAGE}/masks/gone2.png.gz: not found in the stage"
    )
    assert cache.is_current("images/001.png.gz") and cache.is_current("masks/001.png.gz")
    assert cache.path("masks/001.png.gz").read_bytes() == staged[f"{STAGE}/masks/001.png.gz"]
    assert cache.fill(session, {"images/001.png.gz": None}, progress=False) == 0


def test_claimed_hash_and_refresh_make_a_cached_file_stale(session, staged, tmp_path) -> None:
    cache = StageCache(tmp_path / "cache", STAGE)
    rel = "images/002.png.gz"
    assert cache.fill(session, {rel: "h1"}, progress=False) == 1
    assert cache.is_current(rel, "h1") and not cache.is_current(rel, "h2")
    assert not cache.is_current(rel, "h1", since=float("inf"))
    assert cache.fill(session, {rel: "h2"}, progress=False) == 1  # re-uploaded content
    index = (tmp_path / "cache" / "index.jsonl").read_text().splitlines()
    assert len(index) == 1 and '"src": "h2"' in index[0]
