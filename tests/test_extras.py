"""Optional features name the extra that brings them, in one line (fissure.extras)."""

import pytest
from click.testing import CliRunner

from fissure import extras
from fissure.checkpoint import make_checkpoint
from fissure.cli import cli
from fissure.config import config_from_dict
from fissure.errors import MissingExtra
from fissure.model import build_model


def _hide(monkeypatch, *modules):
    real = extras.is_installed
    monkeypatch.setattr(extras, "is_installed", lambda m: m not in modules and real(m))


def _one_line_error(result, needle):
    assert result.exit_code != 0
    assert "Traceback" not in result.output, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("Error: ") and needle in lines[-1], result.output


def test_require_names_the_missing_modules_and_the_extra(monkeypatch):
    _hide(monkeypatch, "onnxscript")
    with pytest.raises(MissingExtra) as info:
        extras.require("export", "ONNX export", ("onnx", "onnxscript"))
    assert str(info.value) == ("ONNX export needs onnxscript, which is not installed: "
                               "pip install 'fissure[export]'")
    extras.require("export", "ONNX export", ("onnx",))
    assert extras.missing("export", ("onnx", "onnxscript")) == ["onnxscript"]
    assert not extras.is_installed("no_such_module_at_all.sub")


def test_onnx_export_without_the_extra_is_one_line(tmp_path, monkeypatch):
    cfg = config_from_dict({"model": {"encoder": "resnet18"}, "data": {"size": 64}})
    make_checkpoint(build_model("resnet18"), cfg, epoch=0).save(tmp_path / "m.pt")
    _hide(monkeypatch, "onnxscript")
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "m.pt"), "--format", "onnx",
                                      "--out", str(tmp_path / "m.onnx")])
    _one_line_error(result, "pip install 'fissure[export]'")
    assert not (tmp_path / "m.onnx").exists()


def test_tensorboard_without_the_extra_stops_before_training(tmp_path, monkeypatch, synth_root):
    _hide(monkeypatch, "tensorboard")
    (tmp_path / "c.yaml").write_text("{}\n")
    result = CliRunner().invoke(cli, [
        "train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"), "--quiet",
        "--set", f"data.root={synth_root}", "--set", "data.size=64",
        "--set", "model.encoder=resnet18", "--set", "train.tensorboard=true"])
    _one_line_error(result, "pip install 'fissure[tensorboard]'")
    assert not (tmp_path / "run" / "last.pt").exists()


def test_installed_extras_says_which_are_missing(monkeypatch):
    found = extras.installed_extras()
    assert set(found) == set(extras.EXTRAS)
    # a module of an extra hidden: that extra is reported missing, the others as they were
    name, modules = next(iter(extras.EXTRAS.items()))
    _hide(monkeypatch, modules[0])
    hidden = extras.installed_extras()
    assert hidden[name] is False
    assert {k: v for k, v in hidden.items() if k != name} == {
        k: v for k, v in found.items() if k != name}
