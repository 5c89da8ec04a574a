"""The app's model: a checkpoint from a file, an upload or a stage, and prediction with a
progress report.

Prediction is :func:`fissure.prediction.predict_image` itself; the only addition is a
:class:`~fissure.prediction.Predictor` that counts the network inputs it has run
(:class:`CountingPredictor`), so that the page can draw a progress bar over the tiles of
a large photo.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from ..checkpoint import Checkpoint, load_checkpoint
from ..data import is_stage_path
from ..errors import CheckpointError, ConfigError
from ..prediction import PredictOptions, Predictor, predict_image
from ..prediction.predictor import default_tiling
from ..runtime import FLIP_VIEWS
from ..snowflake.registry import is_registry_reference
from ..snowflake.registry import read_checkpoint as read_registered
from ..snowflake.runs import read_checkpoint
from .inspection import ModelInfo, PhotoPrediction

Report = Callable[[int, int], None]
"""``report(done, total)``: network inputs run so far, of how many."""


@dataclass
class CountingPredictor(Predictor):
    """A :class:`~fissure.prediction.Predictor` that calls ``report`` after each batch with
    the number of network inputs it held. The network and its results are the same."""

    report: Callable[[int], None] | None = field(default=None, compare=False, repr=False)

    def forward(self, tiles: Tensor) -> Tensor:
        """:meth:`Predictor.forward`, then ``report(len(tiles))``.

        Shapes:
            tiles: (B, 3, t, t) float, normalised.
            returns: (B, 1, t, t) float32 logits.
        """
        logits = super().forward(tiles)
        if self.report is not None:
            self.report(int(tiles.shape[0]))
        return logits


def needs_session(source: str | Path) -> bool:
    """Whether ``source`` is read through Snowflake: a stage path or a registry version."""
    text = str(source).strip()
    return is_stage_path(text) or is_registry_reference(text)


def read_model(source: str | Path, session: Any = None) -> Checkpoint:
    """The checkpoint in a local file, at a stage path or in a Model Registry version
    (``snowflake://NAME/VERSION``), the last two read on ``session``.

    Either of those without a session is a one-line ConfigError.
    """
    text = str(source).strip()
    if needs_session(text) and session is None:
        raise ConfigError(f"{text}: a Snowflake checkpoint needs a Snowflake session")
    if is_registry_reference(text):
        return read_registered(session, text)
    return read_checkpoint(text, session)


def read_uploaded_model(name: str, data: bytes) -> Checkpoint:
    """The checkpoint in uploaded ``data``, read through a private file under the temporary
    folder (the only place Streamlit in Snowflake may write), removed once read."""
    with tempfile.TemporaryDirectory(prefix="fissure-app-") as tmp:
        path = Path(tmp) / (Path(name).name or "checkpoint.pt")
        path.write_bytes(data)
        try:
            checkpoint = load_checkpoint(path)
        except CheckpointError as exc:  # name the upload, not our copy
            raise CheckpointError(str(exc).replace(str(path), name)) from None
    return replace(checkpoint, origin=name)


def model_info(checkpoint: Checkpoint, name: str) -> ModelInfo:
    """What the page and the report say about ``checkpoint`` (given as ``name``)."""
    return ModelInfo(
        checkpoint=name,
        encoder=checkpoint.encoder,
        mode=checkpoint.policy.mode,
        size=checkpoint.policy.size,
        epoch=checkpoint.epoch,
        threshold=checkpoint.threshold,
        min_area=checkpoint.config.eval.min_area,
        fissure_version=checkpoint.fissure_version,
    )


def predictor_for(checkpoint: Checkpoint, device: str = "auto") -> CountingPredictor:
    """The checkpoint's model, loaded as ``fissure predict`` loads it, on ``device``."""
    predictor = CountingPredictor.from_checkpoint(checkpoint, device)
    assert isinstance(predictor, CountingPredictor)
    return predictor


def network_inputs(predictor: Predictor, shape: tuple[int, int], options: PredictOptions) -> int:
    """How many tiles (or resized wholes) a photo of ``shape`` sends through the network,
    TTA's flips included."""
    tiling = default_tiling(predictor.policy, options)
    resized = tiling.resizes(*shape)
    count = 1 if resized else tiling.plan(*shape).n_tiles
    return count * (len(FLIP_VIEWS) if predictor.flips(options) else 1)


def predict_photo(
    predictor: CountingPredictor,
    name: str,
    rgb: np.ndarray,
    options: PredictOptions,
    report: Report | None = None,
) -> PhotoPrediction:
    """Predict one photo as ``fissure predict`` would with ``options``; ``report(done,
    total)`` follows the network inputs. Only the probabilities are kept: thresholds and
    measurements are the page's (see :func:`~fissure.app.inspection.inspect`).

    Shapes:
        rgb: (H, W, 3) uint8.
    """
    total = network_inputs(predictor, rgb.shape[:2], options)
    done = 0

    def step(count: int) -> None:
        nonlocal done
        done += count
        if report is not None:
            report(min(done, total), total)

    prediction = predict_image(replace(predictor, report=step), rgb, options)
    return PhotoPrediction(
        name,
        rgb,
        prediction.probability,
        prediction.mode,
        prediction.tiles,
        prediction.tile,
        prediction.overlap,
    )
