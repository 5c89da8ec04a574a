"""Models, checkpoints and photos that the prediction tests share.

``tiny_model`` is a real resnet18 U-Net (seeded; ``all_crack`` makes its output logit +6
everywhere); ``Recorder`` is a 1x1 conv that logs the batch shapes it is fed, where the
U-Net would only cost time; ``random_rgb`` is a seeded noise photo.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from fissure.checkpoint import make_checkpoint
from fissure.config import config_from_dict
from fissure.model import build_model


def last_conv(model: nn.Module) -> nn.Conv2d:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]


def tiny_model(seed: int = 0, all_crack: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model("resnet18").eval()
    if all_crack:
        # Logit +6 everywhere: every pixel is crack, whatever the image.
        with torch.no_grad():
            last_conv(model).weight.zero_()
            last_conv(model).bias.fill_(6.0)
    return model


def tiny_checkpoint(
    tmp_path: Path, mode: str = "crop", size: int = 64, tta: bool = False, **kw
) -> Path:
    """``tiny_model(**kw)`` saved as ``tmp_path/<mode><size>.pt``, trained as ``mode``/``size``,
    with ``eval.tta`` set to ``tta``."""
    cfg = config_from_dict({"model": {"encoder": "resnet18"}, "data": {"size": size, "mode": mode},
                            "eval": {"tta": tta}})
    path = tmp_path / f"{mode}{size}.pt"
    make_checkpoint(tiny_model(**kw), cfg, epoch=0).save(path)
    return path


def random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


class Recorder(nn.Module):
    """Cheap stand-in for the U-Net: a 1x1 conv that logs the batch shapes it is fed."""

    def __init__(self, bias: float = -5.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(0.1)
            self.conv.bias.fill_(bias)
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: Tensor) -> Tensor:
        self.shapes.append(tuple(x.shape))
        return self.conv(x)
