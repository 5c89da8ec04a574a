"""fissure.training.pace: the crop a time budget affords (``train.min_steps``)."""

from __future__ import annotations

import pytest
import torch

from fissure.config import load_config
from fissure.data import build_source
from fissure.errors import ConfigError
from fissure.model import build_model
from fissure.training import build_setup
from fissure.training.distributed import Dist
from fissure.training.pace import fit_crop_to_budget, step_seconds

CPU = torch.device("cpu")
ONE = Dist()


def _cfg(*overrides: str):
    base = ["data.mode=crop", "data.size=128", "train.max_minutes=15", "train.min_steps=800"]
    return load_config(None, base + list(overrides))


def _quadratic(seconds_at_128: float):
    """A timer whose step costs what its pixels cost: ``seconds_at_128 * (size / 128)**2``."""
    calls: list[int] = []

    def timer(model, cfg, device, size):
        calls.append(size)
        return seconds_at_128 * (size / 128) ** 2

    return timer, calls


def test_a_budget_that_holds_the_steps_keeps_the_crop() -> None:
    timer, calls = _quadratic(1.0)  # 900 steps of 128 px in 15 min
    notes: list[str] = []
    cfg = _cfg()
    assert fit_crop_to_budget(cfg, None, CPU, ONE, notes, timer) is cfg
    assert calls == [128]
    assert notes == ["train.min_steps 800: 128 px crops kept (128 px 1.00 s a step, about 900 "
                     "steps in 15 min, network alone)"]


def test_a_short_budget_shrinks_the_crop_until_it_holds_the_steps() -> None:
    timer, calls = _quadratic(2.0)  # 450 steps of 128 px, 800 of 96 px
    notes: list[str] = []
    cfg = fit_crop_to_budget(_cfg(), None, CPU, ONE, notes, timer)
    assert cfg.data.size == 96 and calls == [128, 96]
    assert notes[0].startswith("train.min_steps 800: 96 px crops instead of 128, the largest "
                               "that holds them (128 px 2.00 s a step, about 450; 96 px")


def test_the_crop_never_goes_below_data_min_size() -> None:
    timer, calls = _quadratic(8.0)  # even 64 px would hold only 450
    notes: list[str] = []
    cfg = fit_crop_to_budget(_cfg("data.min_size=96"), None, CPU, ONE, notes, timer)
    assert cfg.data.size == 96 and calls == [128, 96]
    assert "the smallest allowed (data.min_size), though it holds fewer" in notes[0]
    deeper = fit_crop_to_budget(_cfg("data.min_size=64"), None, CPU, ONE, [], timer)
    assert deeper.data.size == 64


@pytest.mark.parametrize("override", ["train.min_steps=0", "train.max_minutes=0"])
def test_without_a_budget_or_a_step_count_nothing_is_timed(override: str) -> None:
    timer, calls = _quadratic(100.0)
    notes: list[str] = []
    cfg = _cfg(override)
    assert fit_crop_to_budget(cfg, None, CPU, ONE, notes, timer) is cfg
    assert calls == [] and notes == []


def test_step_seconds_times_a_copy_and_leaves_the_model_alone() -> None:
    model = build_model("resnet18")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    cfg = load_config(None, ["train.batch_size=2", "model.encoder=resnet18"])
    assert step_seconds(model, cfg, CPU, 64) > 0
    assert torch.equal(rng, torch.get_rng_state())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in model.parameters())


def test_build_setup_trains_on_the_crop_the_budget_affords(tiny_overrides, monkeypatch) -> None:
    timer, calls = _quadratic(4.0)
    monkeypatch.setattr("fissure.training.pace.step_seconds", timer)
    cfg = load_config(None, tiny_overrides + [
        "train.device=cpu", "data.mode=crop", "data.size=64", "data.min_size=32",
        "train.max_minutes=1", "train.min_steps=100"])
    setup = build_setup(cfg, build_source(cfg.data))
    assert calls == [64, 32]  # 1 min holds 60 steps of 64 px, 240 of 32 px
    assert setup.cfg.data.size == 32 and setup.policy.size == 32
    assert tuple(setup.train_set[0]["image"].shape[-2:]) == (32, 32)
    assert any(n.startswith("train.min_steps 100: 32 px crops instead of 64")
               for n in setup.notes)
    calls.clear()  # a resume keeps the crop its config.yaml recorded, untimed
    recorded = load_config(None, tiny_overrides + [
        "train.device=cpu", "data.mode=crop", "data.size=32", "data.min_size=32",
        "train.max_minutes=1", "train.min_steps=100"])
    resumed = build_setup(recorded, build_source(recorded.data), resuming=True)
    assert calls == [] and resumed.cfg.data.size == 32
    assert "train.min_steps: resumed, so the recorded 32 px crops are kept" in resumed.notes


@pytest.mark.parametrize(("override", "message"), [
    (["train.min_steps=-1"], "train.min_steps: must be >= 0"),
    (["train.min_steps=500", "data.mode=resize"], "train.min_steps: it shrinks training crops"),
    (["data.min_size=16"], "data.min_size: must be at least 32"),
])
def test_bad_settings_name_their_key(override: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, override)
