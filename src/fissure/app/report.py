"""The one-page HTML inspection report of a photo: the photo, its overlay, the crack table,
the model and the settings used.

The report is a single self-contained file (images embedded as JPEG data URIs), to be
opened in any browser, mailed or archived with the inspection. The images are shrunk to
at most :data:`REPORT_SIDE` px on their long side to keep the file small; the crack table
holds the full-resolution measurements.
"""

from __future__ import annotations

import base64
import html
import io
import time
from collections.abc import Iterable

import numpy as np
from PIL import Image

from .. import __version__
from ..prediction.cracks import CrackRecord
from ..prediction.files import overlay_image
from .inspection import Inspection, ModelInfo, PhotoPrediction, Tuning

REPORT_SIDE = 2000
"""Longest side in px of the photo and overlay embedded in the report."""

CRACK_COLUMNS = (
    ("id", "id"),
    ("length_px", "length px"),
    ("max_width_px", "max width px"),
    ("mean_width_px", "mean width px"),
    ("length_mm", "length mm"),
    ("max_width_mm", "max width mm"),
    ("width_class", "width class"),
    ("orientation", "orientation"),
    ("orientation_deg", "angle deg"),
    ("area_px", "area px"),
    ("x_min", "x min"),
    ("y_min", "y min"),
    ("x_max", "x max"),
    ("y_max", "y max"),
)
"""The report's crack table: record field and heading."""

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; }
td.text, th.text { text-align: left; }
.images { display: flex; gap: 1em; flex-wrap: wrap; }
.images figure { margin: 0; flex: 1 1 45%; }
.images img { width: 100%; border: 1px solid #ccc; }
.note { color: #666; font-size: 0.85em; }
"""


def _jpeg_uri(rgb: np.ndarray) -> str:
    image = Image.fromarray(rgb)
    image.thumbnail((REPORT_SIDE, REPORT_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _cell(value: object) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.1f}"
    return html.escape(str(value))


def _rows(pairs: Iterable[tuple[str, object]]) -> str:
    return "".join(
        f'<tr><th class="text">{html.escape(k)}</th><td class="text">{_cell(v)}</td></tr>'
        for k, v in pairs
    )


def _crack_table(cracks: Iterable[CrackRecord]) -> str:
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in CRACK_COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(getattr(c, key))}</td>" for key, _ in CRACK_COLUMNS) + "</tr>"
        for c in cracks
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def inspection_report(
    photo: PhotoPrediction,
    inspection: Inspection,
    model: ModelInfo,
    tuning: Tuning,
    *,
    when: float | None = None,
) -> str:
    """The report of ``photo`` at ``tuning``, made with ``model``, as one HTML page.

    ``when`` (seconds since the epoch, default now) dates it.
    """
    summary = inspection.analysis.measurements
    height, width = photo.probability.shape
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(when))
    scale = f"{tuning.px_per_mm:g} px/mm" if tuning.px_per_mm else "not given (no mm figures)"
    settings = [
        ("checkpoint", model.checkpoint),
        (
            "model",
            f"{model.encoder} U-Net, trained on {model.mode} {model.size} px, "
            f"epoch {model.epoch}, fissure {model.fissure_version}",
        ),
        ("threshold", f"{tuning.threshold:g} (checkpoint's: {model.threshold:g})"),
        ("minimum crack area", f"{tuning.min_area} px"),
        ("scale", scale),
        (
            "width classes (mm)",
            "hairline < {:g} <= fine < {:g} <= medium < {:g} <= wide".format(*tuning.width_bounds),
        ),
        (
            "prediction",
            f"{photo.mode}, {photo.tiles} network input(s)"
            + (f" of {photo.tile} px, overlap {photo.overlap}" if photo.tile else ""),
        ),
    ]
    totals = [
        ("cracks", summary.n_segments),
        (
            "total length",
            f"{summary.length_px:.1f} px"
            + (f" = {summary.length_mm:.2f} mm" if summary.length_mm is not None else ""),
        ),
        (
            "max width",
            f"{summary.max_width_px:.1f} px"
            + (f" = {summary.max_width_mm:.3f} mm" if summary.max_width_mm is not None else ""),
        ),
        ("crack area", f"{summary.area_px} px ({summary.area_pct:.3f} % of the photo)"),
    ]
    cracks = inspection.analysis.cracks
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Inspection report: {html.escape(photo.name)}</title><style>{_STYLE}</style></head>
<body>
<h1>Inspection report: {html.escape(photo.name)}</h1>
<p class="note">{width} x {height} px &middot; {stamp} &middot; fissure {__version__}</p>
<div class="images">
<figure><img alt="photo" src="{_jpeg_uri(photo.rgb)}"><figcaption>Photo</figcaption></figure>
<figure><img alt="overlay" src="{_jpeg_uri(overlay_image(photo.rgb, inspection.mask))}">
<figcaption>Cracks (magenta) at threshold {tuning.threshold:g}</figcaption></figure>
</div>
<h2>Summary</h2><table>{_rows(totals)}</table>
<h2>Cracks ({len(cracks)})</h2>{_crack_table(cracks)}
<h2>Model and settings</h2><table>{_rows(settings)}</table>
<p class="note">Lengths follow each crack's centre line; widths are read across it
(2d &minus; 1 px, d the distance to the background); a crack is an 8-connected component
of at least the minimum area. Images above are shrunk to {REPORT_SIDE} px at most.</p>
</body></html>
"""
