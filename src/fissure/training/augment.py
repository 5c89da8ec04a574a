"""Training augmentation of whole batches on the training device (used on CUDA).

On a GPU the loader, not the network, sets the pace, and per-sample augmentation is most
of a loader worker's work. There the workers only decode and crop (or shrink) and hand
over uint8 batches, a quarter of the bytes of float ones; :class:`BatchAugment` then flips,
rotates, colours, blurs and noises the whole batch on the device in a few kernels, with
one random draw per sample, and normalises it. The draws and their ranges follow
:func:`fissure.data.transforms.train_transform`, which the CPU keeps using unchanged.
Randomness comes from the device's default generator, which the training loop seeds at
every epoch (and resumed step), so a fixed seed still fixes every draw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from ..config import AugmentConfig, DataConfig
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, CrackAwareCrop

_GREY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
_BLUR_KERNEL = 5
_BLUR_SIGMA = (0.1, 1.2)


def geometry_transform(data: DataConfig) -> v2.Compose:
    """The per-sample part left on the CPU: the crack-aware crop or the resize, uint8 out.

    Shapes:
        returns a transform of image (3, H, W) uint8 and mask (1, H, W) to
        (3, size, size) uint8 and (1, size, size).
    """
    if data.mode == "crop":
        return v2.Compose([CrackAwareCrop(data.size, data.crack_crop_fraction)])
    return v2.Compose([v2.Resize((data.size, data.size), antialias=True)])


def _pick(chosen: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per sample, ``a`` where ``chosen`` else ``b``."""
    return torch.where(chosen.view(-1, *([1] * (a.dim() - 1))), a, b)


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def _uniform(n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
    return torch.rand(n, device=device) * (high - low) + low


@dataclass(frozen=True)
class BatchAugment:
    """``augment.*`` on a whole batch: geometry on image and mask alike, colour on the image.

    Calling it on ``(images, masks)`` returns normalised float images and float masks.
    Rotations by 90 or 270 degrees need square batches (training crops and resizes are);
    in a non-square batch each sample drawn for a rotation is turned by 180 degrees.

    Shapes:
        images: (N, 3, H, W) uint8; masks: (N, 1, H, W) any dtype, {0, 1}.
        returns: images (N, 3, H, W) float32 normalised with ImageNet mean and std,
        masks (N, 1, H, W) float32.
    """

    aug: AugmentConfig

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if images.dtype != torch.uint8:
            raise ValueError(f"BatchAugment takes uint8 images, got {images.dtype}")
        masks = masks.float()
        images, masks = self.geometry(images, masks)
        x = self.photometric(images.float() / 255.0)
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std, masks

    def geometry(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Flips and 90-degree turns, the same for each image and its mask.

        Shapes:
            images, masks: (N, C, H, W); returns the same shapes.
        """
        n, dev, a = images.shape[0], images.device, self.aug
        for p, dim in ((a.hflip, -1), (a.vflip, -2)):
            if p > 0:
                flip = torch.rand(n, device=dev) < p
                images = _pick(flip, images.flip(dim), images)
                masks = _pick(flip, masks.flip(dim), masks)
        if a.rot90 > 0:
            turn = torch.rand(n, device=dev) < a.rot90
            k = torch.where(turn, torch.randint(1, 4, (n,), device=dev), 0)
            square = images.shape[-1] == images.shape[-2]
            if not square:
                k = torch.where(turn, 2, 0)  # a quarter turn would not fit the batch
            for times in (1, 2, 3) if square else (2,):
                chosen = k == times
                images = _pick(chosen, torch.rot90(images, times, (-2, -1)), images)
                masks = _pick(chosen, torch.rot90(masks, times, (-2, -1)), masks)
        return images, masks

    def photometric(self, x: torch.Tensor) -> torch.Tensor:
        """Brightness and contrast (in a random order per sample), gamma, blur and noise.

        Shapes:
            x: (N, 3, H, W) float in [0, 1]; returns the same, still in [0, 1].
        """
        n, dev, a = x.shape[0], x.device, self.aug
        if a.brightness > 0 or a.contrast > 0:
            x = self._jitter(x)
        if a.gamma > 0:
            gamma = torch.exp(_uniform(n, -a.gamma, a.gamma, dev))
            x = x.pow(_per_sample(gamma))
        if a.blur > 0:
            blurred = gaussian_blur(x, _uniform(n, *_BLUR_SIGMA, dev))
            x = _pick(torch.rand(n, device=dev) < a.blur, blurred, x)
        if a.noise > 0:
            x = (x + torch.randn_like(x) * a.noise).clamp(0.0, 1.0)
        return x

    def _jitter(self, x: torch.Tensor) -> torch.Tensor:
        """ColorJitter(brightness, contrast): factors in [1 - b, 1 + b], [1 - c, 1 + c]."""
        n, dev, a = x.shape[0], x.device, self.aug
        if a.brightness > 0:
            bright = _uniform(n, max(0.0, 1 - a.brightness), 1 + a.brightness, dev)
        if a.contrast > 0:
            contrast = _uniform(n, max(0.0, 1 - a.contrast), 1 + a.contrast, dev)
        if a.brightness > 0 and a.contrast > 0:
            first = torch.rand(n, device=dev) < 0.5  # torchvision permutes the order
            return _pick(first, adjust_contrast(adjust_brightness(x, bright), contrast),
                         adjust_brightness(adjust_contrast(x, contrast), bright))
        return adjust_brightness(x, bright) if a.brightness > 0 else adjust_contrast(x, contrast)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Each image times its factor, clipped, as torchvision's ``adjust_brightness``.

    Shapes:
        x: (N, C, H, W) float in [0, 1]; factor: (N,); returns the same as ``x``.
    """
    return (x * _per_sample(factor)).clamp(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Each image blended with its mean grey level, as torchvision's ``adjust_contrast``.

    Shapes:
        x: (N, 3, H, W) float in [0, 1]; factor: (N,); returns the same as ``x``.
    """
    weights = torch.tensor(_GREY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    mean = (x * weights).sum(1, keepdim=True).mean((-2, -1), keepdim=True)
    f = _per_sample(factor)
    return (f * x + (1 - f) * mean).clamp(0.0, 1.0)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur of size 5 with one sigma per image, reflect padding, as torchvision's
    ``gaussian_blur``.

    Shapes:
        x: (N, C, H, W) float, H and W at least 3; sigma: (N,); returns the same as ``x``.
    """
    n, c, h, w = x.shape
    half = (_BLUR_KERNEL - 1) / 2
    t = torch.linspace(-half, half, _BLUR_KERNEL, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (t[None] / sigma[:, None].to(x.dtype)) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (N*C, K)
    pad = _BLUR_KERNEL // 2
    flat = F.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode="reflect")
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=n * c)
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=n * c)
    return flat.view(n, c, h, w)


def device_batch(
    batch: dict[str, Any],
    device: torch.device,
    augment: BatchAugment | None,
    channels_last: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch's images and masks on ``device``, augmented there if ``augment``.

    Shapes:
        batch["image"]: (N, 3, H, W) float normalised, or uint8 when ``augment`` is given.
        batch["mask"]: (N, 1, H, W) in {0, 1}, or IGNORE on padding (kept as it is).
        returns: images (N, 3, H, W) float normalised (channels-last if asked),
        masks (N, 1, H, W) float.
    """
    images = batch["image"].to(device, non_blocking=True)
    masks = batch["mask"].to(device, non_blocking=True)
    if augment is not None:
        images, masks = augment(images, masks)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, masks
