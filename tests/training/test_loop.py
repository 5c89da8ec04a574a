"""The training loop: fit, train_one_epoch and validate on the tiny synthetic set, on the CPU."""

import csv
import dataclasses
import math
import signal
import subprocess
import sys
import time

import pytest
import torch

from fissure.checkpoint import load_checkpoint
from fissure.config import load_config
from fissure.data import build_source
from fissure.errors import FissureError
from fissure.training import (
    RunKeeper,
    TrainingInterrupted,
    TrainState,
    build_setup,
    fit,
    loop,
    selected_epoch,
    train_one_epoch,
    validate,
    validation,
)
from fissure.training.interruption import Interrupt

QUIET = {"progress": False, "log": lambda m: None}


def run(cfg, run_dir, *, resume=False, on_epoch_end=None):
    """What ``api.train`` / ``api.resume`` do, less the report files: returns the keeper."""
    run_dir.mkdir(parents=True, exist_ok=True)
    setup = build_setup(cfg, build_source(cfg.data))
    keeper = RunKeeper(setup, run_dir)
    step = keeper.resume() if resume else 0
    fit(setup, keeper, start_step=step, on_epoch_end=on_epoch_end, **QUIET)
    return keeper


def _weights_match(a_path, b_path):
    a, b = load_checkpoint(a_path), load_checkpoint(b_path)
    for key in a.state_dict:
        assert torch.allclose(a.state_dict[key].float(), b.state_dict[key].float(),
                              atol=1e-6), key


class Stop(Exception):
    pass


def test_training_writes_the_run_folder(tmp_path, tiny_overrides):
    from fissure import api

    cfg = load_config(None, tiny_overrides + ["train.epochs=2"])
    result = api.train(cfg, tmp_path / "run", progress=False, log=lambda m: None)
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
    from fissure import api

    api.train(tiny_config, tmp_path / "run", progress=False, log=lambda m: None)
    before = (tmp_path / "run" / "best.pt").read_bytes()
    with pytest.raises(FissureError, match="already holds a run"):
        api.train(tiny_config, tmp_path / "run", progress=False, log=lambda m: None)
    assert (tmp_path / "run" / "best.pt").read_bytes() == before


def test_fit_keeps_best_and_last(tmp_path, tiny_overrides):
    """Both checkpoints take the tuned threshold; history rows hold every figure; with
    ``train.keep_every`` each epoch's validated weights are kept beside them."""
    cfg = load_config(None, tiny_overrides + ["train.epochs=2", "train.device=cpu",
                                              "train.keep_every=1"])
    seen = []
    keeper = run(cfg, tmp_path / "run", on_epoch_end=lambda h: seen.append(len(h)))
    assert seen == [1, 2] and keeper.state.epoch == 2
    row = keeper.state.history[-1]
    assert {"train_loss", "train_iou", "val_loss", "val_iou", "val_f1", "val_f1_tuned",
            "threshold", "lr", "seconds", "skipped"} <= row.keys()
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert last.threshold == row["threshold"]
    assert best.threshold == keeper.state.history[best.epoch - 1]["threshold"]
    kept = sorted(p.name for p in (tmp_path / "run" / "epochs").iterdir())
    assert kept == ["epoch_001.pt", "epoch_002.pt"]
    for epoch, name in enumerate(kept, start=1):
        ckpt = load_checkpoint(tmp_path / "run" / "epochs" / name)
        assert ckpt.epoch == epoch
        assert ckpt.threshold == keeper.state.history[epoch - 1]["threshold"]
    _weights_match(tmp_path / "run" / "best.pt",
                   tmp_path / "run" / "epochs" / kept[best.epoch - 1])
    assert selected_epoch(keeper.state.history, cfg.train) == best.epoch


def test_one_threshold_for_best_and_last_without_tuning(tmp_path, tiny_overrides):
    """``train.tune_threshold: false``: last.pt stores ``train.threshold`` as best.pt does."""
    cfg = load_config(None, tiny_overrides + ["train.tune_threshold=false",
                                              "train.threshold=0.3", "train.device=cpu"])
    run(cfg, tmp_path / "run")
    assert load_checkpoint(tmp_path / "run" / "best.pt").threshold == 0.3
    assert load_checkpoint(tmp_path / "run" / "last.pt").threshold == 0.3


def test_train_iou_is_taken_at_the_training_threshold(tmp_path, tiny_overrides, monkeypatch):
    cfg = load_config(None, tiny_overrides + ["train.threshold=0.3", "train.device=cpu"])
    thresholds = []
    real = loop.confusion_counts

    def spy(logits, masks, threshold, **kwargs):
        thresholds.append(threshold)
        return real(logits, masks, threshold, **kwargs)

    monkeypatch.setattr(loop, "confusion_counts", spy)
    monkeypatch.setattr(validation, "confusion_counts", spy)
    setup = build_setup(cfg, build_source(cfg.data))
    state = TrainState()
    outcome = train_one_epoch(setup, state, Interrupt(), **QUIET)
    assert outcome.stopped_at is None and set(outcome.metrics) == {"train_loss", "train_iou"}
    assert thresholds and set(thresholds) == {0.3}
    thresholds.clear()
    row = validate(setup, state, **QUIET)
    assert thresholds and set(thresholds) == {0.3}
    assert set(row) == {"val_loss", "val_iou", "val_f1", "val_f1_tuned", "threshold"}


def test_a_shorter_last_accumulation_group_is_a_step(tiny_overrides, monkeypatch):
    """8 samples, micro-batches of 2, 3 per step: groups of 3 and 1 micro-batches, the 2
    steps the plan counts; the short group's gradient is its own mean, not a third of it."""
    cfg = load_config(None, tiny_overrides + ["train.batch_size=2", "train.accumulate=3",
                                              "train.device=cpu"])
    setup = build_setup(cfg, build_source(cfg.data))
    divisors, real = [], loop._train_batch

    def spy(*args):
        divisors.append(args[-1])
        return real(*args)

    monkeypatch.setattr(loop, "_train_batch", spy)
    train_one_epoch(setup, TrainState(), Interrupt(), **QUIET)
    assert setup.steps_per_epoch == 2 and setup.scheduler.last_epoch == 2
    assert divisors == [3, 3, 3, 1]


def test_a_group_with_an_unreadable_batch_steps_on_the_mean_of_the_rest(tiny_overrides,
                                                                       monkeypatch):
    """accumulate 2, the second micro-batch of the first group wholly unreadable: that step's
    gradient is the first micro-batch's (scaled by 2/1), not half of it."""
    cfg = load_config(None, tiny_overrides + ["train.batch_size=2", "train.accumulate=2",
                                              "train.device=cpu"])
    setup = build_setup(cfg, build_source(cfg.data))
    real_loader, factors = loop.make_loader, []

    def loader_with_a_gap(*args):
        batches = list(real_loader(*args))
        batches[1] = {"name": [], "skipped": [("x.png", "unreadable")], "image": [],
                      "mask": []}
        return batches

    monkeypatch.setattr(loop, "make_loader", loader_with_a_gap)
    monkeypatch.setattr(loop, "note_skipped", lambda *args: None)
    monkeypatch.setattr(loop, "_scale_gradients", lambda model, f: factors.append(f))
    train_one_epoch(setup, TrainState(), Interrupt(), **QUIET)
    assert factors == [2.0] and setup.scheduler.last_epoch == 2


def test_a_void_step_leaves_no_gradient_to_the_next(tiny_overrides):
    """accumulate 2 and a non-finite first loss (train.nonfinite skip): the group's second
    micro-batch still runs backward, and its gradient must be dropped with the step."""
    cfg = load_config(None, tiny_overrides + ["train.batch_size=2", "train.accumulate=2",
                                              "train.nonfinite=skip", "train.device=cpu"])
    setup = build_setup(cfg, build_source(cfg.data))
    calls, clean_at_call, real = [0], {}, setup.loss_fn

    def loss_fn(logits, masks, **kwargs):
        calls[0] += 1
        clean_at_call[calls[0]] = all(p.grad is None for p in setup.model.parameters())
        loss = real(logits, masks, **kwargs)
        return loss * math.nan if calls[0] == 1 else loss

    setup = dataclasses.replace(setup, loss_fn=loss_fn)
    train_one_epoch(setup, TrainState(), Interrupt(), **QUIET)
    assert calls[0] == 4 and clean_at_call[3]  # the second group starts without gradients
    assert setup.scheduler.last_epoch == 1  # the void step is not counted by the schedule


def test_dataset_scores_come_from_the_metrics_package():
    """Summed counts, one division; NaN where nothing was to be scored (the history rule)."""
    tally = validation.Tally()
    assert math.isnan(tally.iou())
    tally.conf += torch.tensor([3, 1, 2])
    assert tally.iou() == 3 / 6


def test_resume_equals_uninterrupted_training(tmp_path, tiny_overrides):
    """2 epochs in one go equal 1 epoch, a stop, and a resumed epoch (cosine schedule, CPU)."""
    # pinned to the CPU: CUDA kernels are not bit-reproducible
    cfg = load_config(None, tiny_overrides + ["train.epochs=2", "train.scheduler=cosine",
                                              "train.optimizer=adamw", "train.ema=0.9",
                                              "train.device=cpu"])
    run(cfg, tmp_path / "straight")

    def stop_after_first(history):
        raise Stop

    with pytest.raises(Stop):
        run(cfg, tmp_path / "split", on_epoch_end=stop_after_first)
    assert load_checkpoint(tmp_path / "split" / "last.pt").train_state["epoch"] == 1
    run(cfg, tmp_path / "split", resume=True)
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    for key in a.state_dict:
        assert torch.allclose(a.state_dict[key].float(), b.state_dict[key].float(),
                              atol=1e-6), key
    assert a.train_state["history"][-1]["val_loss"] == pytest.approx(
        b.train_state["history"][-1]["val_loss"], rel=1e-5)


def test_a_finished_run_extended_on_resume_trains_on(tmp_path, tiny_overrides):
    """train.epochs raised on resume: the cosine schedule is the new plan's, not stuck at
    the old plan's final learning rate of 0."""
    base = tiny_overrides + ["train.device=cpu", "train.scheduler=cosine", "train.patience=0"]
    run(load_config(None, base + ["train.epochs=2"]), tmp_path / "run")
    keeper = run(load_config(None, base + ["train.epochs=4"]), tmp_path / "run", resume=True)
    lrs = [row["lr"] for row in keeper.state.history]
    assert len(lrs) == 4 and lrs[1] == pytest.approx(0.0, abs=1e-12)
    # after epoch 3 of 4, as a 4-epoch run from scratch: lr * (1 + cos(3 pi / 4)) / 2
    assert lrs[2] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(0.75 * math.pi)), rel=1e-3)
    # a last.pt from before the plan was recorded: its stored config says what it was
    run(load_config(None, base + ["train.epochs=2"]), tmp_path / "old")
    raw = torch.load(tmp_path / "old" / "last.pt", weights_only=True)
    for key in ("total_steps", "max_seconds"):
        del raw["train_state"]["budget"][key]
    torch.save(raw, tmp_path / "old" / "last.pt")
    keeper = run(load_config(None, base + ["train.epochs=4"]), tmp_path / "old", resume=True)
    assert keeper.state.history[2]["lr"] == pytest.approx(lrs[2], rel=1e-6)


def test_signal_in_the_last_batch_finishes_the_epoch(tmp_path, tiny_overrides, monkeypatch):
    """A stop asked for during an epoch's final batch saves at the epoch's end, and resumes."""
    cfg = load_config(None, tiny_overrides + ["train.epochs=2", "train.batch_size=2",
                                              "train.steps_per_epoch=3", "train.device=cpu"])
    run(cfg, tmp_path / "straight")
    original, calls = loop._train_batch, []

    def flag_on_third(setup, state, batch, step, interrupt, log, group):
        out = original(setup, state, batch, step, interrupt, log, group)
        calls.append(step)
        if len(calls) == 3:  # the last batch of epoch 1
            interrupt.signum = signal.SIGTERM
        return out

    monkeypatch.setattr(loop, "_train_batch", flag_on_third)
    with pytest.raises(TrainingInterrupted, match="end of epoch 1"):
        run(cfg, tmp_path / "split")
    monkeypatch.undo()
    state = load_checkpoint(tmp_path / "split" / "last.pt").train_state
    assert state["epoch"] == 1 and state.get("step", 0) == 0 and len(state["history"]) == 1
    run(cfg, tmp_path / "split", resume=True)
    _weights_match(tmp_path / "straight" / "last.pt", tmp_path / "split" / "last.pt")


def test_signal_mid_epoch_saves_the_step(tmp_path, tiny_overrides, monkeypatch):
    """A stop during the epoch saves last.pt at the step reached, and the run resumes there."""
    cfg = load_config(None, tiny_overrides + ["train.epochs=1", "train.batch_size=2",
                                              "train.steps_per_epoch=3", "train.device=cpu"])
    original = loop._train_batch

    def flag_on_first(setup, state, batch, step, interrupt, log, group):
        interrupt.signum = signal.SIGINT
        return original(setup, state, batch, step, interrupt, log, group)

    monkeypatch.setattr(loop, "_train_batch", flag_on_first)
    with pytest.raises(TrainingInterrupted, match=r"epoch 1, step 1\)"):
        run(cfg, tmp_path / "split")
    monkeypatch.undo()
    state = load_checkpoint(tmp_path / "split" / "last.pt").train_state
    assert state["epoch"] == 0 and state["step"] == 1 and state["history"] == []
    keeper = run(cfg, tmp_path / "split", resume=True)
    assert [row["epoch"] for row in keeper.state.history] == [1]


def test_resume_from_a_step_past_the_epoch_end(tmp_path, tiny_overrides):
    """A last.pt that points after the final step (older versions wrote one) still resumes."""
    cfg = load_config(None, tiny_overrides + ["train.epochs=2", "train.batch_size=2",
                                              "train.steps_per_epoch=3", "train.device=cpu"])
    (tmp_path / "run").mkdir()
    RunKeeper(build_setup(cfg, build_source(cfg.data)), tmp_path / "run").save_last(step=3)
    run(cfg, tmp_path / "run", resume=True)
    history = load_checkpoint(tmp_path / "run" / "last.pt").train_state["history"]
    assert [row["epoch"] for row in history] == [1, 2]
    assert history[0]["train_loss"] != history[0]["train_loss"]  # NaN: no step was left
    assert history[1]["train_loss"] == history[1]["train_loss"]


def test_early_stopping_stops(tmp_path, tiny_overrides):
    cfg = load_config(None, tiny_overrides + ["train.epochs=6", "train.patience=1",
                                              "train.monitor=loss", "train.lr=1e-9",
                                              "train.min_delta=10"])
    state = run(cfg, tmp_path / "run").state
    assert len(state.history) == 2 and state.best_epoch == 1


def test_nonfinite_loss_stops_with_a_clear_message(tmp_path, tiny_overrides, monkeypatch):
    from fissure.training import setup as setup_module

    cfg = load_config(None, tiny_overrides)
    real = setup_module.build_loss

    def poisoned(*args, **kwargs):
        fn = real(*args, **kwargs)
        return lambda logits, target, **kw: fn(logits, target, **kw) * float("nan")

    monkeypatch.setattr(setup_module, "build_loss", poisoned)
    with pytest.raises(FissureError, match="non-finite loss at epoch 1 step 1"):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "best.pt").exists()


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_and_resumes(tmp_path, tiny_overrides):
    """A real training process is stopped in the middle of an epoch and resumed to the end."""
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "fissure", "train", "--out", str(run_dir), "--quiet"]
    # on the CPU: a GPU finishes all the epochs before the signal arrives
    sets = tiny_overrides + ["train.epochs=4", "train.batch_size=2", "train.steps_per_epoch=6",
                             "train.device=cpu"]
    for item in sets:
        args += ["--set", item]
    (tmp_path / "empty.yaml").write_text("")
    proc = subprocess.Popen(args + ["--config", str(tmp_path / "empty.yaml")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while (not (run_dir / "last.pt").exists() and time.monotonic() < deadline
           and proc.poll() is None):
        time.sleep(0.2)
    assert (run_dir / "last.pt").exists(), proc.communicate()[0] if proc.poll() is not None else ""
    time.sleep(0.3)  # into epoch 2, far from the end of epoch 4
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "fissure train --resume" in out, out
    state = load_checkpoint(run_dir / "last.pt").train_state
    assert state["epoch"] < 4
    done = subprocess.run([sys.executable, "-m", "fissure", "train", "--resume", str(run_dir),
                           "--quiet"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = list(csv.DictReader((run_dir / "history.csv").read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]


@pytest.mark.slow
def test_kill_9_leaves_a_valid_last_pt(tmp_path, tiny_overrides):
    """SIGKILL gives no chance to clean up: the previous last.pt must still load and resume."""
    run_dir = tmp_path / "run"
    (tmp_path / "empty.yaml").write_text("")
    args = [sys.executable, "-m", "fissure", "train", "--config", str(tmp_path / "empty.yaml"),
            "--out", str(run_dir), "--quiet"]
    for item in tiny_overrides + ["train.epochs=30", "train.batch_size=2"]:
        args += ["--set", item]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if (run_dir / "last.pt").exists() and load_checkpoint(run_dir / "last.pt").epoch >= 1:
            break
        time.sleep(0.1)
    time.sleep(0.7)  # somewhere inside the next epoch, perhaps inside a save
    proc.kill()
    proc.wait(timeout=60)
    epoch = load_checkpoint(run_dir / "last.pt").train_state["epoch"]
    assert epoch >= 1
    done = subprocess.run([sys.executable, "-m", "fissure", "train", "--resume", str(run_dir),
                           "--quiet", "--set", f"train.epochs={epoch + 1}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert load_checkpoint(run_dir / "last.pt").train_state["epoch"] == epoch + 1
    assert not list(run_dir.glob(".*.tmp"))


class _Constant(torch.nn.Module):
    """Every pixel's crack probability is ``p``, whatever the image."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.logit = torch.nn.Parameter(torch.tensor(math.log(p / (1 - p))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit.expand(x.shape[0], 1, *x.shape[2:]).clone()


def test_validation_figures_by_hand(tiny_overrides):
    """A model that says 0.6 everywhere marks every pixel crack at 0.5: IoU is the crack
    share of the split's pixels, F1 twice it over one plus it, and the tuned F1 the same,
    reached below 0.6 (at or above, nothing is predicted and F1 is 0)."""
    cfg = load_config(None, tiny_overrides + ["train.device=cpu"])
    setup = build_setup(cfg, build_source(cfg.data))
    setup = dataclasses.replace(setup, model=_Constant(0.6), ema=None)
    masks = [setup.val_set[i]["mask"] for i in range(len(setup.val_set))]
    crack = sum(int(m.sum()) for m in masks)
    total = sum(m.numel() for m in masks)
    assert 0 < crack < total
    row = validate(setup, TrainState(), **QUIET)
    assert row["val_iou"] == pytest.approx(crack / total)
    assert row["val_f1"] == pytest.approx(2 * crack / (crack + total))
    assert row["val_f1_tuned"] == pytest.approx(2 * crack / (crack + total))
    assert row["threshold"] < 0.6


def test_a_sweep_that_finds_no_crack_keeps_the_configured_threshold(tiny_overrides):
    """At 0.001 everywhere no swept threshold (0.01 and up) predicts a pixel: F1 is 0 at
    each, and the tie rule's lowest threshold, 0.01, would mark nearly everything crack."""
    cfg = load_config(None, tiny_overrides + ["train.device=cpu", "train.threshold=0.4"])
    setup = build_setup(cfg, build_source(cfg.data))
    setup = dataclasses.replace(setup, model=_Constant(0.001), ema=None)
    row = validate(setup, TrainState(), **QUIET)
    assert row["val_f1_tuned"] == 0.0 and row["threshold"] == 0.4


def test_a_run_resumed_after_early_stopping_trains_nothing_more(tmp_path, tiny_overrides):
    cfg = load_config(None, tiny_overrides + ["train.device=cpu", "train.epochs=3",
                                              "train.patience=1"])
    run(cfg, tmp_path / "run")
    longer = load_config(None, tiny_overrides + ["train.device=cpu", "train.epochs=5",
                                                 "train.patience=1"])
    setup = build_setup(longer, build_source(longer.data))
    keeper = RunKeeper(setup, tmp_path / "run")
    keeper.resume()
    keeper.state.bad_epochs = 1  # as if the last epoch had not improved
    lines: list[str] = []
    history = list(keeper.state.history)
    fit(setup, keeper, progress=False, log=lines.append)
    assert keeper.state.history == history  # no epoch trained
    assert lines == ["early stopping: no improvement for 1 epochs: nothing to train (raise "
                     "train.patience, train.max_minutes or train.epochs with --set to go on)"]
