"""Crack prediction for inspection photos of any size, in memory.

Holds :class:`Predictor` (a model and what its checkpoint says about feeding it),
:func:`predict_many` (a stream of images, their tiles batched together),
:func:`predict_image` (one image) and the choice between tiling and resizing
(:func:`default_tiling`).

Arrays: an image is ``(H, W, 3)`` uint8 RGB; a :class:`Prediction` is a ``(H, W)``
float32 probability map and a ``(H, W)`` bool mask (``probability > threshold``) at the
image's own resolution, plus :class:`~fissure.prediction.measure.CrackMeasurements`.

How an image goes through the network (tiles, larger tiles or a whole-image resize) is
decided by :func:`~fissure.prediction.tiling.default_tiling`.

Tiles of several images share batches, so a folder of small images keeps the device busy;
the batch is ``PredictOptions.batch_size``, ``auto`` by default (see
:mod:`~fissure.prediction.autobatch`). A background thread decodes the next images and cuts
them into tiles while the network runs (:mod:`~fissure.prediction.threads`); on CUDA it
copies each image from pinned memory without waiting for the copy. Peak memory is one
batch of tiles plus, for each image in flight (``PredictOptions.prefetch`` read ahead, and
those whose tiles are in a batch), its padded copy and two float32 accumulators.
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
from torchvision import tv_tensors

from ..checkpoint import Checkpoint, load_checkpoint
from ..config import DEFAULT_THRESHOLD, EvalConfig
from ..data.image import _to_uint8, load_image
from ..data.transforms import eval_transform, image_to_tensor
from ..errors import FissureError
from ..progress import progress_bar
from ..runtime import InputPolicy, forward_logits, select_device
from .autobatch import BatchSizes
from .batching import TileBatcher
from .measure import CrackMeasurements, measure_cracks
from .options import PredictOptions
from .threads import prefetch
from .tiles import Job
from .tiling import RESIZE_LIMIT, Tiling, default_tiling, round_tile

__all__ = [
    "RESIZE_LIMIT",
    "ImageLike",
    "ModelSource",
    "Prediction",
    "Predictor",
    "Probability",
    "Tiling",
    "as_predictor",
    "as_rgb",
    "default_tiling",
    "image_on",
    "predict_image",
    "predict_many",
    "prediction_from",
    "round_tile",
    "stream_probabilities",
]

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
    tta: bool = False


@dataclass
class Predictor:
    """A model ready to predict, with what its checkpoint says about feeding it.

    ``policy`` (training mode and size) chooses tiles or a whole-image resize; ``threshold``,
    ``min_area`` and ``tta`` (the checkpoint's ``eval.tta``) are the defaults of
    :class:`PredictOptions` fields left as None; ``amp`` runs the network in mixed precision
    where the hardware has it.
    ``batch_sizes`` remembers the batches ``batch_size="auto"`` probed, shared by the
    copies :meth:`configured` makes.
    """

    model: nn.Module
    policy: InputPolicy = field(default_factory=lambda: InputPolicy("crop", DEFAULT_TILE))
    threshold: float = DEFAULT_THRESHOLD
    min_area: int = EvalConfig.min_area
    amp: bool = True
    tta: bool = False
    batch_sizes: dict[tuple, int] = field(default_factory=dict, compare=False, repr=False)

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
        return cls(model, ckpt.policy, ckpt.threshold, ckpt.config.eval.min_area, ckpt.policy.amp,
                   ckpt.config.eval.tta)

    def configured(self, options: PredictOptions) -> Predictor:
        """This predictor with the ``threshold``, ``min_area``, ``amp`` and ``tta`` that
        ``options`` set; the fields they leave as None keep the checkpoint's values. Same
        model."""
        return replace(
            self,
            threshold=self.threshold if options.threshold is None else options.threshold,
            min_area=self.min_area if options.min_area is None else options.min_area,
            amp=self.amp if options.amp is None else options.amp,
            tta=self.flips(options),
        )

    def flips(self, options: PredictOptions) -> bool:
        """Whether ``options`` average the flips: theirs if set, else the checkpoint's."""
        return self.tta if options.tta is None else options.tta

    def forward(self, tiles: Tensor) -> Tensor:
        """Logits for a batch of tiles, in mixed precision if ``amp``.

        Shapes:
            tiles: (B, 3, t, t) float, normalised.
            returns: (B, 1, t, t) float32 logits.
        """
        return forward_logits(self.model, tiles, InputPolicy("crop", tiles.shape[-1]), self.amp)

    def batch_size(self, setting: int | str) -> BatchSizes:
        """The batch per input shape for ``PredictOptions.batch_size`` ``setting``; ``auto``
        probes this model's forward pass (not :meth:`forward`, which subclasses may count)
        once per shape and precision."""

        def network(tiles: Tensor) -> Tensor:
            return forward_logits(self.model, tiles, InputPolicy("crop", tiles.shape[-1]), self.amp)

        return BatchSizes(setting, network, self.device, self.batch_sizes, key=(self.amp,))


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


@dataclass(frozen=True)
class Probability:
    """One image's blended ``(H, W)`` float32 probabilities and how they were made (the
    fields of :class:`Prediction` of the same names)."""

    probability: np.ndarray
    mode: str
    tiles: int
    tile: int | None
    overlap: int | None

    @classmethod
    def of(cls, job: Job) -> Probability:
        """The result of a completed job, on the CPU."""
        prob = job.probability().numpy()
        return cls(prob, job.mode, job.n_tiles, job.tile, job.overlap)


def prediction_from(
    result: Probability,
    predictor: Predictor,
    px_per_mm: float | None = None,
    measurements: CrackMeasurements | None = None,
) -> Prediction:
    """The :class:`Prediction` of ``result``: mask at ``predictor.threshold``, measured.

    ``measurements``: the same mask's, already taken (a crack analysis's summary), so that
    the mask is not traced a second time.
    """
    mask = result.probability > predictor.threshold
    if measurements is None:
        measurements = measure_cracks(mask, predictor.min_area, px_per_mm)
    return Prediction(
        mask,
        result.probability,
        measurements,
        predictor.threshold,
        mode=result.mode,
        tiles=result.tiles,
        tile=result.tile,
        overlap=result.overlap,
        min_area=predictor.min_area,
        tta=predictor.tta,
    )


def image_on(device: torch.device, image: np.ndarray) -> Tensor:
    """``image`` normalised for the network, on ``device``.

    On CUDA the uint8 image goes over (a quarter of the float32 bytes) from pinned memory
    without the caller waiting, and is normalised there; elsewhere
    :func:`~fissure.data.transforms.image_to_tensor` as ``evaluate`` does.

    Shapes:
        image: (H, W, 3) uint8.
        returns: (3, H, W) float32.
    """
    if device.type != "cuda":
        return image_to_tensor(image).to(device)
    raw = torch.from_numpy(image).pin_memory().to(device, non_blocking=True)
    chw = tv_tensors.Image(raw.permute(2, 0, 1).contiguous())
    return eval_transform()(chw).as_subclass(Tensor)


def stream_probabilities(
    predictor: Predictor,
    images: Iterable[tuple[T, np.ndarray]],
    options: PredictOptions | None = None,
    *,
    progress: bool = False,
    total: int | None = None,
) -> Iterator[tuple[T, Probability]]:
    """The probabilities of ``(payload, image)`` pairs, as :func:`predict_many` makes them,
    before any threshold or measurement; yields ``(payload, Probability)`` as each image
    completes (not always in input order).

    ``options.prefetch`` images are decoded and tiled ahead in a background thread (``0``:
    in this thread, one ahead of the network); ``options.batch_size`` tiles go through the
    network at once. ``predictor`` is used as it is (see :meth:`Predictor.configured`).

    Shapes:
        image: (H, W, 3) uint8 RGB.
    """
    options = options or PredictOptions()
    tiling, device = default_tiling(predictor.policy, options), predictor.device
    image_bar = progress_bar(total=total, desc="images", unit="img", enabled=progress)
    tile_bar = progress_bar(total=0, desc="tiles", unit="tile", enabled=progress, inner=True,
                            leave=False)
    sizes = predictor.batch_size(options.batch_size)
    batcher = TileBatcher(predictor.forward, sizes, predictor.flips(options), tile_bar.update)
    payloads: dict[int, T] = {}

    def prepare(item: tuple[T, np.ndarray]) -> tuple[T, Job]:
        with torch.inference_mode():
            return item[0], tiling.job(image_on(device, item[1]))

    def ready(jobs: list[Job]) -> list[tuple[T, Probability]]:
        image_bar.update(len(jobs))
        return [(payloads.pop(id(job)), Probability.of(job)) for job in jobs]

    jobs = prefetch(images, prepare, options.prefetch)
    # inference_mode only around the tensor work: it is thread-wide state and must not
    # leak into the caller's code while this generator is suspended at a yield.
    try:
        with _eval_mode(predictor.model):
            for payload, job in jobs:
                with torch.inference_mode():
                    payloads[id(job)] = payload
                    tile_bar.total += job.n_tiles
                    tile_bar.refresh()
                    done = ready(batcher.add(job))
                yield from done
            with torch.inference_mode():
                done = ready(batcher.flush())
            yield from done
    finally:
        jobs.close()
        tile_bar.close()
        image_bar.close()


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

    ``images`` is read lazily, ``options.prefetch`` images ahead of the network, in a
    background thread (see :func:`stream_probabilities`). ``options`` (default
    :class:`PredictOptions`) is applied to ``predictor`` here, the one place its
    checkpoint defaults are resolved; its ``device`` is not used, ``predictor`` stays where
    it is. ``total`` sizes the progress bar.

    Shapes:
        image: (H, W, 3) uint8 RGB.
    """
    options = options or PredictOptions()
    predictor = predictor.configured(options)
    stream = stream_probabilities(predictor, images, options, progress=progress, total=total)
    with contextlib.closing(stream):
        for payload, result in stream:
            yield payload, prediction_from(result, predictor, options.px_per_mm)


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
