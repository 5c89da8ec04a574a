"""End to end through click's CliRunner, and every bad-input case of the core issue."""

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from fissure.checkpoint import make_checkpoint
from fissure.cli import cli
from fissure.config import config_from_dict
from fissure.model import build_model

DEFAULT = str(Path(__file__).resolve().parents[1] / "configs" / "default.yaml")


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result


def assert_one_line_error(result, *needles):
    assert result.exit_code != 0
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and result.output.rstrip().endswith(errors[0]), result.output
    for needle in needles:
        assert needle in errors[0], errors[0]


def sets(overrides):
    return [x for item in overrides for x in ("--set", item)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synth_root):
    """One tiny run shared by the end-to-end tests."""
    out = tmp_path_factory.mktemp("cli") / "run"
    overrides = [f"data.root={synth_root}", "data.size=64", "model.encoder=resnet18",
                 "train.epochs=1", "train.batch_size=4", "train.num_workers=0",
                 "eval.thresholds=19"]
    cfg = tmp_path_factory.mktemp("cfg") / "c.yaml"
    cfg.write_text("train:\n  lr: 0.001\n")
    result = run("train", "--config", cfg, "--out", out, "--quiet", *sets(overrides))
    assert result.exit_code == 0, result.output
    return out


def test_data_synth_writes_the_layout(tmp_path):
    result = run("data", "synth", tmp_path / "d", "--count", 6, "--size", 32, "--seed", 1)
    assert result.exit_code == 0, result.output
    for split in ("train", "val", "test"):
        assert any((tmp_path / "d" / split / "images").iterdir())
        assert any((tmp_path / "d" / split / "masks").iterdir())


def test_train_evaluate_predict(trained, synth_root, tmp_path):
    for name in ("best.pt", "last.pt", "history.csv", "curves.png", "config.yaml"):
        assert (trained / name).is_file()
    result = run("evaluate", trained / "best.pt", "--data", synth_root, "--split", "test",
                 "--out", tmp_path / "eval", "--quiet", "--no-amp")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["compute_dtype"] == "float32"
    assert "iou" in result.output
    images = synth_root / "test" / "images"
    result = run("predict", trained / "best.pt", images, "--out", tmp_path / "pred", "--quiet",
                 "--amp")
    assert result.exit_code == 0, result.output
    for path in images.iterdir():
        mask = Image.open(tmp_path / "pred" / path.name)
        assert mask.size == Image.open(path).size
        assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_nothing_is_written_outside_the_output_folders(synth_root, tmp_path, monkeypatch):
    """Train, evaluate and predict leave the data, the cwd and each other's folders alone."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    data_before = _tree(synth_root)
    overrides = [f"data.root={synth_root}", "data.size=64", "model.encoder=resnet18",
                 "train.epochs=1", "train.batch_size=4", "train.num_workers=0",
                 "eval.thresholds=19"]
    (tmp_path / "c.yaml").write_text("")
    assert run("train", "--config", tmp_path / "c.yaml", "--out", "run", "--quiet",
               *sets(overrides)).exit_code == 0
    run_before = _tree(work / "run")
    assert run("evaluate", "run/best.pt", "--split", "test", "--out", "ev",
               "--quiet").exit_code == 0
    assert run("predict", "run/best.pt", synth_root / "test" / "images", "--out", "pred",
               "--overlay", "--quiet").exit_code == 0
    assert sorted(p.name for p in work.iterdir()) == ["ev", "pred", "run"]
    assert _tree(work / "run") == run_before
    assert _tree(synth_root) == data_before


def test_predict_any_size_and_gzip(trained, tmp_path):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (45, 77, 3), dtype=np.uint8))
    image.save(tmp_path / "odd.png")
    (tmp_path / "z.png.gz").write_bytes(gzip.compress((tmp_path / "odd.png").read_bytes()))
    result = run("predict", trained / "best.pt", tmp_path / "odd.png", tmp_path / "z.png.gz",
                 "--out", tmp_path / "pred", "--quiet")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "pred" / "odd.png").size == (77, 45)
    assert Image.open(tmp_path / "pred" / "z.png").size == (77, 45)


def test_python_dash_m_and_help():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "fissure", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "train" in done.stdout and "evaluate" in done.stdout


# -- bad input: one line, non-zero exit, no traceback ----------------------------------


def test_missing_data_folder(tmp_path):
    result = run("train", "--config", DEFAULT, "--out", tmp_path / "r",
                 "--set", f"data.root={tmp_path / 'nope'}")
    assert_one_line_error(result, "nope", "data folder not found")


def test_unknown_and_mistyped_config_keys(tmp_path):
    result = run("train", "--config", DEFAULT, "--set", "train.epoch=3")
    assert_one_line_error(result, "train.epoch", "train.epochs")
    result = run("train", "--config", DEFAULT, "--set", "train.epochs=many")
    assert_one_line_error(result, "train.epochs: expected int")


def copy_synth(synth_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    return root


def train_on(root, tmp_path):
    overrides = [f"data.root={root}", "data.size=64", "model.encoder=resnet18",
                 "train.epochs=1", "train.batch_size=4", "train.num_workers=0"]
    return run("train", "--config", DEFAULT, "--out", tmp_path / "run",
               "--quiet", *sets(overrides))


def test_image_without_mask(synth_root, tmp_path):
    root = copy_synth(synth_root, tmp_path)
    victim = sorted((root / "train" / "masks").iterdir())[0]
    victim.unlink()
    assert_one_line_error(train_on(root, tmp_path), "without a mask", victim.stem)


def test_mask_without_image(synth_root, tmp_path):
    root = copy_synth(synth_root, tmp_path)
    victim = sorted((root / "train" / "images").iterdir())[0]
    victim.unlink()
    assert_one_line_error(train_on(root, tmp_path), "without an image", victim.stem)


def test_mask_of_another_size(synth_root, tmp_path):
    root = copy_synth(synth_root, tmp_path)
    victim = sorted((root / "train" / "masks").iterdir())[0]
    Image.new("L", (10, 10)).save(victim)
    assert_one_line_error(train_on(root, tmp_path), victim.name, "mask is 10x10")


@pytest.mark.parametrize("damage", ["corrupt_png", "truncated_gz"])
def test_corrupt_image_or_gzip(synth_root, tmp_path, damage):
    root = copy_synth(synth_root, tmp_path)
    victim = sorted((root / "train" / "images").iterdir())[0]
    if damage == "corrupt_png":
        victim.write_bytes(victim.read_bytes()[:50])
        name = victim.name
    else:
        gz = victim.with_name(victim.name + ".gz")
        gz.write_bytes(gzip.compress(victim.read_bytes())[:-20])
        victim.unlink()
        name = gz.name
    assert_one_line_error(train_on(root, tmp_path), name)


def test_empty_split(synth_root, tmp_path):
    root = copy_synth(synth_root, tmp_path)
    for path in (root / "val" / "images").iterdir():
        path.unlink()
    for path in (root / "val" / "masks").iterdir():
        path.unlink()
    assert_one_line_error(train_on(root, tmp_path), "split 'val' is empty")


def test_not_a_checkpoint(tmp_path, synth_root):
    (tmp_path / "x.pt").write_bytes(b"definitely not torch")
    assert_one_line_error(run("evaluate", tmp_path / "x.pt", "--data", synth_root),
                          "x.pt", "not a readable torch checkpoint")
    torch.save({"a": torch.zeros(1)}, tmp_path / "y.pt")
    assert_one_line_error(run("predict", tmp_path / "y.pt", synth_root, "--out", tmp_path / "o"),
                          "not a fissure checkpoint")


def test_checkpoint_for_another_encoder(tmp_path, synth_root):
    cfg = config_from_dict({"model": {"encoder": "resnet18"}, "data": {"size": 64}})
    ckpt = make_checkpoint(build_model("resnet18"), cfg, epoch=0).to_dict()
    ckpt["model"]["encoder"] = "resnet50"
    torch.save(ckpt, tmp_path / "c.pt")
    assert_one_line_error(run("evaluate", tmp_path / "c.pt", "--data", synth_root),
                          "c.pt", "weights do not fit")


def test_an_output_folder_that_cannot_be_made_is_one_line(trained, synth_root, tmp_path):
    """The machine's own refusal (here: --out below a file) names the path, no traceback."""
    (tmp_path / "afile").write_text("")
    images = synth_root / "test" / "images"
    assert_one_line_error(run("predict", trained / "best.pt", images, "--out",
                              tmp_path / "afile" / "sub", "--quiet"), "afile", "Not a directory")


def test_resume_without_last_pt(tmp_path):
    assert_one_line_error(run("train", "--resume", tmp_path), "no last.pt")


@pytest.mark.parametrize("extra", [["--config", DEFAULT], ["--out", "elsewhere"],
                                   ["--overwrite"]])
def test_resume_refuses_the_options_of_a_new_run(tmp_path, extra):
    # The run folder's config.yaml decides; an option that would be silently ignored is refused.
    assert_one_line_error(run("train", "--resume", tmp_path, *extra), extra[0],
                          "not with --resume", "--set")


def test_debug_shows_the_traceback(tmp_path):
    result = CliRunner().invoke(cli, ["--debug", "train", "--resume", str(tmp_path)])
    assert result.exit_code != 0
    assert "Traceback" in result.output or result.exc_info is not None


def test_evaluate_a_folder_that_holds_only_test(trained, synth_root, tmp_path):
    site = tmp_path / "site7"
    shutil.copytree(synth_root / "test", site / "test")
    result = run("evaluate", trained / "best.pt", "--data", site, "--split", "test", "--quiet",
                 "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["tta"] is False
    flips = run("evaluate", trained / "best.pt", "--data", site, "--quiet", "--tta",
                "--out", tmp_path / "flips")
    assert flips.exit_code == 0, flips.output
    assert json.loads((tmp_path / "flips" / "metrics.json").read_text())["tta"] is True
    assert_one_line_error(run("evaluate", trained / "best.pt", "--data", site, "--split", "val"),
                          "site7", "has no 'val' split (it has test)")


def test_app_command_starts_streamlit(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("fissure.app.start.subprocess.call", lambda cmd: calls.append(cmd) or 0)
    (tmp_path / "m.pt").write_bytes(b"")
    result = CliRunner().invoke(cli, ["app", "--checkpoint", str(tmp_path / "m.pt"),
                                      "--runs", str(tmp_path), "--port", "8600"])
    assert result.exit_code == 0 and calls[0][-4:] == ["--checkpoint", str(tmp_path / "m.pt"),
                                                       "--runs", str(tmp_path)]
    # this machine only, unless asked; then a warning says what that opens
    assert "--server.address" in calls[0]
    assert calls[0][calls[0].index("--server.address") + 1] == "127.0.0.1"
    assert "serving on" not in result.output
    wide = CliRunner().invoke(cli, ["app", "--address", "0.0.0.0"])
    assert wide.exit_code == 0 and calls[1][calls[1].index("--server.address") + 1] == "0.0.0.0"
    assert "serving on 0.0.0.0: whoever reaches it can read the files" in wide.output
    bad = CliRunner().invoke(cli, ["app", "--checkpoint", "nope.pt"])
    assert bad.exit_code == 1 and "nope.pt: no such checkpoint file" in bad.output


def test_demo_synthesises_trains_evaluates_and_predicts(tmp_path):
    """The README's main job, on the shipped demo config shrunk to a smoke test."""
    out = tmp_path / "demo"
    result = run("demo", "--config", DEFAULT, "--out", str(out), "--quiet",
                 "--set", "data.size=64", "--set", "model.encoder=resnet18",
                 "--set", "train.epochs=1", "--set", "train.batch_size=4",
                 "--set", "eval.thresholds=19")
    assert result.exit_code == 0, result.output
    assert (out / "data" / "train" / "images").is_dir()
    assert (out / "run" / "best.pt").is_file() and (out / "run" / "config.yaml").is_file()
    assert json.loads((out / "eval" / "metrics.json").read_text())["split"] == "test"
    assert (out / "predictions" / "predictions.csv").is_file()
    assert "checkpoint:" in result.output


def test_demo_outside_the_repository_says_where_to_run_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a pip install has no configs/ folder beside it
    result = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 2
    assert "run `fissure demo` from the repository root" in result.output
    assert not (tmp_path / "demo").exists()
