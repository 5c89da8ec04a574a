"""Evaluation figures and reports on hand-made probabilities: no model, every number on paper.

Four 8x8 images, tuned threshold 0.7, min_area 2, tolerance 1 px:

* ``a_cracked``: crack down column 3 (8 px); probability 0.9 on rows 0-5, 0.6 on rows 6-7,
  and 0.8 beside it on column 4, rows 0-1. At 0.7: tp 6, fp 2, fn 2. At 0.5: tp 8, fp 2.
* ``b_quiet``: no crack, nothing predicted (IoU 1 by the empty rule).
* ``c_alarm``: no crack, a 2x2 blob at 0.95 (4 false-positive pixels: a false alarm).
* ``d_missed``: a 2x2 crack, predicted nowhere.

Totals at 0.7: tp 6, fp 6, fn 6, tn 238 (of 256 pixels).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fissure.config import EvalConfig
from fissure.evaluation import EvalResult, SampleView, metrics_document
from fissure.metrics import classification_report
from fissure.report import (
    EVAL_FILES,
    classification_report_text,
    metrics_table,
    pick_samples,
    plot_pr_curve,
    write_eval_reports,
)

CFG = EvalConfig(min_area=2, tolerance=1, thresholds=9, batch_size=2)
NAMES = ["a_cracked", "b_quiet", "c_alarm", "d_missed"]


def _images() -> tuple[torch.Tensor, torch.Tensor]:
    """(4, 1, 8, 8) probabilities and masks as in the module docstring."""
    probs = torch.full((4, 1, 8, 8), 0.1)
    masks = torch.zeros((4, 1, 8, 8))
    masks[0, 0, :, 3] = 1
    probs[0, 0, :6, 3], probs[0, 0, 6:, 3], probs[0, 0, :2, 4] = 0.9, 0.6, 0.8
    probs[2, 0, 2:4, 2:4] = 0.95
    masks[3, 0, 5:7, 5:7] = 1
    return probs, masks


def _result(threshold: float = 0.7, clean: bool = False) -> EvalResult:
    probs, masks = _images()
    if clean:
        masks.zero_()
    result = EvalResult.create(threshold, CFG)
    # two batches, as a DataLoader would feed them
    result.update(probs[:2], masks[:2], NAMES[:2])
    result.update(probs[2:], masks[2:], NAMES[2:])
    return result


@pytest.fixture(scope="module")
def doc() -> dict:
    return metrics_document(_result(), {"split": "test", "data": "hand"})


def test_classification_report_without_crack_is_undefined_not_zero() -> None:
    rep = classification_report(tp=0, fp=0, fn=0, tn=50)
    assert rep["crack"] == {"precision": None, "recall": None, "f1": None, "support": 0}
    assert rep["macro avg"]["recall"] is None
    # a class with no support carries no weight
    assert rep["weighted avg"]["recall"] == 1.0
    text = classification_report_text(rep)
    assert "undefined" in text and "weighted avg" in text


def test_classification_report_text_layout() -> None:
    lines = classification_report_text(classification_report(3, 1, 2, 10)).splitlines()
    assert lines[0].split() == ["precision", "recall", "f1-score", "support"]
    crack = next(line for line in lines if line.strip().startswith("crack"))
    assert crack.split() == ["crack", "0.7500", "0.6000", "0.6667", "5"]
    accuracy = next(line for line in lines if "accuracy" in line)
    assert accuracy.split() == ["accuracy", "0.8125", "16"]


def test_pixel_figures_by_hand(doc: dict) -> None:
    assert doc["pixel_counts"]["at_tuned"] == {"tp": 6, "fp": 6, "fn": 6, "tn": 238}
    assert doc["pixel_counts"]["at_0.5"] == {"tp": 8, "fp": 6, "fn": 4, "tn": 238}
    micro = doc["pixel_micro"]
    assert micro["iou"]["at_tuned"] == pytest.approx(6 / 18)
    assert micro["iou"]["at_0.5"] == pytest.approx(8 / 18)
    assert micro["f1"]["at_tuned"] == pytest.approx(0.5)
    assert micro["specificity"]["at_tuned"] == pytest.approx(238 / 244)
    # per image at 0.7: IoU 0.6, 1 (empty rule), 0, 0
    iou = doc["pixel_per_image"]["iou"]["at_tuned"]
    assert iou["mean"] == pytest.approx(0.4)
    assert iou["std"] == pytest.approx(np.std([0.6, 1, 0, 0]))
    assert "empty" in doc["pixel_per_image"]["iou"]["definition"]
    assert doc["classification_report"]["background"]["precision"] == pytest.approx(238 / 244)
    assert doc["headline"]["figure"] == "pixel_micro.iou"


def test_detection_and_tolerance_by_hand(doc: dict) -> None:
    det = doc["detection"]
    assert det["counts"]["at_tuned"] == {"tp": 1, "fp": 1, "fn": 1, "tn": 1}
    assert (det["n_cracked"], det["n_clean"], det["min_area"]) == (2, 2, 2)
    assert det["false_positive_rate"]["at_tuned"] == pytest.approx(0.5)
    tol = doc["tolerance"]
    # all 8 predicted pixels of a_cracked lie within 1 px of the crack, none of c_alarm's 4;
    # rows 0-6 of the crack have a prediction within 1 px (12 true pixels in all)
    assert tol["precision"]["at_tuned"] == pytest.approx(8 / 12)
    assert tol["recall"]["at_tuned"] == pytest.approx(7 / 12)
    assert tol["f1"]["at_tuned"] == pytest.approx(28 / 45)
    sweep = doc["threshold_sweep"]
    assert sweep["n_thresholds"] == 9 and len(sweep["pr_curve"]["thresholds"]) == 9
    assert sweep["ods_f1"]["tolerant_1px"] >= sweep["ods_f1"]["exact"]


def test_per_image_rows() -> None:
    rows = {r["name"]: r for r in _result().per_image()}
    assert list(rows) == NAMES
    assert {n: r["detection"] for n, r in rows.items()} == dict(
        zip(NAMES, ["TP", "TN", "FP", "FN"], strict=True)
    )
    assert (rows["a_cracked"]["true_px"], rows["a_cracked"]["pred_px"]) == (8, 8)
    assert rows["a_cracked"]["iou"] == pytest.approx(0.6)
    assert rows["b_quiet"]["iou"] == rows["b_quiet"]["f1"] == 1.0
    assert rows["c_alarm"]["iou"] == 0.0 and rows["d_missed"]["f1"] == 0.0


def test_pick_samples_prefers_cracked_images() -> None:
    picks = pick_samples(_result().per_image(), per_group=1)
    assert [(label, row["name"]) for label, row in picks] == [
        ("worst", "d_missed"),
        ("best", "a_cracked"),
        ("false alarm", "c_alarm"),
    ]
    clean = pick_samples(_result(clean=True).per_image(), per_group=1)
    # no crack anywhere: rank everything; the worst image is the one with most wrong pixels
    assert clean[0][0] == "worst" and clean[0][1]["name"] == "a_cracked"
    assert len({row["name"] for _, row in clean}) == len(clean)


def test_crack_free_document_says_undefined() -> None:
    doc = metrics_document(_result(clean=True), {"split": "test"})
    for name in ("iou", "precision", "recall", "f1"):
        assert doc["pixel_micro"][name]["at_tuned"] is None
        assert "no crack pixels" in doc["pixel_micro"][name]["note"]
    assert doc["pixel_micro"]["accuracy"]["at_tuned"] is not None
    assert doc["tolerance"]["recall"]["at_tuned"] is None
    assert doc["threshold_sweep"]["ap"]["exact"] is None
    assert doc["detection"]["false_positive_rate"]["at_tuned"] == pytest.approx(0.5)
    # c_alarm and a_cracked are flagged, yet image-level precision is undefined, not 0
    assert doc["detection"]["precision"]["at_0.5"] is None
    assert doc["threshold_sweep"]["ods_threshold"]["exact"] is None
    report = doc["classification_report"]
    assert report["crack"]["precision"] is None and report["crack"]["support"] == 0
    assert report["background"]["recall"] == pytest.approx(244 / 256)
    assert "no crack pixels" in doc["notes"][0] and "undefined" in doc["notes"][0]
    assert doc["headline"]["figure"] == "detection.false_positive_rate"
    table = metrics_table(doc)
    assert "undefined" in table and "note: the split holds no crack pixels" in table


def test_tuned_threshold_of_one_half_is_one_column() -> None:
    doc = metrics_document(_result(threshold=0.5), {"split": "val"})
    micro = doc["pixel_micro"]["iou"]
    assert micro["at_0.5"] == micro["at_tuned"] == pytest.approx(8 / 18)
    assert any("0.5" in note for note in doc["notes"])


def test_metrics_table_shows_both_thresholds(doc: dict) -> None:
    table = metrics_table(doc)
    for text in (
        "@ 0.50",
        "@ 0.70 tuned",
        "dataset-level (micro)",
        "Classification report",
        "weighted avg",
        "Image-level detection (a crack of >= 2 px)",
        "1-px tolerant",
        "ODS F1",
        "OIS F1",
        "AP",
    ):
        assert text in table, text
    assert "0.3333" in table  # micro IoU at 0.7


def _views(result: EvalResult) -> list[SampleView]:
    probs, masks = _images()
    rows = {r["name"]: r for r in result.per_image()}
    views = []
    for label, row in pick_samples(list(rows.values()), 1):
        i = NAMES.index(row["name"])
        image = np.full((8, 8, 3), 128, np.uint8)
        views.append(SampleView(label, row, image, masks[i, 0].numpy() > 0.5, probs[i, 0].numpy()))
    return views


def test_write_eval_reports(doc: dict, tmp_path: Path) -> None:
    result = _result()
    paths = write_eval_reports(doc, result.per_image(), _views(result), tmp_path)
    assert sorted(p.name for p in paths.values()) == sorted(EVAL_FILES)
    for name in ("confusion_matrix.png", "pr_curve.png", "samples.png"):
        with Image.open(tmp_path / name) as image:
            image.verify()

    def refuse(token: str):
        raise AssertionError(token)

    loaded = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=refuse)
    assert loaded["pixel_counts"]["at_tuned"]["tp"] == 6
    with open(tmp_path / "per_image.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["name"] for r in rows] == NAMES
    assert rows[0]["iou"] == "0.6" and rows[0]["threshold"] == "0.7"
    assert "tolerant_f1_1px" in rows[0]
    # the PR plot can be redrawn from the JSON alone (nulls instead of NaN)
    plot_pr_curve(loaded, tmp_path / "again.png")
    assert (tmp_path / "again.png").stat().st_size > 0
    # an older metrics.json, short of a key the plot reads: the figure is closed anyway
    import matplotlib.pyplot as plt

    open_before = len(plt.get_fignums())
    partial = {k: v for k, v in loaded.items() if k != "tolerance"}
    with pytest.raises(KeyError):
        plot_pr_curve(partial, tmp_path / "partial.png")
    assert len(plt.get_fignums()) == open_before


def test_reports_for_a_crack_free_split(tmp_path: Path) -> None:
    result = _result(clean=True)
    doc = metrics_document(result, {"split": "test"})
    write_eval_reports(doc, result.per_image(), _views(result), tmp_path)
    for name in EVAL_FILES:
        assert (tmp_path / name).stat().st_size > 0
    write_eval_reports(doc, result.per_image(), [], tmp_path / "no_samples")
    assert (tmp_path / "no_samples" / "samples.png").is_file()
