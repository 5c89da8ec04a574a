"""Tests for folder layouts, split files and pairing errors (fissure.data.sources)."""

import shutil
from pathlib import Path

import pytest
from pairs import write_pair

from fissure.config import load_config
from fissure.data import CrackDataset, FolderSource, build_source
from fissure.data.transforms import eval_transform
from fissure.errors import DataError


def test_split_folders_with_val_carved_from_train(tmp_path):
    for i in range(10):
        write_pair(tmp_path, "train", f"t{i}")
    for i in range(3):
        write_pair(tmp_path, "test", f"s{i}")
    src = FolderSource(tmp_path, val_fraction=0.2, split_seed=1)
    train, val, test = (src.samples(s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (8, 2, 3)
    assert {s.name for s in train}.isdisjoint({s.name for s in val})
    again = FolderSource(tmp_path, val_fraction=0.2, split_seed=1)
    assert again.samples("val") == val
    assert len(src.samples("all")) == 13


def test_flat_folder_split_by_ratio(tmp_path):
    for i in range(20):
        write_pair(tmp_path, None, f"{i:03d}")
    src = FolderSource(tmp_path, val_fraction=0.15, test_fraction=0.15)
    sizes = [len(src.samples(s)) for s in ("train", "val", "test")]
    assert sizes == [14, 3, 3]


def test_split_files_and_their_detection(tmp_path):
    for i in range(6):
        write_pair(tmp_path, None, f"{i:03d}", suffix=".jpg")
    (tmp_path / "ids_train.txt").write_text("000\n001\n002\n003\n")
    (tmp_path / "ids_val.txt").write_text("004\n")
    (tmp_path / "ids_test.txt").write_text("005\n")
    explicit = FolderSource(tmp_path, split_files={"train": "ids_train.txt", "val": "ids_val.txt",
                                                   "test": "ids_test.txt"})
    found = FolderSource(tmp_path)
    for split, n in (("train", 4), ("val", 1), ("test", 1)):
        assert len(explicit.samples(split)) == n
        assert explicit.samples(split) == found.samples(split)
    (tmp_path / "ids_val.txt").write_text("004\n999\n")
    with pytest.raises(DataError, match="999"):
        FolderSource(tmp_path)


def test_split_files_that_share_an_id_are_refused(tmp_path):
    for i in range(4):
        write_pair(tmp_path, None, f"{i:03d}")
    (tmp_path / "ids_train.txt").write_text("000\n001\n002\n")
    (tmp_path / "ids_val.txt").write_text("003\n")
    (tmp_path / "ids_test.txt").write_text("002\n003\n")
    with pytest.raises(DataError) as info:
        FolderSource(tmp_path, split_files={"train": "ids_train.txt", "val": "ids_val.txt",
                                            "test": "ids_test.txt"})
    message = str(info.value)
    assert "ids_train.txt and ids_test.txt: 1 id(s) in both the train and the test split: 002" \
        in message


def test_missing_masks_and_images_are_listed(tmp_path):
    for i in range(12):
        write_pair(tmp_path, None, f"{i:03d}")
    for i in range(11):
        (tmp_path / "masks" / f"{i:03d}.png").unlink()
    with pytest.raises(DataError) as info:
        FolderSource(tmp_path)
    msg = str(info.value)
    assert "11 image(s) without a mask" in msg and "000" in msg and "and 1 more" in msg
    (tmp_path / "masks" / "zzz.png").write_bytes(b"x")
    for i in range(12):
        (tmp_path / "masks" / f"{i:03d}.png").write_bytes(b"x")
    with pytest.raises(DataError, match="mask\\(s\\) without an image.*zzz"):
        FolderSource(tmp_path)


def test_missing_folder_and_empty_split(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        FolderSource(tmp_path / "nope")
    write_pair(tmp_path, "train", "a")
    write_pair(tmp_path, "train", "b")
    src = FolderSource(tmp_path, val_fraction=0.5)
    with pytest.raises(DataError, match=r"has no 'test' split \(it has train, val\)"):
        src.samples("test")
    for sub in ("images", "masks"):
        (tmp_path / "test" / sub).mkdir(parents=True)
    with pytest.raises(DataError, match="split 'test' is empty"):
        FolderSource(tmp_path, val_fraction=0.5).samples("test")


def test_duplicate_stems_are_an_error(tmp_path):
    write_pair(tmp_path, None, "a")
    write_pair(tmp_path, None, "a", suffix=".jpg")
    with pytest.raises(DataError, match="share the name 'a'"):
        FolderSource(tmp_path)


def test_cfd_split_files_are_found_and_pairs_load(cfd_root):
    src = FolderSource(cfd_root)
    assert [len(src.samples(s)) for s in ("train", "val", "test")] == [64, 7, 46]
    assert src.samples("test")[0].name == "073"
    ds = CrackDataset(src, src.samples("val"), eval_transform())
    item = ds[0]
    assert item["image"].shape == (3, 320, 480) and item["mask"].shape == (1, 320, 480)
    fractions = [float(ds[i]["mask"].mean()) for i in range(len(ds))]
    assert all(0.002 < f < 0.08 for f in fractions)  # README: 0.35-6.3 % per image


def test_cfd_config_reads_the_koenig_split(cfd_root):
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "cfd.yaml",
                      [f"data.root={cfd_root}"])
    src = build_source(cfg.data)
    assert {s.name for s in src.samples("val")} == {
        line.strip() for line in (cfd_root / "split_koenig_val.txt").read_text().splitlines()
        if line.strip()}



def test_a_folder_with_only_test_is_a_dataset(tmp_path):
    for i in range(3):
        write_pair(tmp_path, "test", f"s{i}")
    src = FolderSource(tmp_path)
    assert [s.name for s in src.samples("test")] == ["s0", "s1", "s2"]
    assert len(src.samples("all")) == 3
    with pytest.raises(DataError, match=r"has no 'train' split \(it has test\)"):
        src.samples("train")


def test_val_and_test_without_train(tmp_path):
    write_pair(tmp_path, "val", "v0")
    write_pair(tmp_path, "test", "t0")
    src = FolderSource(tmp_path)
    assert [s.name for s in src.samples("val")] == ["v0"]
    with pytest.raises(DataError, match=r"has no 'train' split \(it has val, test\)"):
        src.samples("train")


def test_non_image_files_are_ignored_when_pairing(synth_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    (root / "train" / "masks" / "README.md").write_text("hello")
    (root / "train" / "images" / ".DS_Store").write_bytes(b"\0")
    assert len(FolderSource(root).samples("train")) == 8

