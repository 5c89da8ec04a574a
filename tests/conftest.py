"""Shared fixtures: a tiny synthetic dataset and the config overrides that keep runs fast."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fissure.config import load_config
from fissure.data.synth import generate_dataset

CFD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cfd"

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 pairs of 64x64 in train/val/test folders (8/2/2)."""
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, count=12, size=64, seed=0)
    return root


@pytest.fixture()
def tiny_overrides(synth_root: Path) -> list[str]:
    return [
        f"data.root={synth_root}",
        "data.size=64",
        "model.encoder=resnet18",
        "train.epochs=1",
        "train.batch_size=4",
        "train.num_workers=0",
        "train.lr=0.001",
        "eval.batch_size=4",
        "eval.thresholds=19",
    ]


@pytest.fixture()
def tiny_config(tiny_overrides: list[str]):
    return load_config(None, tiny_overrides)


@pytest.fixture(scope="session")
def cfd_root() -> Path:
    if not (CFD / "images").is_dir():
        pytest.skip("../shared/data/cfd is not available")
    return CFD
