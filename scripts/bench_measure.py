#!/usr/bin/env python
"""Crack tracing on a photo full of long cracks: one crack box at a time against one pass.

``fissure predict`` traces each crack's centre line (skeleton, distance transform, spur
pruning) on its own bounding box, which is cheap for a few thin cracks in a large photo;
where the boxes add up to more than the image (long parallel or crossing cracks), it
traces the whole mask once instead. This times :func:`fissure.prediction.analyse_cracks`
both ways on ``--cracks`` parallel diagonal cracks, 2 px wide, across a square mask of
``--size`` px, and checks that both give the same records.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_measure.py --size 1000 --cracks 20
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from benchkit.common import cpu_model, median
from scipy import ndimage

from fissure.prediction import cracks, measure


def diagonal_cracks(size: int, count: int) -> np.ndarray:
    """``count`` parallel diagonal cracks, 2 px wide and ``size / count`` apart.

    Shapes:
        returns: (size, size) bool.
    """
    mask = np.zeros((size, size), dtype=bool)
    rows = np.arange(size)
    for k in range(count):
        cols = rows + (k - count // 2) * (2 * size // count)
        keep = (cols >= 0) & (cols < size - 1)
        mask[rows[keep], cols[keep]] = mask[rows[keep], cols[keep] + 1] = True
    return mask


def per_box(mask: np.ndarray, min_area: int):
    """:func:`measure.trace_cracks` forced to trace each crack on its own box."""
    labels, count = measure.label_cracks(mask, min_area)
    boxes = list(ndimage.find_objects(labels)) if count else []
    lines = [measure.crack_line(measure.crack_pixels(labels, box, i), box[0].start,
                                box[1].start) for i, box in enumerate(boxes, start=1)]
    return labels, boxes, lines


def timed(rounds: int, mask: np.ndarray) -> tuple[float, list]:
    seconds, result = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        result = cracks.analyse_cracks(mask, 20)
        seconds.append(time.perf_counter() - start)
    return median(seconds), result.cracks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--cracks", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    mask = diagonal_cracks(args.size, args.cracks)
    print(f"CPU {cpu_model()}; {args.cracks} cracks on {args.size}x{args.size} px")
    auto, records = timed(args.rounds, mask)
    boxes = sum((b[0].stop - b[0].start) * (b[1].stop - b[1].start)
                for b in ndimage.find_objects(measure.label_cracks(mask, 20)[0]))
    print(f"boxes hold {boxes / mask.size:.1f}x the image's pixels")
    print(f"shipped (one pass where the boxes exceed the image): {auto:.3f} s")
    saved = cracks.trace_cracks
    cracks.trace_cracks = per_box
    try:
        boxed, boxed_records = timed(args.rounds, mask)
    finally:
        cracks.trace_cracks = saved
    print(f"one crack box at a time: {boxed:.3f} s ({boxed / auto:.1f}x)")
    print(f"same records: {boxed_records == records}")


if __name__ == "__main__":
    main()
