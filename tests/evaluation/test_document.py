"""fissure.evaluation.document: the metrics document, from hand-fed counts and end to end
through ``fissure.evaluate`` and ``fissure evaluate`` on tiny checkpoints (see conftest.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from fissure.config import DEFAULT_THRESHOLD, EvalConfig
from fissure.data import FolderSource
from fissure.evaluation import EvalResult, EvaluateOptions, metrics_document
from fissure.metrics import classification_report
from fissure.report import EVAL_FILES

SIZE = 64  # the fixtures' image size (conftest.py)
CPU = EvaluateOptions(device="cpu")


@pytest.fixture(scope="module")
def workflow():
    """The library API, imported here so that the hand-fed tests run without it."""
    from fissure import api

    return api


@pytest.fixture(scope="module")
def cli():
    """The click command group, imported here for the same reason."""
    from fissure.cli import cli

    return cli


def _fed(threshold: float, masks_blank: bool = False) -> EvalResult:
    g = torch.Generator().manual_seed(0)
    result = EvalResult.create(threshold, EvalConfig(tolerance=1, thresholds=9, min_area=2))
    for k in range(3):
        masks = torch.rand(2, 1, 8, 8, generator=g) > 0.8
        if masks_blank:
            masks = torch.zeros_like(masks)
        probs = (torch.rand(2, 1, 8, 8, generator=g) * 0.6 + 0.4 * masks).clamp(0, 1)
        result.update(probs, masks, [f"b{k}_0", f"b{k}_1"])
    return result


def test_document_figures_come_from_the_counts() -> None:
    result = _fed(0.45)
    doc = metrics_document(result, {"split": "test"})
    assert doc["split"] == "test" and doc["n_images"] == 6
    assert doc["thresholds"] == {"at_0.5": DEFAULT_THRESHOLD, "at_tuned": 0.45}
    tp, fp, fn, tn = (int(c.sum()) for c in result.counts())
    assert doc["pixel_counts"]["at_tuned"] == {"tp": tp, "fp": fp, "fn": fn, "tn": tn}
    report = doc["classification_report"]
    assert "0.45" in report.pop("definition")
    assert report == classification_report(tp, fp, fn, tn)
    sweep = result.sweep.compute()
    assert doc["threshold_sweep"]["ap"]["exact"] == sweep["exact"]["ap"]
    assert doc["threshold_sweep"]["ap"]["tolerant_1px"] == sweep["tolerant"]["ap"]
    assert doc["pixel_micro"]["iou"]["at_tuned"] == pytest.approx(tp / (tp + fp + fn))
    assert doc["headline"]["figure"] == "pixel_micro.iou"
    assert not any("same" in note for note in doc["notes"])


def test_document_at_the_default_threshold_and_without_crack() -> None:
    doc = metrics_document(_fed(DEFAULT_THRESHOLD))
    assert any("at_0.5 and at_tuned are the same" in note for note in doc["notes"])
    blank = metrics_document(_fed(0.45, masks_blank=True))
    assert blank["pixel_micro"]["iou"]["at_tuned"] is None
    assert blank["threshold_sweep"]["ap"]["exact"] is None
    assert blank["classification_report"]["crack"]["precision"] is None
    assert blank["headline"]["figure"] == "detection.false_positive_rate"


# ----------------------------------------------------------------- end to end, through the API


@pytest.fixture(scope="module")
def evaluated(workflow, random_ckpt: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("eval_out")
    metrics = workflow.evaluate(random_ckpt, split="test", out=out, options=CPU, progress=False)
    return metrics, out


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _strict_json(path: Path) -> dict:
    def refuse(token: str):
        raise AssertionError(f"non-standard JSON constant {token}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def test_reports_exist_and_load(evaluated, data_root: Path) -> None:
    metrics, out = evaluated
    for name in EVAL_FILES:
        assert (out / name).is_file(), name
    doc = _strict_json(out / "metrics.json")
    assert doc["n_images"] == metrics["n_images"] == len(FolderSource(data_root).samples("test"))
    for name in ("confusion_matrix.png", "pr_curve.png", "samples.png"):
        with Image.open(out / name) as image:
            image.verify()
    rows = _csv(out / "per_image.csv")
    assert [r["name"] for r in rows] == [s.name for s in FolderSource(data_root).samples("test")]
    assert {r["detection"] for r in rows} <= {"TP", "FP", "FN", "TN"}


def test_every_figure_names_its_definition(evaluated) -> None:
    doc = _strict_json(evaluated[1] / "metrics.json")
    sections = ("pixel_micro", "pixel_per_image", "tolerance", "threshold_sweep", "detection")
    for section in sections:
        for name, fig in doc[section].items():
            if isinstance(fig, dict) and name != "counts":
                assert fig.get("definition"), f"{section}.{name}"
    for name in ("iou", "precision", "recall", "f1", "accuracy", "specificity"):
        assert set(doc["pixel_micro"][name]) >= {"definition", "at_0.5", "at_tuned"}
        assert "micro" in doc["pixel_micro"][name]["definition"]
    sweep = doc["threshold_sweep"]
    for name in ("ods_f1", "ods_threshold", "ois_f1", "ap"):
        assert set(sweep[name]) >= {"exact", "tolerant_2px"}
    curve = sweep["pr_curve"]
    assert len(curve["thresholds"]) == sweep["n_thresholds"] == 19
    assert len(curve["exact"]["precision"]) == len(curve["tolerant_2px"]["recall"]) == 19
    # bulky per-image arrays stay out of the JSON
    assert "names" not in json.dumps(sweep) and "image_best_f1" not in json.dumps(sweep)


def test_csv_agrees_with_dataset_counts(evaluated) -> None:
    metrics, out = evaluated
    rows = _csv(out / "per_image.csv")
    counts = metrics["pixel_counts"]["at_tuned"]
    assert sum(int(r["true_crack_px"]) for r in rows) == counts["tp"] + counts["fn"]
    assert sum(int(r["pred_crack_px"]) for r in rows) == counts["tp"] + counts["fp"]
    det = metrics["detection"]["counts"]["at_tuned"]
    assert sum(r["detection"] == "FP" for r in rows) == det["fp"]
    report = metrics["classification_report"]
    assert report["crack"]["support"] == counts["tp"] + counts["fn"]
    assert report["background"]["support"] == counts["tn"] + counts["fp"]


def test_default_threshold_is_the_checkpoints(workflow, const_ckpt: Path, tmp_path: Path) -> None:
    metrics = workflow.evaluate(const_ckpt, split="test", out=tmp_path, options=CPU, progress=False)
    assert metrics["thresholds"]["at_tuned"] == 0.7
    assert "checkpoint" in metrics["thresholds"]["tuned_source"]
    rows = _csv(tmp_path / "per_image.csv")
    assert all(float(r["threshold"]) == 0.7 and r["pred_crack_px"] == "0" for r in rows)
    # 0.5 is always reported too: probability 0.6 is crack everywhere there
    assert metrics["pixel_micro"]["recall"]["at_0.5"] == 1.0
    assert metrics["pixel_micro"]["specificity"]["at_0.5"] == 0.0
    assert metrics["pixel_micro"]["specificity"]["at_tuned"] == 1.0


def test_threshold_option_overrides(workflow, const_ckpt: Path, tmp_path: Path) -> None:
    options = EvaluateOptions(threshold=0.55, device="cpu")
    metrics = workflow.evaluate(const_ckpt, split="test", out=tmp_path, options=options,
                                progress=False)
    assert metrics["thresholds"]["at_tuned"] == 0.55
    assert "--threshold" in metrics["thresholds"]["tuned_source"]
    rows = _csv(tmp_path / "per_image.csv")
    assert all(int(r["pred_crack_px"]) == SIZE * SIZE for r in rows)
    assert metrics["pixel_micro"]["recall"]["at_tuned"] == 1.0


def test_crack_free_split_reports_null_iou_and_detection(
    workflow, const_ckpt: Path, clean_root: Path, tmp_path: Path
) -> None:
    metrics = workflow.evaluate(const_ckpt, data=clean_root, split="test", out=tmp_path,
                                options=CPU, progress=False)
    n = metrics["n_images"]
    for name in ("iou", "f1", "precision", "recall"):
        fig = metrics["pixel_micro"][name]
        assert fig["at_0.5"] is None and fig["at_tuned"] is None, name
        assert "no crack pixels" in fig["note"]
    assert metrics["tolerance"]["f1"]["at_tuned"] is None
    assert metrics["threshold_sweep"]["ods_f1"]["exact"] is None
    assert any("no crack pixels" in note for note in metrics["notes"])
    det = metrics["detection"]
    assert det["n_clean"] == n and det["n_cracked"] == 0
    # every image is flagged at 0.5 (probability 0.6 everywhere), none at the stored 0.7
    assert det["false_positive_rate"]["at_0.5"] == 1.0
    assert det["false_positive_rate"]["at_tuned"] == 0.0
    assert det["counts"]["at_tuned"]["tn"] == n and det["recall"]["at_tuned"] is None
    assert metrics["headline"]["figure"] == "detection.false_positive_rate"
    # pixel specificity stays defined, and the JSON has null, not 0 or NaN
    assert metrics["pixel_micro"]["specificity"]["at_tuned"] == 1.0
    doc = _strict_json(tmp_path / "metrics.json")
    assert doc["pixel_micro"]["iou"]["at_tuned"] is None
    for name in EVAL_FILES:
        assert (tmp_path / name).is_file()
    assert all(
        r["detection"] == "TN" and r["iou"] == "1.0" for r in _csv(tmp_path / "per_image.csv")
    )


def test_cli_evaluate_all_splits(cli, random_ckpt: Path, data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "ev"
    result = CliRunner().invoke(
        cli,
        [
            "evaluate",
            str(random_ckpt),
            "--data",
            str(data_root),
            "--split",
            "all",
            "--out",
            str(out),
            "--quiet",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    for text in (
        "Classification report",
        "background",
        "crack",
        "weighted avg",
        "ODS F1",
        "false-positive rate",
        "@ 0.45 tuned",
    ):
        assert text in result.output, text
    rows = _csv(out / "per_image.csv")
    assert len(rows) == len(FolderSource(data_root).samples("all")) == 12
    assert _strict_json(out / "metrics.json")["split"] == "all"


def test_cli_threshold_flag(cli, const_ckpt: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "evaluate",
            str(const_ckpt),
            "--split",
            "val",
            "--out",
            str(tmp_path),
            "--threshold",
            "0.65",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert _strict_json(tmp_path / "metrics.json")["thresholds"]["at_tuned"] == 0.65


def test_the_compute_dtype_is_recorded(workflow, random_ckpt: Path) -> None:
    from fissure.runtime import cpu_has_bf16

    quiet = {"split": "test", "progress": False}
    fp32 = EvaluateOptions(device="cpu", amp=False)
    assert workflow.evaluate(random_ckpt, options=fp32, **quiet)["compute_dtype"] == "float32"
    expected = "bfloat16" if cpu_has_bf16() else "float32"
    assert workflow.evaluate(random_ckpt, options=CPU, **quiet)["compute_dtype"] == expected
