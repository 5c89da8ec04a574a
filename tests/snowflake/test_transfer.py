"""Tests for fissure.snowflake.transfer: single-file and prefix GET, one-query PUT, LIST."""

from __future__ import annotations

import gzip
import io
import os

import pytest
import torch
from stage_helpers import STAGE, CountingGets, CountingPuts

from fissure.errors import DataError
from fissure.snowflake import transfer
from fissure.snowflake.files import StageFileMissing
from fissure.snowflake.transfer import fetch_file, get_prefix, list_stage, push_files


def _put(session, rel: str, data: bytes) -> None:
    session.file.put_stream(io.BytesIO(data), f"{STAGE}/{rel}", auto_compress=False, overwrite=True)


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


def test_push_files_sends_exactly_the_files_in_one_put(session, tmp_path, monkeypatch) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for name in ("best.pt", "config.yaml", "history.csv", "last.pt"):
        (run / name).write_bytes(name.encode() * 10)
    puts = CountingPuts(session, monkeypatch)
    files = [run / n for n in ("best.pt", "config.yaml", "history.csv")]
    prefix = f"{STAGE}/models/one-put/"
    assert push_files(session, files, prefix) == [f"{prefix}{f.name}" for f in files]
    assert len(puts.puts) == 1 and not puts.streams
    assert puts.puts[0][2]["auto_compress"] is False and puts.puts[0][2]["parallel"] >= 1
    got = get_prefix(session, prefix, tmp_path / "back")
    assert sorted(got) == ["best.pt", "config.yaml", "history.csv"]  # last.pt stays local
    assert got["best.pt"][0].read_bytes() == b"best.pt" * 10
    assert push_files(session, [], prefix) == [] and len(puts.puts) == 1
    twin = tmp_path / "other" / "best.pt"
    twin.parent.mkdir()
    twin.write_bytes(b"x")
    with pytest.raises(DataError, match="best.pt: two files of that name"):
        push_files(session, [run / "best.pt", twin], prefix)


def test_get_prefix_brings_a_folder_in_one_query(session, tmp_path, monkeypatch) -> None:
    for rel in ("pf/a.png.gz", "pf/b.png.gz", "pf/sub/c.png.gz", "pf/sub/a.png.gz"):
        _put(session, rel, rel.encode())
    gets = CountingGets(session, monkeypatch)
    got = get_prefix(session, f"{STAGE}/pf/", tmp_path / "pf", parallel=6)
    assert gets.calls == [f"{STAGE}/pf/"] and gets.options[0]["parallel"] == 6
    # Sub-folders are flattened by GET: the two a.png.gz are left out, for per-file GETs.
    assert sorted(got) == ["b.png.gz", "c.png.gz"]
    assert got["c.png.gz"][0].read_bytes() == b"pf/sub/c.png.gz"
    assert got["c.png.gz"][1] == len(b"pf/sub/c.png.gz")
    assert get_prefix(session, f"{STAGE}/no-such-folder/", tmp_path / "none") == {}


def test_missing_file_is_one_get_and_names_the_stage_path(session, tmp_path, monkeypatch) -> None:
    # A real account's answer (connector OperationalError errno 253006), not the emulator's.
    path = f"{STAGE}/models/gone.pth"
    gets = CountingGets(session, monkeypatch, missing={path})
    delays: list[float] = []
    with pytest.raises(StageFileMissing, match=rf"^{path}: file not found in the stage$"):
        transfer.download(session, path, tmp_path / "x", tmp_path / "scratch", delays.append)
    assert gets.calls == [path] and delays == []


def test_list_stage_refuses_in_the_emulator(session) -> None:
    with pytest.raises(DataError) as info:
        list_stage(session, f"{STAGE}/photos")
    message = str(info.value)
    assert message.startswith(f"{STAGE}/photos/: a stage folder cannot be listed")
    assert "\n" not in message and "LIST" in message


def test_list_stage_on_a_real_account(session, monkeypatch) -> None:
    from snowflake.snowpark import ListResult

    # LIST on a real account (docs: sql-reference/sql/list) matches a name prefix and names
    # files '<stage>/<path>', the stage in lower case without database and schema.
    rows = [
        ListResult("my_fissure_stage/photos/b.jpg", 20, "m", None, "t"),
        ListResult("my_fissure_stage/photos/sub/a.png.gz", 10, "m", None, "t"),
        ListResult("my_fissure_stage/photos2/c.jpg", 5, "m", None, "t"),
    ]
    asked: list[str] = []

    def account_list(stage_location, **kwargs):  # stands in for session.file.list only
        asked.append(stage_location)
        return rows

    monkeypatch.setattr(transfer, "is_local_testing", lambda s: False)
    monkeypatch.setattr(session.file, "list", account_list)
    assert list_stage(session, f"{STAGE}/photos") == [
        (f"{STAGE}/photos/b.jpg", 20),
        (f"{STAGE}/photos/sub/a.png.gz", 10),
    ]
    assert asked == [f"{STAGE}/photos/"]


@pytest.mark.parametrize(
    ("name", "stage", "below", "root", "path"),
    [
        ("my_fissure_stage/photos/a.jpg", STAGE, "photos/", None, "photos/a.jpg"),
        ("s3://bucket/pre/photos/a.jpg", "@DB.SCH.EXT", "photos/", "s3://bucket/pre/",
         "photos/a.jpg"),
        # the URL itself may hold the folder's name: the root decides, not a search
        ("s3://bucket/photos/photos/a.jpg", "@EXT", "photos/", "s3://bucket/photos/",
         "photos/a.jpg"),
        ("s3://other/a.jpg", "@EXT", "", "s3://bucket/", None),
        ("gcs://bucket/a.jpg", "@EXT", "", None, None),  # an URL without its stage's root
        ("photos/a.jpg", "@~", "photos/", None, "photos/a.jpg"),
        ("photos/a.jpg", "@DB.SCH.%T", "photos/", None, "photos/a.jpg"),
        ("flat.jpg", STAGE, "", None, None),
    ],
    ids=["internal", "external", "external-same-name", "external-elsewhere", "no-root", "user",
         "table", "no-stage-part"],
)
def test_stage_relative_reads_every_kind_of_list_name(name, stage, below, root, path) -> None:
    # LIST's name column (docs: sql-reference/sql/list): '<stage>/<path>' for a named
    # internal stage, the cloud URL for an external one, the path for user and table stages.
    assert transfer.stage_relative(name, stage, below, root) == path


def test_list_stage_on_an_external_stage(session, monkeypatch) -> None:
    from snowflake.snowpark import ListResult

    rows = [ListResult("s3://bucket/pre/photos/b.jpg", 20, "m", None, "t"),
            ListResult("s3://bucket/pre/photos/sub/c.png", 7, "m", None, "t")]
    monkeypatch.setattr(transfer, "is_local_testing", lambda s: False)
    monkeypatch.setattr(session.file, "list", lambda stage_location, **kw: rows)  # LIST only
    monkeypatch.setattr(transfer, "external_root", lambda s, stage: "s3://bucket/pre/")
    assert list_stage(session, "@DB.SCH.EXT/photos") == [
        ("@DB.SCH.EXT/photos/b.jpg", 20), ("@DB.SCH.EXT/photos/sub/c.png", 7)]
    # names it cannot place are an error, not an empty folder
    monkeypatch.setattr(transfer, "external_root", lambda s, stage: "s3://elsewhere/")
    with pytest.raises(DataError, match=r"^@DB.SCH.EXT/photos/: LIST named a file 's3://"):
        list_stage(session, "@DB.SCH.EXT/photos")


def test_external_root_is_the_url_desc_stage_gives(session, monkeypatch) -> None:
    from snowflake.snowpark import Row

    # DESC STAGE on a real account: one row per property; URL's value is a JSON list.
    desc = [
        Row(parent_property="STAGE_LOCATION", property="URL", property_type="String",
            property_value='["s3://bucket/pre"]', property_default=""),
        Row(parent_property="STAGE_LOCATION", property="AWS_ROLE", property_type="String",
            property_value="", property_default=""),
    ]
    asked: list[str] = []

    class Described:  # stands in for session.sql("DESC STAGE ...") alone
        def __init__(self, text: str) -> None:
            asked.append(text)

        def collect(self) -> list:
            return desc

    monkeypatch.setattr(session, "sql", Described)
    assert transfer.external_root(session, "@DB.SCH.EXT") == "s3://bucket/pre/"
    assert asked == ["DESC STAGE DB.SCH.EXT"]


def test_a_pushed_file_replaces_the_one_already_there(session, tmp_path, monkeypatch) -> None:
    # PUT ... OVERWRITE = TRUE replaces a file on a real account; Snowpark's emulator drops
    # the option and keeps the old one, which push_files sends again on its own.
    puts = CountingPuts(session, monkeypatch)
    prefix = f"{STAGE}/replace"
    for content in (b"first run", b"second run, longer"):
        local = tmp_path / content.decode()[:5] / "best.pt"
        local.parent.mkdir()
        local.write_bytes(content)
        assert transfer.push_files(session, [local], prefix) == [f"{prefix}/best.pt"]
    got = transfer.fetch_file(session, f"{prefix}/best.pt", tmp_path / "back")
    assert got.read_bytes() == b"second run, longer"
    assert len(puts.puts) == 2 and puts.streams == [f"{prefix}/best.pt"]
