"""scripts/selection_rules.py on a tiny run that kept every epoch; no figure is asserted."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from fissure import api
from fissure.config import load_config

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "selection_rules.py"


def _script():
    spec = importlib.util.spec_from_file_location("selection_rules", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_rule_is_scored_once_per_epoch(tmp_path, tiny_overrides, capsys):
    cfg = load_config(None, tiny_overrides + ["train.epochs=2", "train.keep_every=1",
                                              "train.monitor=f1"])
    api.train(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    _script().main([str(tmp_path / "run"), "--split", "test", "--rule", "window2=2,0.01"])
    out = capsys.readouterr().out
    rows = [line.split("|")[2].strip() for line in out.splitlines()
            if line.startswith(f"| {tmp_path / 'run'} |")]
    assert rows == ["shipped", "single", "window3", "window2", "last"]
    assert "| last | " in out and "| 1 |" in out  # summary: each rule over one run


def test_a_run_without_kept_epochs_says_how_to_get_them(tmp_path, tiny_overrides):
    cfg = load_config(None, tiny_overrides)
    api.train(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    with pytest.raises(SystemExit, match="train.keep_every=1"):
        _script().main([str(tmp_path / "run")])


@pytest.mark.parametrize("rule", ["w5", "=3,0.1", "w=0,0.1", "w=2,-1", "w=two"])
def test_a_malformed_rule_is_a_usage_error_not_a_traceback(rule, capsys):
    with pytest.raises(SystemExit) as stop:
        _script().parse_args(["run", "--rule", rule])
    assert stop.value.code == 2
    assert "NAME=WINDOW,TOL" in capsys.readouterr().err
