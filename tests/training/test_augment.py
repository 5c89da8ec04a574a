"""Batch augmentation on the device (fissure.training.augment), run here on CPU tensors."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from fissure.config import AugmentConfig, DataConfig
from fissure.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from fissure.training.augment import (
    BatchAugment,
    adjust_brightness,
    adjust_contrast,
    device_batch,
    gaussian_blur,
    geometry_transform,
)

OFF = AugmentConfig(hflip=0, vflip=0, rot90=0, brightness=0, contrast=0)


def _batch(n: int = 8, h: int = 24, w: int = 24, device: str = "cpu"):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, h, w), generator=gen, dtype=torch.uint8)
    masks = (images[:, :1] > 127).float()  # the mask follows the image's pixels
    return images.to(device), masks.to(device)


def _normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def _unnormalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return x * std + mean


def test_without_augmentation_it_is_the_cpu_normalisation() -> None:
    images, masks = _batch()
    x, m = BatchAugment(OFF)(images, masks)
    cpu = v2.Compose([v2.ToDtype(torch.float32, scale=True),
                      v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    want = torch.stack([cpu(tv_tensors.Image(i)) for i in images])
    assert x.dtype == torch.float32 and torch.allclose(x, want, atol=1e-6)
    assert torch.equal(m, masks)


@pytest.mark.parametrize("aug", [AugmentConfig(hflip=1, vflip=0, rot90=0),
                                 AugmentConfig(hflip=0, vflip=1, rot90=0),
                                 AugmentConfig(hflip=0, vflip=0, rot90=1)])
def test_geometry_moves_image_and_mask_together(aug: AugmentConfig) -> None:
    images, masks = _batch()
    torch.manual_seed(1)
    out, out_masks = BatchAugment(aug).geometry(images, masks)
    assert out.shape == images.shape and out_masks.shape == masks.shape
    assert torch.equal(out_masks, (out[:, :1] > 127).float())
    assert not torch.equal(out, images)
    if aug.hflip:
        assert torch.equal(out, images.flip(-1))
    if aug.vflip:
        assert torch.equal(out, images.flip(-2))
    if aug.rot90:  # every sample turned by 90, 180 or 270 degrees
        for src, dst in zip(images, out, strict=True):
            assert any(torch.equal(torch.rot90(src, k, (-2, -1)), dst) for k in (1, 2, 3))


def test_flips_are_drawn_per_sample() -> None:
    images, masks = _batch(n=64)
    torch.manual_seed(2)
    out, _ = BatchAugment(AugmentConfig(hflip=0.5, vflip=0, rot90=0)).geometry(images, masks)
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, images, strict=True)]
    assert 10 < sum(flipped) < 54


def test_non_square_batches_turn_only_half_way() -> None:
    images, masks = _batch(h=16, w=24)
    torch.manual_seed(0)
    out, out_masks = BatchAugment(AugmentConfig(hflip=0, vflip=0, rot90=1)).geometry(
        images, masks)
    assert out.shape == images.shape
    assert all(torch.equal(torch.rot90(i, 2, (-2, -1)), o) for i, o in zip(images, out,
                                                                             strict=True))


def test_colour_ops_match_torchvision() -> None:
    x = torch.rand(4, 3, 20, 24)
    factor = torch.tensor([0.5, 0.9, 1.1, 1.5])
    sigma = torch.tensor([0.1, 0.5, 0.9, 1.2])
    bright, contrast, blur = (adjust_brightness(x, factor), adjust_contrast(x, factor),
                              gaussian_blur(x, sigma))
    for i in range(4):
        f, s = float(factor[i]), float(sigma[i])
        assert torch.allclose(bright[i], TF.adjust_brightness(x[i], f), atol=1e-6)
        assert torch.allclose(contrast[i], TF.adjust_contrast(x[i], f), atol=1e-6)
        assert torch.allclose(blur[i], TF.gaussian_blur(x[i], [5, 5], [s, s]), atol=1e-5)


def test_photometric_ranges() -> None:
    images, masks = _batch(n=32)
    torch.manual_seed(0)
    aug = AugmentConfig(hflip=0, vflip=0, rot90=0, brightness=0.2, contrast=0.2, gamma=0.2,
                        blur=0.5, noise=0.02)
    x, m = BatchAugment(aug)(images, masks)
    back = _unnormalise(x)
    assert back.min() >= -1e-5 and back.max() <= 1 + 1e-5
    assert torch.equal(m, masks)  # colour never touches the mask
    change = (back - images.float() / 255).abs().mean((1, 2, 3))
    assert (change > 1e-3).sum() >= 28  # nearly every sample was altered


def test_noise_has_the_configured_spread() -> None:
    images = torch.full((4, 3, 64, 64), 128, dtype=torch.uint8)
    torch.manual_seed(0)
    x, _ = BatchAugment(AugmentConfig(hflip=0, vflip=0, rot90=0, brightness=0, contrast=0,
                                      noise=0.05))(images, torch.zeros(4, 1, 64, 64))
    spread = float((_unnormalise(x) - 128 / 255).std())
    assert 0.045 < spread < 0.055


def test_same_seed_same_batch() -> None:
    images, masks = _batch()
    aug = BatchAugment(AugmentConfig(gamma=0.2, blur=0.5, noise=0.02))
    torch.manual_seed(5)
    a = aug(images, masks)
    torch.manual_seed(5)
    b = aug(images, masks)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(images, _batch()[0])  # the input batch is not changed in place


def test_float_images_are_refused() -> None:
    with pytest.raises(ValueError, match="uint8"):
        BatchAugment(OFF)(torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 8, 8))


@pytest.mark.parametrize("mode", ["crop", "resize"])
def test_geometry_transform_leaves_uint8_crops(mode: str) -> None:
    transform = geometry_transform(DataConfig(mode=mode, size=32))
    image = tv_tensors.Image(torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.zeros(1, 50, 70, dtype=torch.uint8))
    out, out_mask = transform(image, mask)
    assert out.dtype == torch.uint8 and out.shape == (3, 32, 32)
    assert out_mask.shape == (1, 32, 32)


def test_device_batch() -> None:
    images, masks = _batch()
    x, m = device_batch({"image": images, "mask": masks}, torch.device("cpu"),
                        BatchAugment(OFF), channels_last=True)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(x, _normalise(images), atol=1e-6) and torch.equal(m, masks)
    plain = _normalise(images)
    y, _ = device_batch({"image": plain, "mask": masks}, torch.device("cpu"), None, False)
    assert y is plain


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda() -> None:
    images, masks = _batch(n=16, h=64, w=64, device="cuda")
    torch.manual_seed(0)
    aug = BatchAugment(AugmentConfig(gamma=0.2, blur=0.5, noise=0.02))
    x, m = aug(images, masks)
    assert x.device.type == "cuda" and x.dtype == torch.float32 and x.shape == images.shape
    torch.manual_seed(0)
    geo, geo_masks = aug.geometry(images, masks)
    assert torch.equal(geo_masks, (geo[:, :1] > 127).float())
    assert torch.equal(m, geo_masks)
    back = _unnormalise(x)
    assert back.min() >= -1e-4 and back.max() <= 1 + 1e-4
