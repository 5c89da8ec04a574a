"""Tests for the one-page HTML inspection report (fissure.app.report)."""

from __future__ import annotations

import base64
import html.parser
import io

import numpy as np
from PIL import Image

from fissure.app.inspection import ModelInfo, PhotoPrediction, Tuning, inspect
from fissure.app.report import REPORT_SIDE, inspection_report

MODEL = ModelInfo("@DB.S.STAGE/models/<best>.pt", "resnet18", "crop", 64, 7, 0.42, 20, "1.2.3")


class _Page(html.parser.HTMLParser):
    """The images, table cells and text of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.cells: list[str] = []
        self.text: list[str] = []
        self._in_cell = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        self._in_cell = tag in ("td", "th")

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_cell:
            self.cells.append(data)


def _photo(height: int = 60, width: int = 3000) -> PhotoPrediction:
    prob = np.zeros((height, width), np.float32)
    prob[10:13, 100:2900] = 0.9
    prob[40, 50:1000] = 0.8
    return PhotoPrediction(
        "site <A>/p1.jpg", np.full((height, width, 3), 120, np.uint8), prob, "tiled", 12, 256, 64
    )


def test_report_holds_photo_overlay_table_model_and_settings() -> None:
    photo = _photo()
    tuning = Tuning(0.65, 15, 4.0, (0.2, 0.5, 2.0))
    seen = inspect(photo, tuning)
    page = _Page()
    text = inspection_report(photo, seen, MODEL, tuning, when=0)
    page.feed(text)
    assert text.startswith("<!DOCTYPE html>") and "site &lt;A&gt;/p1.jpg" in text
    assert "<best>" not in text and "&lt;best&gt;" in text  # escaped, never markup
    assert len(page.images) == 2
    for uri in page.images:
        assert uri.startswith("data:image/jpeg;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
        assert max(image.size) == REPORT_SIDE  # shrunk from 3000 px
    words = " ".join(page.text)
    for expected in (
        "Cracks (2)",
        "0.65 (checkpoint's: 0.42)",
        "15 px",
        "4 px/mm",
        "resnet18 U-Net",
        "epoch 7",
        "fissure 1.2.3",
        "hairline < 0.2 <= fine < 0.5 <= medium < 2 <= wide",
        "tiled, 12 network input(s) of 256 px, overlap 64",
    ):
        assert expected in words, expected
    crack = seen.analysis.cracks[0]
    assert f"{crack.length_px:.1f}" in page.cells and "horizontal" in page.cells  # > 1000
    assert crack.width_class in page.cells and f"{crack.length_mm:.3f}" in page.cells


def test_report_without_scale_or_cracks() -> None:
    photo = PhotoPrediction(
        "p.png", np.zeros((20, 30, 3), np.uint8), np.zeros((20, 30), np.float32)
    )
    tuning = Tuning(0.5, 20)
    text = inspection_report(photo, inspect(photo, tuning), MODEL, tuning)
    assert "Cracks (0)" in text and "not given (no mm figures)" in text
    assert "<tbody></tbody>" in text
