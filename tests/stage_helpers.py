"""Helpers for tests/snowflake/: tiny datasets, a download counter, a hashing Dataset.

Imported by name (tests/ is on the path); the shared fixtures are in
tests/snowflake/conftest.py. Not named ``snowflake``: a module of that name on the path
would shadow the Snowflake library.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import threading
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from fissure.data.synth import generate_dataset
from fissure.snowflake.source import StageSource

STAGE = "@PROJET_FISSURES.STORAGE_SCHEMA.MY_FISSURE_STAGE"
MANIFEST = "PROJET_FISSURES.STORAGE_SCHEMA.V_TRAINING_DATA"
DB = "PROJET_FISSURES.STORAGE_SCHEMA"
GROUPS = {1: "TRAIN", 2: "TRAIN", 3: "TRAIN", 4: "VAL", 5: "VAL", 6: "TEST"}
COLUMNS = ["IMAGE_NAME", "MASK_NAME", "IMAGE_GROUP"]


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def pair(seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    mask = np.where(rng.random((size, size)) > 0.9, 255, 0).astype(np.uint8)
    return image, mask


def write_manifest(session, name: str, rows: list[list], columns: list[str] = COLUMNS) -> None:
    session.create_dataframe(rows, schema=columns).write.save_as_table(name, mode="overwrite")


class CountingGets:
    """Wraps ``session.file.get`` to count (and optionally fail) stage downloads."""

    def __init__(self, session, monkeypatch, fail_after: int | None = None) -> None:
        self.real = type(session.file).get.__get__(session.file)  # never an earlier patch
        self.calls: list[str] = []
        self.fail_after = fail_after
        self._lock = threading.Lock()
        monkeypatch.setattr(session.file, "get", self)

    def __call__(self, stage_path, target, **kwargs):
        with self._lock:
            if self.fail_after is not None and len(self.calls) >= self.fail_after:
                raise RuntimeError("connection dropped for good")
            self.calls.append(stage_path)
        return self.real(stage_path, target, **kwargs)


class HashDataset(Dataset):
    """(locator, SHA-256 of the bytes ``source.read`` returns): what a worker really read."""

    def __init__(self, source: StageSource, locators: list[str]) -> None:
        self.source, self.locators = source, locators

    def __len__(self) -> int:
        return len(self.locators)

    def __getitem__(self, i: int) -> tuple[str, str]:
        data = self.source.read(self.locators[i])
        return self.locators[i], hashlib.sha256(data).hexdigest()


def local_dataset(root: Path, count: int = 6) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    pairs = {}
    for i in range(count):
        image, mask = pair(100 + i)
        Image.fromarray(image).save(root / "images" / f"{i:03d}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i:03d}.png")
        pairs[f"{i:03d}"] = (image, mask)
    return pairs


def staged_names(session, stage: str, prefix: str, tmp: Path) -> list[str]:
    session.file.get(f"{stage}/{prefix}/", str(tmp))  # LIST needs SQL; a prefix GET works
    return sorted(p.name for p in tmp.iterdir())


def gzip_dataset(root: Path, count: int = 12, size: int = 64) -> Path:
    """A synthetic train/val/test dataset whose files are all ``.png.gz``, as in the notebook."""
    generate_dataset(root, count=count, size=size, seed=0)
    for path in sorted(root.rglob("*.png")):
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes(), mtime=0))
        path.unlink()
    return root
