"""Tiny image/mask pairs on disk, for tests that need hand-made data files."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def png_bytes(array: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    """``array`` (H, W) or (H, W, 3) uint8 encoded as ``fmt``."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


def write_pair(root, split, name, size=(32, 48), crack=True, mask_size=None, suffix=".png"):
    """Write ``images/<name><suffix>`` and ``masks/<name>.png`` under ``root[/split]``: a grey
    image with a dark horizontal crack in the middle row and its mask."""
    h, w = size
    img = np.full((h, w, 3), 150, np.uint8)
    mask = np.zeros(mask_size or (h, w), np.uint8)
    if crack:
        img[h // 2, :] = 40
        mask[min(h, mask.shape[0]) // 2, :] = 255
    base = root / split if split else root
    (base / "images").mkdir(parents=True, exist_ok=True)
    (base / "masks").mkdir(parents=True, exist_ok=True)
    (base / "images" / f"{name}{suffix}").write_bytes(png_bytes(img))
    (base / "masks" / f"{name}.png").write_bytes(png_bytes(mask))
