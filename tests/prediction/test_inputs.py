"""Tests for a prediction run's inputs and their output names (fissure.prediction.inputs)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from fissure.errors import DataError, FissureError
from fissure.prediction.inputs import InputImage, check_inputs_kept, find_inputs, output_names
from fissure.prediction.options import OutputOptions


def _image(location: str) -> InputImage:
    return InputImage(location, bytes, PurePosixPath(location))


def test_output_names_tell_same_stems_apart() -> None:
    names = output_names(
        [
            _image(loc)
            for loc in ("/d/a/x.png", "/d/b/x.png", "/d/b/x.jpg", "/d/y.png.gz", "/d/z.png")
        ]
    )
    assert names == ["a__x", "b__x__png", "b__x__jpg", "y", "z"]
    awkward = [
        "/d/a/x.png",
        "/d/b/x.png",
        "/d/a__x.png",
        "/d/y.png",
        "/d/y_prob.png",
        "/d/Z.png",
        "/d/z.png",
    ]
    names = output_names([_image(loc) for loc in awkward])
    files = [f"{n}{s}".casefold() for n in names for s in ("", "_prob", "_overlay")]
    assert len(set(files)) == len(files)


def test_find_inputs_walks_folders_and_needs_fetch_for_stages(tmp_path: Path) -> None:
    (tmp_path / "in" / "deep").mkdir(parents=True)
    (tmp_path / "in" / "out").mkdir()
    for name in ("in/a.png", "in/deep/b.jpg.gz", "in/notes.txt", "in/out/a.png"):
        (tmp_path / name).write_bytes(b"x")
    found = find_inputs([tmp_path / "in", tmp_path / "in" / "a.png"], exclude=tmp_path / "in/out")
    assert [Path(i.source).name for i in found] == ["a.png", "b.jpg.gz"]
    assert len(find_inputs([tmp_path / "in"], "*.png")) == 1
    assert len(find_inputs([tmp_path / "in"])) == 3
    with pytest.raises(FissureError, match="stage inputs need the Snowflake source"):
        find_inputs(["@MY_STAGE/photos"])
    staged = _image("@MY_STAGE/photos/c.png")
    assert find_inputs(["@MY_STAGE/photos"], fetch=lambda spec, pattern: [staged]) == [staged]


def test_folder_scans_skip_hidden_files_and_folders(tmp_path: Path) -> None:
    # macOS leaves ._IMG.jpg resource forks beside photos copied to exFAT or USB drives.
    for name in ("site/IMG_1.jpg", "site/._IMG_1.jpg", "site/.ipynb_checkpoints/IMG_2.jpg",
                 "site/deep/IMG_3.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = find_inputs([tmp_path / "site"])
    assert [Path(i.source).name for i in found] == ["IMG_1.jpg", "IMG_3.png"]
    # a hidden file named directly is taken: the user asked for it
    assert len(find_inputs([tmp_path / "site" / "._IMG_1.jpg"])) == 1
    # the folder itself may sit below a dot-folder
    (tmp_path / ".cache" / "p").mkdir(parents=True)
    (tmp_path / ".cache" / "p" / "a.png").write_bytes(b"x")
    assert len(find_inputs([tmp_path / ".cache" / "p"])) == 1


# x.png's mask is x.png in the output folder; X.PNG is the same file on a case-insensitive disk
@pytest.mark.parametrize("named", ["site/x.png", "site/X.PNG"], ids=["mask", "case"])
def test_outputs_that_would_overwrite_an_input_are_refused(tmp_path: Path, named: str) -> None:
    photo = tmp_path / named
    photo.parent.mkdir(parents=True)
    photo.write_bytes(b"photo")
    images = find_inputs([photo])
    names = output_names(images)
    output = OutputOptions()
    with pytest.raises(DataError) as info:
        check_inputs_kept(images, names, tmp_path / "site", output)
    message = str(info.value)
    assert "would overwrite the input image" in message and str(photo) in message
    assert photo.read_bytes() == b"photo"
    check_inputs_kept(images, names, tmp_path / "elsewhere", output)


def test_an_overlay_output_can_clash_with_another_input(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    photo, other = tmp_path / "site" / "x.jpg", tmp_path / "site" / "x_overlay.jpg"
    photo.write_bytes(b"photo")
    other.write_bytes(b"another photo")
    # x.jpg's overlay would land on x_overlay.jpg, which is itself an input
    images = find_inputs([photo, other])
    with pytest.raises(DataError, match="x_overlay.jpg: the output would overwrite"):
        check_inputs_kept(images, output_names(images), tmp_path / "site",
                          OutputOptions(overlay=True))
