"""The Inspect page: a photo, its cracks and their measurements, tuned live.

The model runs once per photo (and model and tiling); the probability map is kept in
``st.session_state``, so the threshold, minimum area and scale only re-threshold and
re-measure it (see :mod:`fissure.app.inspection`). Nothing is written to disk but an
uploaded checkpoint, briefly, under the temporary folder.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from ..errors import FissureError
from ..prediction import PredictOptions
from ..prediction.cracks import DEFAULT_WIDTH_BOUNDS, check_width_bounds
from .inspection import (
    ZOOMS,
    Inspection,
    ModelInfo,
    PhotoPrediction,
    Tuning,
    View,
    crack_centre,
    cracks_table,
    inspect,
    mask_png,
    overlay_jpeg,
    render_view,
    stem,
)
from .models import (
    CountingPredictor,
    model_info,
    needs_session,
    predict_photo,
    predictor_for,
    read_model,
    read_uploaded_model,
)
from .report import inspection_report
from .sources import PhotoFile, folder_photos, read_photo, stage_photos, uploaded_photos

KEPT_PREDICTIONS = 4
"""Photos whose probability maps stay in the session (each is 4 bytes per pixel)."""
SOURCES = ("Upload", "Folder", "Stage")
TABLE_COLUMNS = {
    "id": ("id", None),
    "length_mm": ("length mm", "%.1f"),
    "max_width_mm": ("max width mm", "%.2f"),
    "width_class": ("class", None),
    "orientation": ("orientation", None),
    "length_px": ("length px", "%.1f"),
    "max_width_px": ("max width px", "%.1f"),
    "mean_width_mm": ("mean width mm", "%.2f"),
    "mean_width_px": ("mean width px", "%.1f"),
    "orientation_deg": ("angle °", "%.0f"),
    "area_px": ("area px", None),
}
"""The crack table's visible columns, headings and number formats; the rest (box, area in
mm) are hidden, and so are the mm columns without a scale. The class reads None then."""


@st.cache_resource(show_spinner="Opening the Snowflake session...")
def _session(connection: str) -> Any:
    from ..snowflake.session import open_session

    return open_session(connection or None)


Model = tuple[CountingPredictor, ModelInfo, str]
"""A loaded model, what the report says of it, and a token new at every load (a cached
prediction belongs to one load: a reloaded checkpoint may hold other weights)."""


def _file_stamp(source: str) -> str:
    """A local checkpoint's modification time and size: a run that rewrites ``best.pt``
    makes the page load it again. Empty for stage paths and registry versions."""
    path = Path(source.strip()).expanduser()
    try:
        stat = path.stat()
    except (OSError, ValueError):
        return ""
    return f"{stat.st_mtime_ns}:{stat.st_size}"


@st.cache_resource(show_spinner="Loading the model...", max_entries=2)
def _model_from(source: str, connection: str, stamp: str) -> Model:
    """The model at ``source``; ``stamp`` (:func:`_file_stamp`) is only part of the cache
    key, so that a rewritten file is loaded again."""
    session = _session(connection) if needs_session(source) else None
    checkpoint = read_model(source, session)
    return predictor_for(checkpoint), model_info(checkpoint, source.strip()), uuid.uuid4().hex


@st.cache_resource(show_spinner="Loading the model...", max_entries=2)
def _model_uploaded(name: str, file_id: str, _data: bytes) -> Model:
    checkpoint = read_uploaded_model(name, _data)
    return predictor_for(checkpoint), model_info(checkpoint, name), uuid.uuid4().hex


def _model(default: str | None) -> Model | None:
    """The sidebar's model choice: a file or stage path, or an uploaded checkpoint."""
    st.sidebar.subheader("Model")
    source = st.sidebar.text_input(
        "Checkpoint (file or @stage path)", value=default or "", key="checkpoint"
    )
    upload = st.sidebar.file_uploader(
        "...or upload one", type=["pt", "pth", "gz"], key="checkpoint_upload"
    )
    connection = st.sidebar.text_input(
        "Snowflake connection",
        key="connection",
        help="A connections.toml name, for stage paths. Empty: the active session "
        "(Streamlit in Snowflake).",
    )
    try:
        if upload is not None:
            return _model_uploaded(upload.name, upload.file_id, upload.getvalue())
        if source.strip():
            return _model_from(source, connection, _file_stamp(source))
    except FissureError as exc:
        st.sidebar.error(str(exc))
    return None


def _options() -> PredictOptions:
    """How photos go through the network: tiling and test-time augmentation."""
    with st.sidebar.expander("Prediction"):
        tile = st.number_input(
            "Tile (px, multiple of 32; 0: the checkpoint's)", 0, 4096, 0, step=32, key="tile"
        )
        tta = st.checkbox("Test-time flips (3x slower; on anyway where the checkpoint's "
                          "eval.tta is)", key="tta")
    return PredictOptions(tile=int(tile) or None, tta=tta or None)


def _photos() -> list[PhotoFile]:
    """The photos of the chosen source; a problem with the source is one line."""
    source = st.radio("Photos from", SOURCES, horizontal=True, key="source")
    try:
        if source == "Upload":
            files = st.file_uploader("Photos", accept_multiple_files=True, key="photos_upload")
            return uploaded_photos(files or [])
        if source == "Folder":
            folder = st.text_input("Folder on this machine", key="folder")
            pattern = st.text_input("Files", value="**/*", key="pattern")
            return folder_photos(folder, pattern) if folder.strip() else []
        spec = st.text_area(
            "Stage folder or photos, one per line",
            key="stage",
            placeholder="@DB.SCHEMA.STAGE/photos/",
        )
        connection = st.session_state.get("connection", "")
        return stage_photos(_session(connection), spec) if spec.strip() else []
    except FissureError as exc:
        st.error(str(exc))
        return []


def _predicted(
    photo: PhotoFile, model: Model, options: PredictOptions
) -> PhotoPrediction | None:
    """The photo's probabilities, predicted on first sight with a progress bar, then kept."""
    try:
        rgb, digest = read_photo(photo)
    except FissureError as exc:
        st.error(str(exc))
        return None
    predictor, info, token = model
    key = (digest, info.checkpoint, token, options.tile, options.tta)
    kept: OrderedDict = st.session_state.setdefault("predictions", OrderedDict())
    if key not in kept:
        bar = st.progress(0.0, text=f"Predicting {photo.name}...")

        def report(done: int, total: int) -> None:
            bar.progress(done / total, text=f"Predicting {photo.name}: {done} of {total} tiles")

        kept[key] = predict_photo(predictor, photo.name, rgb, options, report)
        bar.empty()
        while len(kept) > KEPT_PREDICTIONS:
            kept.popitem(last=False)
    kept.move_to_end(key)
    return kept[key]


def _tuning(info: ModelInfo) -> Tuning:
    """Threshold, minimum area and scale; a new model brings its own defaults."""
    if st.session_state.get("tuned_for") != info:
        # as stored, unrounded: the crack table starts as fissure predict's
        st.session_state["threshold"] = float(info.threshold)
        st.session_state["min_area"] = int(info.min_area)
        st.session_state["tuned_for"] = info
    left, middle, right = st.columns(3)
    # the ranges hold any value a checkpoint may store
    threshold = left.slider("Threshold", min(0.01, float(info.threshold)),
                            max(0.99, float(info.threshold)), step=0.01, key="threshold")
    min_area = middle.slider("Minimum crack area (px)", 0, max(500, int(info.min_area)),
                             step=1, key="min_area")
    px_per_mm = right.number_input(
        "Scale (px per mm; 0: unknown)",
        0.0,
        10_000.0,
        0.0,
        step=0.1,
        format="%.3f",
        key="px_per_mm",
    )
    with st.sidebar.expander("Width classes"):
        text = st.text_input(
            "Upper bounds in mm: hairline, fine, medium",
            value=", ".join(f"{b:g}" for b in DEFAULT_WIDTH_BOUNDS),
            key="width_bounds",
        )
    try:
        bounds = check_width_bounds([float(b) for b in text.replace(",", " ").split()])
    except (ValueError, FissureError) as exc:
        st.sidebar.error(
            str(exc) if isinstance(exc, FissureError) else f"width bounds: not numbers ({text})"
        )
        bounds = DEFAULT_WIDTH_BOUNDS
    return Tuning(float(threshold), int(min_area), float(px_per_mm) or None, bounds)


def _inspected(photo: PhotoPrediction, tuning: Tuning) -> Inspection:
    """:func:`~fissure.app.inspection.inspect`, remembered for the last settings."""
    last = st.session_state.get("inspection")
    # The photo itself is held, so that the entry cannot outlive it under a reused id.
    if last is None or last[0] is not photo or last[1] != tuning:
        last = (photo, tuning, inspect(photo, tuning))
        st.session_state["inspection"] = last
    return last[2]


def _summary(inspection: Inspection) -> None:
    total = inspection.analysis.measurements
    cells = st.columns(4)
    cells[0].metric("Cracks", total.n_segments)
    cells[1].metric(
        "Total length",
        f"{total.length_px:.0f} px" if total.length_mm is None else f"{total.length_mm:.1f} mm",
    )
    cells[2].metric(
        "Max width",
        f"{total.max_width_px:.1f} px"
        if total.max_width_mm is None
        else f"{total.max_width_mm:.2f} mm",
    )
    cells[3].metric("Crack area", f"{total.area_pct:.2f} %")


def crack_frame(inspection: Inspection) -> pd.DataFrame:
    """The crack table: one row per crack, every field of its record."""
    rows = [crack.as_dict() for crack in inspection.analysis.cracks]
    columns = list(TABLE_COLUMNS) if not rows else list(rows[0])
    return pd.DataFrame(rows, columns=columns)


def _table(inspection: Inspection) -> int | None:
    """Show the crack table; returns the id of the crack selected in it, if any."""
    frame = crack_frame(inspection)
    scaled = inspection.analysis.measurements.length_mm is not None
    shown = [c for c in TABLE_COLUMNS if c in frame.columns and (scaled or "_mm" not in c)]
    config = {
        name: st.column_config.NumberColumn(title, format=number)
        if number
        else st.column_config.Column(title)
        for name, (title, number) in TABLE_COLUMNS.items()
        if name in shown
    }
    event = st.dataframe(
        frame,
        key="cracks",
        hide_index=True,
        on_select="rerun",
        selection_mode="single-row",
        column_config=config,
        column_order=shown,
    )
    rows = list(event.selection.rows) if event is not None else []
    if not rows or rows[0] >= len(frame):
        return None
    return int(frame.iloc[rows[0]]["id"])


def _follow(photo: PhotoPrediction, inspection: Inspection, selected: int | None) -> None:
    """Centre the view on a newly selected crack (zooming in from the whole photo)."""
    if selected is None or st.session_state.get("followed") == selected:
        st.session_state["followed"] = selected
        return
    st.session_state["followed"] = selected
    centre_x, centre_y = crack_centre(inspection, selected, photo.probability.shape)
    st.session_state["pan_x"] = round(100 * centre_x)
    st.session_state["pan_y"] = round(100 * centre_y)
    if st.session_state.get("zoom", "fit") == "fit":
        st.session_state["zoom"] = "100%"


def _view(photo: PhotoPrediction, inspection: Inspection, selected: int | None) -> None:
    """The photo with its cracks, at the zoom and pan of the sliders above it."""
    # Defaults through the state, which _follow also sets: a widget may not have both.
    for key, default in (("zoom", "fit"), ("pan_x", 50), ("pan_y", 50)):
        st.session_state.setdefault(key, default)
    zoom = st.select_slider("Zoom", list(ZOOMS), key="zoom")
    centre_x = centre_y = 0.5
    if ZOOMS[zoom] is not None:
        left, right = st.columns(2)
        centre_x = left.slider("Pan across (%)", 0, 100, key="pan_x") / 100
        centre_y = right.slider("Pan down (%)", 0, 100, key="pan_y") / 100
    view = View(ZOOMS[zoom], centre_x, centre_y)
    height, width = photo.probability.shape
    caption = (
        f"{photo.name}: {width} x {height} px; cracks magenta, below the minimum "
        "area amber" + (f", crack {selected} cyan" if selected is not None else "")
    )
    # PNG: JPEG would smear the one-pixel cracks this view is for.
    st.image(render_view(photo, inspection, view, selected), caption=caption, output_format="PNG")


def _downloads(
    photo: PhotoPrediction, inspection: Inspection, info: ModelInfo, tuning: Tuning
) -> None:
    """Mask, overlay, cracks.csv and the HTML report of the photo at these settings."""
    last = st.session_state.get("downloads")
    if last is None or last[0] is not inspection:
        name = stem(photo)
        files = [
            ("Mask PNG", f"{name}.png", mask_png(inspection), "image/png"),
            ("Overlay JPEG", f"{name}_overlay.jpg", overlay_jpeg(photo, inspection), "image/jpeg"),
            (
                "cracks.csv",
                f"{name}_cracks.csv",
                cracks_table(photo, inspection).encode(),
                "text/csv",
            ),
            (
                "HTML report",
                f"{name}_report.html",
                inspection_report(photo, inspection, info, tuning).encode(),
                "text/html",
            ),
        ]
        last = (inspection, files)
        st.session_state["downloads"] = last
    for cell, (label, file_name, data, mime) in zip(st.columns(4), last[1], strict=True):
        cell.download_button(
            label,
            data,
            file_name=file_name,
            mime=mime,
            key=f"download_{file_name.rsplit('.', 1)[-1]}",
        )


def render(checkpoint: str | None = None) -> None:
    """Draw the Inspect page; ``checkpoint`` is the model chosen when the app started."""
    st.header("Inspect")
    model = _model(checkpoint)
    options = _options()
    photos = _photos()
    if not photos:
        st.info("Upload photos, or name a folder or a stage, to inspect them.")
        return
    names = [p.name for p in photos]
    index = (
        st.selectbox("Photo", range(len(photos)), format_func=names.__getitem__, key="photo")
        if len(photos) > 1
        else 0
    )
    if model is None:
        st.warning("Choose a checkpoint in the sidebar to find the cracks.")
        return
    photo = _predicted(photos[index or 0], model, options)
    if photo is None:
        return
    tuning = _tuning(model[1])
    inspection = _inspected(photo, tuning)
    _summary(inspection)
    picture, table = st.columns([5, 4])
    with table:
        selected = _table(inspection)
    _follow(photo, inspection, selected)
    with picture:
        _view(photo, inspection, selected)
    _downloads(photo, inspection, model[1], tuning)
