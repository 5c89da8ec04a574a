"""DataLoaders: worker counts, the epoch's sample order, and SIGINT in workers."""

import signal

import torch

from fissure.config import TrainConfig
from fissure.data import loader


def test_default_workers_follow_the_device_and_the_cores(monkeypatch):
    assert loader.default_workers(torch.device("cpu")) == 0
    monkeypatch.setattr(loader.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert loader.default_workers(torch.device("cuda")) == 8
    assert loader.default_workers(torch.device("cuda"), local_processes=4) == 3
    monkeypatch.setattr(loader.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert loader.default_workers(torch.device("cuda")) == 2


def test_epoch_indices_depend_only_on_seed_and_epoch():
    train = TrainConfig(seed=3, batch_size=2)
    first = loader.epoch_indices(10, train, 0)
    assert sorted(first) == list(range(10)) and first == loader.epoch_indices(10, train, 0)
    assert first != loader.epoch_indices(10, train, 1)
    fixed = TrainConfig(seed=3, batch_size=2, accumulate=2, steps_per_epoch=5)
    drawn = loader.epoch_indices(3, fixed, 0)
    assert len(drawn) == 20 and set(drawn) <= {0, 1, 2}


def test_loader_keeps_the_given_order():
    data = [{"x": i} for i in range(5)]
    batches = loader.make_loader(data, 2, 0, torch.device("cpu"), [4, 0, 3, 1, 2])
    assert batches.sampler == [4, 0, 3, 1, 2] and batches.worker_init_fn is None
    with_workers = loader.make_loader(data, 2, 2, torch.device("cpu"))
    assert with_workers.worker_init_fn is loader.ignore_sigint


def test_workers_ignore_sigint():
    before = signal.getsignal(signal.SIGINT)
    try:
        loader.ignore_sigint(0)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
