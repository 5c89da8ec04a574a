from __future__ import annotations

import torch
from torchvision import tv_tensors

from fissure.data.transforms import IGNORE, CrackAwareCrop, valid_pixels


def test_a_small_image_is_padded_with_zeros_and_its_mask_with_ignore():
    image = tv_tensors.Image(torch.full((3, 20, 30), 200, dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.zeros((1, 20, 30), dtype=torch.uint8))
    mask[0, 5, 5:25] = 1
    torch.manual_seed(0)
    out_image, out_mask = CrackAwareCrop(32, crack_fraction=1.0)(image, mask)
    assert out_image.shape == (3, 32, 32) and out_mask.shape == (1, 32, 32)
    padding = out_mask == IGNORE
    # 32x32 around a 30x20 photo: 12 rows and 2 columns of padding.
    assert int(padding.sum()) == 32 * 32 - 20 * 30
    assert torch.all(out_image[:, padding[0]] == 0) and torch.all(out_image[:, ~padding[0]] == 200)
    assert int((out_mask == 1).sum()) == 20  # the crack, whole and unmoved within the photo


def test_valid_pixels_is_none_without_padding():
    masks = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])
    assert valid_pixels(masks) is None
    masks[0, 0, 0, 0] = IGNORE
    assert valid_pixels(masks).tolist() == [[[[False, True], [True, True]]]]
