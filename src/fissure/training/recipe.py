"""What the training data implies for a run, worked out once at setup and said in the log.

:func:`train_facts` reads the training masks once (sizes, crack share); from them come
``data.size: auto`` (:func:`resolve_size`, the crop ``fissure data stats`` prints),
``pos_weight: auto`` and ``train.init_bias: auto`` (:func:`init_output_bias`, the crack prior
as the output's starting bias), and the count of images smaller than the crop
(:func:`note_small_images`). :func:`top_up_validation` enlarges a tiny validation split
from the training split, :func:`check_val_cracks` refuses one without cracks, and
:func:`dtype_note` says which precision the run computes in.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace

import numpy as np
import torch

from ..config import AUTO, Config
from ..data import PairSource, Sample
from ..data.image import decode_mask
from ..data.stats import SplitStats, implied_crop
from ..errors import DataError
from ..runtime import autocast_dtype

PRIOR_RANGE = (1e-3, 0.5)
"""The crack prior ``train.init_bias: auto`` starts from is clamped to this range: below it
the bias (about -6.9) would take many steps to undo on a mislabelled mask, and above it
cracks would not be the rare class."""
HEAD_STD = 0.01
"""Std of the output conv's weights under ``train.init_bias: auto`` (RetinaNet's), so that
the bias, not the random weights, sets the first predictions."""
SAMPLED_IMAGES = 256
"""When only the log line on images smaller than the crop needs the facts, this many
training masks (evenly spaced) are read, not all of them."""


def needs_facts(cfg: Config) -> bool:
    """Whether anything in ``cfg`` needs every training mask read: an ``auto`` value."""
    pos = cfg.train.loss.params.get("pos_weight")
    return cfg.data.size == AUTO or pos == AUTO or cfg.train.init_bias == AUTO


def train_facts(
    source: PairSource, samples: list[Sample], on_error: str = "raise", limit: int | None = None
) -> SplitStats:
    """Sizes and crack share of the training masks (widths are not measured here).

    ``limit`` reads that many masks, evenly spaced, instead of all. An unreadable mask is
    an error, or skipped under ``data.on_error: skip`` (the loader skips it too).
    """
    step = max(1, len(samples) // limit) if limit else 1
    sizes: dict[str, int] = {}
    sides: list[int] = []
    crack = total = free = 0
    for sample in samples[::step]:
        mask = _read_mask(source, sample, on_error)
        if mask is None:
            continue
        height, width = mask.shape
        sizes[f"{width}x{height}"] = sizes.get(f"{width}x{height}", 0) + 1
        sides += [height, width]
        n = int(np.count_nonzero(mask))
        crack, total, free = crack + n, total + mask.size, free + (n == 0)
    if not sides:
        raise DataError(f"{source.description}: no readable training mask")
    return SplitStats(split="train", images=sum(sizes.values()), min_side=min(sides),
                      max_side=max(sides), sizes=sizes,
                      crack_fraction=crack / total if total else 0.0, crack_free=free,
                      width_median=None, width_p90=None)


def _read_mask(source: PairSource, sample: Sample, on_error: str) -> np.ndarray | None:
    """The decoded mask of ``sample``. A missing or unreadable one is a DataError, or None
    under ``data.on_error: skip`` (the loader skips it too)."""
    try:
        if sample.mask is None:
            raise DataError(f"{sample.image}: no mask")
        return decode_mask(source.read(sample.mask), sample.mask)
    except DataError:
        if on_error == "raise":
            raise
        return None


def check_val_cracks(cfg: Config, source: PairSource, samples: list[Sample]) -> None:
    """A DataError when no validation mask holds a crack pixel and ``train.monitor`` scores
    IoU or F1: those are undefined on such a split, so no epoch could be selected as
    ``best.pt`` and no threshold tuned. Reads masks until the first crack pixel (usually the
    first mask); an unreadable one is skipped under ``data.on_error: skip``."""
    if cfg.train.monitor == "loss":
        return
    for sample in samples:
        if sample.mask is None:
            continue
        mask = _read_mask(source, sample, cfg.data.on_error)
        if mask is not None and mask.any():
            return
    score = "IoU" if cfg.train.monitor == "iou" else "F1"
    raise DataError(
        f"val split: none of its {len(samples)} masks holds a crack pixel, so validation "
        f"{score} is undefined (nothing to choose best.pt or tune the threshold on); give "
        "validation images with cracks, top the split up from train "
        "(train.min_val_images), or set train.monitor=loss")


def resolve_size(cfg: Config, facts: SplitStats | None, notes: list[str]) -> Config:
    """``cfg`` with ``data.size: auto`` replaced by :func:`implied_crop` of ``facts``."""
    if cfg.data.size != AUTO or facts is None:
        return cfg
    size = implied_crop(facts)
    notes.append(f"data.size auto: {size} px crops, the largest multiple of 32 (at most 256) "
                 f"that every training image holds (smallest side {facts.min_side} px)")
    return replace(cfg, data=replace(cfg.data, size=size))


def note_small_images(
    cfg: Config, facts: SplitStats | None, notes: list[str], total: int
) -> None:
    """Say how many of the ``total`` training images are smaller than the crop (counted in
    the masks ``facts`` read), and what is done with them."""
    if facts is None or cfg.data.mode != "crop":
        return
    size = int(cfg.data.size)
    small = {key: n for key, n in facts.sizes.items()
             if min(int(side) for side in key.split("x")) < size}
    if not small:
        return
    count = sum(small.values())
    examples = ", ".join(list(small)[:3])
    among = (f"{facts.images} training images read (of {total})" if facts.images < total
             else f"{total} training images")
    notes.append(
        f"{count} of {among} are smaller than the {size} px crop ({examples}): each crop "
        f"is zero-padded (black image; the padding is left out of the loss and of the "
        f"training IoU). data.size=auto would crop {implied_crop(facts)} px instead")


def top_up_validation(
    cfg: Config, train: list[Sample], val: list[Sample], notes: list[str]
) -> tuple[list[Sample], list[Sample]]:
    """Move training samples to validation until it holds ``train.min_val_images``.

    Model selection and the tuned threshold rest on the validation pixels; seven images
    (CFD's split) make both noisy. The moved samples are drawn with ``data.split_seed``, so
    a resumed run moves the same ones; at least half of the training split stays.
    """
    wanted = cfg.train.min_val_images
    if len(val) >= wanted:
        return train, val
    count = min(wanted - len(val), len(train) // 2)
    if count <= 0:
        return train, val
    rng = random.Random(cfg.data.split_seed)
    moved = set(rng.sample(range(len(train)), count))
    kept = [s for i, s in enumerate(train) if i not in moved]
    extra = [s for i, s in enumerate(train) if i in moved]
    notes.append(f"validation has {len(val)} images, fewer than train.min_val_images="
                 f"{wanted}: {count} training images moved to it ({len(train)} -> "
                 f"{len(kept)} train, {len(val) + count} val)")
    return kept, val + extra


def init_output_bias(model: torch.nn.Module, prior: float) -> float:
    """Start the output logit at the crack prior; returns the probability set.

    The bias of ``model.head.conv`` becomes ``log(p / (1 - p))``, ``p`` the prior clamped
    to :data:`PRIOR_RANGE`, and its weights are drawn with std :data:`HEAD_STD`, so the mean
    first prediction is about ``p`` (Lin et al., focal loss, the prior of the classifier).
    Otherwise every pixel starts at 0.5, and the first steps spend themselves pushing the
    background down, past the thin cracks.
    """
    p = min(max(float(prior), PRIOR_RANGE[0]), PRIOR_RANGE[1])
    conv = model.head.conv
    with torch.no_grad():
        torch.nn.init.normal_(conv.weight, std=HEAD_STD)
        conv.bias.fill_(math.log(p / (1.0 - p)))
    return p


def dtype_note(device: torch.device, amp: bool) -> str:
    """The log line on the precision training computes in, and why."""
    dtype = str(autocast_dtype(device, amp)).removeprefix("torch.")
    if not amp:
        return f"compute dtype: {dtype} (train.amp is off)"
    if device.type == "cpu":
        cap = torch.backends.cpu.get_cpu_capability()
        why = ("this CPU computes bf16 natively" if dtype == "bfloat16"
               else f"this CPU ({cap}) has no native bf16, which torch would emulate slower")
        return f"compute dtype: {dtype} under train.amp ({why})"
    return f"compute dtype: {dtype} under train.amp on {device.type}"
