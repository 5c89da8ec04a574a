"""Tiny checkpoints and data for the evaluation tests.

Checkpoints are built directly (no training): a seeded random resnet18 for realistic output,
and one whose last layer is zeroed so every pixel has probability 0.6, which makes the
figures computable by hand (all crack above 0.5, nothing above 0.7).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fissure.checkpoint import make_checkpoint
from fissure.config import load_config
from fissure.data.synth import generate_dataset
from fissure.model import build_model

SIZE = 64
CONST_PROB = 0.6


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 synthetic pairs of 64 px in train/val/test (some crack-free)."""
    root = tmp_path_factory.mktemp("eval_synth")
    generate_dataset(root, count=12, size=SIZE, seed=0)
    return root


@pytest.fixture(scope="module")
def clean_root(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same images with every mask blank: the user's all-crack-free test set."""
    root = tmp_path_factory.mktemp("eval_clean") / "data"
    shutil.copytree(data_root, root)
    for mask in root.glob("*/masks/*.png"):
        Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(mask)
    return root


def _save(tmp: Path, data_root: Path, threshold: float, constant: bool, name: str) -> Path:
    cfg = load_config(
        None,
        [
            f"data.root={data_root}",
            f"data.size={SIZE}",
            "model.encoder=resnet18",
            "eval.batch_size=4",
            "eval.thresholds=19",
            "eval.min_area=5",
        ],
    )
    torch.manual_seed(0)
    model = build_model("resnet18")
    if constant:
        with torch.no_grad():
            model.head.conv.weight.zero_()
            model.head.conv.bias.fill_(math.log(CONST_PROB / (1 - CONST_PROB)))
    path = tmp / name
    make_checkpoint(model, cfg, epoch=1, threshold=threshold).save(path)
    return path


@pytest.fixture(scope="module")
def random_ckpt(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save(tmp_path_factory.mktemp("ckpt"), data_root, 0.45, False, "random.pt")


@pytest.fixture(scope="module")
def const_ckpt(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Probability 0.6 everywhere; the stored threshold 0.7 predicts nothing."""
    return _save(tmp_path_factory.mktemp("ckpt"), data_root, 0.7, True, "const.pt")
