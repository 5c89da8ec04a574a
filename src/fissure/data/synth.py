"""Procedural concrete-with-cracks datasets: the built-in data that needs no download.

Every image is drawn by :func:`~fissure.data.synth_draw.synth_pair` from its own random
stream derived from ``(seed, index)``, so a dataset is reproducible byte for byte and one
image does not depend on how many others were generated before it, nor on how many
processes drew them. Two layouts: ``{train,val,test}/{images,masks}`` PNGs (the default),
or the notebook's stage (flat ``images/`` and ``masks/`` of gzip JPEGs and a manifest).
``SynthOptions(thin=True)`` draws hairline cracks (1-2 px, at most 0.5 % of the pixels) at
512 px by default, to test rare-crack training without real data.
"""

from __future__ import annotations

import gzip
import io
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fissure.config import SPLITS
from fissure.data.image import is_image_name
from fissure.data.synth_draw import MIN_SIZE, synth_pair
from fissure.errors import DataError
from fissure.progress import progress_bar
from fissure.writes import replacing

__all__ = ["MIN_COUNT", "MIN_SIZE", "SPLITS", "SynthOptions", "generate_dataset", "synth_pair"]

MIN_COUNT = 3
DEFAULT_SIZE = 256
THIN_DEFAULT_SIZE = 512
"""Thin cracks are drawn at 512 px unless a size is given: the held-out thin set's size."""


# --------------------------------------------------------------------------- dataset


def _largest_remainder(total: int, weights: list[float]) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` that sum exactly to it."""
    wsum = sum(weights)
    raw = [total * w / wsum if wsum > 0 else 0.0 for w in weights]
    parts = [int(math.floor(r)) for r in raw]
    order = sorted(range(len(raw)), key=lambda k: (parts[k] - raw[k], k))
    for k in order[: total - sum(parts)]:
        parts[k] += 1
    return parts


def _split_sizes(count: int, fractions: tuple[float, float, float]) -> list[int]:
    sizes = _largest_remainder(count, list(fractions))
    # Every split must be usable, so an empty one borrows from the largest.
    for k in range(len(sizes)):
        if sizes[k] == 0:
            donor = max(range(len(sizes)), key=lambda j: sizes[j])
            sizes[donor] -= 1
            sizes[k] += 1
    return sizes


def _crack_free_per_split(sizes: list[int], n_free: int) -> list[int]:
    """Spread the crack-free images so each split of 3+ has some of both kinds if possible."""
    free = _largest_remainder(n_free, [float(s) for s in sizes])
    big = [k for k, s in enumerate(sizes) if s >= 3]
    for k in big:
        if free[k] == 0:
            donors = [j for j in range(len(sizes)) if free[j] > (1 if j in big else 0)]
            if donors:
                j = max(donors, key=lambda j: free[j])
                free[j] -= 1
                free[k] += 1
        if free[k] == sizes[k]:
            takers = [j for j in range(len(sizes)) if j != k and free[j] < sizes[j] - 1]
            if takers and free[k] > 1:
                j = max(takers, key=lambda j: sizes[j] - free[j])
                free[k] -= 1
                free[j] += 1
    return free


def _check_args(
    count: int,
    size: int,
    seed: int,
    fractions: tuple[float, float, float],
    crack_free_fraction: float,
) -> None:
    if not isinstance(count, int) or isinstance(count, bool) or count < MIN_COUNT:
        raise DataError(f"synthetic dataset needs at least {MIN_COUNT} images, got {count!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < MIN_SIZE:
        raise DataError(f"synthetic image size must be at least {MIN_SIZE} pixels, got {size!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise DataError(f"synthetic dataset seed must be a non-negative integer, got {seed!r}")
    try:
        values = [float(f) for f in fractions]
    except (TypeError, ValueError):
        values = []
    if len(values) != 3 or any(not f > 0 for f in values):
        raise DataError(f"split fractions must be three positive numbers, got {fractions!r}")
    if abs(sum(values) - 1.0) > 1e-6:
        raise DataError(f"split fractions must sum to 1, got {fractions!r}")
    if not isinstance(crack_free_fraction, (int, float)) or not 0.0 <= crack_free_fraction <= 1.0:
        raise DataError(f"crack_free_fraction must be in [0, 1], got {crack_free_fraction!r}")


MANIFEST_NAME = "manifest.csv"
"""The manifest written beside ``images/`` and ``masks/`` in the stage layout."""
MANIFEST_COLUMNS = ("IMAGE_NAME", "MASK_NAME", "IMAGE_GROUP")
"""The columns of the notebook's ``V_TRAINING_DATA`` view, in its order."""
NOTEBOOK_FRACTIONS = (0.8, 0.1, 0.1)
"""Train/val/test shares of the notebook's 11,298 pairs: a 1,130-image test split."""
_JPEG_QUALITY = 90
# Below this many images, starting worker processes costs more than it saves.
_PARALLEL_FROM = 256


@dataclass(frozen=True)
class SynthOptions:
    """How :func:`generate_dataset` lays out and encodes its files.

    ``manifest``: the layout of the notebook's stage: flat ``images/`` and ``masks/``,
    ``manifest.csv`` (``IMAGE_NAME``, ``MASK_NAME``, ``IMAGE_GROUP`` = TRAIN/VAL/TEST) and
    ``split_{train,val,test}.txt`` id lists, so fissure reads the manifest's splits from the
    folder and ``fissure snowflake upload`` recreates the stage; otherwise
    ``{train,val,test}/{images,masks}``. ``gzip``: every file compressed (``x.jpg.gz``), as
    the stage holds them. ``image_format``: ``png`` or ``jpg`` for images and masks alike
    (None: ``jpg`` with ``manifest``, as the public dataset, else ``png``). ``workers``:
    processes drawing images (None: the usable cores for large sets, one for small ones);
    the files do not depend on it. ``thin``: hairline cracks, 1-2 px wide and at most 0.5 %
    of an image's pixels (:func:`~fissure.data.synth_draw.synth_pair`), instead of 1-6 px
    cracks covering about 1-6 %.
    """

    manifest: bool = False
    gzip: bool = False
    image_format: str | None = None
    workers: int | None = None
    thin: bool = False

    @property
    def suffix(self) -> str:
        """The file suffix of this layout's images and masks (``.png``, ``.jpg.gz`` ...)."""
        fmt = self.image_format or ("jpg" if self.manifest else "png")
        return f".{fmt}" + (".gz" if self.gzip else "")


@dataclass(frozen=True)
class _Item:
    """One pair to draw: its index (the random stream), crack flag and output paths."""

    index: int
    with_crack: bool
    image: Path
    mask: Path


def _encode(array: np.ndarray, suffix: str) -> bytes:
    buf = io.BytesIO()
    if suffix.startswith(".png"):
        # Level 1: noisy photos barely compress further, and encoding dominated run time.
        Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    else:
        Image.fromarray(array).save(buf, format="JPEG", quality=_JPEG_QUALITY)
    data = buf.getvalue()
    # mtime 0: the same seed gives the same bytes, gzip header included.
    return gzip.compress(data, compresslevel=6, mtime=0) if suffix.endswith(".gz") else data


def _write(path: Path, data: bytes, what: str = "synthetic image") -> None:
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise DataError(f"{path}: cannot write {what} ({exc.strerror or exc})") from exc


def _draw_items(seed: int, size: int, suffix: str, items: list[_Item], thin: bool = False) -> int:
    """Draw and write ``items``; a module-level function so worker processes can run it."""
    for item in items:
        # One stream per image, so each file depends only on (seed, index, with_crack).
        rng = np.random.default_rng([seed, item.index + 1])
        image, mask = synth_pair(rng, size, with_crack=item.with_crack, thin=thin)
        _write(item.image, _encode(image, suffix))
        _write(item.mask, _encode(mask, suffix), "synthetic mask")
    return len(items)


def _plan(
    count: int, seed: int, fractions: tuple[float, float, float], crack_free_fraction: float
) -> list[tuple[str, int, bool]]:
    """(split, number, with_crack) per image in file order; numbers count from 1."""
    sizes = _split_sizes(count, fractions)
    n_free = min(count, int(math.floor(count * crack_free_fraction + 0.5)))
    free = _crack_free_per_split(sizes, n_free)
    plan: list[tuple[str, int, bool]] = []
    layout_rng = np.random.default_rng(seed)
    start = 0
    for split, n, n_split_free in zip(SPLITS, sizes, free, strict=True):
        crack_free = set(layout_rng.permutation(n)[:n_split_free].tolist())
        plan += [(split, start + j + 1, j not in crack_free) for j in range(n)]
        start += n
    return plan


def _folders(out: Path, plan: list[tuple[str, str, bool]], manifest: bool) -> None:
    """Make the output folders; refuse ones holding images this run would not write.

    A stale image would join a split it was not drawn for, or, beside the other layout,
    make the folder read differently from what the manifest says.
    """
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    wanted: dict[Path, set[str]] = {}
    for split, name, _ in plan:
        for sub in ("images", "masks"):
            wanted.setdefault(out / sub if manifest else out / split / sub, set()).add(name)
    other = [out / s / sub for s in SPLITS for sub in ("images", "masks")] if manifest else [
        out / "images", out / "masks"]
    for folder in [*wanted, *other]:
        keep = wanted.get(folder, set())
        stale = sorted(p.name for p in folder.glob("*") if is_image_name(p.name)
                       and p.name not in keep) if folder.is_dir() else []
        if stale:
            raise DataError(
                f"{folder}: already holds other images ({stale[0]}); use an empty folder"
            )
    for folder in wanted:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"{folder}: cannot create folder ({exc.strerror or exc})") from exc


def _write_manifest(out: Path, plan: list[tuple[str, str, bool]]) -> None:
    """``manifest.csv`` and the split id lists; written last, so a manifest means complete."""
    for split in SPLITS:
        names = "".join(f"{name}\n" for s, name, _ in plan if s == split)
        _write(out / f"split_{split}.txt", names.encode(), "the split file")
    rows = [",".join(MANIFEST_COLUMNS)]
    rows += [f"{name},{name},{split.upper()}" for split, name, _ in plan]
    target = out / MANIFEST_NAME
    try:
        with replacing(target) as tmp:
            tmp.write_bytes(("\n".join(rows) + "\n").encode())
    except OSError as exc:
        raise DataError(f"{target}: cannot write the manifest ({exc.strerror or exc})") from exc


def _run(
    seed: int, size: int, suffix: str, items: list[_Item], workers: int, bar, thin: bool
) -> None:
    """Draw ``items`` in ``workers`` processes (here when 1), advancing ``bar``."""
    if workers <= 1:
        for item in items:
            bar.update(_draw_items(seed, size, suffix, [item], thin))
        return
    chunk = 16
    jobs = [items[k : k + chunk] for k in range(0, len(items), chunk)]
    # fork where there is one: spawn re-runs the caller's main module, which a script read
    # from stdin or without a __main__ guard cannot survive. The workers never touch torch,
    # whose thread pool is what makes a forked child unsafe.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [pool.submit(_draw_items, seed, size, suffix, job, thin) for job in jobs]
        for future in as_completed(futures):
            bar.update(future.result())


def _workers(count: int, wanted: int | None) -> int:
    if wanted is not None:
        if not isinstance(wanted, int) or isinstance(wanted, bool) or wanted < 1:
            raise DataError(f"synthetic dataset workers must be at least 1, got {wanted!r}")
        return wanted
    if count < _PARALLEL_FROM:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cores or 1)


def generate_dataset(
    out: Path | str,
    count: int,
    size: int | None = None,
    seed: int = 0,
    fractions: tuple[float, float, float] | None = None,
    crack_free_fraction: float = 0.15,
    progress: bool = False,
    options: SynthOptions | None = None,
) -> dict[str, int]:
    """Write ``count`` synthetic pairs under OUT; return images per split.

    By default the layout is ``OUT/{train,val,test}/{images,masks}/synth_0001.png``, split
    0.7/0.15/0.15; ``options`` (:class:`SynthOptions`) asks for the notebook's stage layout,
    gzip and JPEG, where the default split is 0.8/0.1/0.1 (:data:`NOTEBOOK_FRACTIONS`).
    Files are numbered across all splits; an image and its mask share the name. Exactly
    ``round(count * crack_free_fraction)`` images carry no crack, spread over the splits.
    ``size`` defaults to 256 px, or 512 with ``options.thin`` (hairline cracks).
    The same arguments always produce byte-identical files, however many workers draw them.

    Raises:
        DataError: on bad arguments, when OUT already holds other images, or on write errors.
    """
    options = options or SynthOptions()
    if size is None:
        size = THIN_DEFAULT_SIZE if options.thin else DEFAULT_SIZE
    if fractions is None:
        fractions = NOTEBOOK_FRACTIONS if options.manifest else (0.7, 0.15, 0.15)
    _check_args(count, size, seed, fractions, crack_free_fraction)
    if options.image_format not in (None, "png", "jpg"):
        raise DataError(f"synthetic image format must be png or jpg, got {options.image_format!r}")
    workers = _workers(count, options.workers)
    out, suffix = Path(out), options.suffix
    width = max(4, len(str(count)))
    plan = [(split, f"synth_{number:0{width}d}{suffix}", crack)
            for split, number, crack in _plan(count, seed, fractions, crack_free_fraction)]
    _folders(out, plan, options.manifest)

    def folder(split: str, sub: str) -> Path:
        return out / sub if options.manifest else out / split / sub

    items = [_Item(index, crack, folder(split, "images") / name, folder(split, "masks") / name)
             for index, (split, name, crack) in enumerate(plan)]
    if options.manifest:  # a manifest left by an earlier run would describe unfinished files
        (out / MANIFEST_NAME).unlink(missing_ok=True)
    with progress_bar(total=len(items), desc="synth", unit="img", enabled=progress) as bar:
        _run(seed, size, suffix, items, workers, bar, options.thin)
    if options.manifest:
        # The names the stage uses: the .gz is the stage's transport, not part of the name.
        _write_manifest(out, [(s, n.removesuffix(".gz"), c) for s, n, c in plan])
    sizes = [sum(1 for s, _, _ in plan if s == split) for split in SPLITS]
    return dict(zip(SPLITS, sizes, strict=True))
