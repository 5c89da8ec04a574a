"""Optimisers and learning-rate schedules."""

import pytest
import torch

from fissure.config import TrainConfig
from fissure.training.optim import build_optimizer, build_scheduler, lr_factor


@pytest.mark.parametrize(("kind", "step", "expected"), [
    ("none", 50, 1.0), ("cosine", 0, 1.0), ("cosine", 100, 0.0), ("poly", 100, 0.0),
])
def test_schedules(kind, step, expected):
    assert lr_factor(step, 100, 0, kind) == pytest.approx(expected, abs=1e-9)


def test_warmup_ramps_up():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)  # never 0
    assert lr_factor(5, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)


def test_optimizer_and_schedule_follow_the_config():
    model = torch.nn.Linear(2, 1)
    model.bias.requires_grad_(False)
    train = TrainConfig(optimizer="adamw", lr=0.01, weight_decay=0.1, epochs=2,
                        scheduler="cosine", warmup_epochs=0.5)
    opt = build_optimizer(model, train)
    assert isinstance(opt, torch.optim.AdamW)
    assert len(opt.param_groups[0]["params"]) == 1  # the frozen bias is left out
    sched = build_scheduler(opt, train, steps_per_epoch=4)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5)  # step 0 of 2 warm-up steps
    for _ in range(8):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
