"""Model Registry versions (fissure.snowflake.registry, ``fissure snowflake register`` and
``models``, ``train --register``, ``snowflake://`` checkpoints), offline.

The emulator cannot run the registry: even ``Registry(session)`` fails there (it runs SQL).
So the tests stand in for the ``Registry`` class itself, with ``create_autospec`` of the
installed ``snowflake-ml-python`` classes: every call fissure makes (the constructor,
``log_model``, ``get_model``, ``export`` ...) is checked against the real signatures, so an
API change fails here. Sessions are the emulator's (``--connection local``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from unittest.mock import create_autospec

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("snowflake.ml")

from snowflake.ml.model import Model, ModelVersion  # noqa: E402
from snowflake.ml.registry import Registry  # noqa: E402

import fissure  # noqa: E402
from fissure import api, extras  # noqa: E402
from fissure.checkpoint import load_checkpoint, make_checkpoint  # noqa: E402
from fissure.cli import cli  # noqa: E402
from fissure.config import config_from_dict  # noqa: E402
from fissure.errors import CheckpointError, ConfigError  # noqa: E402
from fissure.model import build_model  # noqa: E402
from fissure.snowflake import registry  # noqa: E402
from fissure.snowflake.crack_model import ARTIFACT, INPUT_COLUMNS, CrackModel  # noqa: E402
from fissure.snowflake.registry import ModelRef  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
VAL = {"epoch": 4, "train_loss": 0.3, "val_loss": 0.25, "val_iou": 0.41, "val_f1": 0.58,
       "val_f1_tuned": 0.6, "threshold": 0.35, "lr": 1e-4}


def _eval_doc(split: str = "test") -> dict:
    """The parts of a metrics.json that registration reads, shaped as evaluate writes them."""
    fig = {"definition": "...", "at_0.5": 0.1}
    return {"split": split, "n_images": 12,
            "pixel_micro": {k: {**fig, "at_tuned": v} for k, v in
                            (("iou", 0.37), ("f1", 0.54), ("precision", 0.5), ("recall", 0.6))},
            "tolerance": {"f1": {**fig, "at_tuned": 0.71}},
            "threshold_sweep": {"ods_f1": {"definition": "...", "exact": 0.56}},
            "detection": {"false_positive_rate": {**fig, "at_tuned": None}}}


@pytest.fixture(scope="module")
def ckpt_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder's best.pt with validation metrics, and an evaluation beside it."""
    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    cfg = config_from_dict({"model": {"encoder": "resnet18"}, "data": {"size": 64}})
    make_checkpoint(build_model("resnet18"), cfg, epoch=4, metrics=VAL, threshold=0.35,
                    train_state={"step": 3}).save(run / "best.pt")
    (run / "metrics.json").write_text(json.dumps(_eval_doc()), "utf-8")
    return run / "best.pt"


class Stand:
    """Stand-ins for the registry classes, specced on the installed ones; ``logged`` holds
    what ``log_model`` received, checked while its artifact still exists."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.cls = create_autospec(Registry)
        self.registry = self.cls.return_value
        self.version = create_autospec(ModelVersion, instance=True)
        self.version.version_name = "V7"
        self.registry.log_model.side_effect = self._log
        self.logged: dict = {}
        monkeypatch.setattr("snowflake.ml.registry.Registry", self.cls)

    def _log(self, model, **kwargs):
        artifact = Path(model.context.path(ARTIFACT))
        self.logged = {"model": model, **kwargs, "artifact": load_checkpoint(artifact),
                       "artifact_name": artifact.name}
        return self.version


@pytest.fixture()
def stand(monkeypatch: pytest.MonkeyPatch, session) -> Stand:
    """The stand-ins, with the module's emulator session active: the one session
    ``--connection local`` finds (the emulator allows one active session per process)."""
    return Stand(monkeypatch)


# -- references -----------------------------------------------------------------------------


@pytest.mark.parametrize("text, ref", [
    ("snowflake://CRACKS/V1", ModelRef("CRACKS", "V1")),
    ("snowflake://CRACKS/default", ModelRef("CRACKS")),
    ("snowflake://CRACKS/DEFAULT", ModelRef("CRACKS")),
    ("snowflake://CRACKS", ModelRef("CRACKS")),
    ("snowflake://CRACKS/", ModelRef("CRACKS")),
    ("snowflake://DB.SCH.CRACKS/v_2", ModelRef("CRACKS", "v_2", "DB", "SCH")),
])
def test_references_parse(text, ref):
    assert ModelRef.parse(text) == ref
    assert ModelRef.parse(str(ref)) == ref


@pytest.mark.parametrize("text", ["snowflake://", "snowflake://a b", "snowflake://DB.CRACKS/V",
                                  "snowflake://C/V/W", "snowflake://9X", "snowflake://C/1.0"])
def test_bad_references_are_one_line_config_errors(text):
    with pytest.raises(ConfigError, match=re.escape(repr(text))):
        ModelRef.parse(text)


def test_registration_names():
    assert registry.registration_ref("DB.SCH.CRACKS") == ModelRef("CRACKS", None, "DB", "SCH")
    assert registry.registration_ref("CRACKS/V2") == ModelRef("CRACKS", "V2")
    assert registry.registration_ref("CRACKS/V2", "V3") == ModelRef("CRACKS", "V3")
    for bad in ("CRACKS/default", "CRACKS/1x"):
        with pytest.raises(ConfigError, match="version"):
            registry.registration_ref(bad)
    assert registry.is_registry_reference("snowflake://X")
    assert not registry.is_registry_reference("@STAGE/snowflake://x")


def test_dependencies_are_pyprojects_lower_bounds():
    """What the registry installs is what fissure declares: same packages, same bounds."""
    declared = {}
    for line in (ROOT / "pyproject.toml").read_text("utf-8").splitlines():
        found = re.fullmatch(r'\s*"([a-z-]+)(>=[\d.]+)",', line)
        if found:
            declared[found.group(1)] = found.group(2)
    conda = dict(re.fullmatch(r"([a-z-]+)(>=[\d.]+)", d).groups()
                 for d in registry.CONDA_DEPENDENCIES)
    assert conda.pop("pytorch") == declared["torch"]
    assert {"torchvision", "pillow", "numpy", "scipy", "scikit-image"} <= set(conda)
    assert conda == {name: declared[name] for name in conda}


# -- registration ---------------------------------------------------------------------------


def _check_logged(stand: Stand, source: Path, version: str | None, named: str = "") -> None:
    registry_args = stand.cls.call_args
    assert registry_args.args[0] is not None  # the session
    logged = stand.logged
    assert isinstance(logged["model"], CrackModel)
    assert logged["model_name"] == "CRACKS" and logged["version_name"] == version
    metrics = logged["metrics"]
    assert metrics["threshold"] == pytest.approx(0.35) and metrics["encoder"] == "resnet18"
    assert (metrics["input_mode"], metrics["input_size"], metrics["epoch"]) == ("resize", 64, 4)
    assert metrics["fissure_version"] == fissure.__version__
    assert {k: metrics[k] for k in ("val_iou", "val_f1_tuned", "val_loss")} == {
        "val_iou": 0.41, "val_f1_tuned": 0.6, "val_loss": 0.25}
    assert "lr" not in metrics and "train_loss" not in metrics
    json.dumps(metrics, allow_nan=False)
    sample = logged["sample_input_data"]
    assert isinstance(sample, pd.DataFrame) and list(sample.columns) == list(INPUT_COLUMNS)
    assert "pytorch>=2.2" in logged["conda_dependencies"]
    assert logged["code_paths"] == [str(Path(fissure.__file__).parent)]
    assert (named or str(source)) in logged["comment"] and "resnet18" in logged["comment"]
    original = load_checkpoint(source)
    assert logged["artifact_name"] == registry.ARTIFACT_FILE
    assert logged["artifact"].train_state is None  # the resume state stays at home
    assert all(torch.equal(v, original.state_dict[k])
               for k, v in logged["artifact"].state_dict.items())


def test_register_logs_the_model_metrics_sample_and_dependencies(stand, ckpt_file):
    done = api.register_checkpoint(ckpt_file, "CRACKS", version="V7", connection="local")
    _check_logged(stand, ckpt_file, "V7")
    metrics = stand.logged["metrics"]
    assert {k: metrics[k] for k in ("test_iou", "test_f1_tolerant", "test_ods_f1",
                                    "test_images", "test_image_fpr")} == {
        "test_iou": 0.37, "test_f1_tolerant": 0.71, "test_ods_f1": 0.56, "test_images": 12,
        "test_image_fpr": None}
    assert done == {"model": "CRACKS", "version": "V7", "reference": "snowflake://CRACKS/V7",
                    "metrics": metrics}
    assert stand.cls.call_args.kwargs == {"database_name": None, "schema_name": None}


def test_register_with_given_metrics_files_and_a_qualified_name(stand, ckpt_file, tmp_path):
    (tmp_path / "val.json").write_text(json.dumps(_eval_doc("val")), "utf-8")
    api.register_checkpoint(ckpt_file, "DB.SCH.CRACKS", metrics=[tmp_path / "val.json"],
                            comment="hand-made", connection="local")
    assert stand.cls.call_args.kwargs == {"database_name": "DB", "schema_name": "SCH"}
    metrics = stand.logged["metrics"]
    assert metrics["val_iou"] == 0.37 and "test_iou" not in metrics  # the evaluation's val
    assert stand.logged["comment"] == "hand-made" and stand.logged["version_name"] is None


def test_register_a_stage_checkpoint(stand, ckpt_file, session):
    with open(ckpt_file, "rb") as handle:
        session.file.put_stream(handle, "@REG_STAGE/models/best.pt", auto_compress=False,
                                overwrite=True)
    api.register_checkpoint("@REG_STAGE/models/best.pt", "CRACKS", connection="local")
    _check_logged(stand, ckpt_file, None, "@REG_STAGE/models/best.pt")
    assert "test_iou" not in stand.logged["metrics"]  # no metrics.json beside a stage file


def test_a_failed_registration_is_one_line(stand, ckpt_file):
    stand.registry.log_model.side_effect = RuntimeError("Insufficient privileges\nmore")
    with pytest.raises(ConfigError, match=r"^CRACKS: registering the model failed "
                                          r"\(Insufficient privileges\)$"):
        api.register_checkpoint(ckpt_file, "CRACKS", connection="local")


def test_the_stand_in_refuses_what_the_real_class_refuses(stand):
    """The autospec is strict: a keyword log_model does not have is a TypeError."""
    with pytest.raises(TypeError):
        stand.registry.log_model(object(), model_name="X", sample_input=None)
    with pytest.raises(TypeError):
        stand.cls(object(), database="DB")


def test_register_command_and_bad_metrics_file(stand, ckpt_file, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["snowflake", "register", str(ckpt_file), "--model", "CRACKS",
                                 "--version", "V7", "--connection", "local"])
    assert result.exit_code == 0, result.output
    assert "registered" in result.output and "snowflake://CRACKS/V7" in result.output
    (tmp_path / "bad.json").write_text("{", "utf-8")
    result = runner.invoke(cli, ["snowflake", "register", str(ckpt_file), "--model", "CRACKS",
                                 "--metrics", str(tmp_path / "bad.json"), "--connection", "local"])
    assert result.exit_code == 1 and "bad.json: not JSON" in result.output
    assert "Traceback" not in result.output


def test_without_the_extra_register_is_one_line(monkeypatch, ckpt_file, tmp_path, synth_root):
    real = extras.is_installed
    monkeypatch.setattr(extras, "is_installed", lambda m: m != "snowflake.ml" and real(m))
    runner = CliRunner()
    result = runner.invoke(cli, ["snowflake", "register", str(ckpt_file), "--model", "C"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        "Error: fissure snowflake register needs snowflake.ml, which is not installed: "
        "pip install 'fissure[snowflake-ml]'")
    (tmp_path / "c.yaml").write_text("{}\n")
    result = runner.invoke(cli, [
        "train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"),
        "--quiet", "--set", f"data.root={synth_root}", "--register", "CRACKS"])
    assert result.exit_code == 1 and "fissure[snowflake-ml]" in result.output
    assert not (tmp_path / "run" / "last.pt").exists()


def test_train_register_logs_best_pt_at_the_end(stand, tiny_config, tmp_path):
    lines: list[str] = []
    result = api.train(tiny_config, tmp_path / "run", register="CRACKS/R1",
                       connection="local", progress=False, log=lines.append)
    logged = stand.logged
    assert logged["model_name"] == "CRACKS" and logged["version_name"] == "R1"
    assert logged["metrics"]["epoch"] == result.best_epoch
    assert logged["metrics"]["val_iou"] == pytest.approx(result.history[-1]["val_iou"])
    assert str(result.best) in logged["comment"]
    assert lines[-1] == f"registered {result.best} as snowflake://CRACKS/V7"


# -- listing --------------------------------------------------------------------------------


def _model_with(versions: dict[str, dict], default: str) -> Model:
    model = create_autospec(Model, instance=True)
    made = []
    for name, metrics in versions.items():
        version = create_autospec(ModelVersion, instance=True)
        version.version_name, version.comment = name, f"comment {name}"
        version.show_metrics.return_value = metrics
        made.append(version)
    model.versions.return_value = made
    model.default = made[list(versions).index(default)]
    return model


def test_models_lists_every_version_with_its_metrics(stand):
    models = {"CRACKS": _model_with({"V1": {"val_iou": 0.3}, "V2": {"val_iou": 0.4,
                                                                     "threshold": 0.35}}, "V2"),
              "OTHER": _model_with({"A": {}}, "A")}
    stand.registry.show_models.return_value = pd.DataFrame({"name": list(models)})
    stand.registry.get_model.side_effect = models.__getitem__
    rows = api.list_models(connection="local")
    assert [(r["model"], r["version"], r["default"]) for r in rows] == [
        ("CRACKS", "V1", False), ("CRACKS", "V2", True), ("OTHER", "A", True)]
    assert rows[1]["metrics"] == {"val_iou": 0.4, "threshold": 0.35}
    assert rows[0]["comment"] == "comment V1"
    result = CliRunner().invoke(cli, ["snowflake", "models", "CRACKS", "--connection", "local"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["  snowflake://CRACKS/V1  val_iou=0.3",
                                          "* snowflake://CRACKS/V2  threshold=0.35  val_iou=0.4"]
    stand.registry.get_model.assert_called_with("CRACKS")
    as_json = CliRunner().invoke(cli, ["snowflake", "models", "--json", "--connection", "local"])
    assert json.loads(as_json.output)[2]["model"] == "OTHER"


# -- snowflake:// checkpoints ---------------------------------------------------------------


def _exporting(stand: Stand, ckpt_file: Path, file_name: str = registry.ARTIFACT_FILE) -> Model:
    """A model whose versions export the layout the registry's packager writes."""

    def export(target_path, *, export_mode=None):
        artifacts = Path(target_path) / "model" / "models" / "CRACKS" / "artifacts"
        artifacts.mkdir(parents=True)
        (artifacts / file_name).write_bytes(ckpt_file.read_bytes())
        (Path(target_path) / "model" / "model.yaml").write_text("models: {}\n")

    model = _model_with({"V1": {}, "V2": {}}, "V2")
    for version in model.versions.return_value:
        version.export.side_effect = export
    model.version.side_effect = lambda name: model.versions.return_value[int(name[-1]) - 1]
    stand.registry.get_model.return_value = model
    return model


@pytest.mark.parametrize("reference, version", [
    ("snowflake://CRACKS/V1", "V1"), ("snowflake://CRACKS/default", "V2"),
    ("snowflake://CRACKS", "V2")])
def test_references_resolve_to_the_registered_checkpoint(stand, ckpt_file, session, reference,
                                                         version):
    model = _exporting(stand, ckpt_file)
    ckpt = registry.read_checkpoint(session, reference)
    original = load_checkpoint(ckpt_file)
    assert ckpt.threshold == original.threshold and ckpt.epoch == 4
    assert all(torch.equal(v, original.state_dict[k]) for k, v in ckpt.state_dict.items())
    assert ckpt.origin == f"snowflake://CRACKS/{version}"
    stand.registry.get_model.assert_called_with("CRACKS")
    if version == "V1":
        model.version.assert_called_once_with("V1")
    else:
        model.version.assert_not_called()


def test_predict_and_load_model_take_a_reference(stand, ckpt_file, tmp_path):
    _exporting(stand, ckpt_file)
    image = tmp_path / "photo.png"
    from PIL import Image

    Image.new("RGB", (40, 30), (90, 90, 90)).save(image)
    by_reference = api.predict("snowflake://CRACKS/V1", [image], tmp_path / "a",
                               connection="local", progress=False)
    by_file = api.predict(ckpt_file, [image], tmp_path / "b", progress=False)
    masks = [(tmp_path / out / "photo.png").read_bytes() for out in ("a", "b")]
    assert masks[0] == masks[1]
    assert by_reference[0]["area_px"] == by_file[0]["area_px"]
    model, ckpt = api.load_model("snowflake://CRACKS/default", "cpu", connection="local")
    assert ckpt.origin == "snowflake://CRACKS/V2" and not model.training


def test_a_model_without_a_fissure_checkpoint_or_version(stand, ckpt_file, session, tmp_path):
    model = _exporting(stand, ckpt_file, file_name="weights.bin")
    with pytest.raises(CheckpointError, match=r"^snowflake://CRACKS/V1: not a fissure model"):
        registry.read_checkpoint(session, "snowflake://CRACKS/V1")
    model.version.side_effect = ValueError("Unable to find version V9\ndetails")
    with pytest.raises(CheckpointError, match=r"^snowflake://CRACKS/V9: no such version of "
                                              r"CRACKS \(Unable to find version V9\)$"):
        registry.read_checkpoint(session, "snowflake://CRACKS/V9")
    stand.registry.get_model.side_effect = ValueError("Unable to find model NOPE")
    result = CliRunner().invoke(cli, ["predict", "snowflake://NOPE/V1", str(ckpt_file),
                                      "--out", str(tmp_path / "x"), "--connection", "local"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip() == ("Error: snowflake://NOPE/V1: no model NOPE in the "
                                     "registry (Unable to find model NOPE)")
