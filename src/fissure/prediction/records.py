"""The tables and GeoJSON of a prediction run: one record per image, one row per crack.

``predictions.csv``/``.json`` hold :func:`prediction_record` per image; ``cracks.csv``
holds :func:`crack_rows` per image (columns :data:`CRACK_FIELDS`); :func:`crack_geojson`
is one image's cracks as a FeatureCollection. :mod:`fissure.prediction.files` says which
files a run writes.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..writes import replacing
from .cracks import CrackAnalysis, CrackRecord, analyse_cracks, crack_outline
from .options import PredictOptions
from .predictor import Prediction, Predictor, Probability, prediction_from

CRACK_FIELDS = ("image", *(f.name for f in fields(CrackRecord)))


def prediction_record(
    source: str,
    paths: dict[str, str | None],
    prediction: Prediction,
    options: PredictOptions,
) -> dict[str, Any]:
    """The CSV/JSON row of one image.

    Where the image and its outputs are, how it was predicted (mode ``tiled``/``resize``,
    tile, overlap, number of tiles, threshold, ``min_area`` and TTA from ``prediction``,
    scale from ``options``) and its measurements.
    """
    height, width = prediction.mask.shape
    return {
        "image": source,
        **paths,
        "width": width,
        "height": height,
        "threshold": prediction.threshold,
        "mode": prediction.mode,
        "tile": prediction.tile,
        "overlap": prediction.overlap,
        "tiles": prediction.tiles,
        "tta": prediction.tta,
        "min_area": prediction.min_area,
        "px_per_mm": options.px_per_mm,
        **prediction.measurements.as_dict(),
    }


TABLES = ("predictions.csv", "predictions.json", "cracks.csv")
"""The run's tables, written once every image is done."""


def drop_tables(out_dir: Path) -> None:
    """Remove the tables an earlier run left in ``out_dir``, before this run's first mask
    replaces one of that run's: a run that then fails leaves masks and no tables, never
    tables that describe other masks."""
    for name in TABLES:
        (out_dir / name).unlink(missing_ok=True)


def with_errors(
    records: list[dict[str, Any] | None], sources: list[str], unread: dict[int, str]
) -> list[dict[str, Any]]:
    """Every image's record in input order, with an ``error`` column: None where it was
    predicted, the reason where it could not be read (its other cells empty).

    ``records[i]`` is None for image ``i`` when it is in ``unread``. Raises a DataError
    when no image could be read.
    """
    kept = [r for r in records if r is not None]
    if not kept:
        reasons = [unread[i] for i in sorted(unread)]
        more = f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else ""
        raise DataError(f"no image could be read: {reasons[0] if reasons else 'none given'}"
                        f"{more}")
    columns = [*kept[0], "error"]
    blank = dict.fromkeys(columns)
    return [
        {**blank, **record, "error": None} if record is not None
        else {**blank, "image": sources[i], "error": unread.get(i, "not predicted")}
        for i, record in enumerate(records)
    ]


def write_records(records: list[dict[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    """``predictions.csv`` (empty cell for None) and ``predictions.json`` (a list), each
    whole or not at all: a run killed while writing leaves the previous file, not a
    truncated one that still parses."""
    csv_path, json_path = out_dir / "predictions.csv", out_dir / "predictions.json"
    with replacing(csv_path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    with replacing(json_path) as tmp:
        tmp.write_text(json.dumps(records, indent=2) + "\n", encoding="utf-8")
    return csv_path, json_path


def analysed_prediction(
    result: Probability, predictor: Predictor, options: PredictOptions
) -> tuple[Prediction, CrackAnalysis]:
    """``result``'s :class:`Prediction` and every crack of its mask, the mask traced once:
    the prediction's summary is the analysis's (same ``min_area``), in mm with
    ``options.px_per_mm``, each crack classed by ``options.width_bounds``."""
    mask = result.probability > predictor.threshold
    analysis = analyse_cracks(mask, predictor.min_area, options.px_per_mm, options.width_bounds)
    prediction = prediction_from(result, predictor, options.px_per_mm, analysis.measurements)
    return prediction, analysis


def crack_rows(source: str, cracks: Iterable[CrackRecord]) -> list[dict[str, Any]]:
    """The ``cracks.csv`` rows of one image: its ``source``, then each record's fields."""
    return [{"image": source, **record.as_dict()} for record in cracks]


def cracks_csv(rows: Iterable[dict[str, Any]]) -> str:
    """``cracks.csv`` as text: :data:`CRACK_FIELDS`, empty cells for None; a header alone
    when there is no crack."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=CRACK_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


@contextmanager
def crack_table(path: Path) -> Iterator[Callable[[Iterable[dict[str, Any]]], None]]:
    """``cracks.csv`` written as the run goes: yields a function that appends one image's
    rows (:func:`crack_rows`), so memory holds one image's cracks however many photos a run
    has. The rows go to a temporary file beside ``path`` that replaces it when the block
    ends normally and is removed on an exception: never a partial table."""
    with replacing(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CRACK_FIELDS)
        writer.writeheader()
        yield writer.writerows


def crack_geojson(analysis: CrackAnalysis, source: str | None = None) -> dict[str, Any]:
    """The GeoJSON FeatureCollection of one image's cracks (see the module docstring).

    Each Feature's ``id`` is the crack's, its properties the crack record (and
    ``image``, the ``source``); the collection also names the image and its size.
    """
    height, width = analysis.labels.shape
    features = [
        {
            "type": "Feature",
            "id": record.id,
            "geometry": {
                "type": "Polygon",
                "coordinates": [ring.tolist() for ring in crack_outline(analysis.labels, record)],
            },
            "properties": {"image": source, **record.as_dict()},
        }
        for record in analysis.cracks
    ]
    return {
        "type": "FeatureCollection",
        "image": source,
        "width": width,
        "height": height,
        "features": features,
    }
