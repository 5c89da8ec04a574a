"""Tests for fissure.snowflake.source: the manifest read into samples, and StageSource reads."""

from __future__ import annotations

import hashlib
import io
import pickle
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from stage_helpers import (
    COLUMNS,
    DB,
    MANIFEST,
    STAGE,
    HashDataset,
    on_container,
    pair,
    read_only,
    write_manifest,
)
from torch.utils.data import DataLoader

from fissure.config import SnowflakeConfig
from fissure.data import PairSource, load_pair
from fissure.data.image import decode_image
from fissure.errors import DataError
from fissure.snowflake.source import StageSource, read_manifest


def _source(session, cfg, **kwargs) -> StageSource:
    return StageSource.from_config(cfg, session=session, progress=False, **kwargs)


# -- listing and reading ----------------------------------------------------------------


def test_splits_and_stage_paths(session, staged, cfg) -> None:
    source = StageSource.from_config(cfg, session=session, progress=False)
    pairs: PairSource = source  # the interface local folders implement (a typing Protocol)
    assert callable(pairs.samples) and callable(pairs.read) and pairs.description
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


def test_from_config_takes_the_session_explicitly(session, staged, cfg) -> None:
    with pytest.raises(TypeError):
        StageSource.from_config(cfg)  # type: ignore[call-arg]
    source = StageSource.from_config(cfg, session=session, reader="stream", progress=False)
    assert source._session is session and source.cache is None


def test_read_manifest_gives_samples_and_claimed_hashes(session, staged) -> None:
    table = f"{DB}.M_HASHED"
    columns = [*COLUMNS, "IMAGE_SHA256", "MASK_SHA256"]
    write_manifest(session, table, [["001.png", "", "TRAIN", "abc", None]], columns)
    splits, src = read_manifest(session, SnowflakeConfig(), table, STAGE)
    assert splits["train"][0].image == f"{STAGE}/images/001.png.gz"
    assert splits["train"][0].mask is None  # an empty mask cell: an image without a mask
    assert splits["val"] == [] and src == {"images/001.png.gz": "abc"}


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


def test_stream_reader_uses_snowflakefile(session, staged, cfg) -> None:
    source = _source(session, cfg, reader="stream")
    assert source.cache is None
    sample = source.samples("val")[0]
    assert source.read(sample.image) == staged[sample.image]
    assert not Path(cfg.cache_dir).exists()
    with pytest.raises(DataError, match="file not found in the stage"):
        source.read(f"{STAGE}/images/absent.png.gz")


def test_identity_names_cached_content_without_reading_it(session, staged, cfg) -> None:
    source = _source(session, cfg)
    sample = source.samples("train")[0]
    reads: list[str] = []
    original = source.read
    source.read = lambda locator: reads.append(locator) or original(locator)  # type: ignore
    first = source.identity(sample.image)
    assert first and first == source.identity(sample.image) and not reads
    assert first != source.identity(sample.mask)
    # A refetch replaces the cached file (os.replace): a new file, a new identity.
    cached = source.cache.path(source._relative(sample.image))
    replacement = cached.with_suffix(".new")
    replacement.write_bytes(cached.read_bytes() + b"\0")
    replacement.replace(cached)
    assert source.identity(sample.image) not in (None, first)


def test_identity_is_the_manifests_hash_when_it_gives_one(session, staged, cfg) -> None:
    columns = [*COLUMNS, "IMAGE_SHA256", "MASK_SHA256"]
    write_manifest(session, f"{DB}.M_IDENT", [["001.png", "001.png", "TRAIN", "abc", "def"]],
                   columns)
    source = _source(session, replace(cfg, manifest="M_IDENT"))
    sample = source.samples("train")[0]
    assert source.identity(sample.image).endswith("#abc")
    assert source.identity(sample.mask).endswith("#def")


def test_streaming_has_no_identity_so_the_bytes_are_hashed(session, staged, cfg) -> None:
    source = _source(session, cfg, reader="stream")
    assert source.identity(source.samples("val")[0].image) is None


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
    "case-image": (  # one file in a cache on a case-insensitive disk (macOS, Windows)
        [["a.png", "a.png", "TRAIN"], ["A.png", "b.png", "TEST"]],
        "row 2 IMAGE_NAME 'A.png' (differs only in case from row 1 'a.png')",
    ),
    "case-mask": (
        [["a.png", "m.png", "TRAIN"], ["b.png", "M.PNG", "TEST"]],
        "row 2 MASK_NAME 'M.PNG' (differs only in case from row 1 'm.png')",
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


def test_cache_goes_to_tmp_when_its_folder_is_read_only_inside_snowflake(
    session, staged, cfg, monkeypatch, tmp_path
) -> None:
    locked = tmp_path / "home"
    read_only(locked, monkeypatch)
    on_container(monkeypatch, tmp_path / "runtime")  # a Container Runtime notebook
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    lines: list[str] = []
    try:
        relocated = SnowflakeConfig(cache_dir=str(locked / "cache"))
        source = StageSource.from_config(relocated, session=session, progress=False,
                                         log=lines.append)
        assert source.cache.root.is_relative_to(tmp_path / "tmp" / locked.relative_to("/"))
        sample = source.samples("test")[0]
        assert source.read(sample.image) == staged[sample.image]
        assert lines == [f"{locked / 'cache'}: not writable here; using "
                         f"{tmp_path / 'tmp' / locked.relative_to('/') / 'cache'}"]
    finally:
        locked.chmod(0o755)


def test_missing_manifest_and_empty_split(session, staged, cfg) -> None:
    with pytest.raises(DataError, match=r"^PROJET_FISSURES\.STORAGE_SCHEMA\.NO_SUCH_VIEW: "):
        _source(session, SnowflakeConfig(manifest="NO_SUCH_VIEW", cache_dir=cfg.cache_dir))
    write_manifest(session, f"{DB}.M_TRAIN_ONLY", [["001.png", "001.png", "train"]])
    source = _source(session, SnowflakeConfig(manifest="M_TRAIN_ONLY", cache_dir=cfg.cache_dir))
    assert [s.name for s in source.samples("train")] == ["001"]  # group is case-insensitive
    with pytest.raises(DataError, match="split 'test' has no rows"):
        source.samples("test")


# -- a real account ------------------------------------------------------------------------------


@pytest.mark.snowflake
def test_live_stage_reads_apair(tmp_path) -> None:
    import os

    from fissure.snowflake.session import open_session

    connection = os.environ.get("FISSURE_SNOWFLAKE_CONNECTION")
    if not connection:
        pytest.skip("set FISSURE_SNOWFLAKE_CONNECTION to a connections.toml entry")
    live = open_session(connection)
    try:
        cfg = SnowflakeConfig(connection=connection, cache_dir=str(tmp_path / "cache"))
        source = StageSource.from_config(cfg, session=live, progress=False)
        sample = source.samples("all")[0]
        image, mask = load_pair(source, sample)
        assert image.ndim == 3 and mask.shape == image.shape[:2]
    finally:
        live.close()
