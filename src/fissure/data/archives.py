"""Turning the archives that crack datasets' owners publish into fissure's folder layout.

A converter reads members straight out of the zip file, never extracting them by name, so
an archive cannot write outside the output folder. Masks are written as 0/255 PNG.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy.io import loadmat

from ..errors import DataError
from .image import IMAGE_SUFFIXES

# --------------------------------------------------------------------------- archive helpers


def _find_root(names: Iterable[str], folders: tuple[str, ...], label: str) -> str:
    """The shallowest archive folder (``""`` or ``"x/"``) that holds all of ``folders``.

    GitHub archives put everything under ``REPO-COMMIT/``; other zips have no top folder
    or one of their own name, so the layout is found rather than assumed.
    """
    dirs: set[str] = set()
    for name in names:
        parts = name.split("/")
        if parts[0] == "__MACOSX":  # resource forks added by macOS zip tools
            continue
        dirs.update("/".join(parts[:i]) + "/" for i in range(1, len(parts)))
    for prefix in sorted({""} | dirs, key=lambda d: (d.count("/"), d)):
        if all(f"{prefix}{folder}/" in dirs for folder in folders):
            return prefix
    wanted = ", ".join(f"{folder}/" for folder in folders)
    raise DataError(f"{label}: not the expected layout, no folder in the archive holds {wanted}")


def _members(zf: zipfile.ZipFile, folder: str, suffixes: tuple[str, ...],
             label: str) -> dict[str, zipfile.ZipInfo]:
    """Files directly inside archive ``folder`` whose names end in ``suffixes``, by stem."""
    found: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        rest = info.filename[len(folder):]
        if (info.is_dir() or not info.filename.startswith(folder) or "/" in rest
                or rest.startswith(".") or not rest.lower().endswith(suffixes)):
            continue
        stem = Path(rest).stem
        if stem in found:
            raise DataError(f"{label}: two files named '{stem}' in {folder}: "
                            f"{Path(found[stem].filename).name} and {rest}")
        found[stem] = info
    return found


def _image_size(data: bytes, where: str) -> tuple[int, int]:
    """(width, height) from an encoded image's header."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{where}: not a readable image ({exc})") from None


def _write_mask(crack: np.ndarray, path: Path) -> None:
    """Save a boolean crack map as the 8-bit 0/255 PNG the rest of fissure reads."""
    Image.fromarray(crack.astype(np.uint8) * 255).save(path)


def _pairs(images: Mapping[str, object], masks: Mapping[str, object], label: str) -> list[str]:
    """The stems present in both; an image without a mask, or the reverse, is an error."""
    for missing, present, what in ((images, masks, "image"), (masks, images, "mask")):
        lone = sorted(present.keys() - missing.keys())
        if lone:
            shown = ", ".join(lone[:5]) + (f" and {len(lone) - 5} more" if len(lone) > 5 else "")
            raise DataError(f"{label}: no {what} for {shown}")
    if not images:
        raise DataError(f"{label}: the archive holds no image/mask pairs")
    return sorted(images)


# --------------------------------------------------------------------------- CrackForest

CFD_COMMIT = "ed57c2d96754e6c7d105805cd29aeeb3a799f267"
CFD_CRACK_LABELS = (2, 4)
"""``groundTruth.Segmentation`` labels that are crack; 1 is background and 3 marks regions
enclosed by cracks, also background."""
_CFD_LABELS = {1, 2, 3, 4}

# The split of Koenig et al. (weakly supervised crack segmentation), used for every CFD
# figure this project reports: test = 073..118, 042 left out (its ground truth is wrong),
# seven validation images, the other 64 train.
KOENIG_VAL = ("004", "009", "019", "039", "053", "062", "068")
KOENIG_LEFT_OUT = ("042",)
KOENIG_TEST = tuple(f"{i:03d}" for i in range(73, 119))
KOENIG_TRAIN = tuple(f"{i:03d}" for i in range(1, 73)
                     if f"{i:03d}" not in KOENIG_VAL + KOENIG_LEFT_OUT)
KOENIG_SPLIT = MappingProxyType({"train": KOENIG_TRAIN, "val": KOENIG_VAL, "test": KOENIG_TEST})


def cfd_crack_mask(data: bytes, where: str) -> np.ndarray:
    """The boolean crack map of one CrackForest ``groundTruth/NNN.mat`` file.

    The file holds a MATLAB struct ``groundTruth`` whose ``Segmentation`` field is a label
    image; labels 2 and 4 are crack. Any other layout or label is a :class:`DataError`.
    """
    try:
        truth = loadmat(io.BytesIO(data), simplify_cells=True).get("groundTruth")
    except (ValueError, TypeError, OSError, NotImplementedError) as exc:
        raise DataError(f"{where}: not a readable MATLAB file ({exc})") from None
    if isinstance(truth, (list, np.ndarray)) and len(truth) == 1:
        truth = truth[0]  # a 1x1 cell around the struct
    labels = truth.get("Segmentation") if isinstance(truth, dict) else None
    if not isinstance(labels, np.ndarray) or labels.ndim != 2:
        raise DataError(f"{where}: no 2-D groundTruth.Segmentation label image")
    unexpected = set(np.unique(labels).tolist()) - _CFD_LABELS
    if unexpected:
        raise DataError(f"{where}: unexpected labels {sorted(unexpected)} (expected 1 to 4)")
    return np.isin(labels, CFD_CRACK_LABELS)


def convert_cfd(zf: zipfile.ZipFile, label: str, out: Path) -> dict[str, int]:
    """CrackForest ``image/NNN.jpg`` + ``groundTruth/NNN.mat`` -> ``images/``, ``masks/``.

    Photos are copied byte for byte; masks become 0/255 PNGs. The Koenig split files
    ``split_koenig_{train,val,test}.txt`` are written beside them; an archive without
    every id of that split is a :class:`DataError`.
    """
    root = _find_root(zf.namelist(), ("image", "groundTruth"), label)
    images = _members(zf, f"{root}image/", (".jpg",), label)
    truths = _members(zf, f"{root}groundTruth/", (".mat",), label)
    stems = sorted(images.keys() & truths.keys())  # stray extras on either side are not ours
    missing = sorted(set().union(*KOENIG_SPLIT.values()) - set(stems))
    if missing:
        raise DataError(f"{label}: ids of the Koenig split missing from the archive: "
                        f"{', '.join(missing[:10])}")
    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir()
    for stem in stems:
        photo = zf.read(images[stem])
        crack = cfd_crack_mask(zf.read(truths[stem]), f"{label}:{truths[stem].filename}")
        width, height = _image_size(photo, f"{label}:{images[stem].filename}")
        if crack.shape != (height, width):
            raise DataError(f"{label}:{truths[stem].filename}: labels are {crack.shape[1]}x"
                            f"{crack.shape[0]}, the photo is {width}x{height}")
        (out / "images" / f"{stem}.jpg").write_bytes(photo)
        _write_mask(crack, out / "masks" / f"{stem}.png")
    for split, ids in KOENIG_SPLIT.items():
        (out / f"split_koenig_{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return {"all": len(stems), **{split: len(ids) for split, ids in KOENIG_SPLIT.items()}}


# --------------------------------------------------------------------------- DeepCrack

DEEPCRACK_COMMIT = "8202a60701068645c883ed68b95fd3f30914d90c"
DEEPCRACK_SPLITS = ("train", "test")


def convert_deepcrack(zf: zipfile.ZipFile, label: str, out: Path) -> dict[str, int]:
    """DeepCrack ``{train,test}_img/`` + ``{train,test}_lab/`` -> ``{train,test}/{images,masks}``.

    Photos are copied byte for byte. Labels are binarised at > 127 into 0/255 PNGs, since a
    label saved as JPEG holds grey levels near 0 and 255 rather than two values.
    """
    folders = tuple(f"{split}_{kind}" for split in DEEPCRACK_SPLITS for kind in ("img", "lab"))
    root = _find_root(zf.namelist(), folders, label)
    counts = {}
    for split in DEEPCRACK_SPLITS:
        images = _members(zf, f"{root}{split}_img/", IMAGE_SUFFIXES, label)
        labels = _members(zf, f"{root}{split}_lab/", IMAGE_SUFFIXES, label)
        stems = _pairs(images, labels, f"{label}:{root}{split}_*")
        (out / split / "images").mkdir(parents=True)
        (out / split / "masks").mkdir()
        for stem in stems:
            photo = zf.read(images[stem])
            where = f"{label}:{labels[stem].filename}"
            crack = _binary_label(zf.read(labels[stem]), where)
            size = _image_size(photo, f"{label}:{images[stem].filename}")
            if crack.shape != (size[1], size[0]):
                raise DataError(f"{where}: the label is {crack.shape[1]}x{crack.shape[0]}, "
                                f"the photo is {size[0]}x{size[1]}")
            suffix = Path(images[stem].filename).suffix.lower()
            (out / split / "images" / f"{stem}{suffix}").write_bytes(photo)
            _write_mask(crack, out / split / "masks" / f"{stem}.png")
        counts[split] = len(stems)
    return counts


def _binary_label(data: bytes, where: str) -> np.ndarray:
    """A label image as a boolean crack map: grey level > 127 after conversion to 8-bit L."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("L")) > 127
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{where}: not a readable image ({exc})") from None
