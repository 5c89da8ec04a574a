import csv
import signal
import subprocess
import sys
import time

import pytest
import torch

from fissure import api as workflow
from fissure.checkpoint import load_checkpoint
from fissure.config import load_config, save_config
from fissure.data import build_source
from fissure.errors import CheckpointError, FissureError
from fissure.training.loop import Trainer
from fissure.training.optim import lr_factor


def test_training_writes_the_run_folder(tmp_path, tiny_overrides):
    cfg = load_config(None, tiny_overrides + ["train.epochs=2"])
    result = workflow.train(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    for name in ("best.pt", "last.pt", "history.csv", "curves.png", "config.yaml"):
        assert (tmp_path / "run" / name).is_file(), name
    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").read_text().splitlines()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"train_loss", "train_iou", "val_loss", "val_iou", "threshold"} <= rows[0].keys()
    best = load_checkpoint(result.best)
    assert best.config.train.epochs == 2 and 0 < best.threshold < 1
    assert load_checkpoint(result.last).train_state["epoch"] == 2
    assert load_config(tmp_path / "run" / "config.yaml") == cfg


def test_existing_run_is_not_clobbered(tmp_path, tiny_config):
    workflow.train(tiny_config, tmp_path / "run", progress=False, log=lambda m: None)
    before = (tmp_path / "run" / "best.pt").read_bytes()
    with pytest.raises(FissureError, match="already holds a run"):
        workflow.train(tiny_config, tmp_path / "run", progress=False, log=lambda m: None)
    assert (tmp_path / "run" / "best.pt").read_bytes() == before


class Stop(Exception):
    pass


def test_resume_equals_uninterrupted_training(tmp_path, tiny_overrides):
    """2 epochs in one go equal 1 epoch, a stop, and a resumed epoch (cosine schedule, CPU)."""
    quiet = {"progress": False, "log": lambda m: None}
    # pinned to the CPU: CUDA kernels are not bit-reproducible
    cfg = load_config(None, tiny_overrides + ["train.epochs=2", "train.scheduler=cosine",
                                              "train.optimizer=adamw", "train.ema=0.9",
                                              "train.device=cpu"])
    workflow.train(cfg, tmp_path / "straight", **quiet)

    def stop_after_first(history):
        raise Stop

    workflow.prepare_run_dir(tmp_path / "split")
    save_config(cfg, tmp_path / "split" / "config.yaml")
    trainer = Trainer(cfg, build_source(cfg.data), tmp_path / "split", progress=False,
                      log=lambda m: None, on_epoch_end=stop_after_first)
    with pytest.raises(Stop):
        trainer.fit()
    assert load_checkpoint(tmp_path / "split" / "last.pt").train_state["epoch"] == 1
    workflow.resume(tmp_path / "split", **quiet)
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    for key in a.state_dict:
        assert torch.allclose(a.state_dict[key].float(), b.state_dict[key].float(),
                              atol=1e-6), key
    assert a.train_state["history"][-1]["val_loss"] == pytest.approx(
        b.train_state["history"][-1]["val_loss"], rel=1e-5)


def _weights_match(a_path, b_path):
    a, b = load_checkpoint(a_path), load_checkpoint(b_path)
    for key in a.state_dict:
        assert torch.allclose(a.state_dict[key].float(), b.state_dict[key].float(),
                              atol=1e-6), key


def test_signal_in_the_last_batch_finishes_the_epoch(tmp_path, tiny_overrides, monkeypatch):
    """A stop asked for during an epoch's final batch saves at the epoch's end, and resumes."""
    from fissure.training import loop as engine
    from fissure.training.interruption import TrainingInterrupted

    quiet = {"progress": False, "log": lambda m: None}
    cfg = load_config(None, tiny_overrides + ["train.epochs=2", "train.batch_size=2",
                                              "train.steps_per_epoch=3", "train.device=cpu"])
    workflow.train(cfg, tmp_path / "straight", **quiet)
    original, calls = engine.Trainer._train_batch, []

    def flag_on_third(self, batch, step):
        out = original(self, batch, step)
        calls.append(step)
        if len(calls) == 3:  # the last batch of epoch 1
            self.interrupt.signum = signal.SIGTERM
        return out

    monkeypatch.setattr(engine.Trainer, "_train_batch", flag_on_third)
    with pytest.raises(TrainingInterrupted, match="end of epoch 1"):
        workflow.train(cfg, tmp_path / "split", **quiet)
    monkeypatch.undo()
    state = load_checkpoint(tmp_path / "split" / "last.pt").train_state
    assert state["epoch"] == 1 and state.get("step", 0) == 0 and len(state["history"]) == 1
    workflow.resume(tmp_path / "split", **quiet)
    _weights_match(tmp_path / "straight" / "last.pt", tmp_path / "split" / "last.pt")


def test_resume_from_a_step_past_the_epoch_end(tmp_path, tiny_overrides):
    """A last.pt that points after the final step (older versions wrote one) still resumes."""
    cfg = load_config(None, tiny_overrides + ["train.epochs=2", "train.batch_size=2",
                                              "train.steps_per_epoch=3", "train.device=cpu"])
    workflow.prepare_run_dir(tmp_path / "run")
    save_config(cfg, tmp_path / "run" / "config.yaml")
    trainer = Trainer(cfg, build_source(cfg.data), tmp_path / "run", progress=False,
                      log=lambda m: None)
    trainer.save_last(step=3)
    workflow.resume(tmp_path / "run", progress=False, log=lambda m: None)
    history = load_checkpoint(tmp_path / "run" / "last.pt").train_state["history"]
    assert [row["epoch"] for row in history] == [1, 2]
    assert history[0]["train_loss"] != history[0]["train_loss"]  # NaN: no step was left
    assert history[1]["train_loss"] == history[1]["train_loss"]


def test_resume_needs_last_pt(tmp_path):
    with pytest.raises(CheckpointError, match="no last.pt"):
        workflow.resume(tmp_path)


def test_early_stopping_stops(tmp_path, tiny_overrides):
    cfg = load_config(None, tiny_overrides + ["train.epochs=6", "train.patience=1",
                                              "train.monitor=loss", "train.lr=1e-9",
                                              "train.min_delta=10"])
    result = workflow.train(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    assert len(result.history) == 2 and result.best_epoch == 1


def test_nonfinite_loss_stops_with_a_clear_message(tmp_path, tiny_overrides, monkeypatch):
    import fissure.training.loop as engine

    cfg = load_config(None, tiny_overrides)
    real = engine.build_loss

    def poisoned(*args, **kwargs):
        fn = real(*args, **kwargs)
        return lambda logits, target: fn(logits, target) * float("nan")

    monkeypatch.setattr(engine, "build_loss", poisoned)
    with pytest.raises(FissureError, match="non-finite loss at epoch 1 step 1"):
        workflow.train(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    assert not (tmp_path / "run" / "best.pt").exists()


@pytest.mark.parametrize(("kind", "step", "expected"), [
    ("none", 50, 1.0), ("cosine", 0, 1.0), ("cosine", 100, 0.0), ("poly", 100, 0.0),
])
def test_schedules(kind, step, expected):
    assert lr_factor(step, 100, 0, kind) == pytest.approx(expected, abs=1e-9)


def test_warmup_ramps_up():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_and_resumes(tmp_path, tiny_overrides):
    """A real training process is stopped in the middle of an epoch and resumed to the end."""
    run = tmp_path / "run"
    args = [sys.executable, "-m", "fissure", "train", "--out", str(run), "--quiet"]
    # on the CPU: a GPU finishes all the epochs before the signal arrives
    sets = tiny_overrides + ["train.epochs=4", "train.batch_size=2", "train.steps_per_epoch=6",
                             "train.device=cpu"]
    for item in sets:
        args += ["--set", item]
    (tmp_path / "empty.yaml").write_text("")
    proc = subprocess.Popen(args + ["--config", str(tmp_path / "empty.yaml")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not (run / "last.pt").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert (run / "last.pt").exists(), proc.communicate()[0] if proc.poll() is not None else ""
    time.sleep(0.3)  # into epoch 2, far from the end of epoch 4
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "fissure train --resume" in out, out
    state = load_checkpoint(run / "last.pt").train_state
    assert state["epoch"] < 4
    done = subprocess.run([sys.executable, "-m", "fissure", "train", "--resume", str(run),
                           "--quiet"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = list(csv.DictReader((run / "history.csv").read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]


@pytest.mark.slow
def test_kill_9_leaves_a_valid_last_pt(tmp_path, tiny_overrides):
    """SIGKILL gives no chance to clean up: the previous last.pt must still load and resume."""
    run = tmp_path / "run"
    (tmp_path / "empty.yaml").write_text("")
    args = [sys.executable, "-m", "fissure", "train", "--config", str(tmp_path / "empty.yaml"),
            "--out", str(run), "--quiet"]
    for item in tiny_overrides + ["train.epochs=30", "train.batch_size=2"]:
        args += ["--set", item]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if (run / "last.pt").exists() and load_checkpoint(run / "last.pt").epoch >= 1:
            break
        time.sleep(0.1)
    time.sleep(0.7)  # somewhere inside the next epoch, perhaps inside a save
    proc.kill()
    proc.wait(timeout=60)
    epoch = load_checkpoint(run / "last.pt").train_state["epoch"]
    assert epoch >= 1
    done = subprocess.run([sys.executable, "-m", "fissure", "train", "--resume", str(run),
                           "--quiet", "--set", f"train.epochs={epoch + 1}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert load_checkpoint(run / "last.pt").train_state["epoch"] == epoch + 1
    assert not list(run.glob(".*.tmp"))


def test_default_workers_follow_the_device_and_the_cores(monkeypatch):
    from fissure.data import loader

    assert loader.default_workers(torch.device("cpu")) == 0
    monkeypatch.setattr(loader.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert loader.default_workers(torch.device("cuda")) == 8
    assert loader.default_workers(torch.device("cuda"), local_processes=4) == 3
    monkeypatch.setattr(loader.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert loader.default_workers(torch.device("cuda")) == 2
