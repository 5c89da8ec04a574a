"""Data-parallel training on ``torch.distributed``, as launched by ``torchrun``.

A run with ``WORLD_SIZE > 1`` in its environment (torchrun sets it) joins a process group:
NCCL on CUDA, gloo on CPU. Each rank takes its own slice of every global batch, so N ranks
with ``train.batch_size = B`` see exactly the batches one process with batch B would see.
Metrics are reduced as counts (TP, FP, FN, loss sums), never as averaged ratios.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import ConfigError


@dataclass(frozen=True)
class Dist:
    """This process's place in the group; ``world == 1`` means no group at all."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1  # processes on this machine

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def env_dist() -> Dist:
    """Rank and world size from torchrun's environment variables."""
    return Dist(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def is_main_process() -> bool:
    return env_dist().main


def init_distributed(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group when launched by torchrun; returns (dist, this rank's device)."""
    info = env_dist()
    if not info.active:
        return info, device
    if device.type == "cuda":
        if info.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"process {info.local_rank} of this machine has no GPU: there are "
                f"{torch.cuda.device_count()} CUDA devices; start at most that many processes "
                "per machine (--nproc-per-node / --devices), or set train.device=cpu for gloo"
            )
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
    return info, device


def shard(indices: Sequence[int], batch_size: int, info: Dist) -> list[int]:
    """This rank's part of each global batch of ``batch_size`` (rank r takes the r-th slice)."""
    if not info.active:
        return list(indices)
    if batch_size % info.world:
        raise ConfigError(f"train.batch_size: {batch_size} must be divisible by the "
                          f"{info.world} processes (it is the global batch)")
    out: list[int] = []
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        # A short last batch is cut evenly (dropping at most world-1 samples): every rank
        # must run the same number of steps, or the gradient all-reduce waits forever.
        local = len(chunk) // info.world
        out.extend(chunk[info.rank * local:(info.rank + 1) * local])
    return out


def all_reduce_sum(tensor: torch.Tensor, info: Dist) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (a no-op for one process)."""
    if info.active:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_flag(flag: bool, info: Dist) -> bool:
    """Rank 0's decision, for every rank (early stopping, time budget)."""
    if not info.active:
        return flag
    value = torch.tensor([int(flag)])
    dist.broadcast(value, src=0)
    return bool(value.item())


def barrier(info: Dist) -> None:
    if info.active:
        dist.barrier()


def shutdown(info: Dist) -> None:
    if info.active and dist.is_initialized():
        dist.destroy_process_group()


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``fissure ARGV`` in ``nproc`` processes on this machine through torchrun."""
    if nproc < 1:
        raise ConfigError(f"--devices: must be at least 1, got {nproc}")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "fissure", *argv]
    return subprocess.call(command)


def strip_option(argv: Sequence[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` / ``name=VALUE`` (the launcher must not relaunch)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            out.append(arg)
    return out
