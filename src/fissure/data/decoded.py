"""The decoded-sample cache: each pair gunzipped, decoded and binarised once, then read as
arrays in every later epoch (``data.cache: decoded``).

One file per pair under ``root/<k[:2]>/<k>.u8``, where the key ``k`` hashes the identity of
both source files (path, size and modification time, or the source's own identity, or the
bytes' hash) and the decode settings (the resize side, the format version). A changed file
or setting therefore misses and is decoded again, while every other entry stays valid; no
index has to agree with the files. An entry is a 32-byte header (magic, height, width,
channels) followed by the image (3, H, W) and the mask (H, W) in {0, 1}, both uint8.

An entry is written to a temporary file and renamed into place, so a process killed at
any moment (``kill -9`` included) leaves either the whole entry or none of it; the reader
also checks the magic and the exact size. Entries are memory-mapped copy-on-write when
read, so an epoch reads pages from the OS cache instead of copying whole files, and the
arrays can be cropped or flipped in place without touching the file. The store holds no
open file or map between reads: it pickles to DataLoader workers as a path and a setting.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from ..config import DataConfig
from ..errors import DataError
from ..writes import replacing
from .image import decode_image, decode_mask
from .sources import PairSource, Sample, is_stage_path

FORMAT_VERSION = 2
"""Bumped whenever the stored arrays would change for the same file and settings (2: colour
masks binarised by their brightest channel)."""
CACHE_ENV = "FISSURE_DECODED_CACHE"
"""Environment variable naming the store's folder, overriding :func:`default_root`."""
_MAGIC = b"FISSDEC1"
_HEADER = struct.Struct("<8sIII12x")  # magic, height, width, channels; 32 bytes


def default_root(data: DataConfig) -> Path:
    """Where the decoded store of ``data`` lives: ``$FISSURE_DECODED_CACHE`` if set, else
    ``decoded/`` beside the stage's content cache (``~/.cache/fissure/decoded`` by default,
    which local folders use too; ``$XDG_CACHE_HOME`` moves it)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if data.source == "stage":
        return Path(data.snowflake.cache_dir).expanduser().parent / "decoded"
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "fissure" / "decoded"


def decode_pair(sample: Sample, image_data: bytes, mask_data: bytes) -> tuple[np.ndarray, ...]:
    """Decode one pair's bytes, checking that image and mask have the same size.

    Shapes:
        returns: image (H, W, 3) uint8 RGB, mask (H, W) bool.
    """
    image = decode_image(image_data, sample.image)
    mask = decode_mask(mask_data, str(sample.mask))
    if mask.shape != image.shape[:2]:
        raise DataError(
            f"{sample.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
            f"{sample.image} is {image.shape[1]}x{image.shape[0]}"
        )
    return image, mask


def shrink_pair(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
    """The pair at ``size x size`` exactly as ``resize`` mode's training transform makes it:
    bilinear with antialiasing for the image, nearest neighbour for the mask.

    Shapes:
        image: (3, H, W) uint8; mask: (H, W) uint8.
        returns: (3, size, size) uint8 and (size, size) uint8.
    """
    img = TF.resize(tv_tensors.Image(torch.from_numpy(image)), [size, size], antialias=True)
    msk = TF.resize(tv_tensors.Mask(torch.from_numpy(mask)[None]), [size, size])
    return img.as_subclass(torch.Tensor).numpy(), msk.as_subclass(torch.Tensor).numpy()[0]


def file_identity(source: PairSource, locator: str) -> tuple[str, bytes | None]:
    """What identifies the content of ``locator`` without decoding it, and its bytes when
    they had to be read for that.

    In order: the source's own ``identity(locator)`` when it has one and it answers; a
    local file's absolute path, size and modification time; otherwise the BLAKE2 hash of
    the bytes themselves (then returned, so a miss does not read them twice).
    """
    identity = getattr(source, "identity", None)
    if callable(identity):
        found = identity(locator)
        if found is not None:
            return f"id:{found}", None
    if not is_stage_path(locator):
        try:
            st = os.stat(locator)
            return f"file:{os.path.abspath(locator)}:{st.st_size}:{st.st_mtime_ns}", None
        except OSError:
            pass
    data = source.read(locator)
    return "sha:" + hashlib.blake2b(data, digest_size=20).hexdigest(), data


@dataclass
class StoreCounts:
    """What this process's store did: entries read, decoded and written, writes that failed."""

    hits: int = 0
    misses: int = 0
    writes: int = 0
    failed_writes: int = 0


class DecodedStore:
    """Decoded pairs under ``root``, shrunk to ``resize x resize`` when ``resize`` is set
    (``resize`` mode's training set) and at native resolution otherwise.

    :meth:`load` returns a pair from the store, decoding and storing it on a miss. Safe to
    share between processes and runs: entries are immutable once renamed into place, and two
    processes storing the same entry write the same bytes.
    """

    def __init__(self, root: str | Path, resize: int | None = None) -> None:
        self.root = Path(root)
        self.resize = resize
        self.counts = StoreCounts()

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "resize": self.resize}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"], state["resize"])

    def key(self, source: PairSource, sample: Sample) -> tuple[str, dict[str, bytes | None]]:
        """The entry key of ``sample``, and the raw bytes read to identify it (by locator)."""
        if sample.mask is None:
            raise DataError(f"{sample.image}: no mask")
        parts, raw = [f"v{FORMAT_VERSION}", f"resize={self.resize}"], {}
        for locator in (sample.image, sample.mask):
            ident, raw[locator] = file_identity(source, locator)
            parts.append(ident)
        return hashlib.blake2b("\n".join(parts).encode(), digest_size=20).hexdigest(), raw

    def path(self, key: str) -> Path:
        """The entry file of ``key`` (which may not exist)."""
        return self.root / key[:2] / f"{key}.u8"

    def load(self, source: PairSource, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        """The pair ``sample`` names, from the store or decoded (and stored) now.

        Shapes:
            returns: image (3, H, W) uint8 RGB and mask (H, W) uint8 in {0, 1}, writable
            copy-on-write views of the entry.
        """
        key, raw = self.key(source, sample)
        path = self.path(key)
        found = read_entry(path)
        if found is not None:
            self.counts.hits += 1
            return found
        self.counts.misses += 1
        image_data = raw.get(sample.image) or source.read(sample.image)
        mask_data = raw.get(str(sample.mask)) or source.read(str(sample.mask))
        image, mask = decode_pair(sample, image_data, mask_data)
        chw = np.ascontiguousarray(image.transpose(2, 0, 1))
        binary = mask.view(np.uint8)
        if self.resize is not None:
            chw, binary = shrink_pair(chw, binary, self.resize)
        self._store(path, chw, binary)
        return chw, binary

    def _store(self, path: Path, image: np.ndarray, mask: np.ndarray) -> None:
        """Write one entry atomically; a full or read-only disk only costs the caching."""
        try:
            write_entry(path, image, mask)
            self.counts.writes += 1
        except OSError:
            self.counts.failed_writes += 1

    def size_bytes(self) -> int:
        """Bytes held by the entries under ``root`` (whatever their settings)."""
        if not self.root.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.root.glob("*/*.u8"))


def write_entry(path: Path, image: np.ndarray, mask: np.ndarray) -> None:
    """Write ``image`` (3, H, W) and ``mask`` (H, W), both uint8, as the entry ``path``.

    The bytes go to a temporary file beside it that is renamed into place only once it is
    complete: readers see the whole entry or none, however the writer dies.
    """
    _, height, width = image.shape
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(_HEADER.pack(_MAGIC, height, width, 3))
        f.write(np.ascontiguousarray(image).data)
        f.write(np.ascontiguousarray(mask).data)


def read_entry(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The (image, mask) of entry ``path``, or None when it is absent or not a whole entry.

    Shapes:
        returns: (3, H, W) uint8 and (H, W) uint8, memory-mapped copy-on-write.
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < _HEADER.size:
                return None
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError):  # absent, or a store that cannot be read: decode instead
        return None
    magic, height, width, channels = _HEADER.unpack_from(buf)
    pixels = height * width
    if magic != _MAGIC or channels != 3 or size != _HEADER.size + 4 * pixels:
        return None
    image = np.frombuffer(buf, np.uint8, 3 * pixels, _HEADER.size).reshape(3, height, width)
    mask = np.frombuffer(buf, np.uint8, pixels, _HEADER.size + 3 * pixels)
    return image, mask.reshape(height, width)


def estimate_bytes(source: PairSource, samples: list[Sample], resize: int | None) -> int:
    """Bytes the entries of ``samples`` will take: exact when shrunk to ``resize``, else
    extrapolated from the first pair's size."""
    if not samples:
        return 0
    if resize is not None:
        return len(samples) * (_HEADER.size + 4 * resize * resize)
    first = samples[0]
    image = decode_image(source.read(first.image), first.image)
    return len(samples) * (_HEADER.size + 4 * image.shape[0] * image.shape[1])


def free_bytes(root: Path) -> int:
    """Free bytes on the disk that holds (or will hold) ``root``."""
    probe = Path(root)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free
