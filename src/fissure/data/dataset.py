"""The torch Dataset over a source's samples, and the collate that batches it.

An item is ``{"image": (3, H, W) float32 normalised, "mask": (1, H, W) float32 in {0, 1},
"name": str}``, the mask :data:`~fissure.data.transforms.IGNORE` on a training crop's
padding (the image stays uint8 when the transform leaves it so, for augmentation on the
GPU). With ``on_error="skip"`` a bad sample becomes ``{"skipped": (name, reason)}`` and
:func:`collate` moves it out of the batch, so a worker never kills a long run. With a
:class:`~fissure.data.decoded.DecodedStore` each pair is decoded once and read as arrays
afterwards; the transform, random crops and augmentation included, still runs on every read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info
from torchvision import tv_tensors

from ..errors import DataError
from .decoded import DecodedStore, decode_pair
from .sources import PairSource, Sample


def load_pair(source: PairSource, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Decode one pair: (H, W, 3) uint8 image and (H, W) bool mask of the same size."""
    image_data = source.read(sample.image)
    if sample.mask is None:
        raise DataError(f"{sample.image}: no mask")
    return decode_pair(sample, image_data, source.read(sample.mask))


class CrackDataset(Dataset):
    """Image/mask pairs of one split, decoded on demand and passed through ``transform``.

    ``decoded``: a store that keeps each pair decoded (and, if it says so, shrunk) after
    its first read; None decodes the files every time.
    """

    def __init__(
        self,
        source: PairSource,
        samples: list[Sample],
        transform: Callable[..., Any],
        on_error: str = "raise",
        decoded: DecodedStore | None = None,
    ) -> None:
        self.source = source
        self.samples = samples
        self.transform = transform
        self.on_error = on_error
        self.decoded = decoded

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        threads = torch.get_num_threads()
        # In the main process, intra-op threads on tiny per-sample tensors only fight the
        # model's threads for the cores: loading measured 20x slower that way on a busy
        # 2-core machine. DataLoader workers already run with one thread.
        single = get_worker_info() is None and threads > 1
        if single:
            torch.set_num_threads(1)
        try:
            return self._item(index)
        finally:
            if single:
                torch.set_num_threads(threads)

    def _item(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        try:
            img_t, mask_t = self._pair(sample)
        except DataError as exc:
            if self.on_error == "skip":
                return {"skipped": (sample.name, str(exc))}
            raise
        img_t, mask_t = self.transform(img_t, mask_t)
        return {
            "image": img_t.as_subclass(torch.Tensor),
            "mask": mask_t.as_subclass(torch.Tensor).float(),
            "name": sample.name,
        }

    def _pair(self, sample: Sample) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """The decoded pair as uint8 tensors: image (3, H, W), mask (1, H, W) in {0, 1}."""
        if self.decoded is not None:
            image, mask = self.decoded.load(self.source, sample)
            return (tv_tensors.Image(torch.from_numpy(image)),
                    tv_tensors.Mask(torch.from_numpy(mask)[None]))
        image, binary = load_pair(self.source, sample)
        return (tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1).contiguous()),
                tv_tensors.Mask(torch.from_numpy(binary).to(torch.uint8)[None]))


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a batch; images of different sizes stay a list (native-resolution evaluation)."""
    skipped = [item["skipped"] for item in items if "skipped" in item]
    good = [item for item in items if "skipped" not in item]
    batch: dict[str, Any] = {"name": [item["name"] for item in good], "skipped": skipped}
    if not good:
        batch["image"] = batch["mask"] = []
        return batch
    same = len({tuple(item["image"].shape) for item in good}) == 1
    for key in ("image", "mask"):
        tensors = [item[key] for item in good]
        batch[key] = torch.stack(tensors) if same else tensors
    return batch


def iter_groups(batch: dict[str, Any]):
    """Yield (images, masks) tensors of one size; a mixed-size batch yields one image at a time."""
    if isinstance(batch["image"], torch.Tensor):
        if len(batch["image"]):
            yield batch["image"], batch["mask"]
        return
    for image, mask in zip(batch["image"], batch["mask"], strict=True):
        yield image[None], mask[None]


def crack_fraction(dataset: CrackDataset, limit: int = 64) -> float:
    """Crack-pixel fraction of up to ``limit`` masks of the dataset, for ``pos_weight: auto``."""
    step = max(1, len(dataset.samples) // limit)
    pos = total = 0
    for sample in dataset.samples[::step]:
        _, mask = load_pair(dataset.source, sample)
        pos += int(mask.sum())
        total += mask.size
    return max(pos / max(total, 1), 1e-6)
