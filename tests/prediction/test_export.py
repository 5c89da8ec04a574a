"""Tests for ONNX and TorchScript export (fissure.prediction.export)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from fissure.checkpoint import load_checkpoint, make_checkpoint
from fissure.config import config_from_dict
from fissure.errors import FissureError
from fissure.model import build_model
from fissure.prediction import export
from fissure.prediction.export import export_model

# (N, H, W): two sizes prove dynamic shapes; 70x45 and 20x33 are no multiple of 32.
SIZES = [(1, 64, 96), (2, 96, 128), (1, 70, 45), (1, 20, 33)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    cfg = config_from_dict({"model": {"encoder": "resnet18"}, "data": {"size": 64, "mode": "crop"}})
    path = tmp_path_factory.mktemp("export") / "tiny.pt"
    make_checkpoint(build_model("resnet18"), cfg, epoch=0, threshold=0.4).save(path)
    return path


def _reference(checkpoint: Path, x: torch.Tensor) -> np.ndarray:
    model = load_checkpoint(checkpoint).build_model()
    with torch.no_grad():
        return torch.sigmoid(model(x)).numpy()


def _inputs() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(n, 3, h, w, generator=generator) for n, h, w in SIZES]


def test_onnx_runs_in_onnxruntime_at_any_size(checkpoint: Path, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    out = tmp_path / "crack.onnx"
    result = export_model(checkpoint, out, "onnx", verify=False)
    assert result.path == out and result.max_abs_diff is None
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["probability"]
    for x in _inputs():
        got = session.run(None, {"image": x.numpy()})[0]
        expected = _reference(checkpoint, x)
        assert got.shape == expected.shape == (x.shape[0], 1, *x.shape[-2:])
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["fissure.threshold"] == "0.4" and props["fissure.output"] == "probability"
    assert json.loads(props["fissure.mean"]) == pytest.approx([0.485, 0.456, 0.406])


def test_torchscript_loads_with_jit_and_agrees(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "crack.pt"
    result = export_model(checkpoint, out, "torchscript")
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4
    extra = {"fissure.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["fissure.json"])["fissure.input_size"] == "64"
    for x in [*_inputs(), torch.randn(1, 3, 5, 7)]:
        with torch.no_grad():
            got = loaded(x).numpy()
        np.testing.assert_allclose(got, _reference(checkpoint, x), atol=1e-4, rtol=0)


def test_cli_export_and_bad_arguments(checkpoint: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from fissure.cli import cli

    runner = CliRunner()
    out = tmp_path / "cli.pt"
    result = runner.invoke(
        cli, ["export", str(checkpoint), "--format", "torchscript", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert out.is_file() and "matches PyTorch within" in result.output
    bad = runner.invoke(
        cli, ["export", str(checkpoint), "--out", str(tmp_path / "x.onnx"), "--opset", "13"]
    )
    assert bad.exit_code == 1 and "--opset must be at least 17" in bad.output
    with pytest.raises(FissureError, match="--format"):
        export_model(checkpoint, tmp_path / "x.bin", "tflite")


def test_a_failed_check_keeps_the_earlier_export(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "crack.pt"
    export_model(checkpoint, out, "torchscript")
    before = out.read_bytes()
    monkeypatch.setattr(export, "check_export", lambda *args, **kwargs: 0.5)
    with pytest.raises(FissureError, match=r"crack.pt: exported model differs from PyTorch by "
                       r"5.00e-01 .*; nothing written"):
        export_model(checkpoint, out, "torchscript")
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["crack.pt"]


def test_a_write_that_fails_is_one_line_naming_the_file(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch.jit, "save", disk_full)
    out = tmp_path / "crack.pt"
    with pytest.raises(FissureError, match=r"crack.pt: could not write the export "
                       r"\(\[Errno 28\] No space left on device\)"):
        export_model(checkpoint, out, "torchscript")
    assert list(tmp_path.iterdir()) == []


def test_exports_wrap_the_model_instead_of_copying_its_wiring(
    checkpoint: Path, tmp_path: Path
) -> None:
    import inspect

    import fissure.prediction.export as export

    out = tmp_path / "wrapped.pt"
    export_model(checkpoint, out, "torchscript", verify=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(out))
    assert [name for name, _ in loaded.model.named_children()] == ["encoder", "decoder", "head"]
    source = inspect.getsource(export)
    assert not any(part in source for part in ("dec4", "up4", "encoder0", "layer4", "torch.cat"))
