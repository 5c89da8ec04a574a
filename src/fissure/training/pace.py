"""The crop a time budget affords: ``train.min_steps``.

Under ``train.max_minutes`` a slower machine does fewer optimiser steps, and a step costs
about what its crops' pixels cost. Below a few hundred steps the model is still far from
trained, and more, smaller crops pay; with enough steps the larger crop's context pays
instead. On CFD, 2 AVX2 cores: at half speed 96 px crops (about 650 steps) scored 0.704
exact F1 against 0.693 for 128 px (about 400); with both cores for 30 minutes (about 1,300
steps at 128 px) 128 px scored 0.719 against 0.717 (BENCHMARKS.md, "The crop a budget
affords").

:func:`fit_crop_to_budget` times the network's training step at ``data.size`` and, while
the budget holds fewer than ``train.min_steps`` such steps, tries a crop 32 px smaller, down
to ``data.min_size``. The estimate is the budget over the timed step, which leaves out the
optimiser step, data loading and validation, so it usually exceeds the steps the run will do
(real runs did 64-99 % of it); but the timing is noisy, not a bound: on a 2-core AMD EPYC
Zen 4 one run timed 0.60 s (2,976 steps estimated) and did 3,730, where its neighbours timed
0.39-0.41 s. A resumed run is not timed again: it keeps the crop its ``config.yaml``
recorded, so a run never changes its crop half-way.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F

from ..config import Config
from ..runtime import autocast_for
from .distributed import Dist, broadcast_float

StepTimer = Callable[[torch.nn.Module, Config, torch.device, int], float]
"""``timer(model, cfg, device, size)``: seconds of one training step of ``size`` px crops."""

TIMED_STEPS = 2
"""Steps timed (their mean) after one untimed warm-up step, which allocates and tunes."""
CROP_STEP = 32
"""The crop shrinks by this many px at a time: the U-Net halves its input five times."""


def zero_step(probe: torch.nn.Module, cfg: Config, device: torch.device, batch: int,
              size: int) -> None:
    """One forward and backward pass of ``batch`` zero crops of ``size`` px through
    ``probe`` (a copy of the run's model, in train mode), as a training step computes them;
    its gradients are dropped after. The step the memory and speed probes measure."""
    layout = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    try:
        x = torch.zeros(batch, 3, size, size, device=device).contiguous(memory_format=layout)
        with autocast_for(device, cfg.train.amp):
            logits = probe(x)
        target = torch.zeros_like(logits, dtype=torch.float32)
        F.binary_cross_entropy_with_logits(logits.float(), target).backward()
    finally:
        probe.zero_grad(set_to_none=True)


def step_seconds(model: torch.nn.Module, cfg: Config, device: torch.device, size: int) -> float:
    """Seconds of one forward and backward pass of ``train.batch_size`` crops of ``size`` px.

    Runs on a copy of ``model`` fed zeros, so neither the weights, their BatchNorm
    statistics nor any random generator of the run are touched.
    """
    probe = copy.deepcopy(model).train()
    times = []
    for _ in range(TIMED_STEPS + 1):
        start = time.perf_counter()
        zero_step(probe, cfg, device, int(cfg.train.batch_size), size)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sum(times[1:]) / TIMED_STEPS


def fit_crop_to_budget(
    cfg: Config,
    model: torch.nn.Module,
    device: torch.device,
    info: Dist,
    notes: list[str],
    timer: StepTimer | None = None,
) -> Config:
    """``cfg`` with the largest crop, from ``data.size`` down to ``data.min_size`` in steps
    of 32 px, of which ``train.max_minutes`` holds ``train.min_steps`` timed steps; the
    smallest when none does. Unchanged without a budget or with ``min_steps: 0``.

    ``timer`` times a step (default :func:`step_seconds`). Under DDP every rank takes rank
    0's choice. ``notes`` get what was timed and chosen.
    """
    minutes, wanted = cfg.train.max_minutes, cfg.train.min_steps
    if not wanted or not minutes:
        return cfg
    timer = timer or step_seconds
    size, floor = int(cfg.data.size), cfg.data.min_size
    timed = []
    while True:
        seconds = timer(model, cfg, device, size)
        steps = int(minutes * 60 / seconds)
        timed.append(f"{size} px {seconds:.2f} s a step, about {steps}")
        if steps >= wanted or size - CROP_STEP < floor:
            break
        size -= CROP_STEP
    size = int(broadcast_float(size, info))
    if size == cfg.data.size:
        notes.append(f"train.min_steps {wanted}: {cfg.data.size} px crops kept ({timed[0]} "
                     f"steps in {minutes:g} min, network alone)")
        return cfg
    why = ("the largest that holds them" if steps >= wanted
           else "the smallest allowed (data.min_size), though it holds fewer")
    notes.append(f"train.min_steps {wanted}: {size} px crops instead of {cfg.data.size}, "
                 f"{why} ({'; '.join(timed)} steps in {minutes:g} min, network alone)")
    return replace(cfg, data=replace(cfg.data, size=size))
