"""Data-parallel training: the helpers in one process, and 2 CPU processes with gloo
launched by torchrun on a tiny set."""

import csv
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from contextlib import nullcontext

import pytest
import torch
import torch.distributed as dist

from fissure.checkpoint import load_checkpoint
from fissure.errors import ConfigError, FissureError
from fissure.model import build_model
from fissure.training import TrainingInterrupted
from fissure.training.distributed import (
    Dist,
    any_rank,
    data_parallel,
    merge_dicts,
    process_group,
    shard,
    strip_option,
)

# Augmentations off so both runs see identical pixels; BCE because Dice over a batch does
# not split into per-rank means.
COMMON = ["data.size=64", "model.encoder=resnet18", "train.num_workers=0", "train.lr=0.001",
          "train.loss.name=bce", "augment.hflip=0", "augment.vflip=0", "augment.rot90=0",
          "augment.brightness=0", "augment.contrast=0", "eval.thresholds=19",
          "train.device=cpu",  # gloo on the CPU, also where a GPU is present
          "train.amp=false"]  # fp32: bf16 rounding would hide the equalities checked here


def test_shard_splits_each_global_batch():
    indices = list(range(10))
    assert shard(indices, 4, Dist(0, 2)) == [0, 1, 4, 5, 8]
    assert shard(indices, 4, Dist(1, 2)) == [2, 3, 6, 7, 9]
    assert shard(list(range(9)), 4, Dist(1, 2)) == [2, 3, 6, 7]  # lone 9th sample dropped
    assert shard(indices, 4, Dist(0, 1)) == indices
    with pytest.raises(ConfigError, match="divisible"):
        shard(indices, 3, Dist(0, 2))


def test_one_process_needs_no_group():
    """Without torchrun the helpers are plain values and the model is not wrapped."""
    assert any_rank([True, False], Dist()) == [True, False]
    assert merge_dicts({"a": "why"}, Dist()) == {"a": "why"}
    model = torch.nn.Linear(2, 1)
    assert data_parallel(model, Dist(), torch.device("cpu"), sync_bn=True) == (model, model)


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    from fissure.training import distributed

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(distributed.torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="1 CUDA devices"):
        distributed.init_distributed(torch.device("cuda"))


def test_strip_option():
    assert strip_option(["train", "--devices", "2", "--out", "x"], "--devices") == [
        "train", "--out", "x"]
    assert strip_option(["train", "--devices=2"], "--devices") == ["train"]


def _join_alone():
    """A one-process gloo group, as init_distributed would join under torchrun."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0,
                            world_size=1)


@pytest.mark.parametrize("ending", [None, TrainingInterrupted])
def test_process_group_leaves_the_group_it_joined(ending):
    with pytest.raises(TrainingInterrupted) if ending else nullcontext(), process_group():
        _join_alone()
        assert dist.is_initialized()
        if ending:
            raise ending("stopped")
    assert not dist.is_initialized()


def test_process_group_keeps_a_group_on_other_errors_and_the_callers_group():
    """Another error may be one rank's alone: no shutdown that could wait for the others."""
    try:
        with pytest.raises(FissureError), process_group():
            _join_alone()
            raise FissureError("one rank failed")
        assert dist.is_initialized()
        with process_group():  # the group was there before: the caller's to destroy
            pass
        assert dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def fissure(args, nproc=None, timeout=600):
    prefix = [sys.executable, "-m", "fissure"]
    if nproc:
        prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                  f"--nproc-per-node={nproc}", "-m", "fissure"]
    # torchrun leaves a torchelastic_* folder in the temp dir; this one is removed after.
    with tempfile.TemporaryDirectory() as scratch:
        done = subprocess.run(prefix + [str(a) for a in args], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, "TMPDIR": scratch})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def train_args(root, out, extra, config):
    args = ["train", "--config", config, "--out", out, "--quiet", "--overwrite"]
    for item in [f"data.root={root}", *COMMON, *extra]:
        args += ["--set", item]
    return args


@pytest.fixture()
def config(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    return path


def params(path):
    names = [n for n, _ in build_model("resnet18").named_parameters()]
    state = load_checkpoint(path).state_dict
    return torch.cat([state[n].flatten() for n in names]), load_checkpoint(path)
@pytest.mark.slow
def test_two_processes_equal_one_with_the_same_global_batch(synth_root, tmp_path, config):
    """Global batch 4 as 2 ranks x 2 equals one process with 2 x 2 accumulated micro-batches.

    That comparison keeps BatchNorm's per-forward batch at 2 in both runs. Adam turns the
    last-bit differences of a different summation order into small steps for the few weights
    whose gradient is near zero, hence a tolerance on the share of weights, not on all.
    """
    steps = ["train.epochs=1", "train.steps_per_epoch=2"]
    fissure(train_args(synth_root, tmp_path / "two", steps + ["train.batch_size=4"], config),
            nproc=2)
    fissure(train_args(synth_root, tmp_path / "one",
                       steps + ["train.batch_size=2", "train.accumulate=2"], config))
    a, ckpt_a = params(tmp_path / "one" / "last.pt")
    b, ckpt_b = params(tmp_path / "two" / "last.pt")
    close = ((a - b).abs() <= 1e-4).float().mean().item()
    assert close > 0.999, close
    loss_a = ckpt_a.train_state["history"][0]["train_loss"]
    loss_b = ckpt_b.train_state["history"][0]["train_loss"]
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    # only rank 0 wrote; the run folder holds one set of files
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "best.pt", "config.yaml", "curves.png", "history.csv", "last.pt"]


@pytest.mark.slow
def test_resumed_ddp_run_continues_exactly(synth_root, tmp_path, config):
    two_epochs = ["train.epochs=2", "train.batch_size=4"]
    fissure(train_args(synth_root, tmp_path / "straight", two_epochs, config), nproc=2)
    fissure(train_args(synth_root, tmp_path / "split", ["train.epochs=1", "train.batch_size=4"],
                       config), nproc=2)
    fissure(["train", "--resume", tmp_path / "split", "--quiet", "--set", "train.epochs=2"],
            nproc=2)
    a, ckpt_a = params(tmp_path / "straight" / "last.pt")
    b, ckpt_b = params(tmp_path / "split" / "last.pt")
    assert [r["epoch"] for r in ckpt_b.train_state["history"]] == [1, 2]
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.slow
def test_a_sample_skipped_in_one_process_is_skipped_by_both(synth_root, tmp_path, config):
    """data.on_error=skip with 1 sample per process: a process whose batch is empty used to
    skip its backward alone and leave the other waiting in the gradient all-reduce for ever.
    Now both skip that step, and skipped.csv names every bad file, whichever process met it.
    """
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    victims = sorted((root / "train" / "images").iterdir())[:3]
    for victim in victims:
        victim.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    extra = ["train.epochs=2", "train.batch_size=2", "data.on_error=skip",
             "data.max_skip_fraction=0.5"]
    out = fissure(train_args(root, tmp_path / "run", extra, config), nproc=2, timeout=300)
    rows = list(csv.DictReader((tmp_path / "run" / "skipped.csv").read_text().splitlines()))
    assert sorted(r["name"] for r in rows) == sorted(v.stem for v in victims)
    assert all("not a readable image" in r["reason"] for r in rows)
    for victim in victims:  # rank 0 logs each once, also those rank 1 met
        assert out.count(f"skipped {victim.stem}:") == 1, out
    history = list(csv.DictReader((tmp_path / "run" / "history.csv").read_text().splitlines()))
    assert [int(r["epoch"]) for r in history] == [1, 2]
