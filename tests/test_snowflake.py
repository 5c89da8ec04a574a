"""Tests for the Snowflake stage source, ingest and model transfer (fissure.data.snowflake).

Everything runs on Snowpark's local-testing emulator: no account, no network. The
emulator allows one active session per process, so one module-scoped session serves
every test and is closed at the end.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest_snowflake import (
    COLUMNS,
    DB,
    GROUPS,
    MANIFEST,
    STAGE,
    CountingGets,
    HashDataset,
    local_dataset,
    pair,
    png,
    staged_names,
    write_manifest,
)
from PIL import Image
from torch.utils.data import DataLoader

from fissure.api import build_source
from fissure.config import DataConfig, SnowflakeConfig
from fissure.data import load_pair
from fissure.data.image import decode_image, decode_mask
from fissure.errors import ConfigError, DataError
from fissure.snowflake import source as sf
from fissure.snowflake.files import is_transient, with_retries
from fissure.snowflake.source import (
    StageSource,
    fetch_file,
    is_stage_path,
    push_files,
    resolve_session,
    upload_dataset,
    validate_stage_name,
)


@pytest.fixture(scope="module")
def session():
    from snowflake.snowpark import Session

    s = Session.builder.config("local_testing", True).create()
    yield s
    s.close()


@pytest.fixture(scope="module")
def staged(session) -> dict[str, bytes]:
    """Six gzip pairs under the notebook's exact names; images/X and masks/X share basenames."""
    files: dict[str, bytes] = {}
    rows = []
    for i, group in GROUPS.items():
        name = f"{i:03d}.png"
        image, mask = pair(i)
        for prefix, array in (("images", image), ("masks", mask)):
            data = gzip.compress(png(array), mtime=0)
            rel = f"{prefix}/{name}.gz"
            session.file.put_stream(
                io.BytesIO(data), f"{STAGE}/{rel}", auto_compress=False, overwrite=True
            )
            files[f"{STAGE}/{rel}"] = data
        rows.append([name, name, group])
    write_manifest(session, f"{DB}.TRAINING_DATA", rows)
    session.table(f"{DB}.TRAINING_DATA").create_or_replace_view(MANIFEST)
    return files


@pytest.fixture()
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SnowflakeConfig:
    monkeypatch.delenv(sf.READER_ENV, raising=False)
    return SnowflakeConfig(cache_dir=str(tmp_path / "cache"))


def _source(session, cfg, **kwargs) -> StageSource:
    kwargs.setdefault("progress", False)
    return StageSource(session, cfg, **kwargs)


# -- listing and reading ----------------------------------------------------------------


def test_splits_and_stage_paths(session, staged, cfg) -> None:
    source = StageSource.from_config(cfg, session=session, progress=False)
    assert source.reader == "cache"
    assert [s.name for s in source.samples("train")] == ["001", "002", "003"]
    assert [s.name for s in source.samples("val")] == ["004", "005"]
    assert [s.name for s in source.samples("test")] == ["006"]
    everything = source.samples("all")
    assert [s.name for s in everything] == ["001", "002", "003", "004", "005", "006"]
    first = everything[0]
    assert first.image == f"{STAGE}/images/001.png.gz"
    assert first.mask == f"{STAGE}/masks/001.png.gz"
    assert STAGE in source.description and MANIFEST in source.description
    with pytest.raises(DataError, match="unknown split"):
        source.samples("holdout")


def test_read_returns_the_staged_bytes_and_decodes(session, staged, cfg) -> None:
    source = _source(session, cfg)
    for sample in source.samples("all"):
        assert source.read(sample.image) == staged[sample.image]
        assert source.read(sample.mask) == staged[sample.mask]
        image, mask = load_pair(source, sample)
        expected_image, expected_mask = pair(int(sample.name))
        np.testing.assert_array_equal(image, expected_image)
        np.testing.assert_array_equal(mask, expected_mask > 127)
    assert (Path(cfg.cache_dir) / "MOCK_ACCOUNT").is_dir()
    cached = source.cache.path("images/001.png.gz")
    assert cached.read_bytes() == staged[f"{STAGE}/images/001.png.gz"]
    with pytest.raises(DataError, match="not a file of stage"):
        source.read("@OTHER.STAGE/images/001.png.gz")


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
def test_same_basenames_read_concurrently_by_dataloader_workers(session, staged, cfg) -> None:
    source = _source(session, cfg)
    samples = source.samples("all")
    # What spawn-started workers receive: the pickled source, without a session.
    shipped = pickle.loads(pickle.dumps(source))
    assert shipped._session is None
    # images/00k.png.gz and masks/00k.png.gz interleaved: what get_stream mixes up.
    locators = [p for _ in range(8) for s in samples for p in (s.image, s.mask)]
    loader = DataLoader(HashDataset(shipped, locators), batch_size=None, num_workers=4)
    seen = list(loader)
    assert len(seen) == len(locators)
    for locator, digest in seen:
        assert digest == hashlib.sha256(staged[locator]).hexdigest(), locator


def test_pickles_without_session(session, staged, cfg) -> None:
    source = _source(session, cfg)
    samples = source.samples("all")
    clone = pickle.loads(pickle.dumps(source))
    assert clone._session is None and source._session is session
    assert clone.read(samples[0].mask) == staged[samples[0].mask]


def test_build_source_on_a_local_connection(session, staged, cfg) -> None:
    data = DataConfig(
        source="stage", snowflake=SnowflakeConfig(connection="local", cache_dir=cfg.cache_dir)
    )
    source = build_source(data)
    assert isinstance(source, StageSource) and source._session is session
    sample = source.samples("test")[0]
    assert source.read(sample.image) == staged[sample.image]


# -- the cache ------------------------------------------------------------------------------


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

    calls = []

    def fails(*args, **kwargs):
        calls.append(1)
        raise OperationalError("network is unreachable")

    delays.clear()
    assert with_retries(lambda: 7, "x") == 7
    with pytest.raises(DataError, match=r"^@X/f: failed after 4 tries"):
        with_retries(fails, "@X/f", sleep=delays.append)
    assert delays == [0.5, 1.0, 2.0] and len(calls) == 4
    with pytest.raises(ValueError):  # not transient: no retry
        with_retries(lambda: (_ for _ in ()).throw(ValueError("bad")), "x", sleep=delays.append)
    assert not is_transient(DataError("x")) and not is_transient(FileNotFoundError("x"))
    assert is_transient(ConnectionResetError()) and is_transient(TimeoutError())


# -- stage and manifest errors ---------------------------------------------------------------


def test_missing_stage_file_is_named(session, staged, cfg) -> None:
    table = f"{DB}.M_MISSING"
    write_manifest(
        session, table, [["001.png", "001.png", "TRAIN"], ["nope.png", "002.png", "VAL"]]
    )
    cfg = SnowflakeConfig(manifest=table, cache_dir=cfg.cache_dir)
    source = _source(session, cfg)
    assert source.samples("train")
    with pytest.raises(DataError) as info:
        source.samples("val")
    assert str(info.value).startswith(f"{STAGE}/images/nope.png.gz: not found in the stage")


def test_corrupt_gzip_names_the_stage_path(session, staged, cfg) -> None:
    bad = b"\x1f\x8b\x08\x00" + b"not really gzip" * 4
    session.file.put_stream(
        io.BytesIO(bad), f"{STAGE}/images/corrupt.png.gz", auto_compress=False, overwrite=True
    )
    table = f"{DB}.M_CORRUPT"
    write_manifest(session, table, [["corrupt.png", "001.png", "TRAIN"]])
    source = _source(session, SnowflakeConfig(manifest=table, cache_dir=cfg.cache_dir))
    path = source.samples("train")[0].image
    assert path == f"{STAGE}/images/corrupt.png.gz"
    with pytest.raises(
        DataError,
        match=r"^@PROJET_FISSURES\.STORAGE_SCHEMA\.MY_FISSURE_STAGE/"
        r"images/corrupt\.png\.gz: corrupt",
    ):
        decode_image(source.read(path), path)


BAD_MANIFESTS = {  # case: (rows, a fragment of the error); two-column rows lack IMAGE_GROUP
    "column": ([["001.png", "001.png"]], "missing column(s) IMAGE_GROUP"),
    "group": (
        [["1.png", "1.png", "TRAIN"], ["2.png", "2.png", "TRAINING"]],
        "row 2 IMAGE_GROUP 'TRAINING' (expected TRAIN, VAL or TEST)",
    ),
    "dup-image": (
        [["1.png", "1.png", "TRAIN"], ["1.png", "2.png", "TEST"]],
        "row 2 IMAGE_NAME '1.png' (same name as row 1)",
    ),
    "dup-mask": (
        [["1.png", "1.png", "TRAIN"], ["2.png", "1.png", "TEST"]],
        "row 2 MASK_NAME '1.png' (same mask as row 1)",
    ),
    "dotdot": ([["../../etc/1.png", "1.png", "TRAIN"]], "row 1 IMAGE_NAME '../../etc/1.png' ('..'"),
    "absolute": ([["/etc/1.png", "1.png", "TRAIN"]], "'/etc/1.png' (absolute path)"),
    "control": ([["1.png", "0\n1.png", "TRAIN"]], "row 1 MASK_NAME '0\\n1.png' (control"),
    "backslash": ([["a\\1.png", "1.png", "TRAIN"]], "(backslash)"),
    "empty": ([], "the manifest has no rows"),
}


@pytest.mark.parametrize("case", BAD_MANIFESTS)
def test_manifest_validation(session, cfg, case) -> None:
    rows, expected = BAD_MANIFESTS[case]
    table = f"{DB}.M_BAD"
    columns = COLUMNS[: len(rows[0])] if rows else COLUMNS
    if rows:
        write_manifest(session, table, rows, columns)
    else:
        from snowflake.snowpark.types import StringType, StructField, StructType

        schema = StructType([StructField(c, StringType()) for c in columns])
        session.create_dataframe([], schema=schema).write.save_as_table(table, mode="overwrite")
    with pytest.raises(DataError) as info:
        _source(session, SnowflakeConfig(manifest=table, cache_dir=cfg.cache_dir))
    message = str(info.value)
    assert message.startswith(f"{table}: ") and expected in message
    assert "\n" not in message


def test_manifest_problems_are_listed_together(session, cfg) -> None:
    rows = [[f"../{i}.png", "m.png", "TRAIN"] for i in range(12)] + [["ok.png", "x", "NOPE"]]
    write_manifest(session, f"{DB}.M_MANY", rows)
    with pytest.raises(DataError, match=r"13 bad row\(s\): row 1 .* and 3 more$"):
        _source(session, SnowflakeConfig(manifest="M_MANY", cache_dir=cfg.cache_dir))


def test_missing_manifest_and_empty_split(session, staged, cfg) -> None:
    with pytest.raises(DataError, match=r"^PROJET_FISSURES\.STORAGE_SCHEMA\.NO_SUCH_VIEW: "):
        _source(session, SnowflakeConfig(manifest="NO_SUCH_VIEW", cache_dir=cfg.cache_dir))
    write_manifest(session, f"{DB}.M_TRAIN_ONLY", [["001.png", "001.png", "train"]])
    source = _source(session, SnowflakeConfig(manifest="M_TRAIN_ONLY", cache_dir=cfg.cache_dir))
    assert [s.name for s in source.samples("train")] == ["001"]  # group is case-insensitive
    with pytest.raises(DataError, match="split 'test' has no rows"):
        source.samples("test")


# -- readers and sessions ----------------------------------------------------------------------


def test_reader_detection(monkeypatch) -> None:
    monkeypatch.delenv(sf.READER_ENV, raising=False)
    monkeypatch.delitem(sys.modules, "_snowflake", raising=False)
    assert not sf.running_in_snowflake() and sf.choose_reader() == "cache"
    monkeypatch.setitem(sys.modules, "_snowflake", types.ModuleType("_snowflake"))
    assert sf.running_in_snowflake() and sf.choose_reader() == "stream"
    assert sf.choose_reader("cache") == "cache"
    monkeypatch.setenv(sf.READER_ENV, "cache")
    assert sf.choose_reader() == "cache"
    monkeypatch.setenv(sf.READER_ENV, "bogus")
    with pytest.raises(ConfigError, match="bogus"):
        sf.choose_reader()


def test_stream_reader_uses_snowflakefile(session, staged, cfg) -> None:
    source = _source(session, cfg, reader="stream")
    assert source.cache is None
    sample = source.samples("val")[0]
    assert source.read(sample.image) == staged[sample.image]
    assert not Path(cfg.cache_dir).exists()
    with pytest.raises(DataError, match="file not found in the stage"):
        source.read(f"{STAGE}/images/absent.png.gz")


def test_resolve_session(session, monkeypatch, tmp_path) -> None:
    assert resolve_session() is session
    assert resolve_session("local") is session  # the active emulator session is reused
    monkeypatch.setattr(sf, "_active_session", lambda: None)
    with pytest.raises(ConfigError) as info:
        resolve_session()
    assert "--connection NAME" in str(info.value) and "connection: local" in str(info.value)
    monkeypatch.setenv("SNOWFLAKE_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="^Snowflake connection 'nope': cannot connect"):
        resolve_session("nope")


# -- ingest ------------------------------------------------------------------------------------


def test_upload_is_idempotent_and_round_trips(session, tmp_path) -> None:
    root = tmp_path / "ds"
    pairs = local_dataset(root)
    cfg = SnowflakeConfig(
        stage="UPLOAD_STAGE", manifest="V_UPLOAD", cache_dir=str(tmp_path / "cache")
    )
    first = upload_dataset(root, session, cfg, progress=False)
    assert first == {"uploaded": 12, "skipped": 0, "rows": 6}
    second = upload_dataset(root, session, cfg, progress=False)
    assert second == {"uploaded": 0, "skipped": 12, "rows": 6}
    assert session.table(f"{DB}.V_UPLOAD_TABLE").count() == 6
    assert session.table(f"{DB}.V_UPLOAD").count() == 6
    stage = f"@{DB}.UPLOAD_STAGE"
    names = staged_names(session, stage, "images", tmp_path / "listing")
    assert names == [f"{i:03d}.png.gz" for i in range(6)]
    raw = (root / "images" / "000.png").read_bytes()
    got = fetch_file(session, f"{stage}/images/000.png.gz", tmp_path / "one")
    assert got.name == "000.png" and got.read_bytes() == raw

    source = _source(session, cfg)
    samples = source.samples("all")
    assert len(samples) == 6 and {len(source.samples(s)) for s in ("val", "test")} == {1}
    for sample in samples:
        image, mask = load_pair(source, sample)
        np.testing.assert_array_equal(image, pairs[sample.name][0])
        np.testing.assert_array_equal(mask, pairs[sample.name][1] > 127)
    assert source.read(samples[0].image) == gzip.compress(
        (root / "images" / "000.png").read_bytes(), mtime=0
    )

    # A changed image is uploaded alone, and caches notice the new hash in the manifest.
    new_image = np.zeros((32, 32, 3), np.uint8)
    Image.fromarray(new_image).save(root / "images" / "003.png")
    third = upload_dataset(root, session, cfg, progress=False)
    assert third == {"uploaded": 1, "skipped": 11, "rows": 6}
    again = _source(session, cfg)
    sample = next(s for s in again.samples("all") if s.name == "003")
    np.testing.assert_array_equal(decode_image(again.read(sample.image), sample.image), new_image)
    assert decode_mask(again.read(sample.mask), sample.mask).shape == (32, 32)


def test_upload_leaves_a_foreign_view_alone(session, tmp_path) -> None:
    root = tmp_path / "ds"
    local_dataset(root, count=3)
    write_manifest(session, f"{DB}.SOMEONE_ELSES", [["a.png", "a.png", "TRAIN"]])
    session.table(f"{DB}.SOMEONE_ELSES").create_or_replace_view(f"{DB}.V_FOREIGN")
    cfg = SnowflakeConfig(stage="FOREIGN_STAGE", manifest="V_FOREIGN")
    with pytest.raises(DataError, match=r"V_FOREIGN: exists but fissure upload did not make"):
        upload_dataset(root, session, cfg, progress=False)
    counts = upload_dataset(root, session, cfg, progress=False, replace_view=True)
    assert counts == {"uploaded": 6, "skipped": 0, "rows": 3}
    assert session.table(f"{DB}.V_FOREIGN").count() == 3


def test_upload_refuses_names_that_would_collide(session, tmp_path) -> None:
    root = tmp_path / "ds"
    local_dataset(root, count=2)
    cfg = SnowflakeConfig(stage="COLLIDE_STAGE", manifest="V_COLLIDE")
    upload_dataset(root, session, cfg, progress=False)
    (root / "images" / "000.png").rename(root / "images" / "000.jpg")
    with pytest.raises(DataError, match="'000.png' and '000.jpg' would share one name"):
        upload_dataset(root, session, cfg, progress=False)


# -- models and names --------------------------------------------------------------------------


def test_push_and_fetch_model_files(session, tmp_path) -> None:
    weights = os.urandom(3000)
    plain = tmp_path / "best_model.pth"
    plain.write_bytes(weights)
    packed = tmp_path / "gz" / "best_model.pth.gz"
    packed.parent.mkdir()
    packed.write_bytes(gzip.compress(weights))
    prefix = f"{STAGE}/models"
    assert push_files(session, [plain], prefix + "/") == [f"{prefix}/best_model.pth"]
    assert push_files(session, [packed], prefix) == [f"{prefix}/best_model.pth.gz"]

    got = fetch_file(session, f"{prefix}/best_model.pth", tmp_path / "a")
    assert got == tmp_path / "a" / "best_model.pth" and got.read_bytes() == weights
    got = fetch_file(session, f"{prefix}/best_model.pth.gz", tmp_path / "b")
    assert got == tmp_path / "b" / "best_model.pth" and got.read_bytes() == weights
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["best_model.pth"]

    torch.save({"w": torch.arange(3)}, tmp_path / "ckpt.pt")
    push_files(session, [tmp_path / "ckpt.pt"], prefix)
    state = torch.load(fetch_file(session, f"{prefix}/ckpt.pt", tmp_path / "c"), weights_only=True)
    assert state["w"].tolist() == [0, 1, 2]

    with pytest.raises(DataError, match=rf"^{prefix}/absent\.pth: file not found in the stage"):
        fetch_file(session, f"{prefix}/absent.pth", tmp_path / "d")
    session.file.put_stream(
        io.BytesIO(b"\x1f\x8bjunk"), f"{prefix}/broken.pth.gz", auto_compress=False, overwrite=True
    )
    with pytest.raises(DataError, match="broken.pth.gz: corrupt or truncated gzip"):
        fetch_file(session, f"{prefix}/broken.pth.gz", tmp_path / "e")
    with pytest.raises(DataError, match="not a stage path"):
        push_files(session, [plain], "models/")
    with pytest.raises(DataError, match="file not found"):
        push_files(session, [tmp_path / "nothing.pth"], prefix)


def test_stage_names() -> None:
    assert is_stage_path("@DB.S.STAGE/models/m.pth") and not is_stage_path("runs/m.pth")
    assert validate_stage_name("@DB.S.STAGE/models/a..b.pth") == "@DB.S.STAGE/models/a..b.pth"
    assert validate_stage_name("images/001.png.gz") == "images/001.png.gz"
    for bad, why in [
        ("@S/../x", "'..'"),
        ("/abs/x", "absolute"),
        ("C:/x", "absolute"),
        ("a\\b", "backslash"),
        ("a\x00b", "control"),
        ("a/\x7f", "control"),
        ("@S", "empty"),
        ("a//b", "empty or '.'"),
        (" a", "leading"),
    ]:
        with pytest.raises(DataError, match=why):
            validate_stage_name(bad)
    assert sf.stage_name(SnowflakeConfig()) == STAGE
    assert sf.stage_name(SnowflakeConfig(stage="@OTHER.SCH.ST/")) == "@OTHER.SCH.ST"
    with pytest.raises(ConfigError, match="data.snowflake.stage"):
        sf.stage_name(SnowflakeConfig(stage="MY STAGE; DROP"))


# -- a real account ------------------------------------------------------------------------------


@pytest.mark.snowflake
def test_live_stage_reads_apair(tmp_path) -> None:
    connection = os.environ.get("FISSURE_SNOWFLAKE_CONNECTION")
    if not connection:
        pytest.skip("set FISSURE_SNOWFLAKE_CONNECTION to a connections.toml entry")
    live = resolve_session(connection)
    try:
        cfg = SnowflakeConfig(connection=connection, cache_dir=str(tmp_path / "cache"))
        source = StageSource.from_config(cfg, session=live, progress=False)
        sample = source.samples("all")[0]
        image, mask = load_pair(source, sample)
        assert image.ndim == 3 and mask.shape == image.shape[:2]
    finally:
        live.close()
