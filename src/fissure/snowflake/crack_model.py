"""fissure's predictor as a Snowflake Model Registry ``CustomModel``: :class:`CrackModel`.

The registry versions it (see :mod:`fissure.snowflake.registry`) and Snowflake runs its
inference function, ``PREDICT``, on a warehouse or a compute pool, over a table of images
(``ModelVersion.run`` or SQL ``MODEL!PREDICT``). It runs just as well here on a pandas
DataFrame, which is how the tests check it against ``fissure predict``.

Input, one row per image (:data:`INPUT_COLUMNS`; a column left out of a local DataFrame
counts as all null):

* ``IMAGE`` (binary): the image file's bytes (PNG, JPEG, ... or gzip of one); or null and
* ``PATH`` (string): where to read it: a stage path (``@DB.SCH.STAGE/photos/a.jpg``), a
  ``snow://`` or scoped URL, read with ``SnowflakeFile`` (inside Snowflake the native
  reader); any other text is a local file. ``IMAGE`` wins when both are set.
* ``PX_PER_MM`` (double, null for none): the image scale, which fills the ``*_MM*`` columns.

Output, one row per input row in the same order (:data:`OUTPUT_COLUMNS`): ``MASK_PNG``, the
bytes ``fissure predict`` writes as ``<stem>.png`` (0/255, the image's size); ``WIDTH`` and
``HEIGHT``; the :class:`~fissure.prediction.measure.CrackMeasurements` fields in upper case
(``AREA_PX``, ``AREA_PCT``, ``N_SEGMENTS``, ``LENGTH_PX``, ``MAX_WIDTH_PX``,
``MEAN_WIDTH_PX``, and ``AREA_MM2``, ``LENGTH_MM``, ``MAX_WIDTH_MM``, ``MEAN_WIDTH_MM``,
NaN without a scale); ``THRESHOLD`` and ``MIN_AREA`` used, ``MODE`` (``tiled``/``resize``)
and ``TILES``; ``ERROR``, empty when the row went well. A row whose image cannot be read or
decoded does not fail the whole call (one bad photo in thousands): its ``ERROR`` says why,
its ``MASK_PNG`` is empty, its whole numbers are -1 and its measurements NaN.

This module is imported only where ``snowflake-ml-python`` is installed (it subclasses
``CustomModel``). It must not use ``from __future__ import annotations``: the library checks
the inference function's annotations to be the ``pandas.DataFrame`` class itself.
"""

import math
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from snowflake.ml.model import custom_model

from ..checkpoint import Checkpoint, load_checkpoint
from ..data.image import decode_image, read_bytes
from ..errors import FissureError
from ..prediction.files import encode_mask
from ..prediction.measure import CrackMeasurements
from ..prediction.options import PredictOptions
from ..prediction.predictor import Prediction, Predictor, predict_many

ARTIFACT = "checkpoint"
"""The ``ModelContext`` artifact holding the fissure checkpoint file."""
IMAGE, PATH, SCALE = "IMAGE", "PATH", "PX_PER_MM"
INPUT_COLUMNS = (IMAGE, PATH, SCALE)
MEASURE_COLUMNS = tuple(f.name.upper() for f in fields(CrackMeasurements))
OUTPUT_COLUMNS = ("MASK_PNG", "WIDTH", "HEIGHT", *MEASURE_COLUMNS, "THRESHOLD", "MIN_AREA",
                  "MODE", "TILES", "ERROR")
_INTS = {"WIDTH", "HEIGHT", "AREA_PX", "N_SEGMENTS", "MIN_AREA", "TILES"}
_STAGE_PREFIXES = ("@", "snow://", "https://")

Reader = Callable[[str], bytes]
"""``reader(path)``: the bytes of the file a ``PATH`` cell names."""


def read_path(path: str) -> bytes:
    """The bytes a ``PATH`` cell names: stage files through ``SnowflakeFile`` (the native
    reader inside Snowflake; on a client it needs one active session), else a local file."""
    if not path.startswith(_STAGE_PREFIXES):
        return read_bytes(path)
    from snowflake.snowpark.files import SnowflakeFile

    with SnowflakeFile.open(path, "rb", require_scoped_url=False) as handle:
        return handle.read()


def _cell(frame: pd.DataFrame, column: str, row: int) -> Any:
    """``frame[column]`` at position ``row``; None for a missing column or a null cell."""
    if column not in frame.columns:
        return None
    value = frame[column].iloc[row]
    if isinstance(value, (bytes, bytearray, memoryview, str)):
        return value
    return None if value is None or pd.isna(value) else value


def _scale(value: Any) -> float | None:
    """A ``PX_PER_MM`` cell as a positive float, or None (null, NaN, or not positive)."""
    if value is None:
        return None
    scale = float(value)
    return scale if scale > 0 else None


def _result_row(prediction: Prediction) -> dict[str, Any]:
    """The output row of one predicted image."""
    height, width = prediction.mask.shape
    measured = {key.upper(): value for key, value in prediction.measurements.as_dict().items()}
    return {"MASK_PNG": encode_mask(prediction.mask), "WIDTH": width, "HEIGHT": height,
            **{key: math.nan if value is None else value for key, value in measured.items()},
            "THRESHOLD": float(prediction.threshold), "MIN_AREA": prediction.min_area,
            "MODE": prediction.mode, "TILES": prediction.tiles, "ERROR": ""}


def _failed_row(error: str, threshold: float) -> dict[str, Any]:
    """The output row of an image that could not be read or decoded."""
    row: dict[str, Any] = {key: -1 if key in _INTS else math.nan for key in OUTPUT_COLUMNS}
    row.update({"MASK_PNG": b"", "THRESHOLD": threshold, "MODE": "", "ERROR": error})
    return row


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The output table, its columns typed the same whatever the rows hold."""
    frame = pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))
    for column in OUTPUT_COLUMNS:
        if column in _INTS:
            frame[column] = frame[column].astype("int64")
        elif column in ("MASK_PNG", "MODE", "ERROR"):
            frame[column] = frame[column].astype(object)
        else:
            frame[column] = frame[column].astype("float64")
    return frame


class CrackModel(custom_model.CustomModel):
    """A fissure checkpoint ready to predict tables of images (see the module docstring).

    The checkpoint file is the ``ModelContext`` artifact :data:`ARTIFACT`; it is loaded
    once, when the model is built (in Snowflake: once per process that serves it).
    ``reader`` reads the ``PATH`` cells (default :func:`read_path`); ``device`` is where
    the network runs (``auto``: CUDA on a GPU compute pool, else the CPU).
    """

    def __init__(self, context: custom_model.ModelContext | None = None, *,
                 reader: Reader | None = None, device: str = "auto") -> None:
        super().__init__(context)
        self.checkpoint: Checkpoint = load_checkpoint(self.context.path(ARTIFACT))
        self.predictor = Predictor.from_checkpoint(self.checkpoint, device)
        self.reader: Reader = reader or read_path

    def _images(self, frame: pd.DataFrame, rows: list[int],
                failed: dict[int, str]) -> Iterator[tuple[int, np.ndarray]]:
        """``(row, RGB array)`` of each readable image of ``rows``, decoded lazily; the
        others go into ``failed`` as ``{row: reason}``."""
        for row in rows:
            data, path = _cell(frame, IMAGE, row), _cell(frame, PATH, row)
            name = str(path) if path is not None else f"row {row}"
            try:
                if data is None:
                    if path is None:
                        raise FissureError(f"row {row}: neither {IMAGE} nor {PATH} is given")
                    data = self.reader(str(path))
                yield row, decode_image(bytes(data), name)
            except Exception as exc:  # any reader's error: this row fails, not the call
                failed[row] = str(exc) if isinstance(exc, FissureError) else f"{name}: {exc}"

    @custom_model.inference_api
    def predict(self, input: pd.DataFrame) -> pd.DataFrame:
        """One output row per input row; see the module docstring for the columns."""
        groups: dict[float | None, list[int]] = {}
        for row in range(len(input)):
            groups.setdefault(_scale(_cell(input, SCALE, row)), []).append(row)
        done: dict[int, dict[str, Any]] = {}
        failed: dict[int, str] = {}
        # One pass per scale: the scale is a run option; tiles of a pass share batches.
        for scale, rows in groups.items():
            images = self._images(input, rows, failed)
            for row, prediction in predict_many(self.predictor, images,
                                                PredictOptions(px_per_mm=scale)):
                done[row] = _result_row(prediction)
        threshold = float(self.predictor.threshold)
        return _frame([done[row] if row in done else _failed_row(failed[row], threshold)
                       for row in range(len(input))])


def input_frame(images: list[bytes] | None = None, paths: list[str] | None = None,
                px_per_mm: list[float | None] | float | None = None) -> pd.DataFrame:
    """The input table of ``PREDICT``: every column of :data:`INPUT_COLUMNS`, nulls where
    not given. ``images`` or ``paths`` (or both) give one entry per row; ``px_per_mm`` is a
    list, or one scale for all rows."""
    count = len(images if images is not None else paths or [])
    if not count or (images is not None and paths is not None and len(paths) != count):
        raise FissureError("input_frame: give images or paths, one entry per row")
    scales = px_per_mm if isinstance(px_per_mm, list) else [px_per_mm] * count
    if len(scales) != count:
        raise FissureError(f"input_frame: {len(scales)} px_per_mm values for {count} rows")
    return pd.DataFrame({
        IMAGE: pd.Series(images if images is not None else [None] * count, dtype=object),
        PATH: pd.Series(paths if paths is not None else [None] * count, dtype=object),
        SCALE: pd.Series([math.nan if s is None else float(s) for s in scales], dtype="float64"),
    })


def sample_input(size: int = 32) -> pd.DataFrame:
    """Two rows the registry infers ``PREDICT``'s signature from: a small gray PNG, with and
    without a scale, so that every input and output column has a value and a type."""
    from ..prediction.files import encode_probability

    ramp = np.tile(np.linspace(0.2, 0.8, size, dtype=np.float32), (size, 1))
    png = encode_probability(ramp)  # any small valid PNG will do
    return input_frame([png, png], ["sample.png", "sample.png"], [None, 4.0])


def load_local(checkpoint: str | Path, **kwargs: Any) -> CrackModel:
    """The :class:`CrackModel` of a local checkpoint file, as the registry would build it."""
    return CrackModel(custom_model.ModelContext(**{ARTIFACT: str(checkpoint)}), **kwargs)
