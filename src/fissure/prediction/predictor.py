"""Crack prediction for real inspection photos of any size.

Arrays: an image is ``(H, W, 3)`` uint8 RGB; a prediction is a ``(H, W)`` float32
probability map and a ``(H, W)`` bool mask (``probability > threshold``) at the image's own
resolution, plus :class:`~fissure.measurement.CrackMeasurements`.

How an image goes through the network (:func:`default_tiling`):

* Native-resolution tiles (:mod:`fissure.tiling`): windows of ``tile`` px overlapping by
  ``overlap`` px, blended smoothly. Defaults: ``tile`` = the checkpoint's training size
  rounded to a multiple of 32, ``overlap = tile // 4``. Images smaller than a tile are
  padded into one.
* Whole image shrunk to the training size, exactly as ``evaluate`` does. Only for
  ``resize``-mode checkpoints (trained on whole images shrunk to ``size x size``), only with
  the default tiling, and only when both sides are at most ``RESIZE_LIMIT`` times the training
  size: there the shrink costs at most a factor two of resolution and the model sees cracks
  at the scale it learnt. A larger photo shrunk that way would lose hairline cracks, so it
  is tiled at native resolution instead. Passing ``tile`` always tiles.

Tiles of several images share batches, so a folder of small images keeps the device busy;
peak memory is one batch of tiles plus, for each image in flight, its padded copy and two
float32 accumulators.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..checkpoint import Checkpoint, load_checkpoint
from ..config import EvalConfig
from ..data.image import _to_uint8, load_image
from ..data.transforms import image_to_tensor
from ..errors import FissureError
from ..runtime import InputPolicy, forward_logits, select_device
from .measure import CrackMeasurements, measure_cracks
from .tiles import Job, ResizedJob, TileBatcher, TiledJob
from .tiling import TILE_MULTIPLE

RESIZE_LIMIT = 2
"""Resize-mode checkpoints see a whole image shrunk when both sides are <= this x size."""

DEFAULT_TILE = 256
"""Tile for a bare ``nn.Module``, which carries no training size."""

T = TypeVar("T")
ImageLike = str | Path | Image.Image | np.ndarray


@dataclass(frozen=True)
class Prediction:
    """One image's result: ``mask`` ``(H, W)`` bool, ``probability`` ``(H, W)`` float32.

    ``mode`` is ``"tiled"`` or ``"resize"`` (whole image shrunk); ``tiles`` counts network
    inputs per pass (TTA runs each three times); ``tile``/``overlap`` are None when resized.
    """

    mask: np.ndarray
    probability: np.ndarray
    measurements: CrackMeasurements
    threshold: float
    mode: str = "tiled"
    tiles: int = 1
    tile: int | None = None
    overlap: int | None = None


@dataclass(frozen=True)
class Tiling:
    """Window ``tile`` and ``overlap`` in px; ``resize_size`` set: shrink small images whole."""

    tile: int
    overlap: int
    resize_size: int | None = None

    def resizes(self, height: int, width: int) -> bool:
        limit = RESIZE_LIMIT * (self.resize_size or 0)
        return max(height, width) <= limit


def round_tile(size: int) -> int:
    """The multiple of 32 nearest to ``size``, at least 32."""
    return max(TILE_MULTIPLE, TILE_MULTIPLE * round(size / TILE_MULTIPLE))


def default_tiling(
    policy: InputPolicy, tile: int | None = None, overlap: int | None = None
) -> Tiling:
    """Tiling for a checkpoint's ``policy``; see the module docstring for the defaults."""
    chosen = round_tile(policy.size) if tile is None else tile
    if chosen < TILE_MULTIPLE or chosen % TILE_MULTIPLE:
        raise FissureError(f"--tile must be a positive multiple of {TILE_MULTIPLE}, got {chosen}")
    chosen_overlap = chosen // 4 if overlap is None else overlap
    if not 0 <= chosen_overlap < chosen:
        raise FissureError(f"--overlap must be in [0, tile={chosen}), got {chosen_overlap}")
    resize = policy.size if policy.mode == "resize" and tile is None else None
    return Tiling(chosen, chosen_overlap, resize)


@dataclass
class Predictor:
    """A model ready to predict, with what its checkpoint says about feeding it."""

    model: nn.Module
    policy: InputPolicy = field(default_factory=lambda: InputPolicy("crop", DEFAULT_TILE))
    threshold: float = 0.5
    min_area: int = EvalConfig.min_area
    amp: bool = True

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @classmethod
    def from_checkpoint(
        cls, checkpoint: str | Path | Checkpoint, device: str = "auto"
    ) -> Predictor:
        """Load a checkpoint file (or use a loaded one) onto ``device``, in eval mode."""
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        # NHWC lets cuDNN and oneDNN pick faster convolutions (~30 % per tile on CPU too).
        model = ckpt.build_model(device, channels_last=True)
        return cls(model, ckpt.policy, ckpt.threshold, ckpt.config.eval.min_area, ckpt.policy.amp)

    def forward(self, tiles: Tensor) -> Tensor:
        """Logits ``(B, 1, t, t)`` for tiles ``(B, 3, t, t)``, in mixed precision if ``amp``."""
        return forward_logits(self.model, tiles, InputPolicy("crop", tiles.shape[-1]), self.amp)


def as_predictor(
    model_or_checkpoint: Predictor | nn.Module | str | Path | Checkpoint, device: str = "auto"
) -> Predictor:
    """A :class:`Predictor` from itself, a checkpoint path or dict, or a bare model.

    A bare model gets threshold 0.5 and 256-px tiles and stays on its device unless
    ``device`` names one (it is then moved there, in place).
    """
    if isinstance(model_or_checkpoint, Predictor):
        return model_or_checkpoint
    if isinstance(model_or_checkpoint, nn.Module):
        if device != "auto":
            model_or_checkpoint.to(select_device(device))
        return Predictor(model_or_checkpoint)
    return Predictor.from_checkpoint(model_or_checkpoint, device)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the block (BatchNorm must use its running stats), then restore."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _finish(
    job: Job,
    prob: np.ndarray,
    predictor: Predictor,
    threshold: float,
    min_area: int | None,
    px_per_mm: float | None,
) -> Prediction:
    mask = prob > threshold
    area = predictor.min_area if min_area is None else min_area
    measurements = measure_cracks(mask, area, px_per_mm)
    return Prediction(
        mask, prob, measurements, threshold, job.mode, job.n_tiles, job.tile, job.overlap
    )


def predict_many(
    predictor: Predictor,
    images: Iterable[tuple[T, np.ndarray]],
    *,
    threshold: float | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    tta: bool = False,
    batch_size: int = 8,
    min_area: int | None = None,
    px_per_mm: float | None = None,
    progress: bool = False,
    total: int | None = None,
) -> Iterator[tuple[T, Prediction]]:
    """Predict ``(payload, image)`` pairs, ``image`` ``(H, W, 3)`` uint8; yields
    ``(payload, Prediction)`` as each image completes (not always in input order).

    ``images`` is read lazily, one image ahead of the network. ``min_area`` defaults to
    the checkpoint's ``eval.min_area``; ``threshold`` to its tuned threshold.
    """
    thr = predictor.threshold if threshold is None else float(threshold)
    if not 0.0 < thr < 1.0:
        raise FissureError(f"--threshold must be within (0, 1), got {thr}")
    tiling = default_tiling(predictor.policy, tile, overlap)
    device = predictor.device
    image_bar = tqdm(
        total=total, desc="images", unit="img", disable=not progress, dynamic_ncols=True
    )
    tile_bar = tqdm(
        total=0, desc="tiles", unit="tile", disable=not progress, leave=False, dynamic_ncols=True
    )
    batcher = TileBatcher(predictor.forward, batch_size, tta, tile_bar.update)
    payloads: dict[int, T] = {}

    def ready(jobs: list[Job]) -> list[tuple[T, Job, np.ndarray]]:
        return [(payloads.pop(id(job)), job, job.probability().numpy()) for job in jobs]

    def finish(items: list[tuple[T, Job, np.ndarray]]) -> Iterator[tuple[T, Prediction]]:
        for payload, job, prob in items:
            image_bar.update(1)
            yield payload, _finish(job, prob, predictor, thr, min_area, px_per_mm)

    # inference_mode only around the tensor work: it is thread-wide state and must not
    # leak into the caller's code while this generator is suspended at a yield.
    try:
        with _eval_mode(predictor.model):
            for payload, image in images:
                with torch.inference_mode():
                    tensor = image_to_tensor(image).to(device)
                    job: Job = (
                        ResizedJob(tensor, tiling.resize_size)
                        if tiling.resizes(*tensor.shape[-2:])
                        else TiledJob(tensor, tiling.tile, tiling.overlap)
                    )
                    del tensor
                    payloads[id(job)] = payload
                    tile_bar.total += job.n_tiles
                    tile_bar.refresh()
                    done = ready(batcher.add(job))
                yield from finish(done)
            with torch.inference_mode():
                done = ready(batcher.flush())
            yield from finish(done)
    finally:
        tile_bar.close()
        image_bar.close()


def as_rgb(image: ImageLike) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB from a path (gzip too), a PIL image or a uint8 array.

    Paths and PIL images are turned upright by their EXIF orientation; arrays are used as
    they are: ``(H, W)`` gray is repeated, an alpha channel is dropped.
    """
    if isinstance(image, (str, Path)):
        return load_image(image)
    if isinstance(image, Image.Image):
        upright = _to_uint8(ImageOps.exif_transpose(image))
        return np.array(upright.convert("RGB"), dtype=np.uint8)
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise FissureError(f"expected a uint8 image array, got dtype {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise FissureError(f"expected an (H, W, 3) image array, got shape {array.shape}")
    return np.ascontiguousarray(array[:, :, :3])


def predict_image(
    model_or_checkpoint: Predictor | nn.Module | str | Path | Checkpoint,
    image: ImageLike,
    *,
    threshold: float | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    tta: bool = False,
    px_per_mm: float | None = None,
    min_area: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    progress: bool = False,
) -> Prediction:
    """Predict one image (path, PIL image or ``(H, W, 3)`` uint8 array) of any size.

    ``model_or_checkpoint``: a checkpoint path or dict, a :class:`Predictor` (load once,
    predict many) or a bare model. Returns ``mask`` and ``probability`` ``(H, W)`` at the
    image's resolution and the measurements (mm fields with ``px_per_mm``).
    """
    predictor = as_predictor(model_or_checkpoint, device)
    results = predict_many(
        predictor,
        [(None, as_rgb(image))],
        threshold=threshold,
        tile=tile,
        overlap=overlap,
        tta=tta,
        batch_size=batch_size,
        min_area=min_area,
        px_per_mm=px_per_mm,
        progress=progress,
        total=1,
    )
    return [prediction for _, prediction in results][0]
