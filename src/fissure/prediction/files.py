"""Prediction over files and folders: finding the images, naming and writing the outputs.

Holds :func:`predict_files` (what ``fissure predict`` runs), :func:`write_outputs` and the
files' bytes (:func:`encode_mask`, :func:`encode_overlay`). The inputs and their output
names come from :mod:`fissure.prediction.inputs`; the tables and GeoJSON are built in
:mod:`fissure.prediction.records`.

For every image, in the output folder (``<name>`` is the image's stem, see
:func:`output_names`):

* ``<name>.png``: binary mask, 0 or 255, lossless, the size of the (EXIF-upright) image;
* ``<name>_prob.png`` (with ``OutputOptions.save_prob``): crack probability scaled to
  0-255, 8-bit;
* ``<name>_overlay.jpg`` (with ``OutputOptions.overlay``): the photo with crack pixels
  painted magenta. JPEG because it is for looking at: a 12-megapixel PNG of a photo is
  ~20 MB and slow to write (``_overlay.png`` where a side is over JPEG's 65,500 px);
* ``<name>.geojson`` (with ``OutputOptions.geojson``): a FeatureCollection with one
  Polygon per crack, its outline in pixel coordinates (x = column, y = row, pixel centres
  on whole numbers; see :func:`~fissure.prediction.cracks.crack_outline`) and its crack
  record as properties, for GIS and annotation tools.

For the run: ``predictions.csv`` and ``predictions.json``, one record per image in input
order (see :func:`prediction_record`), and ``cracks.csv`` (with ``OutputOptions.cracks``,
the default), one row per crack of every image in the same order: the image, then the
fields of :class:`~fissure.prediction.cracks.CrackRecord` (see :func:`crack_rows`). An
image's row in ``predictions.csv`` sums up its rows in ``cracks.csv`` (see
:mod:`fissure.prediction.cracks`). An image that cannot be read gets a row with its reason
in the ``error`` column (empty for the others) and no files; the run goes on. The tables
are written when every image is done; an earlier run's tables in the folder are removed
before the first new mask is written.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.image import decode_image
from ..errors import DataError, SourceUnavailable
from .cracks import CrackAnalysis
from .inputs import Fetch, InputImage, check_inputs_kept, find_inputs, output_names
from .options import OutputOptions, PredictOptions
from .predictor import (
    ModelSource,
    Prediction,
    Probability,
    as_predictor,
    prediction_from,
    stream_probabilities,
)
from .records import (
    analysed_prediction,
    crack_geojson,
    crack_rows,
    crack_table,
    drop_tables,
    prediction_record,
    with_errors,
    write_records,
)
from .threads import BackgroundWriter

OVERLAY_COLOR = (255, 0, 255)
"""Magenta: rare on concrete, unlike red, which rust stains and markings share."""
OVERLAY_ALPHA = 0.75
JPEG_MAX_SIDE = 65_500
"""JPEG's largest side; a longer overlay (a stitched tunnel scan) is written as PNG."""


def overlay_image(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``rgb`` with the ``mask`` pixels blended to magenta.

    Shapes:
        rgb: (H, W, 3) uint8.
        mask: (H, W) bool.
        returns: (H, W, 3) uint8.
    """
    out = rgb.copy()
    painted = rgb[mask].astype(np.float32) * (1 - OVERLAY_ALPHA)
    out[mask] = np.round(painted + OVERLAY_ALPHA * np.asarray(OVERLAY_COLOR)).astype(np.uint8)
    return out


def encode_mask(mask: np.ndarray) -> bytes:
    """``<name>.png``: the mask as a lossless 8-bit PNG, 0 or 255.

    Shapes:
        mask: (H, W) bool.
    """
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_probability(probability: np.ndarray) -> bytes:
    """``<name>_prob.png``: the probability scaled to 0-255, as an 8-bit PNG.

    Shapes:
        probability: (H, W) float in [0, 1].
    """
    buffer = io.BytesIO()
    Image.fromarray(np.round(probability * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def overlay_format(shape: tuple[int, ...]) -> str:
    """``"jpg"`` for the overlay of an image of ``shape`` (H, W, ...), ``"png"`` where a side
    exceeds :data:`JPEG_MAX_SIDE`."""
    return "png" if max(shape[:2]) > JPEG_MAX_SIDE else "jpg"


def encode_overlay(rgb: np.ndarray, mask: np.ndarray) -> bytes:
    """``<name>_overlay.jpg``: :func:`overlay_image` as a JPEG of quality 90 (a PNG where
    :func:`overlay_format` says).

    Shapes:
        rgb: (H, W, 3) uint8.
        mask: (H, W) bool.
    """
    buffer = io.BytesIO()
    image = Image.fromarray(overlay_image(rgb, mask))
    if overlay_format(rgb.shape) == "png":
        image.save(buffer, format="PNG")
    else:
        # 4:4:4 chroma: subsampling would smear one-pixel cracks into their neighbours.
        image.save(buffer, format="JPEG", quality=90, subsampling=0)
    return buffer.getvalue()


def write_outputs(
    out_dir: Path,
    name: str,
    rgb: np.ndarray,
    prediction: Prediction,
    output: OutputOptions | None = None,
) -> dict[str, str | None]:
    """Write ``<name>.png`` and, as ``output`` asks, the probability map and overlay.

    Returns the paths written, None for a file not asked for.

    Shapes:
        rgb: (H, W, 3) uint8, the image ``prediction`` was made from.
    """
    output = output or OutputOptions()
    paths: dict[str, str | None] = {
        "mask": str(out_dir / f"{name}.png"),
        "probability": None,
        "overlay": None,
    }
    (out_dir / f"{name}.png").write_bytes(encode_mask(prediction.mask))
    if output.save_prob:
        prob_path = out_dir / f"{name}_prob.png"
        prob_path.write_bytes(encode_probability(prediction.probability))
        paths["probability"] = str(prob_path)
    if output.overlay:
        overlay_path = out_dir / f"{name}_overlay.{overlay_format(rgb.shape)}"
        overlay_path.write_bytes(encode_overlay(rgb, prediction.mask))
        paths["overlay"] = str(overlay_path)
    return paths


def _image_outputs(
    out_dir: Path,
    name: str,
    image: tuple[str, np.ndarray],
    prediction: Prediction,
    analysis: CrackAnalysis | None,
    options: PredictOptions,
    output: OutputOptions,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Write one image's files; returns its record and its ``cracks.csv`` rows (``analysis``
    is there when cracks or GeoJSON are asked for)."""
    source, rgb = image
    paths = write_outputs(out_dir, name, rgb, prediction, output)
    rows: list[dict[str, Any]] = []
    if analysis is not None:
        rows = crack_rows(source, analysis.cracks)
        if output.geojson:
            paths["geojson"] = str(out_dir / f"{name}.geojson")
            text = json.dumps(crack_geojson(analysis, source))
            Path(paths["geojson"]).write_text(text + "\n", encoding="utf-8")
    return prediction_record(source, paths, prediction, options), rows


def _decoded(image: InputImage, index: int, unread: dict[int, str]) -> np.ndarray | None:
    """The image's pixels, or None with the reason in ``unread[index]``: one unreadable
    photo among thousands is reported, not the end of the run. A failing source (a lost
    session, a network down after its retries) still is."""
    try:
        return decode_image(image.read(), image.source)
    except SourceUnavailable:
        raise
    except DataError as exc:
        unread[index] = str(exc)
        return None


WRITE_QUEUE = 2
"""Images whose outputs may wait for the writer thread: each holds its photo and its
float32 probabilities (84 MB for 12 megapixels)."""


def predict_files(
    checkpoint: ModelSource,
    inputs: Sequence[str | Path],
    out: str | Path,
    options: PredictOptions = PredictOptions(),
    output: OutputOptions = OutputOptions(),
    *,
    fetch: Fetch | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Predict every image in ``inputs`` and write the outputs of the module docstring.

    ``checkpoint`` is anything :func:`~fissure.prediction.predictor.as_predictor` takes,
    loaded onto ``options.device``; ``options`` go to
    :func:`~fissure.prediction.predictor.stream_probabilities` as they are. ``fetch`` lists
    stage inputs (see :func:`find_inputs`). Returns the records, in input order.

    Images are decoded ahead of the network in one background thread and each image's
    mask is thresholded, measured and written in another (:mod:`~fissure.prediction.threads`),
    so the device waits for neither; the files are the same as without the threads. Every
    file is written when this returns; a failure to write one is raised here, naming it.
    """
    predictor = as_predictor(checkpoint, options.device).configured(options)
    out_dir = Path(out)
    images = find_inputs(inputs, output.glob, fetch=fetch, exclude=out_dir)
    names = output_names(images)
    check_inputs_kept(images, names, out_dir, output)
    out_dir.mkdir(parents=True, exist_ok=True)
    unread: dict[int, str] = {}
    # Decoded lazily, so only the images in flight are held in memory.
    decoded = (
        ((i, rgb), rgb)
        for i, image in enumerate(images)
        for rgb in [_decoded(image, i, unread)]
        if rgb is not None
    )
    done: dict[int, dict[str, Any]] = {}
    with ExitStack() as stack:
        add_rows = (stack.enter_context(crack_table(out_dir / "cracks.csv")) if output.cracks
                    else None)

        def write(i: int, rgb: np.ndarray, result: Probability) -> None:
            if not done:  # the tables of an earlier run here would describe other masks
                drop_tables(out_dir)
            analysis: CrackAnalysis | None = None
            if output.cracks or output.geojson:
                prediction, analysis = analysed_prediction(result, predictor, options)
            else:
                prediction = prediction_from(result, predictor, options.px_per_mm)
            source = (images[i].source, rgb)
            done[i], rows = _image_outputs(out_dir, names[i], source, prediction, analysis,
                                           options, output)
            if add_rows is not None:
                add_rows(rows)  # in input order: one writer thread, fed in stream order

        stream = stream_probabilities(predictor, decoded, options, progress=progress,
                                      total=len(images))
        with closing(stream), BackgroundWriter(WRITE_QUEUE) as writer:
            for (i, rgb), result in stream:
                writer.submit(f"{out_dir / names[i]}.png (from {images[i].source})", write,
                              i, rgb, result)
        ordered = with_errors([done.get(i) for i in range(len(images))],
                              [image.source for image in images], unread)
        write_records(ordered, out_dir)
    return ordered
