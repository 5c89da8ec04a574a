#!/usr/bin/env python
"""Speed of fissure, measured side by side with what it replaces, in one process.

Every figure is a ratio against a comparison measured in the same run (the same process,
or for peak memory a child process per method launched by this run), so the noise of a
shared machine cancels out as far as it can: the variants of a measurement are interleaved,
rotating their order every repetition, and each figure is the median of ``--reps``
repetitions after one warm-up.

Sections (``--only``):

* ``train``   training step throughput, fissure's ResNetUNet (contiguous and channels_last)
  against ``segmentation_models_pytorch.Unet("resnet34")``: same Adam 1e-4, same
  BCEWithLogits, same batch. On the CPU also fissure under bf16 autocast, which its training
  does not use there, against fp32.
* ``util``    training GFLOP/s (FlopCounterMode on one forward+backward) over the GFLOP/s of
  a large matmul measured in the same repetitions.
* ``loader``  DataLoader samples/s (gzip PNG -> decode -> crop -> augment -> tensor) for 0, 1
  and 2 workers, against the training step's consumption rate.
* ``e2e``     steady-state epoch time: the notebook's pipeline (scripts/notebook_baseline.py)
  against ``fissure.workflow.train`` with its defaults, epochs alternating.
* ``eval``    peak RSS and time of the notebook's flatten-to-lists + sklearn evaluation against
  fissure's streaming evaluation, on the same synthetic predictions, one child process each.
* ``predict`` images/s at 448 px (fissure's predict path, the notebook's forward, smp) and one
  4000x3000 photo through tiled prediction (seconds, peak RSS), in a child process.

``util`` and ``loader`` need the training rates, so they add ``train``.

One more section runs only when asked for, as it builds a whole data set:

* ``seed-scale`` the original workload at its size (``--pairs``, default 11,298 on CUDA and
  1,000 on a CPU): synthesis, stage ingest and cache fill, epochs from files against the
  decoded-sample store, utilisation, evaluation of the test split and prediction of photos
  of 4000x3000 (see ``benchkit/seed_scale.py``).

Usage::

    python scripts/bench.py                      # everything, a 15-30 min run on 2 CPU cores
    python scripts/bench.py --only train,util --json bench.json
    python scripts/bench.py --quick              # tiny sizes: a smoke test, not a measurement
    python scripts/bench.py --device cuda        # unchanged on a GPU
    python scripts/bench.py --only seed-scale --pairs 1000

The markdown table goes to stdout, progress to stderr. ``segmentation_models_pytorch`` and
``psutil`` come from the ``bench`` extra. Without smp the run stops with one line naming the
extra, unless ``--no-comparisons`` asks to skip those rows (each skip is noted).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from benchkit.common import Section, Settings, load_smp, log, machine_info, machine_line
from benchkit.e2e import bench_e2e
from benchkit.evaluation import bench_eval, child_eval
from benchkit.loader import bench_loader
from benchkit.prediction import bench_predict, child_photo
from benchkit.seed_scale import bench_seed_scale, child_seed_eval, child_seed_predict
from benchkit.step import bench_train, profile_train_step

SECTIONS = ("train", "util", "loader", "e2e", "eval", "predict")
ON_REQUEST = ("seed-scale",)  # never part of the default run
NEEDS = {"util": ("train",), "loader": ("train",)}
COMPARED = {"train", "predict"}  # sections with a segmentation_models_pytorch comparison


# --------------------------------------------------------------------------- output


def markdown(sections: list[Section], info: dict[str, Any], command: str) -> str:
    lines = [
        "# fissure speed benchmark",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine_line(info)}",
        "",
        "| section | measurement | fissure | comparison | ratio | target | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for sec in sections:
        for r in sec.rows:
            lines.append(
                f"| {r.section} | {r.measurement} | {r.fissure} | {r.comparison} | "
                f"{r.ratio} | {r.target} | {r.verdict} |"
            )
    notes = [(s.name, n) for s in sections for n in s.notes]
    if notes:
        lines += ["", "Notes:", ""]
        lines += [f"- {name}: {n}" for name, n in notes]
    lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="fissure speed benchmarks, each against its comparison in the same run.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test only")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {', '.join(SECTIONS + ON_REQUEST)}",
    )
    parser.add_argument("--json", type=Path, help="also write every raw figure to this file")
    parser.add_argument("--reps", type=int, help="measured repetitions after the warm-up")
    parser.add_argument("--e2e-pairs", type=int, help="pairs in the end-to-end data set")
    parser.add_argument(
        "--pairs", type=int, help="seed-scale pairs (default: 11,298 on CUDA, 1,000 on a CPU)"
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep generated data sets here (default: a temporary folder)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also print a torch.profiler table of one training step to stderr",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads (default: torch's own; 1 with --quick)",
    )
    parser.add_argument(
        "--no-comparisons",
        action="store_true",
        help="run without segmentation_models_pytorch: its comparison rows are skipped",
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads or args.quick:
        # A smoke test on a shared 2-core machine: one thread avoids fighting for the cores.
        torch.set_num_threads(args.threads or 1)
    if args.child:
        kind, *rest = args.child
        if kind == "eval":
            out = child_eval(rest[0], int(rest[1]), int(rest[2]))
        elif kind == "photo":
            out = child_photo(int(rest[0]), int(rest[1]), int(rest[2]), rest[3])
        elif kind == "seed-eval":
            out = child_seed_eval(rest[0], rest[1], rest[2])
        elif kind == "seed-predict":
            out = child_seed_predict(rest[0], rest[1], rest[2], rest[3])
        else:
            raise SystemExit(f"unknown child {kind}")
        print(json.dumps(out))
        return 0

    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS + ON_REQUEST))
    if unknown:
        raise SystemExit(
            f"--only: unknown section(s) {', '.join(unknown)}; "
            f"choose from {', '.join(SECTIONS + ON_REQUEST)}"
        )
    wanted = set(only)
    for s in only:
        wanted.update(NEEDS.get(s, ()))
    if wanted & COMPARED and not args.no_comparisons and load_smp() is None:
        raise SystemExit(
            "the smp comparisons of sections train and predict need segmentation_models_pytorch: "
            "pip install 'fissure[bench]' (or pass --no-comparisons)"
        )
    st = Settings.quick() if args.quick else Settings()
    if args.reps:
        st.reps = args.reps
    if args.e2e_pairs:
        st.e2e_pairs = args.e2e_pairs
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    info = machine_info(device)
    command = "python scripts/bench.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    log(f"machine: {machine_line(info)}")
    sections: list[Section] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fissure-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        rates: dict[str, float] = {}
        if "train" in wanted:
            log("section train (+ util)")
            train_sec, util_sec = bench_train(st, device, "util" in wanted)
            rates = train_sec.raw["images_per_s"]
            sections += [train_sec, util_sec]
            gc.collect()
            if args.profile:
                log(
                    "profile of one fissure channels_last training step:\n"
                    + profile_train_step(st, device)
                )
        if "loader" in wanted:
            log("section loader")
            sections.append(bench_loader(st, device, rates, workdir))
        if "e2e" in wanted:
            log("section e2e")
            sections.append(bench_e2e(st, device, workdir))
        if "eval" in wanted:
            log("section eval")
            sections.append(bench_eval(st))
        if "predict" in wanted:
            log("section predict")
            sections.append(bench_predict(st, device))
        if "seed-scale" in wanted:
            log("section seed-scale")
            sections.append(bench_seed_scale(device, workdir, args.pairs, args.quick))
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    info["wall_seconds"] = round(time.perf_counter() - started, 1)
    print(markdown(sections, info, command))
    if args.json:
        doc = {
            "command": command,
            "machine": info,
            "settings": asdict(st),
            "sections": {
                s.name: {"rows": [asdict(r) for r in s.rows], "notes": s.notes, "raw": s.raw}
                for s in sections
            },
        }
        args.json.write_text(json.dumps(doc, indent=2, default=str))
    log(f"done in {info['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
