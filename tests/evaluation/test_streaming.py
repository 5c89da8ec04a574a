"""fissure.evaluation.streaming: the one pass over a split and what it keeps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fissure.checkpoint import load_checkpoint
from fissure.config import DEFAULT_THRESHOLD, EvalConfig
from fissure.data import CrackDataset, FolderSource, load_pair
from fissure.data.transforms import eval_transform, image_to_tensor
from fissure.evaluation import EvalResult, ToleranceMeter, evaluate_dataset, reload_samples
from fissure.report import pick_samples
from fissure.runtime import predict_probs

SIZE = 64  # the fixtures' image size (conftest.py)


def _batch():
    """Two 1x4 images: a crack found with one false alarm, and a crack-free image."""
    probs = torch.tensor([[0.9, 0.8, 0.3, 0.1], [0.6, 0.2, 0.2, 0.2]]).reshape(2, 1, 1, 4)
    masks = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]]).reshape(2, 1, 1, 4).bool()
    return probs, masks


def test_counts_are_kept_at_the_tuned_threshold_and_at_the_default() -> None:
    assert DEFAULT_THRESHOLD == 0.5
    assert set(EvalResult.create(0.45, EvalConfig()).meters) == {0.45, DEFAULT_THRESHOLD}
    same = EvalResult.create(DEFAULT_THRESHOLD, EvalConfig())
    assert list(same.meters) == list(same.tolerant) == [DEFAULT_THRESHOLD]


def test_per_image_rows_by_hand() -> None:
    result = EvalResult.create(0.7, EvalConfig(tolerance=0, min_area=1, thresholds=9))
    result.update(*_batch(), ["a", "b"])
    assert result.n_images == 2
    tp, fp, fn, tn = result.counts()
    assert (tp.tolist(), fp.tolist(), fn.tolist(), tn.tolist()) == ([2, 0], [0, 0], [0, 0], [2, 4])
    first, second = result.per_image()
    assert (first["name"], first["iou"], first["detection"]) == ("a", 1.0, "TP")
    assert (second["pred_px"], second["true_px"], second["detection"]) == (0, 0, "TN")
    at_half = result.per_image(0.5)
    assert at_half[1]["detection"] == "FP" and at_half[1]["iou"] == 0.0


def test_specks_under_min_area_do_not_flag_an_image() -> None:
    """40 isolated 1-px specks add up past min_area 10 but hold no crack of 10 px: the
    image is not flagged, as fissure predict would find no crack in it."""
    probs = torch.zeros(2, 1, 16, 16)
    probs[0, 0, ::2, ::2] = 0.9  # 64 specks, none touching another
    probs[1, 0, 3, 2:14] = 0.9  # one 12-px crack
    masks = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    result = EvalResult.create(0.7, EvalConfig(tolerance=0, min_area=10, thresholds=9))
    result.update(probs, masks, ["specks", "crack"])
    specks, crack = result.per_image()
    assert (specks["pred_px"], specks["kept_px"], specks["detection"]) == (64, 0, "TN")
    assert (crack["pred_px"], crack["kept_px"], crack["detection"]) == (12, 12, "FP")
    assert result.kept_areas().tolist() == [0, 12]


def test_tolerance_meter_rows_and_sums() -> None:
    probs, masks = _batch()
    meter = ToleranceMeter(0.5, 1)
    meter.update(probs, masks)
    # by hand, at 0.5 within 1 px: both crack pixels found (matched 2 of 2 each way); the
    # crack-free image's one false alarm matches nothing
    assert [list(r) for r in meter.rows] == [[2, 2, 2, 2], [0, 0, 1, 0]]
    assert meter.sums() == (2, 2, 3, 2)
    assert ToleranceMeter(0.5, 1).sums() == (0, 0, 0, 0)


def test_samples_are_repredicted_like_the_stream(random_ckpt: Path, data_root: Path) -> None:
    ckpt = load_checkpoint(random_ckpt)
    model, policy = ckpt.build_model("cpu"), ckpt.policy
    source = FolderSource(data_root)
    dataset = CrackDataset(source, source.samples("test"), eval_transform())
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
    assert [r["name"] for r in rows] == [s.name for s in source.samples("test")]
    views = reload_samples(model, dataset, pick_samples(rows, 1), policy, torch.device("cpu"))
    assert views and len({v.row["name"] for v in views}) == len(views)
    for view in views:
        pred = view.prob > 0.45
        assert view.image.shape == (SIZE, SIZE, 3) and view.mask.shape == (SIZE, SIZE)
        # batching may move a probability by float rounding; allow a pixel or two
        assert abs(int(pred.sum()) - view.row["pred_px"]) <= 2
        assert int(view.mask.sum()) == view.row["true_px"]


def test_eval_tta_scores_and_resamples_the_averaged_flips(
    random_ckpt: Path, data_root: Path
) -> None:
    ckpt = load_checkpoint(random_ckpt)
    model, policy, cpu = ckpt.build_model("cpu"), ckpt.policy, torch.device("cpu")
    source = FolderSource(data_root)
    dataset = CrackDataset(source, source.samples("test"), eval_transform())
    pairs = [load_pair(source, s) for s in dataset.samples]
    probs = {tta: [predict_probs(model, image_to_tensor(image)[None], policy, tta=tta)
                   for image, _ in pairs] for tta in (False, True)}
    # a threshold inside the averaged probabilities, so that flips change the masks
    threshold = float(torch.cat([p.flatten() for p in probs[True]]).median())
    by_hand = {}
    for tta in (False, True):
        by_hand[tta] = EvalResult.create(threshold, EvalConfig(thresholds=9))
        for prob, (_, mask) in zip(probs[tta], pairs, strict=True):
            by_hand[tta].update(prob, torch.from_numpy(mask)[None, None], ["x"])
    cfg = EvalConfig(batch_size=4, thresholds=9, tta=True)
    result = evaluate_dataset(model, dataset, policy, threshold, cfg, cpu, progress=False)
    streamed = torch.stack(result.counts())
    # batching may move a probability by float rounding; allow a pixel or two per image
    assert int((streamed - torch.stack(by_hand[True].counts())).abs().max()) <= 2
    assert int((streamed - torch.stack(by_hand[False].counts())).abs().max()) > 2
    views = reload_samples(model, dataset, pick_samples(result.per_image(), 1), policy, cpu,
                           tta=True)
    for view in views:
        assert abs(int((view.prob > threshold).sum()) - view.row["pred_px"]) <= 2


def test_a_batch_needs_one_name_per_image() -> None:
    result = EvalResult.create(0.5, EvalConfig())
    with pytest.raises(ValueError, match="1 names for a batch of 2"):
        result.update(*_batch(), ["x"])
