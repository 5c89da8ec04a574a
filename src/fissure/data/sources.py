"""Where image/mask pairs come from: the source interface and local folders.

A source lists :class:`Sample` records per split and reads the raw bytes behind a
locator. Decoding, gzip included, happens in :mod:`fissure.data.image`, so every source
(local folders here, a Snowflake stage in :mod:`fissure.snowflake.source`) behaves alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..config import SPLITS
from ..errors import DataError, SplitAbsent
from .image import image_stem, is_image_name, read_bytes

STAGE_PREFIX = "@"
"""What starts a Snowflake stage location (``@DB.SCHEMA.STAGE/path``), as opposed to a path."""


def is_stage_path(text: object) -> bool:
    """Whether ``text`` names a stage location (``@STAGE/...``) rather than a local path."""
    return isinstance(text, str) and text.startswith(STAGE_PREFIX)


@dataclass(frozen=True)
class Sample:
    """One image and its mask; ``name`` is the pairing stem, unique within a split."""

    name: str
    image: str
    mask: str | None


class PairSource(Protocol):
    """What the dataset needs from any data source. Instances must pickle (DataLoader workers)."""

    description: str

    def samples(self, split: str) -> list[Sample]:
        """Pairs of ``split`` (train, val, test or all), sorted by name; DataError if empty."""
        ...

    def read(self, locator: str) -> bytes:
        """Raw, possibly gzip-compressed, bytes of a file named by a Sample."""
        ...


def _listing(folder: Path) -> dict[str, Path]:
    """Image files of ``folder`` by stem; a stem seen twice is an error."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or not is_image_name(path.name):
            continue
        stem = image_stem(path.name)
        if stem in found:
            raise DataError(f"{folder}: two files share the name '{stem}': "
                            f"{found[stem].name} and {path.name}")
        found[stem] = path
    return found


def _names(names: Iterable[str], limit: int = 10) -> str:
    names = sorted(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def pair_folder(images_dir: Path, masks_dir: Path) -> list[Sample]:
    """Pair ``images_dir/X.*`` with ``masks_dir/X.*`` by stem; unmatched files are errors."""
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise DataError(f"{folder}: folder not found")
    images, masks = _listing(images_dir), _listing(masks_dir)
    no_mask = images.keys() - masks.keys()
    if no_mask:
        raise DataError(f"{images_dir}: {len(no_mask)} image(s) without a mask in "
                        f"{masks_dir}: {_names(no_mask)}")
    no_image = masks.keys() - images.keys()
    if no_image:
        raise DataError(f"{masks_dir}: {len(no_image)} mask(s) without an image in "
                        f"{images_dir}: {_names(no_image)}")
    return [Sample(stem, str(images[stem]), str(masks[stem])) for stem in sorted(images)]


def split_by_ratio(
    samples: list[Sample], fractions: dict[str, float], seed: int
) -> dict[str, list[Sample]]:
    """Deterministic shuffle of ``samples`` cut into the named fractions; the rest is train."""
    order = np.random.default_rng(seed).permutation(len(samples))
    shuffled = [samples[i] for i in order]
    out: dict[str, list[Sample]] = {}
    start = 0
    for split, fraction in fractions.items():
        count = int(round(fraction * len(samples)))
        if fraction > 0 and count == 0 and len(samples) - start > 1:
            count = 1
        out[split] = sorted(shuffled[start : start + count], key=lambda s: s.name)
        start += count
    out["train"] = sorted(shuffled[start:], key=lambda s: s.name)
    return out


def read_id_list(path: Path) -> list[str]:
    """The ids in a split file, one per line (``#`` comments and suffixes dropped)."""
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    ids = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            ids.append(image_stem(line))
    return ids


def find_split_files(root: Path) -> dict[str, str] | None:
    """Id-list files beside ``images/`` such as ``split_koenig_train.txt`` or ``train.txt``.

    Used only when exactly one candidate exists for train and for each other split found,
    so an ambiguous folder falls back to the ratio split instead of guessing.
    """
    if not (root / "images").is_dir():
        return None
    found = {}
    for split in SPLITS:
        matches = sorted({*root.glob(f"*_{split}.txt"), *root.glob(f"{split}.txt")})
        if len(matches) > 1:
            return None
        if matches:
            found[split] = matches[0].name
    return found if "train" in found else None


def _check_disjoint(files: dict[str, str], splits: dict[str, list[Sample]]) -> None:
    """A DataError naming both split files when a pair is listed in two splits: a test
    image also in train would make every test figure a training one."""
    names = {split: {s.name for s in samples} for split, samples in splits.items()}
    for i, first in enumerate(names):
        for second in list(names)[i + 1:]:
            both = sorted(names[first] & names[second])
            if both:
                raise DataError(f"{files[first]} and {files[second]}: {len(both)} id(s) in "
                                f"both the {first} and the {second} split: {_names(both)}")


class FolderSource:
    """Local image/mask folders in one of three layouts.

    * ``root/{train,val,test}/{images,masks}``, any subset of the three (the public
      crack_segmentation_dataset has train and test only: a missing val split is carved from
      train with a fixed seed; a held-out set may hold test/ alone);
    * ``root/{images,masks}`` with ``split_files`` naming the ids of each split (CFD); such
      files are also found on their own when named ``*_train.txt``, ``*_val.txt``, ...;
    * ``root/{images,masks}`` alone, split by ``val_fraction`` / ``test_fraction``.
    """

    def __init__(
        self,
        root: str | Path,
        split_files: dict[str, str] | None = None,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 0,
    ) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(f"{self.root}: data folder not found")
        self.description = str(self.root)
        self._splits = self._discover(split_files, val_fraction, test_fraction, split_seed)

    def _discover(self, split_files, val_fraction, test_fraction, seed):
        root = self.root
        split_files = split_files or find_split_files(root)
        if split_files:
            pool = {s.name: s for s in pair_folder(root / "images", root / "masks")}
            splits = {}
            for split, file in split_files.items():
                path = Path(file).expanduser()
                path = path if path.is_absolute() else root / path
                ids = read_id_list(path)
                unknown = [i for i in ids if i not in pool]
                if unknown:
                    raise DataError(f"{path}: {len(unknown)} id(s) with no image/mask pair "
                                    f"in {root}: {_names(unknown)}")
                splits[split] = sorted((pool[i] for i in set(ids)), key=lambda s: s.name)
            _check_disjoint(split_files, splits)
            return splits
        present = [split for split in SPLITS if (root / split).is_dir()]
        if present:
            # Any subset: a held-out inspection set is often test/ alone.
            splits = {s: pair_folder(root / s / "images", root / s / "masks") for s in present}
            if "val" not in splits and "train" in splits:
                carved = split_by_ratio(splits["train"], {"val": val_fraction}, seed)
                splits["train"], splits["val"] = carved["train"], carved["val"]
            return splits
        if (root / "images").is_dir():
            samples = pair_folder(root / "images", root / "masks")
            return split_by_ratio(samples, {"val": val_fraction, "test": test_fraction}, seed)
        raise DataError(f"{root}: expected images/ and masks/ folders, or train/ val/ test/ "
                        "subfolders holding them")

    def samples(self, split: str) -> list[Sample]:
        """Pairs of ``split`` (train, val, test or all), sorted by name; a DataError naming
        the splits present when it is absent, or when it is empty."""
        if split == "all":
            found = [s for name in SPLITS for s in self._splits.get(name, [])]
        elif split in SPLITS:
            if split not in self._splits:
                here = ", ".join(s for s in SPLITS if s in self._splits)
                raise SplitAbsent(f"{self.root}: has no '{split}' split (it has {here})")
            found = self._splits[split]
        else:
            raise DataError(f"unknown split '{split}' (use train, val, test or all)")
        if not found:
            raise SplitAbsent(f"{self.root}: split '{split}' is empty")
        return list(found)

    def read(self, locator: str) -> bytes:
        """The raw bytes of a sample's file (a local path)."""
        return read_bytes(locator)
