"""The library API end to end: bad files under data.on_error, non-finite losses."""

import csv
import shutil
from pathlib import Path

import pytest

from fissure import api as workflow
from fissure.api.runs import _check_resumable, prepare_run_dir
from fissure.config import load_config, save_config
from fissure.errors import ConfigError, DataError, FissureError

QUIET = {"progress": False, "log": lambda m: None}


def damaged_copy(synth_root, tmp_path, n_bad):
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    victims = sorted((root / "train" / "images").iterdir())[:n_bad]
    for victim in victims:
        victim.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "train" / "images" / "notes.txt").write_text("not an image, ignored")
    return root, victims


def test_skip_mode_reports_each_bad_file_once_and_carries_on(synth_root, tmp_path,
                                                            tiny_overrides):
    root, victims = damaged_copy(synth_root, tmp_path, 1)
    cfg = load_config(None, tiny_overrides + [f"data.root={root}", "data.on_error=skip",
                                              "data.max_skip_fraction=0.2", "train.epochs=2"])
    logged = []
    result = workflow.train(cfg, tmp_path / "run", progress=False, log=logged.append)
    assert len(result.history) == 2
    rows = list(csv.DictReader((tmp_path / "run" / "skipped.csv").read_text().splitlines()))
    assert [r["name"] for r in rows] == [victims[0].stem]
    assert "not a readable image" in rows[0]["reason"]
    assert sum(victims[0].stem in line for line in logged) == 1


def test_too_many_skips_stop_the_run(synth_root, tmp_path, tiny_overrides):
    root, _ = damaged_copy(synth_root, tmp_path, 4)
    cfg = load_config(None, tiny_overrides + [f"data.root={root}", "data.on_error=skip",
                                              "data.max_skip_fraction=0.1"])
    with pytest.raises(FissureError, match="samples skipped, more than data.max_skip_fraction"):
        workflow.train(cfg, tmp_path / "run", **QUIET)


def test_raise_mode_names_the_bad_file(synth_root, tmp_path, tiny_overrides):
    root, victims = damaged_copy(synth_root, tmp_path, 1)
    cfg = load_config(None, tiny_overrides + [f"data.root={root}"])
    with pytest.raises(DataError, match=victims[0].name):
        workflow.train(cfg, tmp_path / "run", **QUIET)


def test_nonfinite_skip_mode_never_saves_nan_weights(tmp_path, tiny_overrides, monkeypatch):
    import torch

    import fissure.training.setup as engine
    from fissure.checkpoint import load_checkpoint

    cfg = load_config(None, tiny_overrides + ["train.nonfinite=skip", "train.epochs=2"])
    real = engine.build_loss
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        fn = real(*args, **kwargs)

        def loss(logits, target, **kw):
            calls["n"] += 1
            value = fn(logits, target, **kw)
            return value * float("nan") if calls["n"] % 2 else value

        return loss

    monkeypatch.setattr(engine, "build_loss", flaky)
    workflow.train(cfg, tmp_path / "run", **QUIET)
    for name in ("best.pt", "last.pt"):
        state = load_checkpoint(tmp_path / "run" / name).state_dict
        assert all(torch.isfinite(t.float()).all() for t in state.values())



def test_resume_refuses_what_last_pt_cannot_continue_and_keeps_config_yaml(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_config(load_config(None, ["train.epochs=2"]), run_dir / "config.yaml")
    before = (run_dir / "config.yaml").read_text()
    (run_dir / "last.pt").write_bytes(b"")  # never read: the overrides are refused first
    with pytest.raises(ConfigError) as info:
        workflow.resume(run_dir, ["train.lr=0.1", "model.encoder=resnet18", "train.epochs=4"])
    message = str(info.value)
    assert message.startswith("model.encoder, train.lr: cannot change when resuming")
    assert "--out NEW" in message and "train.epochs" not in message
    assert (run_dir / "config.yaml").read_text() == before


def test_resume_allows_length_budget_device_data_place_and_evaluation():
    recorded = load_config(None, [])
    changed = load_config(None, ["train.epochs=9", "train.max_minutes=30", "train.device=cpu",
                                 "data.root=/elsewhere", "data.snowflake.connection=prod",
                                 "eval.tta=true", "eval.min_area=5"])
    _check_resumable(recorded, changed, Path("run"))  # no error


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("fissure.api.runs.time.strftime", lambda fmt: "20261203-120000")
    first, second = prepare_run_dir(None), prepare_run_dir(None)
    assert (first.name, second.name) == ("20261203-120000", "20261203-120000-2")
    assert first.is_dir() and second.is_dir()


def _old_run(run_dir):
    """An earlier run's files, and one of the user's."""
    for name in ("best.pt", "last.pt", "history.csv", "config.yaml", "metrics.json",
                 "epochs/epoch_002.pt", "tensorboard/events.out.tfevents.1.host", "notes.txt"):
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_text("old")


def test_overwrite_keeps_the_old_run_when_the_new_one_cannot_be_built(tmp_path, tiny_overrides):
    run_dir = tmp_path / "run"
    _old_run(run_dir)
    cfg = load_config(None, tiny_overrides + ["train.loss.params={bogus: 1}"])
    with pytest.raises(ConfigError, match="train.loss.params.bogus"):
        workflow.train(cfg, run_dir, overwrite=True, **QUIET)
    assert {p.read_text() for p in run_dir.rglob("*") if p.is_file()} == {"old"}
    assert len([p for p in run_dir.rglob("*") if p.is_file()]) == 8


def test_overwrite_clears_what_the_old_run_left_and_keeps_the_users_files(
    tmp_path, tiny_overrides
):
    run_dir = tmp_path / "run"
    _old_run(run_dir)
    workflow.train(load_config(None, tiny_overrides), run_dir, overwrite=True, **QUIET)
    assert not (run_dir / "metrics.json").exists()
    assert not list(run_dir.glob("epochs/*")) and not list(run_dir.glob("tensorboard/*"))
    assert (run_dir / "notes.txt").read_text() == "old"
    assert load_config(run_dir / "config.yaml") == load_config(None, tiny_overrides)
    assert (run_dir / "best.pt").read_bytes()[:2] == b"PK"  # a new torch checkpoint
