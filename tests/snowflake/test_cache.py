"""Tests for fissure.snowflake.cache: filling once (by prefix or file by file), reuse,
refresh, resumption, retries, and missing files."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest
from stage_helpers import STAGE, CountingGets

from fissure.errors import DataError
from fissure.snowflake.cache import FillOptions, StageCache
from fissure.snowflake.files import StageFileMissing
from fissure.snowflake.source import StageSource

QUIET = FillOptions(progress=False)


def _source(session, cfg, refresh: bool = False, **fill) -> StageSource:
    return StageSource(session, cfg, refresh, fill=FillOptions(progress=False, **fill))


def _put_many(session, folder: str, count: int) -> dict[str, bytes]:
    """``count`` small files under ``folder`` of the stage: rel -> content."""
    files = {f"{folder}/{i:03d}.png.gz": f"{folder}-{i}".encode() * 3 for i in range(count)}
    for rel, data in files.items():
        session.file.put_stream(
            io.BytesIO(data), f"{STAGE}/{rel}", auto_compress=False, overwrite=True
        )
    return files


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
        cache.fill(session, wanted, options=QUIET)
    assert str(info.value) == (
        f"{STAGE}/images/gone.png.gz, {STAGE}/masks/gone2.png.gz: not found in the stage"
    )
    assert cache.is_current("images/001.png.gz") and cache.is_current("masks/001.png.gz")
    assert cache.path("masks/001.png.gz").read_bytes() == staged[f"{STAGE}/masks/001.png.gz"]
    assert cache.fill(session, {"images/001.png.gz": None}, options=QUIET) == 0


def test_claimed_hash_and_refresh_make_a_cached_file_stale(session, staged, tmp_path) -> None:
    cache = StageCache(tmp_path / "cache", STAGE)
    rel = "images/002.png.gz"
    assert cache.fill(session, {rel: "h1"}, options=QUIET) == 1
    assert cache.is_current(rel, "h1") and not cache.is_current(rel, "h2")
    assert not cache.is_current(rel, "h1", since=float("inf"))
    assert cache.fill(session, {rel: "h2"}, options=QUIET) == 1  # re-uploaded content
    index = (tmp_path / "cache" / "index.jsonl").read_text().splitlines()
    assert len(index) == 1 and '"src": "h2"' in index[0]


@pytest.mark.parametrize("prefix_min", [32, 8], ids=["file-by-file", "by-prefix"])
def test_missing_file_among_20_on_a_real_account(session, tmp_path, monkeypatch, prefix_min):
    # A real account answers GET of a missing file with the connector's OperationalError
    # errno 253006 (connector 4.8 file_transfer_agent.py), which is not a transient error:
    # one GET for it, no backoff, one error naming it, and the 19 others cached.
    folder = f"m20-{prefix_min}"
    files = _put_many(session, folder, 19)
    gone = f"{folder}/gone.png.gz"
    gets = CountingGets(session, monkeypatch, missing={f"{STAGE}/{gone}"})
    cache = StageCache(tmp_path / "cache", STAGE)
    delays: list[float] = []
    options = FillOptions(progress=False, prefix_min=prefix_min, sleep=delays.append)
    with pytest.raises(StageFileMissing) as info:
        cache.fill(session, dict.fromkeys([*files, gone]), options=options)
    assert str(info.value) == f"{STAGE}/{gone}: not found in the stage"
    assert delays == [] and gets.per_file().count(f"{STAGE}/{gone}") == 1
    if prefix_min == 32:  # 20 files: below the prefix threshold, one GET each
        assert len(gets.calls) == 20 and gets.per_file() == gets.calls
    else:  # the folder in one GET, then the one file it lacked on its own
        assert gets.calls == [f"{STAGE}/{folder}/", f"{STAGE}/{gone}"]
    for rel, data in files.items():
        assert cache.is_current(rel) and cache.path(rel).read_bytes() == data
    assert not cache.is_current(gone)


@pytest.mark.parametrize("prefix_min", [32, 8], ids=["file-by-file", "by-prefix"])
def test_a_stage_that_is_not_there_is_one_error_not_20_missing_files(
    session, tmp_path, monkeypatch, prefix_min
):
    # A misspelt stage, or one the role may not use: a real account fails every GET with
    # SQL error 002003. The fill stops at the first answer and names the stage.
    folder = f"ns-{prefix_min}"
    files = _put_many(session, folder, 20)
    gets = CountingGets(session, monkeypatch, no_stage=STAGE)
    cache = StageCache(tmp_path / "cache", STAGE)
    options = FillOptions(progress=False, prefix_min=prefix_min, workers=1)
    with pytest.raises(DataError) as info:
        cache.fill(session, dict.fromkeys(files), options=options)
    assert not isinstance(info.value, StageFileMissing)
    message = str(info.value)
    assert message.startswith(f"{STAGE}: the stage does not exist, or this role may not read it")
    assert message.endswith("Stage 'PROJET_FISSURES.STORAGE_SCHEMA.MY_FISSURE_STAGE' does "
                            "not exist or not authorized.)")
    # the first answer stops the fill: at most the one GET already under way besides it
    assert "\n" not in message and len(gets.per_file()) <= 2


def test_fill_names_ten_missing_files_then_a_count(session, tmp_path, monkeypatch) -> None:
    wanted = {f"absent/{i:02d}.png.gz": None for i in range(12)}
    gets = CountingGets(session, monkeypatch, missing={f"{STAGE}/{rel}" for rel in wanted})
    with pytest.raises(StageFileMissing) as info:
        StageCache(tmp_path / "cache", STAGE).fill(session, wanted, options=QUIET)
    names = ", ".join(f"{STAGE}/absent/{i:02d}.png.gz" for i in range(10))
    assert str(info.value) == f"{names} and 2 more: not found in the stage"
    assert len(gets.calls) == 12


def test_fill_by_prefix_takes_one_get_per_folder(session, staged, cfg, monkeypatch) -> None:
    gets = CountingGets(session, monkeypatch)
    source = _source(session, cfg, prefix_min=2, parallel=5)
    train = source.samples("train")  # 3 of the 6 pairs: half of each folder is due
    assert gets.calls == [f"{STAGE}/images/", f"{STAGE}/masks/"]
    assert [o["parallel"] for o in gets.options] == [5, 5]
    source.samples("val")  # the folder GETs brought the manifest's other files along
    source.samples("test")
    assert len(gets.calls) == 2
    for sample in train + source.samples("val"):
        assert source.read(sample.image) == staged[sample.image]
        assert source.read(sample.mask) == staged[sample.mask]


def test_partial_refresh_falls_back_to_per_file_gets(session, staged, cfg, monkeypatch) -> None:
    _source(session, cfg, prefix_min=2).samples("all")
    source = _source(session, cfg, prefix_min=2)
    stale = source.cache.path("images/004.png.gz")
    stale.write_bytes(b"cut")  # one file of twelve is stale: not worth a folder GET
    gets = CountingGets(session, monkeypatch)
    source.samples("all")
    assert gets.calls == [f"{STAGE}/images/004.png.gz"]
    assert source.read(f"{STAGE}/images/004.png.gz") == staged[f"{STAGE}/images/004.png.gz"]
    gets = CountingGets(session, monkeypatch)
    _source(session, cfg, refresh=True, prefix_min=2).samples("all")  # all due: by prefix
    assert gets.calls == [f"{STAGE}/images/", f"{STAGE}/masks/"]
