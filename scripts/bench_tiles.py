"""Tile size against accuracy and time: does a larger tile change what a checkpoint predicts?

Predicts the test split of a folder dataset (CFD: ``images/NNN.jpg``, ``masks/NNN.png``,
``split_koenig_test.txt``) with each tiling given, and reports for each against the first:
exact pixel F1 at the checkpoint's threshold, pooled over the split (true positives, false
positives and false negatives summed over all images), the mean absolute difference of
the probabilities, the largest one, the pixels the network computed and the seconds it
took (wall clock, noisy on a shared machine). Optionally also the photos/s of
``predict_files`` on synthetic large photos with and without the background threads.

    .venv/bin/python scripts/bench_tiles.py runs/cfd/best.pt --data /work/shared/data/cfd \\
        --tiling 256:64 --tiling 512:64 --tiling 512:128 [--photos 4 --photo 4000x3000]
    .venv/bin/python scripts/bench_tiles.py runs/cfd/best.pt --no-accuracy --photos 4

A tiling is ``TILE:OVERLAP`` in px, or ``default`` (what ``fissure predict`` picks).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from fissure.data.image import load_image
from fissure.prediction import OutputOptions, PredictOptions, predict_files
from fissure.prediction.predictor import Predictor, predict_many


def _options(text: str) -> PredictOptions:
    if text == "default":
        return PredictOptions()
    tile, overlap = (int(v) for v in text.split(":"))
    return PredictOptions(tile=tile, overlap=overlap)


def _split(root: Path, split: str) -> list[tuple[Path, Path]]:
    ids = (root / f"split_koenig_{split}.txt").read_text().split()
    return [(root / "images" / f"{i}.jpg", root / "masks" / f"{i}.png") for i in ids]


def _tiling_run(predictor: Predictor, images: list[np.ndarray], text: str) -> dict:
    options = _options(text)
    start = time.perf_counter()
    results = dict(predict_many(predictor, enumerate(images), options))
    seconds = time.perf_counter() - start
    probs = [results[i].probability for i in range(len(images))]
    pixels = sum(r.tiles * (r.tile or 0) ** 2 for r in results.values())
    return {"tiling": text, "probs": probs, "seconds": seconds, "network_px": pixels,
            "tiles": sorted({r.tile for r in results.values()})}


def _f1(probs: list[np.ndarray], masks: list[np.ndarray], threshold: float) -> float:
    tp = fp = fn = 0
    for prob, truth in zip(probs, masks, strict=True):
        pred = prob > threshold
        tp += int(np.sum(pred & truth))
        fp += int(np.sum(pred & ~truth))
        fn += int(np.sum(~pred & truth))
    return 2 * tp / max(1, 2 * tp + fp + fn)


def accuracy(checkpoint: str, root: Path, split: str, tilings: list[str]) -> list[dict]:
    """One row per tiling: F1, probability differences against the first tiling, cost."""
    predictor = Predictor.from_checkpoint(checkpoint, "cpu")
    pairs = _split(root, split)
    images = [load_image(image) for image, _ in pairs]
    masks = [np.asarray(Image.open(mask).convert("L")) > 127 for _, mask in pairs]
    runs = [_tiling_run(predictor, images, text) for text in tilings]
    reference = runs[0]["probs"]
    rows = []
    for run in runs:
        diffs = [np.abs(p - r) for p, r in zip(run["probs"], reference, strict=True)]
        rows.append({
            "tiling": run["tiling"],
            "tiles_used": run["tiles"],
            "f1_exact": _f1(run["probs"], masks, predictor.threshold),
            "mean_abs_prob_diff": float(np.mean(np.concatenate([d.ravel() for d in diffs]))),
            "max_abs_prob_diff": float(max(d.max() for d in diffs)),
            "network_megapixels": run["network_px"] / 1e6,
            "seconds": run["seconds"],
        })
    return rows


def photo_rate(checkpoint: str, count: int, size: tuple[int, int]) -> list[dict]:
    """photos/s of ``predict_files`` on ``count`` synthetic photos, without and with the
    background threads (``prefetch`` 0 and 2; the writer thread runs in both)."""
    rng = np.random.default_rng(0)
    width, height = size
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for i in range(count):
            coarse = rng.integers(60, 200, (12, 16, 3), dtype=np.uint8)
            photo = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
            photo.save(folder / f"photo_{i}.jpg", quality=90)
        for prefetch in (0, 2):
            start = time.perf_counter()
            predict_files(checkpoint, [folder], Path(tmp) / f"out{prefetch}",
                          PredictOptions(device="cpu", prefetch=prefetch), OutputOptions(),
                          progress=False)
            seconds = time.perf_counter() - start
            rows.append({"prefetch": prefetch, "photos": count, "seconds": seconds,
                         "photos_per_s": count / seconds})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/cfd"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--tiling", action="append", default=None,
                        help="TILE:OVERLAP or default (repeatable; the first is the reference)")
    parser.add_argument("--photos", type=int, default=0, help="also time this many photos")
    parser.add_argument("--photo", default="4000x3000", help="photo size WIDTHxHEIGHT")
    parser.add_argument("--accuracy", action=argparse.BooleanOptionalAction, default=True,
                        help="compare the tilings on the split (default: yes)")
    args = parser.parse_args(argv)
    tilings = args.tiling or ["256:64", "512:64", "default"]
    report: dict = {}
    if args.accuracy:
        report["accuracy"] = accuracy(args.checkpoint, args.data, args.split, tilings)
    if args.photos:
        width, height = (int(v) for v in args.photo.split("x"))
        report["photos"] = photo_rate(args.checkpoint, args.photos, (width, height))
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
