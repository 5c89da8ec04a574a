"""The decoded-sample store (fissure.data.decoded): keys, atomic entries, kill -9, workers."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from pairs import png_bytes, write_pair
from torch.utils.data import DataLoader

from fissure.config import AugmentConfig, DataConfig, SnowflakeConfig
from fissure.data import CrackDataset, FolderSource, Sample, collate, load_pair
from fissure.data.decoded import (
    CACHE_ENV,
    DecodedStore,
    default_root,
    estimate_bytes,
    file_identity,
    free_bytes,
    read_entry,
    write_entry,
)
from fissure.data.transforms import eval_transform, train_transform
from fissure.errors import DataError

SRC = Path(__file__).resolve().parents[2] / "src"
NO_AUG = AugmentConfig(hflip=0, vflip=0, rot90=0, brightness=0, contrast=0)


def _source(root: Path, count: int = 3, size=(40, 56)) -> FolderSource:
    for i in range(count):
        write_pair(root, None, f"p{i}", size=size)
    return FolderSource(root, val_fraction=0, test_fraction=0)


def _entries(store: DecodedStore) -> list[Path]:
    return sorted(store.root.glob("*/*.u8"))


def test_load_decodes_once_then_reads_the_entry(tmp_path: Path) -> None:
    source = _source(tmp_path / "data")
    store = DecodedStore(tmp_path / "store")
    for sample in source.samples("train"):
        image, mask = store.load(source, sample)
        want_image, want_mask = load_pair(source, sample)
        assert image.shape == (3, 40, 56) and image.dtype == np.uint8
        assert np.array_equal(image, want_image.transpose(2, 0, 1))
        assert np.array_equal(mask, want_mask.astype(np.uint8))
    assert (store.counts.misses, store.counts.hits, store.counts.writes) == (3, 0, 3)
    again = [store.load(source, s) for s in source.samples("train")]
    assert (store.counts.misses, store.counts.hits) == (3, 3)
    assert len(_entries(store)) == 3
    image, _ = again[0]
    image[:, 0, 0] = 7  # copy-on-write: the arrays are writable, the entry stays as it was
    assert store.load(source, source.samples("train")[0])[0][0, 0, 0] == 150


def test_resize_store_matches_the_training_resize(tmp_path: Path) -> None:
    source = _source(tmp_path / "data", count=2, size=(50, 70))
    data = DataConfig(root=str(tmp_path / "data"), size=32)
    transform = train_transform(data, NO_AUG)
    plain = CrackDataset(source, source.samples("train"), transform)
    cached = CrackDataset(source, source.samples("train"), transform,
                          decoded=DecodedStore(tmp_path / "store", resize=32))
    for _ in range(2):  # the miss (decoded now) and the hit (read back)
        for i in range(2):
            a, b = plain[i], cached[i]
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    entry = read_entry(_entries(cached.decoded)[0])
    assert entry[0].shape == (3, 32, 32)


def test_random_crops_still_run_on_every_read(tmp_path: Path) -> None:
    source = _source(tmp_path / "data", count=1, size=(120, 120))
    data = DataConfig(mode="crop", size=32, crack_crop_fraction=0.0)
    transform = train_transform(data, AugmentConfig())
    plain = CrackDataset(source, source.samples("train"), transform)
    cached = CrackDataset(source, source.samples("train"), transform,
                          decoded=DecodedStore(tmp_path / "store"))
    torch.manual_seed(3)
    want = [plain[0]["image"] for _ in range(4)]
    torch.manual_seed(3)
    got = [cached[0]["image"] for _ in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))
    assert not torch.equal(got[0], got[1])


def test_a_changed_file_or_setting_misses_only_where_it_changed(tmp_path: Path) -> None:
    source = _source(tmp_path / "data")
    samples = source.samples("train")
    store = DecodedStore(tmp_path / "store")
    keys = [store.key(source, s)[0] for s in samples]
    for s in samples:
        store.load(source, s)
    new_mask = np.zeros((40, 56), np.uint8)
    new_mask[:, 10] = 255
    path = Path(samples[1].mask)
    path.write_bytes(png_bytes(new_mask))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    fresh = DecodedStore(tmp_path / "store")
    after = [fresh.key(source, s)[0] for s in samples]
    assert after[0] == keys[0] and after[2] == keys[2] and after[1] != keys[1]
    _, mask = fresh.load(source, samples[1])
    assert np.array_equal(mask, (new_mask > 127).astype(np.uint8))
    fresh.load(source, samples[0])
    assert (fresh.counts.misses, fresh.counts.hits) == (1, 1)
    shrunk = DecodedStore(tmp_path / "store", resize=32)
    assert shrunk.key(source, samples[0])[0] != keys[0]


def test_a_torn_or_foreign_entry_is_never_read(tmp_path: Path) -> None:
    source = _source(tmp_path / "data", count=1)
    store = DecodedStore(tmp_path / "store")
    sample = source.samples("train")[0]
    store.load(source, sample)
    entry = _entries(store)[0]
    whole = entry.read_bytes()
    for bad in (whole[:-1], whole[:10], b"", b"X" * len(whole)):
        entry.write_bytes(bad)
        assert read_entry(entry) is None
        image, _ = DecodedStore(tmp_path / "store").load(source, sample)
        assert image.shape == (3, 40, 56)
        assert entry.read_bytes() == whole  # decoded again and rewritten whole


_CHILD_STALLS = """
import os, sys, time
from pathlib import Path
import fissure.data.decoded as d
from fissure.data import FolderSource

real_open = open
def stalled_write_entry(path, image, mask):
    # The real writer, stopped half-way through its temporary file: the state kill -9
    # can leave behind at the worst moment.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.dead.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with real_open(tmp, "wb") as f:
        f.write(d._HEADER.pack(d._MAGIC, image.shape[1], image.shape[2], 3))
        f.write(image.tobytes()[: image.size // 2])
        f.flush()
        print("half", flush=True)
        time.sleep(600)
d.write_entry = stalled_write_entry
source = FolderSource(sys.argv[1], val_fraction=0, test_fraction=0)
d.DecodedStore(sys.argv[2]).load(source, source.samples("train")[0])
"""

_CHILD_FILLS = """
import sys
from fissure.data import FolderSource
from fissure.data.decoded import DecodedStore
source = FolderSource(sys.argv[1], val_fraction=0, test_fraction=0)
samples = source.samples("train")
while True:
    for i, s in enumerate(samples):
        DecodedStore(sys.argv[2], resize=None if i % 2 else 24).load(source, s)
        print(i, flush=True)
    import shutil
    shutil.rmtree(sys.argv[2], ignore_errors=True)
"""


def _child(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            text=True, env=env)


def test_kill_9_in_the_middle_of_a_write_leaves_no_entry(tmp_path: Path) -> None:
    source = _source(tmp_path / "data", count=1)
    root = tmp_path / "store"
    child = _child(_CHILD_STALLS, str(tmp_path / "data"), str(root))
    try:
        assert child.stdout.readline().strip() == "half"
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        child.kill()
    assert child.returncode == -signal.SIGKILL
    assert list(root.glob("*/.*.tmp")) and not list(root.glob("*/*.u8"))
    store = DecodedStore(root)
    image, mask = store.load(source, source.samples("train")[0])
    assert store.counts.misses == 1 and len(list(root.glob("*/*.u8"))) == 1
    want_image, want_mask = load_pair(source, source.samples("train")[0])
    assert np.array_equal(image, want_image.transpose(2, 0, 1))


def test_kill_9_during_a_fill_leaves_only_whole_entries(tmp_path: Path) -> None:
    source = _source(tmp_path / "data", count=6, size=(96, 128))
    root = tmp_path / "store"
    for attempt in range(2):
        child = _child(_CHILD_FILLS, str(tmp_path / "data"), str(root))
        try:
            for _ in range(3 + 5 * attempt):  # kill at a different point each time
                child.stdout.readline()
            child.send_signal(signal.SIGKILL)
            child.wait(30)
        finally:
            child.kill()
        for entry in root.glob("*/*.u8"):
            assert read_entry(entry) is not None, entry
    plain = {s.name: load_pair(source, s) for s in source.samples("train")}
    for resize in (None, 24):
        store = DecodedStore(root, resize=resize)
        for s in source.samples("train"):
            image, mask = store.load(source, s)
            if resize is None:
                assert np.array_equal(image, plain[s.name][0].transpose(2, 0, 1))
                assert np.array_equal(mask, plain[s.name][1])


def test_dataloader_workers_fill_and_read_the_store(tmp_path: Path) -> None:
    source = _source(tmp_path / "data", count=6)
    store = DecodedStore(tmp_path / "store")
    assert pickle.loads(pickle.dumps(store)).root == store.root
    dataset = CrackDataset(source, source.samples("train"), eval_transform(), decoded=store)
    plain = CrackDataset(source, source.samples("train"), eval_transform())
    want = collate([plain[i] for i in range(6)])
    for _ in range(2):  # the workers fill the store, then fresh workers read it
        loader = DataLoader(dataset, batch_size=3, num_workers=2, collate_fn=collate)
        got = torch.cat([b["image"] for b in loader])
        assert torch.equal(got, want["image"])
    assert len(_entries(store)) == 6


class _StageLike:
    """A source whose locators are not local paths (as a stage's are)."""

    description = "stage-like"

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files, self.reads = files, []

    def read(self, locator: str) -> bytes:
        self.reads.append(locator)
        return self.files[locator]


def test_sources_without_local_files_are_keyed_by_content(tmp_path: Path) -> None:
    image = np.full((20, 30, 3), 120, np.uint8)
    mask = np.zeros((20, 30), np.uint8)
    mask[5] = 255
    source = _StageLike({"@S/images/a.png": png_bytes(image), "@S/masks/a.png": png_bytes(mask)})
    sample = Sample("a", "@S/images/a.png", "@S/masks/a.png")
    store = DecodedStore(tmp_path / "store")
    store.load(source, sample)
    assert len(source.reads) == 2  # hashed and decoded from the same read
    source.reads.clear()
    assert store.load(source, sample)[1][5].all() and store.counts.hits == 1
    assert len(source.reads) == 2  # read to hash, never decoded
    source.files["@S/masks/a.png"] = png_bytes(np.zeros_like(mask))
    assert not store.load(source, sample)[1].any()


def test_a_source_identity_is_used_when_given(tmp_path: Path) -> None:
    source = _StageLike({})
    source.identity = lambda locator: f"sha256-of-{locator}"
    assert file_identity(source, "@S/x.png") == ("id:sha256-of-@S/x.png", None)
    assert source.reads == []


def test_write_failures_only_cost_the_caching(tmp_path: Path) -> None:
    source = _source(tmp_path / "data", count=1)
    blocker = tmp_path / "store"
    blocker.write_text("not a folder")
    store = DecodedStore(blocker)
    image, _ = store.load(source, source.samples("train")[0])
    assert image.shape == (3, 40, 56) and store.counts.failed_writes == 1


def test_missing_mask_is_named(tmp_path: Path) -> None:
    source = _source(tmp_path / "data", count=1)
    with pytest.raises(DataError, match="no mask"):
        DecodedStore(tmp_path / "s").load(source, Sample("x", "x.png", None))


def test_default_root_and_sizes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_root(DataConfig()) == tmp_path / "xdg" / "fissure" / "decoded"
    stage = DataConfig(source="stage", snowflake=SnowflakeConfig(cache_dir=str(tmp_path / "c/st")))
    assert default_root(stage) == tmp_path / "c" / "decoded"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert default_root(stage) == tmp_path / "mine"
    source = _source(tmp_path / "data", count=2)
    samples = source.samples("train")
    assert estimate_bytes(source, samples, 32) == 2 * (32 + 4 * 32 * 32)
    assert estimate_bytes(source, samples, None) == 2 * (32 + 4 * 40 * 56)
    assert estimate_bytes(source, [], None) == 0
    assert free_bytes(tmp_path / "not" / "yet") > 0
    store = DecodedStore(tmp_path / "store")
    assert store.size_bytes() == 0
    write_entry(store.path("ab" * 20), np.zeros((3, 2, 2), np.uint8), np.ones((2, 2), np.uint8))
    assert store.size_bytes() == 32 + 16
