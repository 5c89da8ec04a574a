"""Fixtures of the app's tests: a checkpoint that sees dark lines as cracks, and photos.

The model is a real :class:`~fissure.model.ResNetUNet` (resnet18, 64 px) whose weights are
set by hand rather than trained: every path is zero but one, from the stem's first channel
(minus the brightness) through the last decoder block to the head. So the crack
probability is ``sigmoid(GAIN * darkness + BIAS)``, seen at half resolution: a crack's
probability follows how dark it is, and the threshold slider decides which faint lines
count, exactly and quickly, with no training.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fissure.checkpoint import make_checkpoint
from fissure.config import config_from_dict
from fissure.model import ResNetUNet, build_model

GAIN, BIAS = 6.0, -3.0
PHOTO_SIZE = (160, 240)
CRACK_LEVELS = (30, 70, 100)
"""Grey levels of the photo's three cracks: ~0.99, ~0.83 and ~0.18 crack probability."""


def dark_line_model(gain: float = GAIN, bias: float = BIAS) -> ResNetUNet:
    """resnet18 U-Net whose logit is ``gain * relu(-mean normalised RGB) + bias``."""
    model = build_model("resnet18").eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        conv, norm = model.encoder.stem[0], model.encoder.stem[1]
        conv.weight[0, :, 3, 3] = -1.0 / 3
        _identity(norm)
        block = model.decoder.dec1.double_conv
        d1 = model.decoder.out_channels
        block[0].weight[0, d1, 1, 1] = 1.0  # the stem's channel 0, after the upsampled path
        block[3].weight[0, 0, 1, 1] = 1.0
        _identity(block[1])
        _identity(block[4])
        model.head.conv.weight[0, 0] = gain
        model.head.conv.bias[0] = bias
    return model


def _identity(norm: torch.nn.BatchNorm2d) -> None:
    norm.weight.fill_(1.0)
    norm.bias.zero_()
    norm.running_mean.zero_()
    norm.running_var.fill_(1.0)


def save_dark_line_checkpoint(path: Path, min_area: int = 20, threshold: float = 0.5) -> Path:
    """The model above as a fissure checkpoint of 64-px crops."""
    cfg = config_from_dict(
        {
            "model": {"encoder": "resnet18"},
            "data": {"size": 64, "mode": "crop"},
            "eval": {"min_area": min_area},
        }
    )
    make_checkpoint(dark_line_model(), cfg, epoch=3, threshold=threshold).save(path)
    return path


@pytest.fixture()
def save_checkpoint():
    """:func:`save_dark_line_checkpoint`, for a test that writes its own checkpoint."""
    return save_dark_line_checkpoint


def crack_photo(size: tuple[int, int] = PHOTO_SIZE, seed: int = 0) -> np.ndarray:
    """A grey, slightly grainy photo with three cracks of :data:`CRACK_LEVELS`: a 3-px
    horizontal one, a 2-px diagonal one and a 3-px vertical one."""
    height, width = size
    rng = np.random.default_rng(seed)
    grey = rng.normal(185, 6, (height, width)).clip(150, 220)
    grey[height // 4 : height // 4 + 3, width // 10 : width * 9 // 10] = CRACK_LEVELS[0]
    for i in range(height // 2, height - 10):
        x = width // 8 + (i - height // 2)
        grey[i, x : x + 2] = CRACK_LEVELS[1]
    grey[height // 3 : height - 5, width * 3 // 4 : width * 3 // 4 + 3] = CRACK_LEVELS[2]
    return np.repeat(grey.astype(np.uint8)[:, :, None], 3, axis=2)


def png(rgb: np.ndarray) -> bytes:
    """``rgb`` as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def dark_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_dark_line_checkpoint(tmp_path_factory.mktemp("model") / "dark.pt")


@pytest.fixture(scope="session")
def photo_png() -> bytes:
    return png(crack_photo())


@pytest.fixture(scope="session")
def photo_rgb() -> np.ndarray:
    return crack_photo()


def _history(scores: list[float], loss: float) -> list[dict]:
    return [
        {
            "epoch": i + 1,
            "train_loss": loss / (i + 1),
            "train_iou": s * 0.9,
            "val_loss": loss / (i + 1) + 0.1,
            "val_iou": s,
            "val_f1": s + 0.05,
            "val_f1_tuned": s + 0.1,
            "threshold": 0.5,
            "lr": 0.001,
            "seconds": 1.5,
            "skipped": 0,
        }
        for i, s in enumerate(scores)
    ]


@pytest.fixture(scope="session")
def runs_root(
    tmp_path_factory: pytest.TempPathFactory, dark_checkpoint: Path, synth_root: Path
) -> Path:
    """Two training runs (one evaluated), an evaluation on its own and a damaged one."""
    from fissure.api import evaluate
    from fissure.config import load_config, save_config
    from fissure.report.training import write_history

    root = tmp_path_factory.mktemp("runs")
    for name, scores, monitor in (
        ("run_a", [0.2, 0.5, 0.4], "iou"),
        ("run_b", [0.1, 0.3, 0.35, 0.3], "loss"),
    ):
        (root / name).mkdir()
        write_history(_history(scores, 1.0), root / name / "history.csv")
        save_config(load_config(None, [f"train.monitor={monitor}"]), root / name / "config.yaml")
    evaluate(
        dark_checkpoint, data=synth_root, split="test", out=root / "run_a" / "eval", progress=False
    )
    (root / "lone" / "eval").mkdir(parents=True)
    metrics = (root / "run_a" / "eval" / "metrics.json").read_text()
    (root / "lone" / "eval" / "metrics.json").write_text(metrics)
    (root / "broken").mkdir()
    (root / "broken" / "metrics.json").write_text("{not json")
    return root
