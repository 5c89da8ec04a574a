"""End-to-end evaluation: workflow.evaluate and ``fissure evaluate`` on tiny checkpoints.

Checkpoints are built directly (no training): a seeded random resnet18 for realistic output,
and one whose last layer is zeroed so every pixel has probability 0.6, which makes the
figures computable by hand (all crack above 0.5, nothing above 0.7).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from fissure import api as workflow
from fissure.checkpoint import make_checkpoint
from fissure.cli import cli
from fissure.config import EvalConfig, load_config
from fissure.data import CrackDataset, FolderSource
from fissure.data.synth import generate_dataset
from fissure.data.transforms import eval_transform
from fissure.evaluation import evaluate_dataset, reload_samples
from fissure.model import build_model
from fissure.report import EVAL_FILES, pick_samples
from fissure.runtime import InputPolicy

SIZE = 64
CONST_PROB = 0.6


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 synthetic pairs of 64 px in train/val/test (some crack-free)."""
    root = tmp_path_factory.mktemp("eval_synth")
    generate_dataset(root, count=12, size=SIZE, seed=0)
    return root


@pytest.fixture(scope="module")
def clean_root(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same images with every mask blank: the user's all-crack-free test set."""
    root = tmp_path_factory.mktemp("eval_clean") / "data"
    shutil.copytree(data_root, root)
    for mask in root.glob("*/masks/*.png"):
        Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(mask)
    return root


def _save(tmp: Path, data_root: Path, threshold: float, constant: bool, name: str) -> Path:
    cfg = load_config(
        None,
        [
            f"data.root={data_root}",
            f"data.size={SIZE}",
            "model.encoder=resnet18",
            "eval.batch_size=4",
            "eval.thresholds=19",
            "eval.min_area=5",
        ],
    )
    torch.manual_seed(0)
    model = build_model("resnet18")
    if constant:
        with torch.no_grad():
            model.final.weight.zero_()
            model.final.bias.fill_(math.log(CONST_PROB / (1 - CONST_PROB)))
    path = tmp / name
    make_checkpoint(model, cfg, epoch=1, threshold=threshold).save(path)
    return path


@pytest.fixture(scope="module")
def random_ckpt(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save(tmp_path_factory.mktemp("ckpt"), data_root, 0.45, False, "random.pt")


@pytest.fixture(scope="module")
def const_ckpt(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Probability 0.6 everywhere; the stored threshold 0.7 predicts nothing."""
    return _save(tmp_path_factory.mktemp("ckpt"), data_root, 0.7, True, "const.pt")


@pytest.fixture(scope="module")
def evaluated(random_ckpt: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("eval_out")
    metrics = workflow.evaluate(random_ckpt, split="test", out=out, device="cpu", progress=False)
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


def test_default_threshold_is_the_checkpoints(const_ckpt: Path, tmp_path: Path) -> None:
    metrics = workflow.evaluate(
        const_ckpt, split="test", out=tmp_path, device="cpu", progress=False
    )
    assert metrics["thresholds"]["at_tuned"] == 0.7
    assert "checkpoint" in metrics["thresholds"]["tuned_source"]
    rows = _csv(tmp_path / "per_image.csv")
    assert all(float(r["threshold"]) == 0.7 and r["pred_crack_px"] == "0" for r in rows)
    # 0.5 is always reported too: probability 0.6 is crack everywhere there
    assert metrics["pixel_micro"]["recall"]["at_0.5"] == 1.0
    assert metrics["pixel_micro"]["specificity"]["at_0.5"] == 0.0
    assert metrics["pixel_micro"]["specificity"]["at_tuned"] == 1.0


def test_threshold_option_overrides(const_ckpt: Path, tmp_path: Path) -> None:
    metrics = workflow.evaluate(
        const_ckpt, split="test", out=tmp_path, threshold=0.55, device="cpu", progress=False
    )
    assert metrics["thresholds"]["at_tuned"] == 0.55
    assert "--threshold" in metrics["thresholds"]["tuned_source"]
    rows = _csv(tmp_path / "per_image.csv")
    assert all(int(r["pred_crack_px"]) == SIZE * SIZE for r in rows)
    assert metrics["pixel_micro"]["recall"]["at_tuned"] == 1.0


def test_crack_free_split_reports_null_iou_and_detection(
    const_ckpt: Path, clean_root: Path, tmp_path: Path
) -> None:
    metrics = workflow.evaluate(
        const_ckpt, data=clean_root, split="test", out=tmp_path, device="cpu", progress=False
    )
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


def test_cli_evaluate_all_splits(random_ckpt: Path, data_root: Path, tmp_path: Path) -> None:
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


def test_cli_threshold_flag(const_ckpt: Path, tmp_path: Path) -> None:
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


def test_samples_are_repredicted_like_the_stream(random_ckpt: Path, data_root: Path) -> None:
    model, ckpt = workflow.load_model(random_ckpt, "cpu")
    source = FolderSource(data_root)

    dataset = CrackDataset(source, source.samples("test"), eval_transform())
    policy = InputPolicy.from_checkpoint(ckpt)
    result = evaluate_dataset(
        model,
        dataset,
        policy,
        0.45,
        EvalConfig(batch_size=4, thresholds=9),
        torch.device("cpu"),
        progress=False,
    )
    rows = result.per_image()
    views = reload_samples(model, dataset, pick_samples(rows, 1), policy, torch.device("cpu"))
    assert views and len({v.row["name"] for v in views}) == len(views)
    for view in views:
        pred = view.prob > 0.45
        assert view.image.shape == (SIZE, SIZE, 3) and view.mask.shape == (SIZE, SIZE)
        # batching may move a probability by float rounding; allow a pixel or two
        assert abs(int(pred.sum()) - view.row["pred_px"]) <= 2
        assert int(view.mask.sum()) == view.row["true_px"]


def test_the_compute_dtype_is_recorded(random_ckpt: Path) -> None:
    from fissure.runtime import cpu_has_bf16

    quiet = {"split": "test", "device": "cpu", "progress": False}
    assert workflow.evaluate(random_ckpt, amp=False, **quiet)["compute_dtype"] == "float32"
    expected = "bfloat16" if cpu_has_bf16() else "float32"
    assert workflow.evaluate(random_ckpt, **quiet)["compute_dtype"] == expected
