"""DataLoaders for training and validation: worker counts and the epoch's sample order."""

from __future__ import annotations

import os
import signal

import torch
from torch.utils.data import DataLoader, Dataset

from ..config import TrainConfig
from .dataset import collate


def ignore_sigint(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers ignore SIGINT.

    Ctrl-C reaches the whole process group; only the main process decides what to save.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def default_workers(device: torch.device, local_processes: int = 1) -> int:
    """DataLoader workers when ``train.num_workers`` is unset.

    CPU: 0, since workers would take cores from the compute threads (measured 0.85x -> 1.10x
    of the notebook's epoch on 2 cores). CUDA: this process's share of the cores less one for
    itself, 2 to 8: one worker prepares about 60 samples/s while an H200 trains on about 415
    images/s (256 px, batch 8), so two workers left the GPU waiting.
    """
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(8, max(2, (cores or 1) // max(1, local_processes) - 1))


def make_loader(
    dataset: Dataset,
    batch_size: int,
    workers: int,
    device: torch.device,
    indices: list[int] | None = None,
) -> DataLoader:
    """Batches of ``dataset`` in the order of ``indices`` (all items in order when None).

    Batches are :func:`~fissure.data.dataset.collate` dicts; memory is pinned on CUDA.
    """
    return DataLoader(
        dataset,
        # Ctrl-C is the main process's to handle: it saves last.pt, then stops the workers.
        worker_init_fn=ignore_sigint if workers else None,
        batch_size=batch_size,
        sampler=indices,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        collate_fn=collate,
    )


def epoch_indices(n: int, train: TrainConfig, epoch: int) -> list[int]:
    """The epoch's sample order, a pure function of (seed, epoch) so resume can replay it."""
    gen = torch.Generator().manual_seed(train.seed * 1_000_003 + epoch)
    per_step = train.batch_size * train.accumulate
    if train.steps_per_epoch:
        return torch.randint(0, n, (train.steps_per_epoch * per_step,), generator=gen).tolist()
    return torch.randperm(n, generator=gen).tolist()
