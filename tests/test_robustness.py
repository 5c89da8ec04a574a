"""Faults that must never lose work or crash the process: bad files, garbage configs."""

import contextlib
import csv
import shutil
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fissure import api as workflow
from fissure.config import config_from_dict, load_config
from fissure.data import decode_image, decode_mask
from fissure.data.sources import FolderSource
from fissure.errors import ConfigError, DataError, FissureError

QUIET = {"progress": False, "log": lambda m: None}

keys = st.sampled_from(["data", "train", "model", "augment", "eval", "root", "size", "epochs",
                        "lr", "loss", "name", "params", "snowflake", "encoder", "x", ""])
leaves = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(),
                   st.text(string.printable, max_size=8), st.lists(st.integers(), max_size=3))
configs = st.recursive(leaves, lambda kids: st.dictionaries(keys, kids, max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs)
def test_any_garbage_config_is_a_config_error_or_valid(values):
    try:
        config_from_dict(values)
    except ConfigError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_decoder_never_crashes_on_garbage(data):
    for decode in (decode_image, decode_mask):
        try:
            decode(data, "fuzz.png")
        except DataError as exc:
            assert str(exc).startswith("fuzz.png: ")


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=0, max_size=64), st.integers(0, 2000))
def test_decoder_survives_damaged_real_files(noise, cut):
    import gzip
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(buf, format="PNG")
    for blob in (buf.getvalue(), gzip.compress(buf.getvalue())):
        damaged = blob[:cut] + noise + blob[cut + len(noise):]
        with contextlib.suppress(DataError):
            decode_image(damaged, "x.png")


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


def test_unreadable_file_is_a_data_error(tmp_path, monkeypatch):
    from pathlib import Path

    from fissure.data.image import read_bytes

    target = tmp_path / "x.png"
    target.write_bytes(b"x")

    def denied(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(DataError, match="x.png: cannot read \\(Permission denied\\)"):
        read_bytes(target)


def test_non_image_files_are_ignored_when_pairing(synth_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    (root / "train" / "masks" / "README.md").write_text("hello")
    (root / "train" / "images" / ".DS_Store").write_bytes(b"\0")
    assert len(FolderSource(root).samples("train")) == 8


def test_nonfinite_skip_mode_never_saves_nan_weights(tmp_path, tiny_overrides, monkeypatch):
    import torch

    import fissure.training.loop as engine
    from fissure.checkpoint import load_checkpoint

    cfg = load_config(None, tiny_overrides + ["train.nonfinite=skip", "train.epochs=2"])
    real = engine.build_loss
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        fn = real(*args, **kwargs)

        def loss(logits, target):
            calls["n"] += 1
            value = fn(logits, target)
            return value * float("nan") if calls["n"] % 2 else value

        return loss

    monkeypatch.setattr(engine, "build_loss", flaky)
    workflow.train(cfg, tmp_path / "run", **QUIET)
    for name in ("best.pt", "last.pt"):
        state = load_checkpoint(tmp_path / "run" / name).state_dict
        assert all(torch.isfinite(t.float()).all() for t in state.values())
