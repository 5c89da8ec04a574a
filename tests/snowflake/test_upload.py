"""Tests for fissure.snowflake.upload: a local dataset into a stage, idempotently."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from PIL import Image
from stage_helpers import DB, local_dataset, staged_names, write_manifest

from fissure.config import SnowflakeConfig
from fissure.data import FolderSource, load_pair
from fissure.data.image import decode_image, decode_mask
from fissure.errors import ConfigError, DataError
from fissure.snowflake.source import StageSource
from fissure.snowflake.transfer import fetch_file
from fissure.snowflake.upload import upload_data, upload_dataset


def _source(session, cfg, **kwargs) -> StageSource:
    return StageSource.from_config(cfg, session=session, progress=False, **kwargs)


def test_the_same_manifest_into_another_stage_sends_every_file(session, tmp_path) -> None:
    """The table's hashes say the files are unchanged, not that they are in the new stage:
    skipping them would leave the view naming files the stage does not hold."""
    root = tmp_path / "ds"
    local_dataset(root)
    first = SnowflakeConfig(stage="STAGE_A", manifest="V_MOVED", cache_dir=str(tmp_path / "a"))
    assert upload_dataset(session, root, first, progress=False)["uploaded"] == 12
    moved = SnowflakeConfig(stage="STAGE_B", manifest="V_MOVED", cache_dir=str(tmp_path / "b"))
    assert upload_dataset(session, root, moved, progress=False) == {
        "uploaded": 12, "skipped": 0, "rows": 6}
    assert len(_source(session, moved).samples("all")) == 6
    renamed = SnowflakeConfig(stage="STAGE_B", manifest="V_MOVED", image_prefix="img",
                              cache_dir=str(tmp_path / "c"))
    assert upload_dataset(session, root, renamed, progress=False)["uploaded"] == 12
    assert upload_dataset(session, root, renamed, progress=False)["uploaded"] == 0


def test_a_table_from_before_uploaded_to_sends_every_file_once(session, tmp_path) -> None:
    root = tmp_path / "ds"
    local_dataset(root)
    cfg = SnowflakeConfig(stage="STAGE_OLD", manifest="V_OLD", cache_dir=str(tmp_path / "c"))
    upload_dataset(session, root, cfg, progress=False)
    table = f"{DB}.V_OLD_TABLE"
    old = session.table(table).drop("UPLOADED_TO")
    old.write.save_as_table(f"{table}_COPY", mode="overwrite")
    session.table(f"{table}_COPY").write.save_as_table(table, mode="overwrite")
    assert "UPLOADED_TO" not in [c.upper() for c in session.table(table).columns]
    assert upload_dataset(session, root, cfg, progress=False)["uploaded"] == 12
    assert upload_dataset(session, root, cfg, progress=False)["uploaded"] == 0


def test_upload_is_idempotent_and_round_trips(session, tmp_path) -> None:
    root = tmp_path / "ds"
    pairs = local_dataset(root)
    cfg = SnowflakeConfig(
        stage="UPLOAD_STAGE", manifest="V_UPLOAD", cache_dir=str(tmp_path / "cache")
    )
    first = upload_dataset(session, root, cfg, progress=False)
    assert first == {"uploaded": 12, "skipped": 0, "rows": 6}
    second = upload_dataset(session, root, cfg, progress=False)
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
    third = upload_dataset(session, root, cfg, progress=False)
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
        upload_dataset(session, root, cfg, progress=False)
    counts = upload_dataset(session, root, cfg, progress=False, replace_view=True)
    assert counts == {"uploaded": 6, "skipped": 0, "rows": 3}
    assert session.table(f"{DB}.V_FOREIGN").count() == 3


def test_upload_refuses_names_that_would_collide(session, tmp_path) -> None:
    root = tmp_path / "ds"
    local_dataset(root, count=2)
    cfg = SnowflakeConfig(stage="COLLIDE_STAGE", manifest="V_COLLIDE")
    upload_dataset(session, root, cfg, progress=False)
    (root / "images" / "000.png").rename(root / "images" / "000.jpg")
    with pytest.raises(DataError, match="'000.png' and '000.jpg' would share one name"):
        upload_dataset(session, root, cfg, progress=False)


def test_upload_refuses_names_differing_only_in_case(session, tmp_path) -> None:
    root = tmp_path / "ds"
    local_dataset(root, count=2)
    for folder in ("images", "masks"):  # ab.png and AB.png: one file on macOS or Windows
        (root / folder / "000.png").rename(root / folder / "ab.png")
        (root / folder / "001.png").rename(root / folder / "AB.png")
    cfg = SnowflakeConfig(stage="CASE_STAGE", manifest="V_CASE")
    with pytest.raises(DataError) as info:
        upload_dataset(session, root, cfg, progress=False)
    message = str(info.value)
    assert "AB.png" in message and "ab.png" in message and "differing only in case" in message


class _AccountSql:
    """Stands in for ``session.sql`` alone (the emulator runs no SQL): keeps each statement
    a real account would receive; ``refuse`` maps a statement's opening words to the error
    the account answers it with."""

    def __init__(self, refuse: dict[str, Exception] | None = None) -> None:
        self.statements: list[str] = []
        self.refuse = refuse or {}

    def __call__(self, text: str) -> _AccountSql:
        self.statements.append(text)
        self.last = text
        return self

    def collect(self) -> list:
        for start, error in self.refuse.items():
            if self.last.startswith(start):
                raise error
        return []


def test_a_stage_made_on_an_account_has_encryption_and_a_directory(session, tmp_path, monkeypatch):
    # The emulator makes stages on first put: see the statements a real account receives.
    from fissure.snowflake import upload

    account = _AccountSql()
    statements = account.statements
    monkeypatch.setattr(upload, "is_local_testing", lambda s: False)
    monkeypatch.setattr(session, "sql", account)
    root = tmp_path / "ds"
    local_dataset(root, count=2)
    cfg = SnowflakeConfig(stage="SSE_STAGE", manifest="V_SSE")
    assert upload_dataset(session, root, cfg, progress=False)["uploaded"] == 4
    stage = f"{DB}.SSE_STAGE"
    assert statements == [
        f"CREATE STAGE IF NOT EXISTS {stage} "
        "ENCRYPTION = (TYPE = 'SNOWFLAKE_SSE') DIRECTORY = (ENABLE = TRUE)",
        f"ALTER STAGE {stage} REFRESH",  # internal stages' directory tables refresh by hand
    ]
    assert upload.create_stage_sql(f"@{stage}") == statements[0]
    statements.clear()
    upload_dataset(session, root, cfg, progress=False)  # nothing new: no refresh
    assert statements == [statements[0]] and statements[0].startswith("CREATE STAGE")


def test_a_role_that_may_not_create_stages_uses_the_existing_one(session, tmp_path, monkeypatch):
    # On a real account CREATE STAGE IF NOT EXISTS needs the CREATE STAGE privilege even when
    # the stage exists; a role with only READ/WRITE on it is refused.
    from snowflake.connector.errors import ProgrammingError

    from fissure.snowflake import upload

    account = _AccountSql({"CREATE STAGE": ProgrammingError(
        msg="SQL access control error:\nInsufficient privileges to operate on schema 'SCH'",
        errno=3001)})
    monkeypatch.setattr(upload, "is_local_testing", lambda s: False)
    monkeypatch.setattr(session, "sql", account)
    root = tmp_path / "ds"
    local_dataset(root, count=2)
    cfg = SnowflakeConfig(stage="RW_STAGE", manifest="V_RW")
    assert upload_dataset(session, root, cfg, progress=False)["uploaded"] == 4
    assert account.statements[1] == f"DESC STAGE {DB}.RW_STAGE"
    account.refuse["DESC STAGE"] = ProgrammingError(
        msg="Stage 'X' does not exist or not authorized.", errno=2003)
    with pytest.raises(DataError) as info:
        upload_dataset(session, root, SnowflakeConfig(stage="NO_STAGE", manifest="V_NO"),
                       progress=False)
    assert str(info.value) == (f"@{DB}.NO_STAGE: cannot create the stage (003001: SQL access "
                               "control error: Insufficient privileges to operate on schema "
                               "'SCH')")


def test_a_quoted_manifest_name_keeps_its_table_name_quoted() -> None:
    from fissure.snowflake.upload import _suffixed

    assert _suffixed('DB.SCH."My view"', "_TABLE") == 'DB.SCH."My view_TABLE"'
    assert _suffixed("DB.SCH.V", "_TABLE") == "DB.SCH.V_TABLE"


def test_upload_takes_a_folder_source_and_a_table(session, tmp_path) -> None:
    root = tmp_path / "ds"
    local_dataset(root, count=6)
    cfg = SnowflakeConfig(stage="SPLIT_STAGE", manifest="V_SPLIT")
    with pytest.raises(ConfigError, match="must differ from the manifest view"):
        upload_dataset(session, root, cfg, table="V_SPLIT", progress=False)
    source = FolderSource(root, val_fraction=0.5, test_fraction=0.0)
    counts = upload_dataset(session, source, cfg, table="SPLIT_FILES", progress=False)
    assert counts == {"uploaded": 12, "skipped": 0, "rows": 6}
    groups = session.table(f"{DB}.SPLIT_FILES").to_pandas()["IMAGE_GROUP"].value_counts()
    assert groups.to_dict() == {"TRAIN": 3, "VAL": 3}


def test_upload_data_names_the_stage_and_manifest(session, tmp_path) -> None:
    root = tmp_path / "ds"
    local_dataset(root, count=2)
    cfg = SnowflakeConfig(stage="DATA_STAGE", manifest="V_DATA")
    counts = upload_data(session, root, cfg, progress=False)
    assert counts == {
        "uploaded": 4,
        "skipped": 0,
        "rows": 2,
        "stage": f"@{DB}.DATA_STAGE",
        "manifest": f"{DB}.V_DATA",
    }


def test_another_spelling_of_the_stage_is_the_same_place() -> None:
    # A real account folds unquoted names to upper case: a rerun spelt otherwise re-sends
    # nothing.
    from fissure.snowflake.upload import _same_place

    here = "@DB.SCH.STAGE/images @DB.SCH.STAGE/masks *.gz"
    assert _same_place("@db.sch.stage/images @db.Sch.STAGE/masks *.gz", here)
    assert not _same_place("@DB.SCH.STAGE/Images @DB.SCH.STAGE/masks *.gz", here)  # a path
    assert not _same_place(None, here)


def test_files_go_up_in_one_put_per_folder_batch(session, tmp_path, monkeypatch) -> None:
    # One PUT per batch of files in a stage folder, not one query per file (22,600 for the
    # notebook's dataset).
    from stage_helpers import CountingPuts

    from fissure.snowflake import upload

    root = tmp_path / "ds"
    local_dataset(root, count=6)
    puts = CountingPuts(session, monkeypatch)
    monkeypatch.setattr(upload, "PUT_BATCH", 4)
    cfg = SnowflakeConfig(stage="BATCH_PUT_STAGE", manifest="V_BATCH_PUT")
    assert upload_dataset(session, root, cfg, progress=False)["uploaded"] == 12
    targets = sorted(target for _, target, _ in puts.puts)
    stage = f"@{DB}.BATCH_PUT_STAGE"
    assert targets == [f"{stage}/images/"] * 2 + [f"{stage}/masks/"] * 2  # 4 + 2 files each
    assert puts.streams == []
