"""Optimisers and learning-rate schedules."""

import pytest
import torch

from fissure.config import TrainConfig
from fissure.training.optim import (
    build_optimizer,
    build_scheduler,
    load_optimizer_state,
    lr_factor,
)


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


def _stepped(optimizer: torch.optim.Optimizer, model: torch.nn.Module, steps: int) -> None:
    for i in range(steps):
        optimizer.zero_grad()
        model(torch.full((4, 3), float(i + 1))).square().sum().backward()
        optimizer.step()


@pytest.mark.parametrize("kind", ["adam", "adamw"])
def test_fused_where_torch_has_it_and_the_same_update(kind):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    twin = torch.nn.Linear(3, 2)
    twin.load_state_dict(model.state_dict())
    train = TrainConfig(optimizer=kind, lr=0.01, weight_decay=0.1)
    opt = build_optimizer(model, train)
    try:
        type(opt)(torch.nn.Linear(1, 1).parameters(), fused=True)
        has_fused = True
    except RuntimeError:
        has_fused = False
    assert bool(opt.param_groups[0]["fused"]) is has_fused
    plain = type(opt)(twin.parameters(), lr=0.01, weight_decay=0.1, fused=False)
    _stepped(opt, model, 5)
    _stepped(plain, twin, 5)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_resumed_state_keeps_this_machines_implementation():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    saved = torch.optim.AdamW(model.parameters(), lr=0.01, fused=False)
    _stepped(saved, model, 3)
    opt = build_optimizer(model, TrainConfig(optimizer="adamw", lr=0.01))
    chosen = opt.param_groups[0]["fused"]
    load_optimizer_state(opt, saved.state_dict())
    assert opt.param_groups[0]["fused"] == chosen
    assert opt.state_dict()["state"][0]["step"] == 3
    _stepped(opt, model, 1)  # runs with the loaded moments
    assert opt.state_dict()["state"][0]["step"] == 4
    # and a fused run's state loads where fused is off
    plain = torch.optim.AdamW(model.parameters(), lr=0.01, fused=False)
    load_optimizer_state(plain, opt.state_dict())
    assert not plain.param_groups[0]["fused"]
    _stepped(plain, model, 1)
