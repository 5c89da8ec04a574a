"""Progress bars outside a terminal: one bar level, a few lines (fissure.progress)."""

import re

import numpy as np
from click.testing import CliRunner
from PIL import Image

from fissure import progress
from fissure.checkpoint import make_checkpoint
from fissure.cli import cli
from fissure.config import config_from_dict
from fissure.model import build_model


def test_outside_a_terminal_inner_bars_are_silent_and_outer_ones_slow(monkeypatch):
    monkeypatch.setattr(progress, "is_terminal", lambda stream=None: False)
    outer = progress.progress_bar(total=3, desc="images")
    inner = progress.progress_bar(total=3, desc="tiles", inner=True)
    assert not outer.disable and inner.disable
    assert outer.mininterval == progress.LOG_INTERVAL
    assert progress.progress_bar(total=1, desc="x", enabled=False).disable
    for bar in (outer, inner):
        bar.close()


def test_in_a_terminal_every_bar_is_drawn(monkeypatch):
    monkeypatch.setattr(progress, "is_terminal", lambda stream=None: True)
    inner = progress.progress_bar(total=3, desc="tiles", inner=True, leave=False)
    assert not inner.disable
    inner.close()


def test_is_terminal_survives_odd_streams():
    class Closed:
        def isatty(self):
            raise ValueError("I/O operation on closed file")

    assert progress.is_terminal(Closed()) is False
    assert progress.is_terminal(object()) is False


def test_predict_into_a_log_prints_a_few_lines(tmp_path):
    """Several images of many tiles each, output captured (not a terminal): the nested tile
    bar used to print a line per update, dozens per image."""
    cfg = config_from_dict({"model": {"encoder": "resnet18"},
                            "data": {"size": 64, "mode": "crop"}})
    make_checkpoint(build_model("resnet18"), cfg, epoch=0).save(tmp_path / "m.pt")
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (160, 200, 3), dtype=np.uint8)).save(
            photos / f"p{i}.png")
    result = CliRunner().invoke(cli, ["predict", str(tmp_path / "m.pt"), str(photos),
                                      "--out", str(tmp_path / "out"), "--batch-size", "2",
                                      "--no-overlay"])
    assert result.exit_code == 0, result.output
    lines = [line for line in re.split(r"[\r\n]+", result.output) if line.strip()]
    assert not any("tiles" in line for line in lines), lines
    assert len(lines) <= 4, lines
    assert lines[-1].startswith("0 of 4 image(s) with cracks") or "of 4 image(s)" in lines[-1]
