"""The budget: progress from steps or from time, one schedule, resume, and the cut run."""

import pytest
import torch

from fissure.checkpoint import load_checkpoint
from fissure.config import TrainConfig, load_config
from fissure.data import build_source
from fissure.training import RunKeeper, build_setup, fit
from fissure.training.budget import Budget, ema_decay, schedule_factor
from fissure.training.optim import build_scheduler

QUIET = {"progress": False, "log": lambda m: None}


class FakeClock:
    """Seconds that move only when a test says so."""

    def __init__(self, now=0.0):
        self.now = now

    def __call__(self):
        return self.now


class TickingClock:
    """Seconds that move by ``step`` at every reading: a machine of known speed."""

    def __init__(self, step):
        self.step, self.now = step, 0.0

    def __call__(self):
        self.now += self.step
        return self.now


def _lrs(budget, train, steps_per_epoch, advance):
    """The learning rate at each of ``budget.total_steps`` steps, ``advance(k)`` run before
    step k's schedule update (it moves the clock)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=train.lr)
    sched = build_scheduler(opt, train, steps_per_epoch, budget)
    out = []
    for k in range(1, budget.total_steps + 1):
        advance(k)
        opt.step()
        budget.tick()
        sched.step()
        out.append((budget.progress(sched.last_epoch), opt.param_groups[0]["lr"]))
    return out


@pytest.mark.parametrize("kind", ["cosine", "poly"])
def test_the_schedule_is_one_function_of_progress_from_steps_or_time(kind):
    """100 steps on a fast machine, or a budget the clock ends after 100 of 1000 steps."""
    train = TrainConfig(lr=0.01, epochs=10, scheduler=kind, warmup_epochs=1)
    by_steps = _lrs(Budget(100), train, 10, lambda k: None)
    clock = FakeClock()
    timed = Budget(1000, max_seconds=50.0, clock=clock)
    timed.start()
    # the same warm-up share (0.1), 10 times the steps: the clock decides
    by_time = _lrs(timed, train, 100, lambda k: setattr(clock, "now", 0.5 * k))
    for (p_steps, lr_steps), (p_time, lr_time) in zip(by_steps, by_time[:100], strict=True):
        assert p_time == pytest.approx(p_steps)
        assert lr_time == pytest.approx(lr_steps, abs=1e-12)
    assert by_time[99][0] == 1.0 and by_time[99][1] == pytest.approx(0.0, abs=1e-12)
    assert by_steps[40][1] > 0.005  # not a tautology: the schedule moves
    assert by_time[4][1] == pytest.approx(0.005)  # half-way through the warm-up, in time too


def test_progress_is_the_larger_fraction_and_never_goes_back():
    clock = FakeClock()
    budget = Budget(10, max_seconds=100.0, clock=clock)
    budget.start()
    assert budget.progress(5) == 0.5  # steps lead
    clock.now = 80.0
    budget.tick()
    assert budget.progress(5) == pytest.approx(0.8)  # time leads
    budget.note_end_of_epoch(8.0)  # 10 s kept: training may take 90 s
    assert budget.reserve == 10.0 and budget.progress(5) == pytest.approx(80 / 90)
    assert not budget.out_of_time()
    clock.now = 82.0
    budget.tick()  # the first step after an epoch's end is not timed: validation is in it
    assert budget.step_seconds == 0.0
    clock.now = 85.0
    budget.tick()  # a step of 3 s: the next would end at 88 s
    assert budget.step_seconds == 3.0 and not budget.out_of_time()
    clock.now = 87.0
    budget.tick()  # a step of 2 s: the next would end at 89 s
    assert not budget.out_of_time()
    clock.now = 88.0
    budget.tick()  # the next would end at 89 s, within the 90 s: go on
    assert not budget.out_of_time()
    clock.now = 89.5
    budget.tick()  # 1.5 s: the next would end at 91 s, past the 90 s training may take
    assert budget.step_seconds == 1.5 and budget.out_of_time()
    clock.now = 90.0
    budget.tick()
    assert budget.progress(5) == 1.0
    assert Budget(10).progress(20) == 1.0 and not Budget(10).out_of_time()


def test_before_any_end_of_epoch_the_reserve_is_estimated_from_the_step():
    """A first epoch longer than the budget: a validation pass of about 4 steps (1 s each)
    is kept for (x 1.25 = 5 s), so the cut comes at 95 s of 100, not at 99 s with the
    validation running past the budget. Once an end of epoch is timed, that replaces it."""
    clock = FakeClock()
    budget = Budget(1000, max_seconds=100.0, clock=clock)
    budget.val_cost_steps = 4.0
    budget.start()
    for now in range(1, 94):
        clock.now = float(now)
        budget.tick()
    assert budget.training_seconds == pytest.approx(95.0) and not budget.out_of_time()
    assert budget.kept_seconds == pytest.approx(5.0) and budget.reserve == 0.0
    clock.now = 94.0
    budget.tick()  # the next step would end at 95 s
    assert budget.out_of_time()
    assert budget.progress(94) == pytest.approx(94 / 95)
    budget.note_end_of_epoch(2.0)
    assert budget.reserve == 2.5 and budget.training_seconds == 97.5


def test_validation_cost_in_steps_follows_the_pixels():
    from fissure.data.stats import SplitStats
    from fissure.training.setup import validation_cost

    cfg = load_config(None, ["data.mode=crop", "data.size=128", "train.batch_size=8"])
    facts = SplitStats("train", 4, 320, 480, {"480x320": 4}, 0.02, 0, 1.0, 2.0)
    # 7 images of 480x320 against 3 x 8 crops of 128x128
    assert validation_cost(cfg, facts, 7) == pytest.approx(7 * 480 * 320 / (3 * 8 * 128 * 128))
    assert validation_cost(cfg, None, 6) == pytest.approx(6 / 24)  # unknown: crop-sized


def test_the_reserve_never_takes_more_than_half_the_budget():
    budget = Budget(10, max_seconds=100.0)
    budget.note_end_of_epoch(500.0)
    assert budget.reserve == 50.0


def test_a_resumed_budget_continues_the_elapsed_time():
    clock = FakeClock()
    first = Budget(100, max_seconds=100.0, clock=clock)
    first.start()
    clock.now = 30.0
    saved = first.state_dict()
    assert saved["elapsed"] == 30.0
    clock.now = 1000.0  # another session, much later
    second = Budget(100, max_seconds=100.0, clock=clock)
    second.load_state_dict(saved)
    second.start()
    clock.now = 1020.0
    second.tick()
    assert second.elapsed == 50.0 and second.progress(0) == pytest.approx(0.5)


def test_a_resume_under_a_new_plan_starts_progress_afresh():
    """A finished run (progress 1) extended to twice the steps is half-way, not finished:
    its learning rate must not stay at the end of the old schedule."""
    done = Budget(100)
    assert done.progress(100) == 1.0
    saved = done.state_dict()
    same = Budget(100)
    same.load_state_dict(saved)
    assert same.progress(50) == 1.0  # the same plan: progress never goes back
    longer = Budget(200)
    longer.load_state_dict(saved)
    assert longer.progress(100) == pytest.approx(0.5)
    timed = Budget(100, max_seconds=60.0)
    timed.load_state_dict(saved)  # a budget added on resume is a new plan too
    assert timed.progress(10) == pytest.approx(0.1)


def test_schedule_factor_warmup_and_ends():
    assert schedule_factor(0.0, 0.1, "cosine", first=0.01) == pytest.approx(0.1)
    assert schedule_factor(0.05, 0.1, "cosine") == pytest.approx(0.5)
    assert schedule_factor(0.1, 0.1, "cosine") == pytest.approx(1.0)
    assert schedule_factor(1.0, 0.1, "cosine") == pytest.approx(0.0)
    assert schedule_factor(0.7, 0.0, "none") == 1.0


def test_ema_decay_warms_up_as_a_running_mean():
    assert ema_decay(1, 0.999) == 0.5  # the second update halves: the mean of two
    assert ema_decay(3, 0.999) == 0.75
    assert ema_decay(10_000, 0.999) == 0.999


def _timed_run(cfg, run_dir, clock):
    run_dir.mkdir(parents=True, exist_ok=True)
    setup = build_setup(cfg, build_source(cfg.data), clock=clock)
    keeper = RunKeeper(setup, run_dir)
    fit(setup, keeper, **QUIET)
    return setup, keeper


def test_a_run_cut_by_time_has_annealed_and_is_validated(tmp_path, tiny_overrides):
    """Planned for 5 x 4 steps, given the time of about 6: the schedule reaches 0 at the
    cut, and the cut epoch is validated and recorded like any other."""
    cfg = load_config(None, tiny_overrides + [
        "train.epochs=5", "train.steps_per_epoch=4", "train.batch_size=2",
        "train.scheduler=cosine", "train.max_minutes=0.2", "train.device=cpu",
        "train.patience=0"])
    # the clock moves 1 s at every reading: about one reading per step, a few per epoch end
    setup, keeper = _timed_run(cfg, tmp_path / "run", TickingClock(1.0))
    history = keeper.state.history
    assert len(history) < 5 and history[-1]["steps"] < 20
    # stopped before the step that would cross the line: the schedule's last lr above 0
    assert history[-1]["progress"] > 0.8 and history[-1]["lr"] < 0.1 * cfg.train.lr
    assert all(row["lr"] > 0 for row in history[:-1])
    assert history[-1]["val_f1_tuned"] == history[-1]["val_f1_tuned"]  # validated, not NaN
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last.train_state["epoch"] == len(history)
    assert last.train_state["budget"]["elapsed"] >= 6.0


def test_ema_starts_at_its_progress(tmp_path, tiny_overrides):
    """Before ``train.ema_start`` validation takes the trained weights; after, the EMA."""
    cfg = load_config(None, tiny_overrides + [
        "train.epochs=2", "train.steps_per_epoch=2", "train.batch_size=2", "train.ema=0.9",
        "train.ema_start=0.5", "train.device=cpu"])
    setup = build_setup(cfg, build_source(cfg.data))
    assert setup.eval_model is setup.model
    keeper = RunKeeper(setup, tmp_path)
    fit(setup, keeper, **QUIET)
    assert setup.eval_model is setup.ema.module
    assert int(setup.ema.n_averaged) == 3  # after steps 2, 3 and 4 of 4: progress >= 0.5
