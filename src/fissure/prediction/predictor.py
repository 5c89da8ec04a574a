"""Crack prediction for inspection photos of any size, in memory.

Holds :class:`Predictor` (a model and what its checkpoint says about feeding it),
:func:`predict_many` (a stream of images, their tiles batched together),
:func:`predict_image` (one image) and the choice between tiling and resizing
(:func:`default_tiling`).

Arrays: an image is ``(H, W, 3)`` uint8 RGB; a :class:`Prediction` is a ``(H, W)``
float32 probability map and a ``(H, W)`` bool mask (``probability > threshold``) at the
image's own resolution, plus :class:`~fissure.prediction.measure.CrackMeasurements`.

How an image goes through the network (:func:`default_tiling`):

* Native-resolution tiles (:mod:`fissure.prediction.tiles`): windows of ``tile`` px
  overlapping by ``overlap`` px, blended smoothly. Defaults: ``tile`` = the checkpoint's
  training size rounded to a multiple of 32, ``overlap = tile // 4``. Images smaller than a
  tile are padded into one.
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar, Union

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor, nn

from ..checkpoint import Checkpoint, load_checkpoint
from ..config import DEFAULT_THRESHOLD, EvalConfig
from ..data.image import _to_uint8, load_image
from ..data.transforms import image_to_tensor
from ..errors import FissureError
from ..progress import progress_bar
from ..runtime import InputPolicy, forward_logits, select_device
from .measure import CrackMeasurements, measure_cracks
from .options import PredictOptions
from .tiles import TILE_MULTIPLE, Job, ResizedJob, TileBatcher, TiledJob, check_overlap

RESIZE_LIMIT = 2
"""Resize-mode checkpoints see a whole image shrunk when both sides are <= this x size."""

DEFAULT_TILE = 256
"""Tile for a bare ``nn.Module``, which carries no training size."""

T = TypeVar("T")
ImageLike = str | Path | Image.Image | np.ndarray
ModelSource = Union["Predictor", nn.Module, str, Path, Checkpoint]
"""What :func:`as_predictor` turns into a :class:`Predictor`."""


@dataclass(frozen=True)
class Prediction:
    """One image's result: its mask, probabilities and measurements, and how it was made.

    ``mode`` is ``"tiled"`` or ``"resize"`` (whole image shrunk); ``tiles`` counts network
    inputs per pass (TTA runs each three times); ``tile``/``overlap`` are None when resized.
    ``threshold`` and ``min_area`` are the values the mask and the measurements used.

    Shapes:
        mask: (H, W) bool, ``probability > threshold``.
        probability: (H, W) float32 in [0, 1].
    """

    mask: np.ndarray
    probability: np.ndarray
    measurements: CrackMeasurements
    threshold: float
    mode: str = "tiled"
    tiles: int = 1
    tile: int | None = None
    overlap: int | None = None
    min_area: int | None = None


@dataclass(frozen=True)
class Tiling:
    """Window ``tile`` and ``overlap`` in px; ``resize_size`` set: shrink small images whole."""

    tile: int
    overlap: int
    resize_size: int | None = None

    def resizes(self, height: int, width: int) -> bool:
        """Whether an image of ``height x width`` is shrunk whole rather than tiled."""
        limit = RESIZE_LIMIT * (self.resize_size or 0)
        return max(height, width) <= limit

    def job(self, image: Tensor) -> Job:
        """The job that takes ``image`` through the network.

        Shapes:
            image: (3, H, W) float, normalised.
        """
        if self.resizes(*image.shape[-2:]):
            assert self.resize_size is not None
            return ResizedJob(image, self.resize_size)
        return TiledJob(image, self.tile, self.overlap)


def round_tile(size: int) -> int:
    """The multiple of 32 nearest to ``size``, at least 32."""
    return max(TILE_MULTIPLE, TILE_MULTIPLE * round(size / TILE_MULTIPLE))


def default_tiling(policy: InputPolicy, options: PredictOptions | None = None) -> Tiling:
    """Tiling for a checkpoint's ``policy`` and the ``tile``/``overlap`` of ``options``.

    See the module docstring for the defaults. ``overlap`` is checked here against the tile
    in effect, which may be the checkpoint's.
    """
    options = options or PredictOptions()
    tile = round_tile(policy.size) if options.tile is None else options.tile
    overlap = tile // 4 if options.overlap is None else check_overlap(options.overlap, tile)
    resize = policy.size if policy.mode == "resize" and options.tile is None else None
    return Tiling(tile, overlap, resize)


@dataclass
class Predictor:
    """A model ready to predict, with what its checkpoint says about feeding it.

    ``policy`` (training mode and size) chooses tiles or a whole-image resize; ``threshold``
    and ``min_area`` are the defaults of :class:`PredictOptions` fields left as None;
    ``amp`` runs the network in mixed precision where the hardware has it.
    """

    model: nn.Module
    policy: InputPolicy = field(default_factory=lambda: InputPolicy("crop", DEFAULT_TILE))
    threshold: float = DEFAULT_THRESHOLD
    min_area: int = EvalConfig.min_area
    amp: bool = True

    @property
    def device(self) -> torch.device:
        """The device the model's weights are on."""
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

    def configured(self, options: PredictOptions) -> Predictor:
        """This predictor with the ``threshold``, ``min_area`` and ``amp`` that ``options``
        set; the fields they leave as None keep the checkpoint's values. Same model."""
        return replace(
            self,
            threshold=self.threshold if options.threshold is None else options.threshold,
            min_area=self.min_area if options.min_area is None else options.min_area,
            amp=self.amp if options.amp is None else options.amp,
        )

    def forward(self, tiles: Tensor) -> Tensor:
        """Logits for a batch of tiles, in mixed precision if ``amp``.

        Shapes:
            tiles: (B, 3, t, t) float, normalised.
            returns: (B, 1, t, t) float32 logits.
        """
        return forward_logits(self.model, tiles, InputPolicy("crop", tiles.shape[-1]), self.amp)


def as_predictor(model_or_checkpoint: ModelSource, device: str = "auto") -> Predictor:
    """A :class:`Predictor` from itself, a checkpoint path or :class:`Checkpoint`, or a model.

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
    job: Job, prob: np.ndarray, predictor: Predictor, px_per_mm: float | None
) -> Prediction:
    """The :class:`Prediction` of a completed job whose ``(H, W)`` probabilities are ``prob``."""
    mask = prob > predictor.threshold
    measurements = measure_cracks(mask, predictor.min_area, px_per_mm)
    return Prediction(
        mask,
        prob,
        measurements,
        predictor.threshold,
        mode=job.mode,
        tiles=job.n_tiles,
        tile=job.tile,
        overlap=job.overlap,
        min_area=predictor.min_area,
    )


def predict_many(
    predictor: Predictor,
    images: Iterable[tuple[T, np.ndarray]],
    options: PredictOptions | None = None,
    *,
    progress: bool = False,
    total: int | None = None,
) -> Iterator[tuple[T, Prediction]]:
    """Predict ``(payload, image)`` pairs; yields ``(payload, Prediction)`` as each image
    completes (not always in input order).

    ``images`` is read lazily, one image ahead of the network. ``options`` (default
    :class:`PredictOptions`) is applied to ``predictor`` here, the one place its
    checkpoint defaults are resolved; its ``device`` is not used, ``predictor`` stays where
    it is. ``total`` sizes the progress bar.

    Shapes:
        image: (H, W, 3) uint8 RGB.
    """
    options = options or PredictOptions()
    predictor = predictor.configured(options)
    tiling = default_tiling(predictor.policy, options)
    image_bar = progress_bar(total=total, desc="images", unit="img", enabled=progress)
    tile_bar = progress_bar(total=0, desc="tiles", unit="tile", enabled=progress, inner=True,
                            leave=False)
    batcher = TileBatcher(predictor.forward, options.batch_size, options.tta, tile_bar.update)
    payloads: dict[int, T] = {}

    def ready(jobs: list[Job]) -> list[tuple[T, Job, np.ndarray]]:
        return [(payloads.pop(id(job)), job, job.probability().numpy()) for job in jobs]

    def finish(items: list[tuple[T, Job, np.ndarray]]) -> Iterator[tuple[T, Prediction]]:
        for payload, job, prob in items:
            image_bar.update(1)
            yield payload, _finish(job, prob, predictor, options.px_per_mm)

    # inference_mode only around the tensor work: it is thread-wide state and must not
    # leak into the caller's code while this generator is suspended at a yield.
    try:
        with _eval_mode(predictor.model):
            for payload, image in images:
                with torch.inference_mode():
                    job = tiling.job(image_to_tensor(image).to(predictor.device))
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
    """An RGB array from a path (gzip too), a PIL image or a uint8 array.

    Paths and PIL images are turned upright by their EXIF orientation; arrays are used as
    they are: ``(H, W)`` gray is repeated, an alpha channel is dropped.

    Shapes:
        returns: (H, W, 3) uint8.
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
    model_or_checkpoint: ModelSource,
    image: ImageLike,
    options: PredictOptions | None = None,
    *,
    progress: bool = False,
) -> Prediction:
    """Predict one image (path, PIL image or array) of any size.

    ``model_or_checkpoint``: a checkpoint path or :class:`Checkpoint` (loaded onto
    ``options.device``), a :class:`Predictor` (load once, predict many) or a bare model.
    ``options`` default to the checkpoint's (``PredictOptions()``); the result's mm fields
    need ``PredictOptions(px_per_mm=...)``.

    Shapes:
        image: (H, W, 3) uint8 RGB, (H, W) gray or (H, W, 4) RGBA, when an array.
        returns: a :class:`Prediction` with ``mask`` and ``probability`` (H, W).
    """
    options = options or PredictOptions()
    predictor = as_predictor(model_or_checkpoint, options.device)
    results = predict_many(predictor, [(None, as_rgb(image))], options, progress=progress, total=1)
    return [prediction for _, prediction in results][0]
