"""Does a lighter U-Net decoder buy more training steps per minute on this machine?

Times one training step (zero_grad, forward, BCE-with-logits, backward, AdamW step) of
fissure's ResNetUNet for several ``model.decoder_channels`` at the recipe's shape (batch 8,
256x256 crops, fp32, channels_last as ``train.channels_last`` defaults; ``--amp`` computes
under ``train.amp``'s autocast instead, bf16 where the CPU has it natively). The variants are
timed interleaved, one step each per round, in a rotating order (A,B,C, B,C,A, ...), so a
load spike from other processes lands on all of them alike; each one's median step is
reported, with the median over rounds of its step time divided by the notebook widths' in
the same round. Also: parameters (all, and the decoder's) and forward GFLOPs per batch from
``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add).

Speed only: whether the lighter decoder's extra steps buy accuracy in a fixed budget needs
full runs on real data, which this script does not do.

Usage::

    .venv/bin/python scripts/bench_decoder.py --rounds 8 --markdown /tmp/decoder.md
    .venv/bin/python scripts/bench_decoder.py --variants notebook 128,64,32,16 --rounds 4
    .venv/bin/python scripts/bench_decoder.py --size 128 --amp --rounds 8
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass

import torch
from benchkit.common import cpu_model, random_batch
from torch.utils.flop_counter import FlopCounterMode

from fissure.model import build_model
from fissure.runtime import autocast_dtype, autocast_for

DEFAULT_VARIANTS = ("notebook", "128,64,32,16", "64,32,16,16")


@dataclass
class Variant:
    """One decoder width setting, its model, optimiser and measured step times."""

    name: str
    widths: tuple[int, ...] | None
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    params: int
    decoder_params: int
    gflops: float = 0.0
    times: list[float] | None = None


def _widths(text: str) -> tuple[int, ...] | None:
    if text == "notebook":
        return None
    return tuple(int(w) for w in text.split(","))


def _build(name: str, encoder: str, lr: float) -> Variant:
    torch.manual_seed(0)
    model = build_model(encoder, decoder_channels=_widths(name)).train()
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    return Variant(
        name=name,
        widths=model.decoder.widths,
        model=model,
        opt=opt,
        params=sum(p.numel() for p in model.parameters()),
        decoder_params=sum(p.numel() for p in model.decoder.parameters()),
        times=[],
    )


def _step(v: Variant, x: torch.Tensor, y: torch.Tensor, amp: bool) -> float:
    start = time.perf_counter()
    v.opt.zero_grad(set_to_none=True)
    with autocast_for(x.device, amp):
        logits = v.model(x)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y)
    loss.backward()
    v.opt.step()
    return time.perf_counter() - start


def _forward_gflops(v: Variant, x: torch.Tensor) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        v.model(x)
    return counter.get_total_flops() / 1e9


def _table(variants: list[Variant], args: argparse.Namespace) -> str:
    base = variants[0].times or []
    rows = [
        "| decoder_channels | params (M) | decoder params (M) | forward GFLOPs / batch "
        "| median step (s) | step vs first (paired median) | steps in 30 min |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for v in variants:
        times = v.times or []
        med = statistics.median(times)
        ratio = statistics.median([a / b for a, b in zip(times, base, strict=True)])
        label = f"{v.name} {list(v.widths)}" if v.name == "notebook" else str(list(v.widths))
        rows.append(
            f"| {label} | {v.params / 1e6:.2f} | {v.decoder_params / 1e6:.2f} "
            f"| {v.gflops:.1f} | {med:.2f} | {ratio:.2f} | {int(args.budget_s / med)} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print (and optionally write) a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS),
                        help="'notebook' or comma-separated widths, deepest first; the "
                             "first is the reference of the ratio column")
    parser.add_argument("--encoder", default="resnet34")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    parser.add_argument("--rounds", type=int, default=8, help="timed steps per variant")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: "
                        "torch's choice)")
    parser.add_argument("--budget-s", type=float, default=1800.0,
                        help="seconds for the 'steps in' column (30 min)")
    parser.add_argument("--amp", action="store_true", help="autocast as train.amp does "
                        "(bf16 on a CPU with native bf16, else fp32)")
    parser.add_argument("--markdown", help="also write the report to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    x, y = random_batch(args.batch, args.size)
    variants = [_build(name, args.encoder, 1e-3) for name in args.variants]
    for v in variants:
        v.gflops = _forward_gflops(v, x)
        for _ in range(args.warmup):
            _step(v, x, y, args.amp)
    for r in range(args.rounds):
        k = r % len(variants)
        for v in variants[k:] + variants[:k]:
            v.times.append(_step(v, x, y, args.amp))
        print(f"round {r + 1}/{args.rounds}: "
              + ", ".join(f"{v.name} {v.times[-1]:.2f}s" for v in variants), file=sys.stderr)

    dtype = str(autocast_dtype(x.device, args.amp)).removeprefix("torch.")
    head = (
        f"Machine: {cpu_model()}, torch {torch.__version__}, "
        f"cpu capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{torch.get_num_threads()} threads. Step: {args.encoder}, batch {args.batch}, "
        f"{args.size}x{args.size}, {dtype}, channels_last, AdamW; {args.warmup} warm-up steps, "
        f"then {args.rounds} rounds interleaved in rotating order.\n\n"
        f"Command: `{' '.join(['.venv/bin/python', 'scripts/bench_decoder.py', *sys.argv[1:]])}`"
    )
    report = head + "\n\n" + _table(variants, args) + "\n"
    print(report)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as handle:
            handle.write(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
