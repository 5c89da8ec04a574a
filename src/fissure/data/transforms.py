"""Joint image/mask transforms built on ``torchvision.transforms.v2``.

Inputs are a ``tv_tensors.Image`` (3, H, W) uint8 and a ``tv_tensors.Mask`` (1, H, W)
uint8 in {0, 1}. v2 dispatches by type: geometric transforms move both, and resizing a
Mask always uses nearest neighbour, so masks stay binary; photometric transforms touch the
image only. Randomness comes from torch's generator, which DataLoader seeds per worker.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ..config import AugmentConfig, DataConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE = 255
"""Mask value of the zero padding around an image smaller than the training crop: no part of
the photo, so the losses and the training counts leave it out (:func:`valid_pixels`)."""


def _find_mask(flat_inputs: list[Any]) -> torch.Tensor | None:
    return next((x for x in flat_inputs if isinstance(x, tv_tensors.Mask)), None)


class CrackAwareCrop(v2.Transform):
    """Random ``size`` x ``size`` crop at native resolution.

    With probability ``crack_fraction`` the crop is centred near a random crack pixel, so
    batches are not mostly background (cracks are 1-2 % of pixels). Images smaller than the
    crop are padded: the image with zeros (reflect would invent structure at borders), the
    mask with :data:`IGNORE`, so that the padding is not learnt as easy background.
    """

    def __init__(self, size: int, crack_fraction: float = 0.5) -> None:
        super().__init__()
        self.size = size
        self.crack_fraction = crack_fraction

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        size = self.size
        pad_h, pad_w = max(0, size - height), max(0, size - width)
        height, width = height + pad_h, width + pad_w
        top = int(torch.randint(0, height - size + 1, ()).item())
        left = int(torch.randint(0, width - size + 1, ()).item())
        mask = _find_mask(flat_inputs)
        if mask is not None and torch.rand(()).item() < self.crack_fraction:
            ys, xs = torch.nonzero(mask[0], as_tuple=True)
            if len(ys):
                pick = int(torch.randint(0, len(ys), ()).item())
                y, x = int(ys[pick]) + pad_h // 2, int(xs[pick]) + pad_w // 2
                # Anywhere in the crop, not only its centre, so cracks are not always central.
                top = int(torch.randint(max(0, y - size + 1), min(y, height - size) + 1, ()))
                left = int(torch.randint(max(0, x - size + 1), min(x, width - size) + 1, ()))
        return {"pad": [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2],
                "top": top, "left": left}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if any(params["pad"]):
            fill = IGNORE if isinstance(inpt, tv_tensors.Mask) else 0
            inpt = TF.pad(inpt, params["pad"], fill=fill)
        return TF.crop(inpt, params["top"], params["left"], self.size, self.size)


class RandomRot90(v2.Transform):
    """Rotation by a random multiple of 90 degrees: exact, no interpolation, with prob ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        apply = torch.rand(()).item() < self.p
        return {"k": int(torch.randint(1, 4, ()).item()) if apply else 0}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["k"] == 0:
            return inpt
        return tv_tensors.wrap(torch.rot90(inpt, params["k"], dims=(-2, -1)), like=inpt)


class RandomGamma(v2.Transform):
    """Gamma in ``exp(U(-g, g))`` on the float image; masks pass through."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, log_range: float) -> None:
        super().__init__()
        self.log_range = log_range

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        shift = (torch.rand(()).item() * 2 - 1) * self.log_range
        return {"gamma": float(torch.tensor(shift).exp())}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return TF.adjust_gamma(inpt, params["gamma"])


def _finish() -> list[v2.Transform]:
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]


def train_transform(data: DataConfig, aug: AugmentConfig) -> v2.Compose:
    """Training pipeline: geometry (crop or resize, flips, rot90), then photometric noise."""
    if data.mode == "crop":
        geometry: list[v2.Transform] = [CrackAwareCrop(data.size, data.crack_crop_fraction)]
    else:
        geometry = [v2.Resize((data.size, data.size), antialias=True)]
    if aug.hflip > 0:
        geometry.append(v2.RandomHorizontalFlip(aug.hflip))
    if aug.vflip > 0:
        geometry.append(v2.RandomVerticalFlip(aug.vflip))
    if aug.rot90 > 0:
        geometry.append(RandomRot90(aug.rot90))
    photometric: list[v2.Transform] = [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)
    ]
    if aug.brightness > 0 or aug.contrast > 0:
        photometric.append(v2.ColorJitter(brightness=aug.brightness, contrast=aug.contrast))
    if aug.gamma > 0:
        photometric.append(RandomGamma(aug.gamma))
    if aug.blur > 0:
        photometric.append(v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.2))], p=aug.blur))
    if aug.noise > 0:
        photometric.append(v2.GaussianNoise(sigma=aug.noise, clip=True))
    photometric.append(v2.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    return v2.Compose(geometry + photometric)


def eval_transform() -> v2.Compose:
    """Evaluation keeps native resolution; any resizing for the model happens at inference."""
    return v2.Compose(_finish())


def valid_pixels(masks: torch.Tensor) -> torch.Tensor | None:
    """Where ``masks`` are part of the photo (not :data:`IGNORE` padding); None when all are.

    Shapes:
        masks: (N, 1, H, W) any dtype, {0, 1} or IGNORE.
        returns: (N, 1, H, W) bool, or None.
    """
    padding = masks == IGNORE
    return ~padding if bool(padding.any()) else None


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 normalised, as the model expects."""
    tensor = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1).contiguous())
    return eval_transform()(tensor).as_subclass(torch.Tensor)
