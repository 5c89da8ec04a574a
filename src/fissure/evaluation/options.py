"""The options of an evaluation run, built once (by the CLI or a notebook) and passed down."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvaluateOptions:
    """How :func:`evaluate` runs: ``threshold`` overrides the checkpoint's tuned one,
    ``amp`` its mixed precision (``False``: fp32, the same figures on every machine),
    ``tta`` its ``eval.tta`` (flips averaged); ``samples_per_group`` images of each of the
    worst, median and best go to samples.png."""

    threshold: float | None = None
    device: str = "auto"
    amp: bool | None = None
    tta: bool | None = None
    num_workers: int = 0
    samples_per_group: int = 2
