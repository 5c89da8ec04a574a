#!/usr/bin/env python
"""Per-image cost of the Model Registry's ``CustomModel`` path against ``fissure predict``.

Both predict the same images with the same checkpoint, loaded once before timing (Snowflake
builds the model once per process; ``fissure predict`` loads it once per run):

* ``custom model``: :class:`fissure.snowflake.crack_model.CrackModel` ``.predict`` on one
  pandas DataFrame with one ``PATH`` row per image (read, decode, predict, measure, mask PNG
  bytes), as Snowflake calls it, here without Snowflake;
* ``fissure predict, masks only``: :func:`fissure.prediction.files.predict_files` without
  overlays and ``cracks.csv`` (masks, ``predictions.csv``/``.json``): the least ``fissure
  predict`` writes, so the fairest comparison for the wrapper's own cost;
* with ``--all-outputs`` also ``fissure predict`` with its defaults (overlays and
  ``cracks.csv`` too), what the command runs.

The paths take the images in chunks of ``--chunk`` (a DataFrame of that many rows, a
``predict_files`` call on that many files), interleaved chunk by chunk (A, B on chunk 1, then
B, A on chunk 2, ...: the order rotates), so that a shared machine's load, which changes
within seconds, falls on both alike. A path's time for a round is the sum over its chunks;
each ms/image figure is the median over rounds, and the ratio is the median of the ratios
of the two paths on the same chunk (every chunk of every round). One warm-up call of each
path on two images comes first.

Images: the first ``--images`` of ``../shared/data/cfd/images`` (480x320 CrackForest photos),
repeated if there are fewer; without that folder, synthetic photos of that size. The
checkpoint is a ResNet34-UNet trained on nothing, at the notebook's 256 px resize policy,
with a threshold that marks about 5 % of the pixels as crack, so that the measurements (the
skeleton, widths) cost what they cost on real cracks. Speed does not depend on the weights.

Usage::

    python scripts/bench_registry_model.py                    # 100 images, 5 rounds
    python scripts/bench_registry_model.py --images 20 --rounds 3 --out /tmp/bench.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from benchkit.common import log, machine_info, machine_line
from PIL import Image

from fissure.checkpoint import make_checkpoint
from fissure.config import config_from_dict
from fissure.model import build_model
from fissure.prediction.files import predict_files
from fissure.prediction.options import OutputOptions, PredictOptions
from fissure.prediction.predictor import Predictor, predict_image
from fissure.snowflake.crack_model import input_frame, load_local

ROOT = Path(__file__).resolve().parents[1]
CFD = ROOT.parent / "shared" / "data" / "cfd" / "images"
MASKS = "fissure predict, masks only (no overlay, no cracks.csv)"
CUSTOM = "custom model (DataFrames of PATH rows)"
DEFAULTS = "fissure predict (defaults: masks, overlays, tables)"
TARGET = 1.10
"""The wrapper may add at most 10 % per image."""


def _images(count: int, folder: Path) -> tuple[list[Path], str]:
    """``count`` image files in ``folder`` (CFD photos, else synthetic), and their origin."""
    folder.mkdir(parents=True, exist_ok=True)
    found = sorted(CFD.glob("*.jpg")) if CFD.is_dir() else []
    paths = []
    for i in range(count):
        if found:
            source = found[i % len(found)]
            path = folder / f"{i:03d}_{source.name}"
            path.write_bytes(source.read_bytes())
        else:
            rng = np.random.default_rng(i)
            small = rng.integers(0, 256, (41, 61, 3), dtype=np.uint8)
            path = folder / f"{i:03d}.png"
            Image.fromarray(small).resize((480, 320), Image.BILINEAR).save(path)
        paths.append(path)
    origin = (f"CrackForest photos from {CFD} (480x320 JPEG)" if found
              else "synthetic 480x320 PNG photos (../shared/data/cfd not found)")
    return paths, origin


def _checkpoint(path: Path, sample: Path, device: str) -> None:
    """A random ResNet34-UNet at the notebook's policy, thresholded at the 95th percentile."""
    torch.manual_seed(0)
    model = build_model("resnet34").eval()
    prob = predict_image(model, sample, PredictOptions(device=device)).probability
    cfg = config_from_dict({"model": {"encoder": "resnet34"},
                            "data": {"size": 256, "mode": "resize"}})
    make_checkpoint(model, cfg, epoch=0, threshold=float(np.quantile(prob, 0.95))).save(path)


def _timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _row(name: str, seconds: list[float], chunks: list[float], count: int,
         base: list[float] | None) -> str:
    per_image = statistics.median(seconds) / count * 1000
    spread = f"{min(seconds) / count * 1000:.1f}-{max(seconds) / count * 1000:.1f}"
    if base is None:
        return f"| {name} | {per_image:.1f} | {spread} | 1.00 (reference) | |"
    ratio = statistics.median([a / b for a, b in zip(chunks, base, strict=True)])
    verdict = "met" if ratio <= TARGET else "missed"
    return (f"| {name} | {per_image:.1f} | {spread} | {ratio:.3f} | "
            f"<= {TARGET:.2f}: {verdict} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=10, help="Images per call.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--all-outputs", action="store_true",
                        help="Also time fissure predict with overlays and cracks.csv.")
    parser.add_argument("--out", type=Path, help="Also write the markdown here.")
    args = parser.parse_args()

    info = machine_info(torch.device(args.device))
    with tempfile.TemporaryDirectory(prefix="fissure-bench-registry-") as tmp:
        tmp_dir = Path(tmp)
        paths, origin = _images(args.images, tmp_dir / "photos")
        _checkpoint(tmp_dir / "best.pt", paths[0], args.device)
        start = time.perf_counter()
        crack_model = load_local(tmp_dir / "best.pt", device=args.device)
        load_model_s = time.perf_counter() - start
        start = time.perf_counter()
        predictor = Predictor.from_checkpoint(tmp_dir / "best.pt", args.device)
        load_predictor_s = time.perf_counter() - start
        options = PredictOptions(device=args.device)

        def custom(images: list[Path]) -> None:
            out = crack_model.predict(input_frame(paths=[str(p) for p in images]))
            assert (out["ERROR"] == "").all()

        def files(output: OutputOptions) -> Callable[[list[Path]], None]:
            def run(images: list[Path]) -> None:
                with tempfile.TemporaryDirectory(dir=tmp_dir) as out:
                    predict_files(predictor, images, out, options, output, progress=False)
            return run

        variants = {MASKS: files(OutputOptions(overlay=False, cracks=False)), CUSTOM: custom}
        if args.all_outputs:
            variants[DEFAULTS] = files(OutputOptions())
        names = list(variants)
        log("warm-up")
        for name in names:
            variants[name](paths[:2])
        times: dict[str, list[float]] = {name: [] for name in names}
        chunks: dict[str, list[float]] = {name: [] for name in names}
        turn = 0
        for k in range(args.rounds):
            for start in range(0, len(paths), args.chunk):
                part = paths[start:start + args.chunk]
                order = names[turn % len(names):] + names[:turn % len(names)]
                turn += 1
                for name in order:
                    chunks[name].append(_timed(partial(variants[name], part)))
            per_round = len(range(0, len(paths), args.chunk))
            for name in names:
                times[name].append(sum(chunks[name][-per_round:]))
            log(f"round {k + 1}/{args.rounds}: " + ", ".join(
                f"{n.split(' (')[0]} {times[n][-1]:.1f}s" for n in names))

    command = "python scripts/bench_registry_model.py " + " ".join(sys.argv[1:])
    lines = [
        f"Per-image cost of the registry's CustomModel against `fissure predict` on "
        f"{args.images} images ({origin}), ResNet34-UNet at the 256 px resize policy, one "
        f"warm-up then {args.rounds} rounds over all images in calls of {args.chunk} images, "
        f"the paths interleaved call by call in rotating order (the machine is shared). "
        f"Model loading is outside the timings (CustomModel {load_model_s:.1f} s, "
        f"Predictor {load_predictor_s:.1f} s, once).",
        "",
        "| path | ms/image (median over rounds) | range over rounds | ratio to masks-only "
        "predict (median of paired calls) | target |",
        "| --- | --- | --- | --- | --- |",
        *(_row(name, times[name], chunks[name], args.images,
               None if name == MASKS else chunks[MASKS]) for name in names),
        "",
        f"Command: `{command.strip()}`",
        f"Machine: {machine_line(info)}",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
