"""Tests for dataset statistics (fissure.data.stats) and `fissure data stats`."""

import numpy as np
import pytest
from click.testing import CliRunner
from pairs import write_pair

from fissure.cli import cli
from fissure.data import FolderSource
from fissure.data.stats import centre_line_widths, dataset_stats, implied_crop


def test_widths_follow_the_measurement_convention():
    mask = np.zeros((20, 30), bool)
    mask[5, 2:28] = True  # a 1-px line
    mask[10:15, 2:28] = True  # a 5-px bar
    widths = centre_line_widths(mask)
    assert np.isclose(np.median(widths[widths < 3]), 1.0)
    assert np.isclose(np.median(widths[widths >= 3]), 5.0)
    assert centre_line_widths(np.zeros((4, 4), bool)).size == 0


def test_split_figures(tmp_path):
    for i in range(3):
        write_pair(tmp_path, "train", f"a{i}", size=(40, 96))
    write_pair(tmp_path, "train", "free", size=(40, 96), crack=False)
    write_pair(tmp_path, "test", "t0", size=(64, 64))
    train, test = dataset_stats(FolderSource(tmp_path, val_fraction=0.0))
    assert (train.split, train.images, train.crack_free) == ("train", 4, 1)
    assert train.sizes == {"96x40": 4} and (train.min_side, train.max_side) == (40, 96)
    assert train.crack_fraction == pytest.approx(3 * 96 / (4 * 40 * 96))
    assert train.crack_free_share == 0.25 and train.width_median == 1.0
    assert train.mean_area == 40 * 96
    assert test.split == "test" and test.images == 1
    assert implied_crop(train) == 32 and implied_crop(test) == 64


def test_a_split_whose_files_fail_is_reported_not_skipped(tmp_path):
    """Only an absent split is left out; a stage file gone missing (or any other DataError
    from filling a split) stops the listing with its reason."""
    from fissure.errors import DataError

    write_pair(tmp_path, "train", "a0", size=(40, 96))
    write_pair(tmp_path, "test", "t0", size=(64, 64))
    folder = FolderSource(tmp_path, val_fraction=0.0)
    assert [s.split for s in dataset_stats(folder)] == ["train", "test"]  # no val: skipped

    class FileGone:
        description = folder.description
        read = folder.read

        def samples(self, split):
            if split == "test":
                raise DataError("@stage/masks/t0.png.gz: not on the stage")
            return folder.samples(split)

    with pytest.raises(DataError, match="t0.png.gz: not on the stage"):
        dataset_stats(FileGone())


def test_the_cli_prints_each_split_and_the_implied_settings(tmp_path):
    for i in range(2):
        write_pair(tmp_path, "train", f"a{i}", size=(130, 200))
    write_pair(tmp_path, "val", "v0", size=(130, 200))
    result = CliRunner().invoke(cli, ["data", "stats", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "train: 2 images, sides 130-200 px (200x130 x2)" in result.output
    assert "val: 1 images" in result.output
    assert "implied data.size (crop mode): 128" in result.output
    assert "implied train.loss.params.pos_weight: " in result.output
