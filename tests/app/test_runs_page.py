"""Tests for the Runs page, run by Streamlit's AppTest (fissure.app.runs_page)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("streamlit", reason="the app's page tests need pip install 'fissure[app]'")

from streamlit.testing.v1 import AppTest  # noqa: E402


def _app(runs: str | None) -> None:
    from fissure.app.shell import AppSettings, run_app

    run_app(AppSettings(None, runs))


def _runs_page(runs: Path | None) -> AppTest:
    app = AppTest.from_function(_app, args=(str(runs) if runs else None,), default_timeout=60)
    app.run()
    return app.radio(key="page").set_value("Runs").run()


def test_one_run_with_its_curves_config_and_evaluation(runs_root: Path) -> None:
    app = _runs_page(runs_root)
    assert not app.exception
    assert app.multiselect(key="runs_chosen").value == ["run_a"]
    assert [w.value for w in app.warning] == [
        f"{runs_root / 'broken' / 'metrics.json'}: not a metrics document "
        "(Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"
    ]
    assert [s.value for s in app.subheader] == ["run_a"]
    text = " ".join(m.value for m in app.markdown)
    assert "3 epoch(s), last 3; best epoch 2 (iou 0.5000)" in text
    assert "**Evaluation `run_a/eval`**: test split, 2 images" in text
    assert len(app.get("vega_lite_chart")) == 2  # loss, IoU / F1
    assert [c.language for c in app.code][:1] == ["yaml"]
    metrics = app.dataframe[0].value
    assert "pixel (dataset) iou" in list(metrics["figure"])
    captions = [img.caption for image in app.get("image") for img in image.proto.imgs]
    assert captions == ["PR curve", "Confusion matrix", "Samples"]


def test_two_runs_side_by_side(runs_root: Path) -> None:
    app = _runs_page(runs_root)
    app.multiselect(key="runs_chosen").set_value(["run_b", "lone/eval"]).run()
    assert not app.exception
    assert [s.value for s in app.subheader] == ["run_b", "lone/eval"]
    text = " ".join(m.value for m in app.markdown)
    assert "best epoch 4 (loss 0.3500)" in text
    captions = [img.caption for image in app.get("image") for img in image.proto.imgs]
    assert captions == ["PR curve", "Confusion matrix"]  # drawn from metrics.json alone


def test_missing_or_empty_folders_are_one_line(tmp_path: Path) -> None:
    app = _runs_page(None)
    assert "Name a folder of training runs" in app.info[0].value
    app.text_input(key="runs_folder").set_value(str(tmp_path / "nope")).run()
    assert [e.value for e in app.error] == [f"{tmp_path / 'nope'}: no such runs folder"]
    app.text_input(key="runs_folder").set_value(str(tmp_path)).run()
    assert "no training runs (history.csv) or evaluations" in app.info[0].value
    assert not app.exception
