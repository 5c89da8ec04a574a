"""Crack masks drawn by hand for the measurement tests: lines of known length and width,
and seeded random blobs for the checks that must hold on any mask."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def horizontal_crack(length: int, width: int, shape: tuple[int, int] = (60, 300)) -> np.ndarray:
    """A ``width`` x ``length`` bar from row 20, column 50: (H, W) bool."""
    mask = np.zeros(shape, dtype=bool)
    mask[20 : 20 + width, 50 : 50 + length] = True
    return mask


def oblique_crack(
    shape: tuple[int, int],
    centre: tuple[float, float],
    angle_deg: float,
    length: float,
    width: float,
) -> np.ndarray:
    """Pixels whose centres lie within ``width / 2`` of a segment of ``length`` centred on
    ``centre`` (row, column), turning ``angle_deg`` counter-clockwise on the screen (rows
    grow downwards), as ``(H, W)`` bool."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    angle = math.radians(angle_deg)
    ux, uy = math.cos(angle), -math.sin(angle)
    along = (xx - centre[1]) * ux + (yy - centre[0]) * uy
    across = np.abs((yy - centre[0]) * ux - (xx - centre[1]) * uy)
    return (np.abs(along) <= length / 2) & (across <= width / 2)


def random_mask(seed: int) -> np.ndarray:
    """Random specks (dilated for odd seeds) on a random canvas of up to 89 x 89 px."""
    rng = np.random.default_rng(seed)
    height, width = rng.integers(1, 90, 2)
    mask = rng.random((height, width)) < rng.random() * 0.5
    if seed % 2:
        mask = ndimage.binary_dilation(mask, iterations=int(rng.integers(1, 3)))
    return mask
