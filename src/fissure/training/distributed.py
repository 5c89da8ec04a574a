"""Data-parallel training on ``torch.distributed``, as launched by ``torchrun``.

A run with ``WORLD_SIZE > 1`` in its environment (torchrun sets it) joins a process group:
NCCL on CUDA, gloo on CPU. Each rank takes its own slice of every global batch, so N ranks
with ``train.batch_size = B`` see exactly the batches one process with batch B would see.
Metrics are reduced as counts (TP, FP, FN, loss sums), never as averaged ratios.
A run inside :func:`process_group` leaves the group it joined when it ends.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..errors import ConfigError
from .interruption import TrainingInterrupted


@dataclass(frozen=True)
class Dist:
    """This process's place in the group; ``world == 1`` means no group at all."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1  # processes on this machine

    @property
    def main(self) -> bool:
        """Rank 0, the one process that logs and writes the run folder."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether there is a group to talk to (more than one process)."""
        return self.world > 1


def env_dist() -> Dist:
    """Rank and world size from torchrun's environment variables."""
    return Dist(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def is_main_process() -> bool:
    """Rank 0 of a torchrun group, or a process started without torchrun."""
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


def data_parallel(model: torch.nn.Module, info: Dist, device: torch.device,
                  sync_bn: bool = False) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(model, forward)``: the model (its BatchNorms made synchronised if ``sync_bn``) and
    the module to call in training, its DDP wrapper in a group or the model itself."""
    if not info.active:
        return model, model
    if sync_bn:
        if device.type != "cuda":
            raise ConfigError("train.sync_bn: SyncBatchNorm needs CUDA devices")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return model, DistributedDataParallel(model, device_ids=ids)


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


def _on_backend(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` where the group's backend can reach it: NCCL takes only CUDA tensors, and
    the counts reduced here live on the CPU."""
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        return tensor.to(torch.device("cuda", torch.cuda.current_device()))
    return tensor


def all_reduce_sum(tensor: torch.Tensor, info: Dist) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (a no-op for one process)."""
    if info.active:
        moved = _on_backend(tensor)
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        if moved is not tensor:
            tensor.copy_(moved)
    return tensor


def any_rank(flags: Sequence[bool], info: Dist) -> list[bool]:
    """For each flag, whether any rank set it (one all-reduce; the flags as given for one
    process). Ranks that must act together, e.g. all skip a backward pass, decide with this."""
    if not info.active:
        return [bool(f) for f in flags]
    value = _on_backend(torch.tensor([int(bool(f)) for f in flags]))
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return [bool(v) for v in value.tolist()]


def merge_dicts(mapping: dict, info: Dist) -> dict:
    """The union of every rank's ``mapping``; on a shared key the lowest rank's value wins."""
    if not info.active:
        return dict(mapping)
    parts: list[dict | None] = [None] * info.world
    dist.all_gather_object(parts, mapping)
    merged: dict = {}
    for part in parts:
        for key, value in (part or {}).items():
            merged.setdefault(key, value)
    return merged


def broadcast_flag(flag: bool, info: Dist) -> bool:
    """Rank 0's decision, for every rank (early stopping, time budget)."""
    if not info.active:
        return flag
    value = _on_backend(torch.tensor([int(flag)]))
    dist.broadcast(value, src=0)
    return bool(value.item())


def broadcast_float(value: float, info: Dist) -> float:
    """Rank 0's ``value``, for every rank (the time budget's clock reading)."""
    if not info.active:
        return value
    tensor = _on_backend(torch.tensor([float(value)], dtype=torch.float64))
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


@contextmanager
def process_group() -> Iterator[None]:
    """Leave, at the end of the block, a process group that :func:`init_distributed` joined in it.

    A group that existed before the block is the caller's and stays. The group is destroyed
    when the block ends normally or with :class:`TrainingInterrupted`, which every rank raises
    together. Any other error may be one rank's alone: that process then exits at once,
    without a shutdown that could wait for the others, and torchrun stops the rest.
    """
    joined_before = _group_exists()
    try:
        yield
    except TrainingInterrupted:
        _leave(joined_before)
        raise
    _leave(joined_before)


def _group_exists() -> bool:
    return dist.is_available() and dist.is_initialized()


def _leave(joined_before: bool) -> None:
    if not joined_before and _group_exists():
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
