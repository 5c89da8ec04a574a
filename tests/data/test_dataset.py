"""Tests for the torch Dataset (fissure.data.dataset): item shapes, binary masks,
crack-aware crops, collate."""


import pytest
import torch
from pairs import write_pair

from fissure.config import load_config
from fissure.data import CrackDataset, FolderSource, build_source
from fissure.data.dataset import collate
from fissure.data.transforms import IMAGENET_MEAN, eval_transform, train_transform
from fissure.errors import DataError


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

