import gzip
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fissure.config import load_config
from fissure.data import CrackDataset, FolderSource, build_source, decode_image, decode_mask
from fissure.data.dataset import collate
from fissure.data.image import image_stem
from fissure.data.transforms import IMAGENET_MEAN, eval_transform, train_transform
from fissure.errors import DataError


def png_bytes(array: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


def write_pair(root, split, name, size=(32, 48), crack=True, mask_size=None, suffix=".png"):
    h, w = size
    img = np.full((h, w, 3), 150, np.uint8)
    mask = np.zeros(mask_size or (h, w), np.uint8)
    if crack:
        img[h // 2, :] = 40
        mask[min(h, mask.shape[0]) // 2, :] = 255
    base = root / split if split else root
    (base / "images").mkdir(parents=True, exist_ok=True)
    (base / "masks").mkdir(parents=True, exist_ok=True)
    (base / "images" / f"{name}{suffix}").write_bytes(png_bytes(img))
    (base / "masks" / f"{name}.png").write_bytes(png_bytes(mask))


# -- decoding --------------------------------------------------------------------------


def test_gzip_is_detected_by_magic_not_name():
    raw = png_bytes(np.zeros((4, 5, 3), np.uint8))
    assert decode_image(gzip.compress(raw), "x.png").shape == (4, 5, 3)
    assert decode_image(raw, "plain-named.gz").shape == (4, 5, 3)


def test_image_stem_strips_gz():
    assert image_stem("a/b/001.png.gz") == "001"
    assert image_stem("001.jpg") == "001"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"not an image at all", "not a readable image"),
        (gzip.compress(b"\x89PNG garbage", mtime=0), "not a readable image"),
        (gzip.compress(png_bytes(np.zeros((8, 8, 3), np.uint8)), mtime=0)[:-12], "truncated gzip"),
        (png_bytes(np.zeros((64, 64, 3), np.uint8))[:60], "not a readable image"),
    ],
    # readable ids that are the same in every process (pytest-xdist compares them)
    ids=["empty", "text", "gzip-garbage", "truncated-gzip", "truncated-png"],
)
def test_bad_bytes_give_a_data_error_naming_the_file(data, reason):
    with pytest.raises(DataError) as info:
        decode_image(data, "dir/bad.png.gz")
    assert str(info.value).startswith("dir/bad.png.gz: ")
    assert reason in str(info.value)


def test_channel_and_depth_conversions():
    gray = png_bytes(np.full((4, 4), 200, np.uint8))
    rgba = png_bytes(np.full((4, 4, 4), 200, np.uint8))
    deep = Image.fromarray(np.full((4, 4), 65535, np.uint16))
    buf = io.BytesIO()
    deep.save(buf, format="PNG")
    for data in (gray, rgba, buf.getvalue()):
        out = decode_image(data, "x")
        assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    assert decode_image(buf.getvalue(), "x").max() == 255


def test_exif_orientation_is_applied():
    img = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    assert decode_image(buf.getvalue(), "x.jpg").shape == (20, 10, 3)


def test_jpeg_masks_are_binarised_at_127():
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    decoded = decode_mask(png_bytes(mask, "JPEG", quality=50), "m.jpg")
    assert decoded.dtype == bool
    assert decoded[6:10, 6:10].all() and not decoded[:2, :2].any()
    assert decode_mask(png_bytes(np.array([[127, 128]], np.uint8)), "m").tolist() == [[False, True]]


# -- folder layouts --------------------------------------------------------------------


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
    with pytest.raises(DataError, match="split 'test' is empty"):
        src.samples("test")


def test_duplicate_stems_are_an_error(tmp_path):
    write_pair(tmp_path, None, "a")
    write_pair(tmp_path, None, "a", suffix=".jpg")
    with pytest.raises(DataError, match="share the name 'a'"):
        FolderSource(tmp_path)


# -- dataset and transforms ------------------------------------------------------------


def test_dataset_item_shapes_and_normalisation(synth_root):
    cfg = load_config(None, [f"data.root={synth_root}", "data.size=64"])
    src = build_source(cfg.data)
    ds = CrackDataset(src, src.samples("train"), train_transform(cfg.data, cfg.augment))
    item = ds[0]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (1, 64, 64)
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    # ImageNet normalisation puts a mid-grey photo near zero, not near 0.5
    assert abs(float(item["image"].mean())) < 1.5 and IMAGENET_MEAN[0] == 0.485


def test_resize_keeps_masks_binary(tmp_path):
    write_pair(tmp_path, None, "a", size=(50, 70))
    write_pair(tmp_path, None, "b", size=(50, 70))
    cfg = load_config(None, [f"data.root={tmp_path}", "data.size=32", "data.val_fraction=0",
                             "data.test_fraction=0"])
    src = build_source(cfg.data)
    ds = CrackDataset(src, src.samples("train"), train_transform(cfg.data, cfg.augment))
    mask = ds[0]["mask"]
    assert mask.shape == (1, 32, 32) and set(mask.unique().tolist()) == {0.0, 1.0}


def test_crack_aware_crops_contain_crack(tmp_path):
    write_pair(tmp_path, None, "a", size=(200, 200))
    cfg = load_config(None, [f"data.root={tmp_path}", "data.mode=crop", "data.size=32",
                             "data.crack_crop_fraction=1", "data.val_fraction=0",
                             "data.test_fraction=0"])
    src = build_source(cfg.data)
    ds = CrackDataset(src, src.samples("train"), train_transform(cfg.data, cfg.augment))
    torch.manual_seed(0)
    assert all(ds[0]["mask"].sum() > 0 for _ in range(20))


def test_mask_of_the_wrong_size_is_named(tmp_path):
    write_pair(tmp_path, None, "a", size=(20, 30), mask_size=(20, 31))
    write_pair(tmp_path, None, "b")
    src = FolderSource(tmp_path, val_fraction=0, test_fraction=0)
    ds = CrackDataset(src, src.samples("train"), eval_transform())
    with pytest.raises(DataError, match=r"a\.png: mask is 31x20 but its image .* is 30x20"):
        ds[0]
    skipping = CrackDataset(src, src.samples("train"), eval_transform(), on_error="skip")
    batch = collate([skipping[0], skipping[1]])
    assert batch["name"] == ["b"] and batch["skipped"][0][0] == "a"


def test_collate_keeps_mixed_sizes_as_lists(tmp_path):
    write_pair(tmp_path, None, "a", size=(20, 30))
    write_pair(tmp_path, None, "b", size=(24, 30))
    src = FolderSource(tmp_path, val_fraction=0, test_fraction=0)
    ds = CrackDataset(src, src.samples("train"), eval_transform())
    batch = collate([ds[0], ds[1]])
    assert isinstance(batch["image"], list) and batch["image"][1].shape == (3, 24, 30)


# -- real data: CrackForest (../shared/data/cfd) ----------------------------------------


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
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "cfd.yaml",
                      [f"data.root={cfd_root}"])
    src = build_source(cfg.data)
    assert {s.name for s in src.samples("val")} == {
        line.strip() for line in (cfd_root / "split_koenig_val.txt").read_text().splitlines()
        if line.strip()}
