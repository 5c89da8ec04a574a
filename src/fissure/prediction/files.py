"""Prediction over files and folders: finding the images, naming and writing the outputs.

Holds :func:`predict_files` (what ``fissure predict`` runs), the inputs
(:class:`InputImage`, :func:`find_inputs`, and :data:`Fetch`, the hook for stage paths),
:func:`output_names`, :func:`write_outputs` and the files' bytes (:func:`encode_mask`,
:func:`encode_overlay`). The tables and GeoJSON are built in :mod:`fissure.prediction.records`.

For every image, in the output folder (``<name>`` is the image's stem, see
:func:`output_names`):

* ``<name>.png``: binary mask, 0 or 255, lossless, the size of the (EXIF-upright) image;
* ``<name>_prob.png`` (with ``OutputOptions.save_prob``): crack probability scaled to
  0-255, 8-bit;
* ``<name>_overlay.jpg`` (with ``OutputOptions.overlay``): the photo with crack pixels
  painted magenta. JPEG because it is for looking at: a 12-megapixel PNG of a photo is
  ~20 MB and slow to write;
* ``<name>.geojson`` (with ``OutputOptions.geojson``): a FeatureCollection with one
  Polygon per crack, its outline in pixel coordinates (x = column, y = row, pixel centres
  on whole numbers; see :func:`~fissure.prediction.cracks.crack_outline`) and its crack
  record as properties, for GIS and annotation tools.

For the run: ``predictions.csv`` and ``predictions.json``, one record per image in input
order (see :func:`prediction_record`), and ``cracks.csv`` (with ``OutputOptions.cracks``,
the default), one row per crack of every image in the same order: the image, then the
fields of :class:`~fissure.prediction.cracks.CrackRecord` (see :func:`crack_rows`). An
image's row in ``predictions.csv`` sums up its rows in ``cracks.csv`` (see
:mod:`fissure.prediction.cracks`).
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from ..data import is_stage_path
from ..data.image import decode_image, image_stem, is_image_name, read_bytes
from ..errors import DataError, FissureError
from ..writes import replacing
from .cracks import CrackAnalysis
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
    cracks_csv,
    prediction_record,
    write_records,
)
from .threads import BackgroundWriter

OVERLAY_COLOR = (255, 0, 255)
"""Magenta: rare on concrete, unlike red, which rust stains and markings share."""
OVERLAY_ALPHA = 0.75
"""The columns of ``cracks.csv``."""


@dataclass(frozen=True)
class InputImage:
    """One image to predict.

    ``source`` is what the records report (a path as given, or a stage path); ``read``
    returns the file's bytes (plain or gzip); ``location`` is its full path, which tells
    images with the same file name apart (see :func:`output_names`).
    """

    source: str
    read: Callable[[], bytes]
    location: PurePosixPath

    @classmethod
    def from_path(cls, path: Path) -> InputImage:
        """A local file, read when needed."""
        return cls(str(path), partial(read_bytes, path), PurePosixPath(path.resolve().as_posix()))


Fetch = Callable[[str, str], Iterable[InputImage]]
"""``fetch(stage_path, pattern)``: the images under a stage path such as ``@stage/photos``."""


def _inside(path: Path, folder: Path | None) -> bool:
    return folder is not None and path.resolve().is_relative_to(folder)


def find_inputs(
    inputs: Sequence[str | Path],
    pattern: str = "**/*",
    *,
    fetch: Fetch | None = None,
    exclude: str | Path | None = None,
) -> list[InputImage]:
    """The images named by ``inputs``: files, folders searched with ``pattern``, stage paths.

    Folder matches must have an image suffix (``.png``, ``.jpg``, ... optionally ``.gz``);
    files named directly are taken as they are. Anything under ``exclude`` (the output
    folder) is skipped so that a rerun does not predict its own masks. An input starting
    with ``@`` is a stage path and needs ``fetch``. Repeated images are listed once.
    """
    skip = Path(exclude).resolve() if exclude is not None else None
    found: list[InputImage] = []
    for item in inputs:
        text = str(item)
        if is_stage_path(text):
            if fetch is None:
                raise FissureError(f"{text}: stage inputs need the Snowflake source")
            found.extend(fetch(text, pattern))
            continue
        path = Path(item)
        if path.is_dir():
            found.extend(
                InputImage.from_path(p)
                for p in sorted(path.glob(pattern))
                if p.is_file() and is_image_name(p.name) and not _inside(p, skip)
            )
        elif path.is_file():
            found.append(InputImage.from_path(path))
        else:
            raise DataError(f"{path}: no such file or folder")
    if not found:
        raise DataError(f"no image files found in {', '.join(map(str, inputs))}")
    unique = {image.location: image for image in reversed(found)}
    return [image for image in found if unique[image.location] is image]


def _by_folder(locations: list[PurePosixPath], stem: str) -> list[str]:
    """``site1__img`` and ``site2__img``: the path below the folders the images share."""
    parents = [loc.parent.parts for loc in locations]
    shared = 0
    while all(len(p) > shared and p[shared] == parents[0][shared] for p in parents):
        shared += 1
    return ["__".join((*p[shared:], stem)) for p in parents]


def _by_suffix(locations: list[PurePosixPath], name: str) -> list[str]:
    """``x__png`` and ``x__jpg``: the file suffix, for same-named images in one folder."""
    suffixes = [loc.name[len(image_stem(loc.name)) :].lstrip(".") for loc in locations]
    return [f"{name}__{sfx.replace('.', '_')}" if sfx else name for sfx in suffixes]


def output_names(images: Sequence[InputImage]) -> list[str]:
    """Base names of each image's output files, unique within a run.

    An image's stem when no other input shares it. Images that share a stem are named by
    their folders below the deepest folder they all share, joined with ``__``
    (``a/x.png``, ``b/x.png`` -> ``a__x``, ``b__x``); same folder, different suffix gets
    the suffix (``x.png``, ``x.jpg`` -> ``x__png``, ``x__jpg``). Any name still taken (also
    by another image's ``_prob``/``_overlay`` file, ignoring case) gets ``__2``, ``__3``...
    """
    locations = [image.location for image in images]
    names = [image_stem(loc.name) for loc in locations]
    for rename in (_by_folder, _by_suffix):
        for name in [n for n, count in Counter(names).items() if count > 1]:
            idx = [i for i, n in enumerate(names) if n == name]
            for i, new in zip(idx, rename([locations[i] for i in idx], name), strict=True):
                names[i] = new
    taken: set[str] = set()
    unique = []
    for name in names:
        candidate, k = name, 1
        while {f"{candidate}{s}".casefold() for s in ("", "_prob", "_overlay")} & taken:
            k += 1
            candidate = f"{name}__{k}"
        taken |= {f"{candidate}{s}".casefold() for s in ("", "_prob", "_overlay")}
        unique.append(candidate)
    return unique


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


def encode_overlay(rgb: np.ndarray, mask: np.ndarray) -> bytes:
    """``<name>_overlay.jpg``: :func:`overlay_image` as a JPEG of quality 90.

    Shapes:
        rgb: (H, W, 3) uint8.
        mask: (H, W) bool.
    """
    buffer = io.BytesIO()
    # 4:4:4 chroma: subsampling would smear one-pixel cracks into their neighbours.
    Image.fromarray(overlay_image(rgb, mask)).save(buffer, format="JPEG", quality=90, subsampling=0)
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
        overlay_path = out_dir / f"{name}_overlay.jpg"
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
    out_dir.mkdir(parents=True, exist_ok=True)
    # Decoded lazily, so only the images in flight are held in memory.
    decoded = (
        ((i, rgb), rgb)
        for i, image in enumerate(images)
        for rgb in [decode_image(image.read(), image.source)]
    )
    done: dict[int, tuple[dict[str, Any], list[dict[str, Any]]]] = {}

    def write(i: int, rgb: np.ndarray, result: Probability) -> None:
        analysis: CrackAnalysis | None = None
        if output.cracks or output.geojson:
            prediction, analysis = analysed_prediction(result, predictor, options)
        else:
            prediction = prediction_from(result, predictor, options.px_per_mm)
        source = (images[i].source, rgb)
        done[i] = _image_outputs(out_dir, names[i], source, prediction, analysis, options,
                                 output)

    stream = stream_probabilities(predictor, decoded, options, progress=progress,
                                  total=len(images))
    with closing(stream), BackgroundWriter(WRITE_QUEUE) as writer:
        for (i, rgb), result in stream:
            writer.submit(f"{out_dir / names[i]}.png (from {images[i].source})", write, i, rgb,
                          result)
    ordered = [done[i][0] for i in sorted(done)]
    write_records(ordered, out_dir)
    if output.cracks:
        rows = [row for i in sorted(done) for row in done[i][1]]
        with replacing(out_dir / "cracks.csv") as tmp:
            tmp.write_text(cracks_csv(rows), encoding="utf-8", newline="")
    return ordered
