"""Tests for the procedural concrete-crack dataset generator."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import distance_transform_edt
from skimage.morphology import skeletonize

from fissure.data import FolderSource, load_pair
from fissure.data.synth import (
    MANIFEST_COLUMNS,
    MANIFEST_NAME,
    SPLITS,
    THIN_DEFAULT_SIZE,
    SynthOptions,
    _crack_free_per_split,
    _split_sizes,
    generate_dataset,
    synth_pair,
)
from fissure.errors import DataError


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def _masks(root: Path) -> dict[str, list[np.ndarray]]:
    return {
        split: [np.asarray(Image.open(p)) for p in sorted((root / split / "masks").glob("*.png"))]
        for split in SPLITS
    }


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate_dataset(tmp_path / name, count=5, size=48, seed=seed)
    a, b, c = (_files(tmp_path / n) for n in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a if "images" in k)


def test_layout_counts_and_formats(tmp_path: Path) -> None:
    counts = generate_dataset(tmp_path, count=20, size=40, seed=1)
    assert counts == {"train": 14, "val": 3, "test": 3}
    names = []
    for split in SPLITS:
        images = sorted(p.name for p in (tmp_path / split / "images").iterdir())
        masks = sorted(p.name for p in (tmp_path / split / "masks").iterdir())
        assert images == masks
        assert len(images) == counts[split]
        names += images
        for name in images:
            with Image.open(tmp_path / split / "images" / name) as im:
                assert (im.mode, im.size) == ("RGB", (40, 40))
            with Image.open(tmp_path / split / "masks" / name) as m:
                assert (m.mode, m.size) == ("L", (40, 40))
                assert set(np.unique(np.asarray(m))) <= {0, 255}
    assert sorted(names) == [f"synth_{i:04d}.png" for i in range(1, 21)]


def test_rerun_overwrites_but_stale_files_are_refused(tmp_path: Path) -> None:
    generate_dataset(tmp_path, count=4, size=32)
    generate_dataset(tmp_path, count=4, size=32)
    with pytest.raises(DataError, match="already holds"):
        generate_dataset(tmp_path, count=3, size=32)
    # Same names but another split layout would put an image into two splits.
    with pytest.raises(DataError, match="already holds"):
        generate_dataset(tmp_path, count=4, size=32, fractions=(0.2, 0.4, 0.4))


@pytest.mark.parametrize(("count", "expected_free"), [(3, 0), (7, 1), (20, 3)])
def test_crack_free_count_is_exact_and_spread(
    tmp_path: Path, count: int, expected_free: int
) -> None:
    generate_dataset(tmp_path, count=count, size=32, seed=count)
    masks = _masks(tmp_path)
    empty = {s: sum(int(not m.any()) for m in ms) for s, ms in masks.items()}
    assert sum(empty.values()) == expected_free
    for split, ms in masks.items():
        assert ms, split
        if len(ms) >= 3 and expected_free >= 1:
            assert 1 <= empty[split] < len(ms), (split, empty)


def test_split_planning_over_many_counts() -> None:
    for count in range(3, 80):
        sizes = _split_sizes(count, (0.7, 0.15, 0.15))
        assert sum(sizes) == count and min(sizes) >= 1
        n_free = int(np.floor(count * 0.15 + 0.5))
        free = _crack_free_per_split(sizes, n_free)
        assert sum(free) == n_free
        big = [k for k, s in enumerate(sizes) if s >= 3]
        if n_free >= len(big):
            for k in big:
                assert 1 <= free[k] < sizes[k], (count, sizes, free)


def test_cracks_are_thin_dark_and_plausibly_sized() -> None:
    for seed in range(6):
        image, mask = synth_pair(np.random.default_rng(seed), 128)
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        assert mask.shape == (128, 128) and mask.dtype == np.uint8
        crack = mask > 0
        assert 0.005 <= crack.mean() <= 0.08, crack.mean()
        lum = image.astype(float).mean(axis=2)
        assert lum[crack].mean() < lum[~crack].mean() - 10
        # Mean width = area / centreline length; the generator promises 1-6 px.
        width = crack.sum() / skeletonize(crack).sum()
        assert 1.0 <= width <= 6.5, width


def test_crack_free_pair_has_empty_mask() -> None:
    image, mask = synth_pair(np.random.default_rng(0), 64, with_crack=False)
    assert image.shape == (64, 64, 3) and not mask.any()


def test_progress_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generate_dataset(tmp_path, count=3, size=32, progress=True)
    assert "synth" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs",
    [
        {"count": 2},
        {"count": 5, "size": 31},
        {"count": 5, "seed": -1},
        {"count": 5, "fractions": (0.8, 0.2, 0.0)},
        {"count": 5, "fractions": (0.5, 0.2, 0.2)},
        {"count": 5, "crack_free_fraction": 1.5},
    ],
)
def test_bad_arguments_raise_data_error(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(DataError):
        generate_dataset(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_output_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(DataError, match=str(target)):
        generate_dataset(target, count=3, size=32)


# --------------------------------------------------------------------------- notebook shape


def _notebook(root: Path, count: int = 12, **options) -> dict[str, int]:
    opts = SynthOptions(manifest=True, gzip=True, **options)
    return generate_dataset(root, count=count, size=48, seed=2, options=opts)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_notebook_layout_names_manifest_and_split_files(tmp_path: Path) -> None:
    counts = _notebook(tmp_path)
    assert counts == {"train": 10, "val": 1, "test": 1}  # 0.8 / 0.1 / 0.1 by default
    names = [f"synth_{i:04d}.jpg" for i in range(1, 13)]
    for sub in ("images", "masks"):
        assert sorted(p.name for p in (tmp_path / sub).iterdir()) == [n + ".gz" for n in names]
    with (tmp_path / MANIFEST_NAME).open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(MANIFEST_COLUMNS)
    assert [r["IMAGE_NAME"] for r in rows] == names
    assert all(r["MASK_NAME"] == r["IMAGE_NAME"] for r in rows)
    groups = [r["IMAGE_GROUP"] for r in rows]
    assert (groups.count("TRAIN"), groups.count("VAL"), groups.count("TEST")) == (10, 1, 1)
    for split in SPLITS:
        listed = (tmp_path / f"split_{split}.txt").read_text().split()
        assert listed == [r["IMAGE_NAME"] for r in rows if r["IMAGE_GROUP"] == split.upper()]
    assert not list(tmp_path.glob(".*"))  # no temporary manifest left behind


def test_unwritable_files_are_named_for_what_they_are(tmp_path: Path) -> None:
    blocked = tmp_path / "split_val.txt"
    blocked.mkdir(parents=True)  # a folder where the split file goes: the write fails
    with pytest.raises(DataError, match=r"split_val\.txt: cannot write the split file"):
        _notebook(tmp_path)
    assert not (tmp_path / MANIFEST_NAME).exists()  # written last: no manifest, not complete
    blocked.rmdir()
    (tmp_path / "masks" / "synth_0001.jpg.gz").unlink()
    (tmp_path / "masks" / "synth_0001.jpg.gz").mkdir()
    with pytest.raises(DataError, match=r"synth_0001\.jpg\.gz: cannot write synthetic mask"):
        _notebook(tmp_path)


def test_notebook_files_are_gzip_jpeg_with_jpeg_masks(tmp_path: Path) -> None:
    _notebook(tmp_path, count=6)
    grey = 0
    for path in sorted((tmp_path / "masks").iterdir()):
        raw = path.read_bytes()
        assert raw[:2] == b"\x1f\x8b"
        with Image.open(io.BytesIO(gzip.decompress(raw))) as mask:
            assert (mask.format, mask.mode, mask.size) == ("JPEG", "L", (48, 48))
            grey += bool(set(np.unique(np.asarray(mask)).tolist()) - {0, 255})
        image = tmp_path / "images" / path.name
        with Image.open(io.BytesIO(gzip.decompress(image.read_bytes()))) as im:
            assert (im.format, im.mode) == ("JPEG", "RGB")
    assert grey  # JPEG masks are not binary, as in the public dataset


def test_notebook_folder_reads_with_the_manifest_splits(tmp_path: Path) -> None:
    _notebook(tmp_path)
    source = FolderSource(tmp_path)
    rows = (tmp_path / MANIFEST_NAME).read_text().splitlines()[1:]
    for split in SPLITS:
        expected = sorted(r.split(",")[0][:-4] for r in rows if r.endswith(split.upper()))
        assert [s.name for s in source.samples(split)] == expected
    sample = source.samples("train")[0]
    _, mask = load_pair(source, sample)
    truth = synth_pair(np.random.default_rng([2, int(sample.name[-4:])]), 48,
                       with_crack=bool(mask.any()))[1]
    # The binarised JPEG mask is the drawn mask.
    assert np.array_equal(mask, truth > 0)


def test_notebook_bytes_do_not_depend_on_workers(tmp_path: Path) -> None:
    _notebook(tmp_path / "one", workers=1)
    _notebook(tmp_path / "two", workers=2)
    _notebook(tmp_path / "again", workers=1)
    one = _tree(tmp_path / "one")
    assert one == _tree(tmp_path / "two") == _tree(tmp_path / "again")


def test_default_bytes_do_not_depend_on_workers(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "a", count=8, size=32, options=SynthOptions(workers=1))
    generate_dataset(tmp_path / "b", count=8, size=32, options=SynthOptions(workers=2))
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")


def test_gzip_png_in_the_split_layout(tmp_path: Path) -> None:
    generate_dataset(tmp_path, count=4, size=32, options=SynthOptions(gzip=True))
    files = sorted(p.name for p in (tmp_path / "train" / "images").iterdir())
    assert files and all(f.endswith(".png.gz") for f in files)
    assert not (tmp_path / MANIFEST_NAME).exists()
    assert len(FolderSource(tmp_path).samples("all")) == 4


def test_layouts_do_not_mix_in_one_folder(tmp_path: Path) -> None:
    generate_dataset(tmp_path, count=4, size=32)
    with pytest.raises(DataError, match="already holds other images"):
        _notebook(tmp_path, count=4)
    other = tmp_path / "other"
    _notebook(other, count=4)
    _notebook(other, count=4)  # a rerun rewrites the same files
    with pytest.raises(DataError, match="already holds other images"):
        generate_dataset(other, count=4, size=32)


@pytest.mark.parametrize("options", [SynthOptions(image_format="gif"), SynthOptions(workers=0)])
def test_bad_options_raise_data_error(tmp_path: Path, options: SynthOptions) -> None:
    with pytest.raises(DataError):
        generate_dataset(tmp_path / "out", count=3, size=32, options=options)


# --------------------------------------------------------------------------- thin cracks


def _widths(crack: np.ndarray) -> tuple[float, float]:
    """Mean width (area over centreline length) and the share of pixels over 2 px across.

    A pixel 2+ px from the background (distance transform) sits in a band 3+ px across.
    """
    mean = crack.sum() / skeletonize(crack).sum()
    return float(mean), float((distance_transform_edt(crack) > 1.5).mean() / crack.mean())


def test_thin_cracks_per_split_are_rare_and_one_to_two_pixels_wide(tmp_path: Path) -> None:
    generate_dataset(tmp_path, count=20, size=256, seed=5, options=SynthOptions(thin=True))
    for split, masks in _masks(tmp_path).items():
        fraction = np.mean([m > 0 for m in masks])
        assert 0.0 < fraction <= 0.005, (split, fraction)
        for m in masks:
            if m.any():
                mean, wide = _widths(m > 0)
                assert 1.0 <= mean <= 2.0, (split, mean)
                assert wide <= 0.01, (split, wide)  # junctions only


def test_thin_default_size_is_512_and_same_seed_same_bytes(tmp_path: Path) -> None:
    thin = SynthOptions(thin=True)
    for name in ("a", "b"):
        generate_dataset(tmp_path / name, count=3, seed=1, options=thin)
    generate_dataset(tmp_path / "wide", count=3, seed=1)
    a = _files(tmp_path / "a")
    assert a == _files(tmp_path / "b")
    with Image.open(tmp_path / "a" / "train" / "images" / "synth_0001.png") as im:
        assert im.size == (THIN_DEFAULT_SIZE, THIN_DEFAULT_SIZE)
    thin_share = np.mean([m > 0 for ms in _masks(tmp_path / "a").values() for m in ms])
    wide_share = np.mean([m > 0 for ms in _masks(tmp_path / "wide").values() for m in ms])
    assert 0.0 < thin_share <= 0.005 < wide_share


@pytest.mark.parametrize("size", [64, 128, 512, 900])
def test_thin_pair_stays_under_the_cap_at_any_size(size: int) -> None:
    for seed in range(4):
        image, mask = synth_pair(np.random.default_rng([seed, 9]), size, thin=True)
        crack = mask > 0
        assert 0.0 < crack.mean() <= 0.005, (size, seed, crack.mean())
        assert _widths(crack)[1] <= 0.02, (size, seed)
        lum = image.astype(float).mean(axis=2)
        assert lum[crack].mean() < lum[~crack].mean() - 5


def test_thin_cracks_in_the_notebook_layout(tmp_path: Path) -> None:
    opts = SynthOptions(manifest=True, gzip=True, thin=True)
    counts = generate_dataset(tmp_path, count=10, size=96, seed=3, options=opts)
    assert sum(counts.values()) == 10 and (tmp_path / MANIFEST_NAME).exists()
    source = FolderSource(tmp_path)
    cracked = 0
    for sample in source.samples("train"):
        _, mask = load_pair(source, sample)
        truth = synth_pair(np.random.default_rng([3, int(sample.name[-4:])]), 96,
                           with_crack=bool(mask.any()), thin=True)[1]
        # A 1-px line survives JPEG: the binarised mask is still the drawn one.
        assert np.array_equal(mask, truth > 0), sample.name
        cracked += bool(mask.any())
    assert cracked >= 1


def test_thin_crack_is_shortened_when_no_draw_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    from fissure.data import synth_draw

    # No draw falls in an empty band, and every one is over a cap a tenth the usual.
    monkeypatch.setattr(synth_draw, "_THIN_BAND", (1.0, 0.0))
    monkeypatch.setattr(synth_draw, "THIN_MAX_FRACTION", 0.0005)
    _, mask = synth_pair(np.random.default_rng(4), 256, thin=True)
    assert 0.0 < (mask > 0).mean() <= 0.0005
