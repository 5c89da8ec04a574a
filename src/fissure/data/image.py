"""Decoding image and mask files, plain or gzip-compressed.

Arrays: an image is (H, W, 3) uint8 RGB; a mask is (H, W) bool, True where crack.
gzip is recognised by its magic bytes, never by the file name, so ``x.png.gz``, a
gzip file without the suffix and a plain PNG named ``.gz`` all read correctly.
"""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Larger images than this are most likely decompression bombs, not photos.
Image.MAX_IMAGE_PIXELS = 30_000 * 30_000


def is_gzip(data: bytes) -> bool:
    """Whether ``data`` starts with the gzip magic bytes (the name is never trusted)."""
    return data[:2] == GZIP_MAGIC


def without_gz(name: str) -> str:
    """``name`` less a final ``.gz`` (any case): ``"001.png.GZ"`` -> ``"001.png"``."""
    return name[:-3] if name.lower().endswith(".gz") else name


def image_stem(name: str) -> str:
    """``"a/b/001.png.gz"`` -> ``"001"``: the pairing key of an image and its mask."""
    return Path(without_gz(Path(name).name)).stem


def is_image_name(name: str) -> bool:
    """Whether ``name`` has an image suffix (``.png``, ``.jpg`` ...), optionally ``.gz``."""
    base = name.lower()
    if base.endswith(".gz"):
        base = base[:-3]
    return base.endswith(IMAGE_SUFFIXES)


def gunzip(data: bytes, name: str) -> bytes:
    """Decompress ``data`` when it starts with the gzip magic; else return it unchanged."""
    if not is_gzip(data):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{name}: corrupt or truncated gzip data ({exc})") from None


def read_bytes(path: str | Path) -> bytes:
    """The bytes of a local file; a DataError naming it when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not an image") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _open(data: bytes, name: str) -> Image.Image:
    data = gunzip(data, name)
    if not data:
        raise DataError(f"{name}: empty file")
    try:
        img = Image.open(io.BytesIO(data))
        # Pillow itself only refuses twice MAX_IMAGE_PIXELS (it warns in between)
        if img.width * img.height > Image.MAX_IMAGE_PIXELS:
            raise DataError(f"{name}: image too large ({img.width}x{img.height} px; the "
                            f"limit is {Image.MAX_IMAGE_PIXELS // 1_000_000} megapixels)")
        img.load()
    except UnidentifiedImageError:
        raise DataError(f"{name}: not a readable image (unknown format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{name}: not a readable image ({exc})") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"{name}: image too large ({exc})") from None
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block must not lose an otherwise good image
        return img


def _to_uint8(img: Image.Image) -> Image.Image:
    """16-bit and float images scaled to 8 bits by their full range.

    Float images whose values all lie in [0, 1] are taken as 0-1 intensities (the usual
    float convention), other floats and 32-bit integers as 0-255 unless they exceed it.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or arr.max() > 255:
            top = 65535.0
        elif img.mode == "F" and arr.min() >= 0 and arr.max() <= 1:
            top = 1.0
        else:
            top = 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L")
    return img


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Bytes of any supported format -> (H, W, 3) uint8 RGB, EXIF orientation applied.

    Grayscale, grayscale+alpha, palette, RGBA, CMYK and 16-bit images are converted;
    alpha is dropped (composited on black would invent dark "cracks" at edges).
    """
    img = _to_uint8(_open(data, name))
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(img, dtype=np.uint8)


def decode_mask(data: bytes, name: str) -> np.ndarray:
    """Bytes -> (H, W) bool crack mask, binarised at > 127.

    JPEG masks are not binary, so thresholding at the midpoint is the only safe rule.
    Colour masks (RGB, RGBA, palette) take their brightest channel: a crack drawn in pure
    red has a luminance of 76 and would vanish, and grey masks are unchanged.
    """
    img = _to_uint8(_open(data, name))
    if img.mode in ("L", "1", "LA"):
        grey = np.asarray(img if img.mode == "L" else img.convert("L"), dtype=np.uint8)
    else:
        grey = np.asarray(img.convert("RGB"), dtype=np.uint8).max(axis=2)
    return grey > 127


def load_image(path: str | Path) -> np.ndarray:
    """:func:`decode_image` of a local file.

    Shapes:
        returns: (H, W, 3) uint8 RGB, EXIF-upright.
    """
    return decode_image(read_bytes(path), str(path))


def load_mask(path: str | Path) -> np.ndarray:
    """:func:`decode_mask` of a local file.

    Shapes:
        returns: (H, W) bool, crack where the file's value is > 127.
    """
    return decode_mask(read_bytes(path), str(path))
