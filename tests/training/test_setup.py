"""build_setup: everything a run needs, made from the config in a fixed order."""

import torch

from fissure.config import load_config
from fissure.data import build_source
from fissure.training import TrainSetup, build_setup


def _setup(overrides):
    cfg = load_config(None, overrides + ["train.device=cpu"])
    return build_setup(cfg, build_source(cfg.data))


def test_setup_follows_the_config(tiny_overrides):
    setup = _setup(tiny_overrides + ["train.batch_size=2", "train.accumulate=3"])
    assert isinstance(setup, TrainSetup)
    assert setup.device == torch.device("cpu") and not setup.dist.active
    assert (len(setup.train_set), len(setup.val_set)) == (8, 2)
    assert setup.batch_size == 2 and setup.workers == 0
    assert setup.steps_per_epoch == 2  # 8 samples, 6 per step
    assert setup.forward is setup.model and setup.ema is None
    assert setup.eval_model is setup.model
    assert setup.policy.size == 64 and not setup.scaler.is_enabled()


def test_fixed_steps_per_epoch_and_ema(tiny_overrides):
    setup = _setup(tiny_overrides + ["train.steps_per_epoch=5", "train.ema=0.9"])
    assert setup.steps_per_epoch == 5
    assert setup.eval_model is setup.ema.module


def test_the_same_seed_builds_the_same_model(tiny_overrides):
    a, b = _setup(tiny_overrides), _setup(tiny_overrides)
    for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    other = _setup(tiny_overrides + ["train.seed=1"])
    assert not all(torch.equal(x, y) for x, y in zip(
        a.model.state_dict().values(), other.model.state_dict().values(), strict=True))


def test_pos_weight_auto_reads_the_training_masks(tiny_overrides, monkeypatch):
    from fissure.training import setup as setup_module

    seen = {}
    real = setup_module.build_loss

    def spy(name, params, crack_fraction=None):
        seen["fraction"] = crack_fraction
        return real(name, params, crack_fraction=crack_fraction)

    monkeypatch.setattr(setup_module, "build_loss", spy)
    _setup(tiny_overrides + ["train.loss.params={pos_weight: auto}"])
    assert 0 < seen["fraction"] < 1
    _setup(tiny_overrides)
    assert seen["fraction"] is None
