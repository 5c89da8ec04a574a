"""What a dataset holds, per split: image sizes, crack share, crack widths, crack-free images.

These are the facts a recipe has to fit: crops cannot be larger than the images, rare
cracks need a heavier positive weight, and hairline cracks vanish when images are shrunk.
Widths use the measurement convention of :mod:`fissure.prediction.measure`: ``2 d - 1``
read on the mask's centre line, ``d`` the distance to background, so a 1-px line is 1 px.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.morphology import skeletonize

from ..config import SPLITS
from ..errors import DataError, SplitAbsent
from ..progress import progress_bar
from .dataset import load_pair
from .sources import PairSource, Sample

TILE_MULTIPLE = 32
"""Crop sizes are multiples of this: the U-Net halves the resolution five times."""


@dataclass(frozen=True)
class SplitStats:
    """One split's figures; widths in px over every centre-line pixel of every mask."""

    split: str
    images: int
    min_side: int
    max_side: int
    sizes: dict[str, int]
    crack_fraction: float
    crack_free: int
    width_median: float | None
    width_p90: float | None

    @property
    def mean_area(self) -> float:
        """Mean image area in pixels, over :attr:`sizes` (``"WxH"`` -> images)."""
        dims = [([int(v) for v in key.split("x")], n) for key, n in self.sizes.items()]
        return sum(w * h * n for (w, h), n in dims) / max(1, sum(n for _, n in dims))

    @property
    def crack_free_share(self) -> float:
        """Share of the split's images whose mask has no crack pixel."""
        return self.crack_free / self.images if self.images else 0.0


def centre_line_widths(mask: np.ndarray) -> np.ndarray:
    """Crack widths in px read at each centre-line pixel of ``mask``.

    Shapes:
        mask: (H, W) bool, crack where True.
        returns: (K,) float64, one width per skeleton pixel (empty without crack).
    """
    if not mask.any():
        return np.zeros(0)
    padded = np.pad(mask, 1)  # the image border counts as background
    skeleton = skeletonize(padded)
    return 2.0 * ndimage.distance_transform_edt(padded)[skeleton] - 1.0


def split_stats(source: PairSource, split: str, samples: Iterable[Sample],
                progress: bool = False) -> SplitStats:
    """Read every pair of ``samples`` once and summarise them as :class:`SplitStats`."""
    sizes: dict[str, int] = {}
    sides: list[int] = []
    crack = total = free = 0
    widths: list[np.ndarray] = []
    samples = list(samples)
    for sample in progress_bar(samples, desc=f"stats {split}", unit="img", enabled=progress):
        _, mask = load_pair(source, sample)
        height, width = mask.shape
        key = f"{width}x{height}"
        sizes[key] = sizes.get(key, 0) + 1
        sides += [height, width]
        n = int(mask.sum())
        crack, total, free = crack + n, total + mask.size, free + (n == 0)
        widths.append(centre_line_widths(mask))
    every = np.concatenate(widths) if widths else np.zeros(0)
    return SplitStats(
        split=split, images=len(samples), min_side=min(sides), max_side=max(sides),
        sizes=dict(sorted(sizes.items(), key=lambda kv: -kv[1])),
        crack_fraction=crack / total if total else 0.0, crack_free=free,
        width_median=float(np.median(every)) if every.size else None,
        width_p90=float(np.percentile(every, 90)) if every.size else None,
    )


def dataset_stats(source: PairSource, progress: bool = False) -> list[SplitStats]:
    """:class:`SplitStats` of each split the source has (train, val, test)."""
    found = []
    for split in SPLITS:
        try:
            samples = source.samples(split)
        except SplitAbsent:
            continue  # a layout without this split; a missing or unreadable file still stops
        found.append(split_stats(source, split, samples, progress))
    if not found:
        raise DataError(f"{source.description}: no split holds any image/mask pair")
    return found


def implied_crop(train: SplitStats, preferred: int = 256) -> int:
    """The largest crop, a multiple of 32 and at most ``preferred``, that every training
    image holds without padding; 32 for images smaller than that."""
    fits = train.min_side // TILE_MULTIPLE * TILE_MULTIPLE
    return max(TILE_MULTIPLE, min(preferred, fits))
