"""Tests for the Inspect page, run by Streamlit's AppTest (fissure.app.inspect_page).

The crack table and the downloads are compared with what ``fissure predict`` writes for
the same photo and settings.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("streamlit", reason="the app's page tests need pip install 'fissure[app]'")

import streamlit.testing.v1.app_test as app_test_module  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from PIL import Image  # noqa: E402
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

import fissure.app.inspect_page as inspect_page  # noqa: E402
from fissure.app.inspection import SELECTED_COLOR  # noqa: E402
from fissure.cli import cli  # noqa: E402


def _app(checkpoint: str | None, runs: str | None) -> None:
    from fissure.app.shell import AppSettings, run_app

    run_app(AppSettings(checkpoint, runs))


class _Media:
    """The files the app hands the browser (images, downloads), read back by URL."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.stores: list[MemoryMediaFileStorage] = []
        media = self

        class Keeping(MemoryMediaFileStorage):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                media.stores.append(self)

        monkeypatch.setattr(app_test_module, "MemoryMediaFileStorage", Keeping)

    def read(self, url: str) -> bytes:
        return self.stores[-1].get_file(url.rsplit("/", 1)[-1]).content

    def name(self, url: str) -> str | None:
        return self.stores[-1].get_file(url.rsplit("/", 1)[-1]).filename


@pytest.fixture()
def media(monkeypatch: pytest.MonkeyPatch) -> _Media:
    return _Media(monkeypatch)


@pytest.fixture()
def predictions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The photos the page sent through the model, in order."""
    calls: list[str] = []
    real = inspect_page.predict_photo

    def counting(predictor: Any, name: str, *args: Any) -> Any:
        calls.append(name)
        return real(predictor, name, *args)

    monkeypatch.setattr(inspect_page, "predict_photo", counting)
    return calls


def _opened(checkpoint: Path, uploads: list[tuple[str, bytes]]) -> AppTest:
    app = AppTest.from_function(_app, args=(str(checkpoint), None), default_timeout=120)
    app.run()
    uploader = app.file_uploader(key="photos_upload")
    for name, data in uploads:
        uploader.upload(name, data, "image/png")
    return app.run()


def _predict(checkpoint: Path, photo: Path, out: Path, *options: str) -> list[dict[str, str]]:
    """``fissure predict``'s cracks.csv rows for one photo."""
    args = ["predict", str(checkpoint), str(photo), "--out", str(out), "--quiet", *options]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    with (out / "cracks.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _same(table_value: Any, csv_value: str) -> bool:
    if csv_value == "":
        return table_value is None or (isinstance(table_value, float) and math.isnan(table_value))
    if isinstance(table_value, str):
        return table_value == csv_value
    return float(table_value) == float(csv_value)  # exact: CSV holds repr(float)


def test_tuning_changes_the_table_as_fissure_predict_would(
    tmp_path: Path, dark_checkpoint: Path, photo_png: bytes, predictions: list[str]
) -> None:
    photo = tmp_path / "crack.png"
    photo.write_bytes(photo_png)
    app = _opened(dark_checkpoint, [("crack.png", photo_png)])
    assert not app.exception and not app.error
    assert app.slider(key="threshold").value == 0.5 and app.slider(key="min_area").value == 20
    counts = []
    settings = [(0.5, 20, 0.0), (0.3, 20, 0.0), (0.1, 20, 0.0), (0.1, 5, 4.0), (0.9, 5, 4.0)]
    for k, (threshold, min_area, px_per_mm) in enumerate(settings):
        app.slider(key="threshold").set_value(threshold)
        app.slider(key="min_area").set_value(min_area)
        app.number_input(key="px_per_mm").set_value(px_per_mm)
        app.run()
        assert not app.exception
        table = app.dataframe[0].value
        options = ["--threshold", str(threshold), "--min-area", str(min_area)]
        if px_per_mm:
            options += ["--px-per-mm", str(px_per_mm)]
        rows = _predict(dark_checkpoint, photo, tmp_path / f"out{k}", *options)
        assert len(table) == len(rows)
        for record, row in zip(table.to_dict("records"), rows, strict=True):
            assert set(record) == set(row) - {"image"}
            assert all(_same(record[key], row[key]) for key in record), (record, row)
        counts.append(len(rows))
    assert counts == [1, 2, 3, 3, 1]
    assert predictions == ["crack.png"]  # the model ran once; the rest re-thresholded


def test_a_checkpoint_with_settings_outside_the_sliders_opens(
    tmp_path: Path, photo_png: bytes, save_checkpoint: Any
) -> None:
    # a finer eval.thresholds grid and a large eval.min_area are valid checkpoint settings
    path = save_checkpoint(tmp_path / "odd.pt", min_area=800, threshold=0.004)
    app = _opened(path, [("crack.png", photo_png)])
    assert not app.exception and not app.error
    assert app.slider(key="threshold").value == pytest.approx(0.004)
    assert app.slider(key="min_area").value == 800


def test_a_rewritten_checkpoint_is_loaded_again(
    tmp_path: Path, photo_png: bytes, predictions: list[str], save_checkpoint: Any
) -> None:
    # training rewrites best.pt in place: the page must not keep the old weights
    import os

    path = save_checkpoint(tmp_path / "best.pt")
    app = _opened(path, [("crack.png", photo_png)])
    assert predictions == ["crack.png"]
    app.run()
    assert predictions == ["crack.png"]  # same file: the kept probabilities
    save_checkpoint(path, min_area=5)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    app.run()
    assert not app.exception
    assert predictions == ["crack.png", "crack.png"]
    assert app.slider(key="min_area").value == 5


def test_downloads_hold_what_fissure_predict_writes(
    tmp_path: Path, dark_checkpoint: Path, photo_png: bytes, media: _Media
) -> None:
    photo = tmp_path / "crack.png"
    photo.write_bytes(photo_png)
    app = _opened(dark_checkpoint, [("crack.png", photo_png)])
    app.slider(key="threshold").set_value(0.3).run()
    buttons = app.get("download_button")
    assert [b.label for b in buttons] == ["Mask PNG", "Overlay JPEG", "cracks.csv", "HTML report"]
    files = {b.label: media.read(b.proto.url) for b in buttons}
    assert [media.name(b.proto.url) for b in buttons] == [
        "crack.png",
        "crack_overlay.jpg",
        "crack_cracks.csv",
        "crack_report.html",
    ]
    out = tmp_path / "out"
    _predict(dark_checkpoint, photo, out, "--threshold", "0.3")
    assert files["Mask PNG"] == (out / "crack.png").read_bytes()
    assert files["Overlay JPEG"] == (out / "crack_overlay.jpg").read_bytes()
    predicted = (out / "cracks.csv").read_bytes().decode()
    assert files["cracks.csv"].decode() == predicted.replace(str(photo), "crack.png")
    report = files["HTML report"].decode()
    assert "Inspection report: crack.png" in report and "Cracks (2)" in report
    assert "0.3 (checkpoint&#x27;s: 0.5)" in report and str(dark_checkpoint) in report
    assert report.count("data:image/jpeg;base64,") == 2


def test_a_corrupt_upload_is_a_message_and_the_page_goes_on(
    dark_checkpoint: Path, photo_png: bytes
) -> None:
    app = _opened(
        dark_checkpoint, [("broken.png", b"\x89PNG\r\n\x1a\n garbage"), ("crack.png", photo_png)]
    )
    assert not app.exception
    assert len(app.error) == 1
    message = app.error[0].value
    assert message.startswith("broken.png: not a readable image") and "\n" not in message
    assert "Traceback" not in message
    app.selectbox(key="photo").set_value(1).run()
    assert not app.exception and not app.error
    assert len(app.dataframe[0].value) == 1


def test_selecting_a_crack_highlights_and_centres_it(
    dark_checkpoint: Path, photo_png: bytes, media: _Media
) -> None:
    app = _opened(dark_checkpoint, [("crack.png", photo_png)])
    app.slider(key="threshold").set_value(0.1).run()
    table = app.dataframe[0].value
    app.session_state["cracks"] = {"selection": {"rows": [2], "columns": []}}
    app.run()
    assert not app.exception
    crack = table.iloc[2]
    assert app.select_slider(key="zoom").value == "100%"
    assert app.slider(key="pan_x").value == round(100 * (crack.x_min + crack.x_max + 1) / 2 / 240)
    assert app.slider(key="pan_y").value == round(100 * (crack.y_min + crack.y_max + 1) / 2 / 160)
    image = np.asarray(Image.open(io.BytesIO(media.read(app.get("image")[0].proto.imgs[0].url))))
    assert (image[..., :3] == np.array(SELECTED_COLOR, np.uint8)).all(axis=2).any()
    assert f"crack {int(crack.id)} cyan" in app.get("image")[0].proto.imgs[0].caption


def test_without_a_model_or_photos_the_page_says_what_to_do(photo_png: bytes) -> None:
    app = AppTest.from_function(_app, args=(None, None), default_timeout=60).run()
    assert [i.value for i in app.info] == [
        "Upload photos, or name a folder or a stage, to inspect them."
    ]
    app.file_uploader(key="photos_upload").upload("crack.png", photo_png, "image/png")
    app.run()
    assert [w.value for w in app.warning] == [
        "Choose a checkpoint in the sidebar to find the cracks."
    ]
    app.text_input(key="checkpoint").set_value("/nowhere/model.pt").run()
    assert not app.exception
    assert any("/nowhere/model.pt" in e.value for e in app.sidebar.error)


def test_a_local_folder_is_a_source(
    tmp_path: Path, dark_checkpoint: Path, photo_png: bytes
) -> None:
    (tmp_path / "a.png").write_bytes(photo_png)
    (tmp_path / "b.png").write_bytes(photo_png[:100])
    app = AppTest.from_function(_app, args=(str(dark_checkpoint), None), default_timeout=120)
    app.run()
    app.radio(key="source").set_value("Folder").run()
    app.text_input(key="folder").set_value(str(tmp_path)).run()
    assert not app.exception and len(app.dataframe[0].value) == 1
    app.selectbox(key="photo").set_value(1).run()
    assert [e.value.split(":")[0] for e in app.error] == [str(tmp_path / "b.png")]
    app.text_input(key="folder").set_value(str(tmp_path / "nope")).run()
    assert any("no such folder" in e.value for e in app.error)


def test_nothing_is_written_outside_the_temporary_folder(
    tmp_path: Path, dark_checkpoint: Path, photo_png: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, work, temporary = tmp_path / "home", tmp_path / "work", tmp_path / "tmp"
    for folder in (home, work, temporary):
        folder.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(temporary))
    monkeypatch.setattr("tempfile.tempdir", None)  # read TMPDIR again
    monkeypatch.chdir(work)
    app = AppTest.from_function(_app, args=(None, None), default_timeout=120).run()
    app.file_uploader(key="checkpoint_upload").upload("mine.pt", dark_checkpoint.read_bytes())
    app.file_uploader(key="photos_upload").upload("crack.png", photo_png, "image/png")
    app.run()
    assert not app.exception and not app.error and not app.sidebar.error
    app.slider(key="threshold").set_value(0.3).run()
    assert len(app.dataframe[0].value) == 2 and len(app.get("download_button")) == 4
    assert list(home.iterdir()) == [] and list(work.iterdir()) == []
    assert list(temporary.iterdir()) == []  # the uploaded checkpoint's copy is gone too
