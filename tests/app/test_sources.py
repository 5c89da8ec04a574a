"""Tests for where the app's photos come from (fissure.app.sources)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fissure.app.sources import (
    PhotoFile,
    folder_photos,
    read_photo,
    stage_photos,
    uploaded_photos,
)
from fissure.errors import DataError, FissureError


@dataclass
class _Upload:
    name: str
    file_id: str
    data: bytes

    def getvalue(self) -> bytes:
        return self.data


def test_uploads_are_read_by_name_and_id(photo_png: bytes) -> None:
    photos = uploaded_photos([_Upload("a.png", "1", photo_png), _Upload("a.png", "2", b"x")])
    assert [(p.name, p.key) for p in photos] == [("a.png", "upload:1"), ("a.png", "upload:2")]
    rgb, digest = read_photo(photos[0])
    assert rgb.shape == (160, 240, 3) and rgb.dtype == np.uint8 and len(digest) == 40
    with pytest.raises(DataError, match=r"^a.png: not a readable image"):
        read_photo(photos[1])


def test_damaged_files_are_one_line_errors(photo_png: bytes) -> None:
    truncated = PhotoFile("cut.png", "k", lambda: photo_png[: len(photo_png) // 2])
    with pytest.raises(DataError, match="^cut.png: ") as info:
        read_photo(truncated)
    assert "\n" not in str(info.value)

    def unreadable() -> bytes:
        raise PermissionError(13, "Permission denied")

    with pytest.raises(DataError, match="^locked.png: cannot be read .Permission denied"):
        read_photo(PhotoFile("locked.png", "k", unreadable))


def test_folder_photos_are_what_predict_finds(tmp_path: Path, photo_png: bytes) -> None:
    (tmp_path / "deep").mkdir()
    (tmp_path / "a.png").write_bytes(photo_png)
    (tmp_path / "deep" / "b.png").write_bytes(photo_png)
    (tmp_path / "notes.txt").write_text("x")
    photos = folder_photos(tmp_path)
    assert [Path(p.name).name for p in photos] == ["a.png", "b.png"]
    assert photos[0].key == f"file:{(tmp_path / 'a.png').resolve().as_posix()}"
    assert [Path(p.name).name for p in folder_photos(tmp_path, "*.png")] == ["a.png"]
    with pytest.raises(DataError, match="no such folder"):
        folder_photos(tmp_path / "nope")
    with pytest.raises(DataError, match="no image files"):
        folder_photos(tmp_path / "deep", "*.jpg")


@pytest.fixture(scope="module")
def emulator():
    from snowflake.snowpark import Session

    session = Session.builder.config("local_testing", True).create()
    yield session
    session.close()


def test_stage_folders_are_listed_and_files_named(emulator, monkeypatch) -> None:
    from snowflake.snowpark import ListResult

    from fissure.snowflake import transfer

    # LIST on a real account (the emulator has none): names '<stage>/<path>', matched by
    # prefix; the page lists a folder as fissure predict does, photos2/ and x.txt left out.
    rows = [ListResult(f"stage/{name}", 3, "m", None, "t") for name in
            ("photos/b.jpg", "photos/a.png.gz", "photos/x.txt", "photos2/d.png")]
    asked: list[str] = []

    def account_list(stage_location, **kwargs):  # stands in for session.file.list only
        asked.append(stage_location)
        return rows

    with pytest.raises(FissureError, match="cannot be listed in Snowpark's local emulator.* "
                                           "one per line instead"):
        stage_photos(emulator, "@DB.S.STAGE/photos/")
    monkeypatch.setattr(transfer, "is_local_testing", lambda session: False)
    monkeypatch.setattr(emulator.file, "list", account_list)
    photos = stage_photos(emulator, "@DB.S.STAGE/photos\n\n@DB.S.STAGE/other/c.png\n")
    assert [p.name for p in photos] == [
        "@DB.S.STAGE/photos/a.png.gz",
        "@DB.S.STAGE/photos/b.jpg",
        "@DB.S.STAGE/other/c.png",
    ]
    assert asked == ["@DB.S.STAGE/photos/"]
    rows.clear()
    with pytest.raises(DataError, match="no photos there"):
        stage_photos(emulator, "@DB.S.STAGE/photos/")
    session = emulator
    with pytest.raises(DataError, match="photos/a.png: not a stage path"):
        stage_photos(session, "photos/a.png")
    with pytest.raises(DataError, match="name a stage folder"):
        stage_photos(session, "  \n")
