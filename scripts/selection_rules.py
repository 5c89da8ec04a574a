"""Which epoch would each model-selection rule keep, and what does it score on test?

For training runs made with ``train.keep_every: 1`` (every epoch's validated weights in
``epochs/epoch_NNN.pt``), replays several selection rules on each run's ``history.csv``
(:func:`fissure.training.selected_epoch`, the rule ``fissure train`` applies), evaluates
each chosen epoch once on a split (``fissure.api.evaluate`` at the threshold stored with
that epoch) and prints a Markdown table per run, then each rule's mean and spread over the
runs. Issue 16 asks to keep the rule that reduces the spread across seeds.

Rules: ``shipped`` is the run's own config; ``single`` the best single validation
(window 1, tolerance 0); ``window3`` a 3-validation mean with tolerance 0.005; ``last`` the
last epoch. Add one with ``--rule NAME=WINDOW,TOLERANCE``.

Usage::

    fissure train --config configs/cfd.yaml --set train.keep_every=1 --out runs/s0
    .venv/bin/python scripts/selection_rules.py runs/s0 runs/s1 runs/s2 --split test

(``--set train.seed=1`` ... for the other runs.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path

from fissure.api import evaluate
from fissure.app.runs import read_history
from fissure.config import load_config
from fissure.training import selected_epoch

RULES = {"single": (1, 0.0), "window3": (3, 0.005)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (train.keep_every=1)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--data", default=None, help="dataset folder (default: the run's)")
    parser.add_argument("--rule", action="append", default=[], type=parse_rule,
                        metavar="NAME=WINDOW,TOL",
                        help="another rule: select_window and select_tolerance")
    return parser.parse_args(argv)


def parse_rule(text: str) -> tuple[str, tuple[int, float]]:
    """``NAME=WINDOW,TOL`` -> ``(NAME, (WINDOW, TOL))``; argparse words a bad one."""
    name, _, values = text.partition("=")
    window, _, tolerance = values.partition(",")
    try:
        rule = (int(window), float(tolerance or 0))
    except ValueError:
        rule = (0, -1.0)
    if not name or rule[0] < 1 or rule[1] < 0:
        raise argparse.ArgumentTypeError(
            f"{text!r}: want NAME=WINDOW,TOL with WINDOW >= 1 and TOL >= 0, e.g. w5=5,0.01"
        )
    return name, rule


def rules(extra: list[tuple[str, tuple[int, float]]]) -> dict[str, tuple[int, float]]:
    """The named (select_window, select_tolerance) pairs to replay, besides shipped/last."""
    return {**RULES, **dict(extra)}


def choices(run: Path, named: dict[str, tuple[int, float]]) -> dict[str, int | None]:
    """rule name -> the epoch it keeps in ``run`` (None: no epoch had a finite score)."""
    history = read_history(run / "history.csv")
    train = load_config(run / "config.yaml").train
    chosen = {"shipped": selected_epoch(history, train)}
    for name, (window, tolerance) in named.items():
        rule = replace(train, select_window=window, select_tolerance=tolerance)
        chosen[name] = selected_epoch(history, rule)
    chosen["last"] = int(history[-1]["epoch"])
    return chosen


def score(run: Path, epoch: int, split: str, data: str | None) -> tuple[float, float]:
    """Exact and 2-px F1 (dataset level) of ``run``'s epoch at its stored threshold."""
    path = run / "epochs" / f"epoch_{epoch:03d}.pt"
    if not path.is_file():
        sys.exit(f"{path}: missing; train with --set train.keep_every=1")
    doc = evaluate(path, data=data, split=split, progress=False)
    return doc["pixel_micro"]["f1"]["at_tuned"], doc["tolerance"]["f1"]["at_tuned"]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    named = rules(args.rule)
    per_rule: dict[str, list[float]] = {}
    print(f"| run | rule | epoch | {args.split} exact F1 | {args.split} 2-px F1 |")
    print("| --- | --- | ---: | ---: | ---: |")
    for run in args.runs:
        cache: dict[int, tuple[float, float]] = {}
        for name, epoch in choices(run, named).items():
            if epoch is None:
                print(f"| {run} | {name} | none | | |")
                continue
            if epoch not in cache:
                cache[epoch] = score(run, epoch, args.split, args.data)
            exact, tolerant = cache[epoch]
            per_rule.setdefault(name, []).append(exact)
            print(f"| {run} | {name} | {epoch} | {exact:.4f} | {tolerant:.4f} |")
    print("\n| rule | mean exact F1 | spread (max - min) | sd | runs |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, values in per_rule.items():
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"| {name} | {statistics.mean(values):.4f} | {max(values) - min(values):.4f} "
              f"| {sd:.4f} | {len(values)} |")


if __name__ == "__main__":
    main()
