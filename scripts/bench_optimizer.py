#!/usr/bin/env python
"""The optimiser's share of a training step: torch's per-tensor AdamW against its fused one.

Times, for each implementation, the recipe's whole training step (zero_grad, forward under
``train.amp``'s autocast, BCE-with-logits, backward, gradient clipping at 5, AdamW step) on
fissure's ResNet34 U-Net, batch 8, channels_last, and the AdamW step alone on the same
gradients. Two models with the same weights, one per implementation, are stepped in
alternating order each round, so a load spike lands on both alike; each figure is a median
over rounds, and the ratio the median of the per-round ratios.

Usage::

    .venv/bin/python scripts/bench_optimizer.py --threads 2 --size 128 --amp --rounds 20
    .venv/bin/python scripts/bench_optimizer.py --threads 1 --size 128 --rounds 20
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from benchkit.common import cpu_model, median, paired_ratio, random_batch, rotate

from fissure.model import build_model
from fissure.runtime import autocast_dtype, autocast_for


class Runner:
    """One model and its AdamW, ``fused`` or per tensor, with its measured times."""

    def __init__(self, fused: bool, x: torch.Tensor, y: torch.Tensor, amp: bool) -> None:
        torch.manual_seed(0)
        self.name = "fused" if fused else "per-tensor"
        self.model = build_model("resnet34").train().to(memory_format=torch.channels_last)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=1e-4,
                                     fused=fused)
        self.x, self.y, self.amp = x, y, amp
        self.steps: list[float] = []
        self.updates: list[float] = []

    def step(self) -> None:
        start = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        with autocast_for(self.x.device, self.amp):
            logits = self.model(self.x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), self.y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
        update = time.perf_counter()
        self.opt.step()
        end = time.perf_counter()
        self.steps.append(end - start)
        self.updates.append(end - update)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps each")
    parser.add_argument("--rounds", type=int, default=20, help="timed steps each")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--amp", action="store_true", help="autocast as train.amp does "
                        "(bf16 on a CPU with native bf16, else fp32)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    x, y = random_batch(args.batch, args.size)
    runners = [Runner(False, x, y, args.amp), Runner(True, x, y, args.amp)]
    for r in runners:
        for _ in range(args.warmup):
            r.step()
        r.steps.clear()
        r.updates.clear()
    for k in range(args.rounds):
        for r in rotate(runners, k):
            r.step()
    plain, fused = runners
    dtype = str(autocast_dtype(x.device, args.amp)).removeprefix("torch.")
    print(f"Machine: {cpu_model()}, torch {torch.__version__}, cpu capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads. "
          f"Batch {args.batch} of {args.size} px, {dtype}; {args.rounds} rounds.\n")
    print("| AdamW | training step (ms) | of it, the AdamW step (ms) | steps in 30 min |")
    print("| --- | ---: | ---: | ---: |")
    for r in runners:
        step = median(r.steps)
        print(f"| {r.name} | {step * 1e3:.0f} | {median(r.updates) * 1e3:.0f} "
              f"| {int(1800 / step)} |")
    print(f"\nper-tensor step / fused step (paired median): "
          f"{paired_ratio(plain.steps, fused.steps):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
