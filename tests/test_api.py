"""The library API end to end: bad files under data.on_error, non-finite losses."""

import csv
import shutil

import pytest

from fissure import api as workflow
from fissure.config import load_config
from fissure.errors import DataError, FissureError

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

