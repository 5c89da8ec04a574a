"""fissure models in the Snowflake Model Registry: register a checkpoint, list the versions,
and read one back as a :class:`~fissure.checkpoint.Checkpoint`.

A version is fissure's predictor as a ``CustomModel``
(:class:`~fissure.snowflake.crack_model.CrackModel`), logged with
``Registry.log_model``:

* the checkpoint file, as the model's ``checkpoint`` artifact (:data:`ARTIFACT_FILE`,
  without the resume state of a ``last.pt``);
* fissure's own code (``code_paths``), so that Snowflake can unpickle and run the model
  without fissure being installed there, and the packages it needs
  (:data:`CONDA_DEPENDENCIES`);
* a two-row sample input, from which the registry infers ``PREDICT``'s signature;
* version metrics (:func:`version_metrics`): the threshold, encoder, input policy, epoch
  and fissure version, the checkpoint's validation figures (``val_*``) and, from each
  evaluation's ``metrics.json`` (the run folder's, or given), its split's figures
  (``test_iou`` ...).

A version is named by a reference ``snowflake://[DB.SCHEMA.]NAME[/VERSION]`` (see
:class:`ModelRef`); no version, or ``default``, means the model's default version.
:func:`model_version` finds the ``ModelVersion`` (what ``ModelVersion.run`` needs) and
:func:`read_checkpoint` downloads a version's files (``ModelVersion.export``) and loads the
checkpoint artifact from them.

``snowflake.ml`` is imported inside functions only, after :func:`require_ml` checked that
it is installed: ``import fissure`` and the CLI work without the ``snowflake-ml`` extra.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..checkpoint import Checkpoint, load_checkpoint
from ..errors import CheckpointError, ConfigError, DataError
from ..extras import require
from .files import reason

if TYPE_CHECKING:
    from snowflake.ml.model import ModelVersion
    from snowflake.ml.registry import Registry
    from snowflake.snowpark import Session

SCHEME = "snowflake://"
DEFAULT = "default"
"""The version word of a reference that means the model's default version."""
ARTIFACT_FILE = "fissure-checkpoint.pt"
"""The name of the checkpoint file among a version's files."""
CONDA_DEPENDENCIES = (
    # The lower bounds of pyproject.toml, as the Snowflake Anaconda channel names them; the
    # channel resolves the newest version it has (torch is "pytorch" there).
    "pytorch>=2.2",
    "torchvision>=0.17",
    "pillow>=10",
    "numpy>=1.24",
    "scipy>=1.10",
    "scikit-image>=0.22",
    "pyyaml>=6",
    "tqdm>=4.60",
)
"""What fissure's prediction code imports, for the registry to install where it runs."""
_NAME = r"[A-Za-z_][A-Za-z0-9_$]*"
_REFERENCE = re.compile(rf"(?:({_NAME})\.({_NAME})\.)?({_NAME})(?:/({_NAME})?)?")
# figure of metrics.json -> suffix of the version metric "<split>_<suffix>"
_EVAL_FIGURES = {
    ("pixel_micro", "iou", "at_tuned"): "iou",
    ("pixel_micro", "f1", "at_tuned"): "f1",
    ("pixel_micro", "precision", "at_tuned"): "precision",
    ("pixel_micro", "recall", "at_tuned"): "recall",
    ("tolerance", "f1", "at_tuned"): "f1_tolerant",
    ("threshold_sweep", "ods_f1", "exact"): "ods_f1",
    ("detection", "false_positive_rate", "at_tuned"): "image_fpr",
}


@dataclass(frozen=True)
class ModelRef:
    """A registered model, ``name`` in ``database.schema`` (None: the session's current
    ones), and a ``version`` of it (None: the default version)."""

    name: str
    version: str | None = None
    database: str | None = None
    schema: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """``snowflake://[DB.SCHEMA.]NAME[/VERSION]`` (the scheme may be left out); a
        ConfigError naming ``text`` when it is not one."""
        body = text[len(SCHEME):] if text.startswith(SCHEME) else text
        found = _REFERENCE.fullmatch(body)
        if not found:
            raise ConfigError(f"{text!r}: not a model reference; expected {SCHEME}NAME, "
                              f"{SCHEME}NAME/VERSION or {SCHEME}DB.SCHEMA.NAME/VERSION")
        database, schema, name, version = found.groups()
        if version is not None and version.lower() == DEFAULT:
            version = None
        return cls(name, version, database, schema)

    @property
    def qualified(self) -> str:
        """``DB.SCHEMA.NAME``, or ``NAME`` when the session's database and schema are meant."""
        return ".".join(p for p in (self.database, self.schema, self.name) if p)

    def __str__(self) -> str:
        return f"{SCHEME}{self.qualified}/{self.version or DEFAULT}"


def check_version_name(version: str) -> str:
    """``version`` if it can name a new version (an identifier other than ``default``)."""
    if not re.fullmatch(_NAME, version) or version.lower() == DEFAULT:
        raise ConfigError(f"version {version!r}: give a name of letters, digits and _ "
                          f"(not starting with a digit), other than '{DEFAULT}'")
    return version


def registration_ref(model: str, version: str | None = None) -> ModelRef:
    """The model a new version goes to: ``[DB.SCHEMA.]NAME`` or ``[DB.SCHEMA.]NAME/VERSION``
    (the ``--register`` and ``--model`` forms), its version replaced by ``version`` when
    given; no version lets the registry name one."""
    name, _, named = model.removeprefix(SCHEME).partition("/")
    named = version if version is not None else named or None
    return replace(ModelRef.parse(name),
                   version=None if named is None else check_version_name(named))


def is_registry_reference(text: str) -> bool:
    """Whether ``text`` names a registered model (``snowflake://...``) rather than a file."""
    return text.startswith(SCHEME)


def require_ml(feature: str) -> None:
    """The one-line MissingExtra unless ``snowflake-ml-python`` is installed."""
    require("snowflake-ml", feature)


def open_registry(session: Session, database: str | None = None,
                  schema: str | None = None) -> Registry:
    """The registry of ``database.schema`` (default: the session's current ones).

    The one place fissure builds a ``Registry``.
    """
    require_ml("the Snowflake Model Registry")
    from snowflake.ml.registry import Registry

    where = ".".join(p for p in (database, schema) if p) or "the session's schema"
    try:
        return Registry(session, database_name=database, schema_name=schema)
    except Exception as exc:  # the library raises its own and the connector's types
        raise ConfigError(f"model registry in {where}: cannot open it ({reason(exc)})") from None


def model_version(session: Session, name: str, version: str | None = None, *,
                  database: str | None = None, schema: str | None = None) -> ModelVersion:
    """The ``ModelVersion`` of model ``name``: ``version``, or its default version when None
    (or ``default``). A CheckpointError naming the model when either is not there."""
    ref = ModelRef(name, None if version and version.lower() == DEFAULT else version,
                   database, schema)
    registry = open_registry(session, database, schema)
    try:
        model = registry.get_model(name)
    except Exception as exc:
        raise CheckpointError(f"{ref}: no model {ref.qualified} in the registry "
                              f"({reason(exc)})") from None
    try:
        return model.default if ref.version is None else model.version(ref.version)
    except Exception as exc:
        raise CheckpointError(f"{ref}: no such version of {ref.qualified} "
                              f"({reason(exc)})") from None


def resolve(session: Session, reference: str | ModelRef) -> ModelVersion:
    """The ``ModelVersion`` a ``snowflake://`` reference names."""
    ref = reference if isinstance(reference, ModelRef) else ModelRef.parse(reference)
    return model_version(session, ref.name, ref.version, database=ref.database,
                         schema=ref.schema)


def read_checkpoint(session: Session, reference: str | ModelRef) -> Checkpoint:
    """The fissure checkpoint of a registered version: its files downloaded
    (``ModelVersion.export``) into a private temporary folder, the checkpoint artifact
    loaded, the folder removed. Its ``origin`` is the reference."""
    ref = reference if isinstance(reference, ModelRef) else ModelRef.parse(reference)
    version = resolve(session, ref)
    label = f"{SCHEME}{ref.qualified}/{ref.version or getattr(version, 'version_name', DEFAULT)}"
    with tempfile.TemporaryDirectory(prefix="fissure-registry-") as tmp:
        try:
            version.export(tmp)
        except Exception as exc:
            raise CheckpointError(f"{label}: cannot download its files ({reason(exc)})") from None
        found = sorted(Path(tmp).rglob(ARTIFACT_FILE))
        if not found:
            raise CheckpointError(f"{label}: not a fissure model (no {ARTIFACT_FILE} among "
                                  "its files)")
        try:
            ckpt = load_checkpoint(found[0], map_location="cpu")
        except CheckpointError as exc:  # name the version, not our temporary copy
            raise CheckpointError(str(exc).replace(str(found[0]), label)) from None
    return replace(ckpt, origin=label)


def _number(value: Any) -> float | int | None:
    """A JSON-safe number: None for NaN, infinities and anything not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def evaluation_metrics(document: dict[str, Any]) -> dict[str, Any]:
    """``<split>_iou``, ``_f1``, ``_precision``, ``_recall`` (dataset level, tuned
    threshold), ``_f1_tolerant``, ``_ods_f1``, ``_image_fpr`` and ``_images`` of one
    ``metrics.json``; a figure the document leaves undefined is None."""
    split = str(document.get("split") or "test")
    metrics: dict[str, Any] = {f"{split}_images": _number(document.get("n_images"))}
    for (section, figure, column), suffix in _EVAL_FIGURES.items():
        value = ((document.get(section) or {}).get(figure) or {}).get(column)
        metrics[f"{split}_{suffix}"] = _number(value)
    return metrics


def read_evaluations(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The ``metrics.json`` documents at ``paths``; a DataError naming a bad one."""
    documents = []
    for path in paths:
        try:
            document = json.loads(Path(path).read_text("utf-8"))
        except OSError as exc:
            raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not JSON ({exc.msg}, line {exc.lineno})") from None
        if not isinstance(document, dict) or "pixel_micro" not in document:
            raise DataError(f"{path}: not a fissure metrics.json (no pixel_micro)")
        documents.append(document)
    return documents


def evaluations_beside(checkpoint: str | Path) -> list[dict[str, Any]]:
    """The ``metrics.json`` in the folder of a local ``checkpoint`` (a run folder that was
    evaluated into), as a one-document list; empty when there is none."""
    beside = Path(checkpoint).parent / "metrics.json"
    return read_evaluations([beside]) if beside.is_file() else []


def version_metrics(ckpt: Checkpoint, evaluations: Sequence[dict[str, Any]] = ()
                    ) -> dict[str, Any]:
    """The metrics a version is logged with: what the checkpoint is (threshold, encoder,
    input policy, epoch, fissure version), its validation figures (``val_*`` of its
    history row) and each evaluation document's (:func:`evaluation_metrics`)."""
    metrics: dict[str, Any] = {
        "threshold": float(ckpt.threshold),
        "encoder": ckpt.encoder,
        "input_mode": ckpt.policy.mode,
        "input_size": int(ckpt.policy.size),
        "amp": bool(ckpt.policy.amp),
        "epoch": int(ckpt.epoch),
        "fissure_version": ckpt.fissure_version,
    }
    metrics.update({key: _number(value) for key, value in sorted(ckpt.metrics.items())
                    if key.startswith("val_")})
    for document in evaluations:
        metrics.update(evaluation_metrics(document))
    return metrics


@dataclass(frozen=True)
class Registration:
    """What to log: the model ``ref`` (its version None: the registry names one), the
    version's ``comment`` (default: a line saying what the checkpoint is) and the
    evaluation documents whose figures become metrics."""

    ref: ModelRef
    comment: str | None = None
    evaluations: tuple[dict[str, Any], ...] = ()


def _comment(ckpt: Checkpoint, source: str) -> str:
    return (f"fissure {ckpt.fissure_version} crack segmentation: {ckpt.encoder} U-Net, epoch "
            f"{ckpt.epoch}, threshold {ckpt.threshold:g}, from {source}")


def log_arguments(ckpt: Checkpoint, registration: Registration, folder: Path,
                  source: str) -> dict[str, Any]:
    """The keyword arguments of ``Registry.log_model`` for ``ckpt``; its artifact is
    written into ``folder``, which must live until the call returns."""
    import fissure

    from .crack_model import load_local, sample_input

    artifact = folder / ARTIFACT_FILE
    replace(ckpt, train_state=None).save(artifact)  # a last.pt's optimiser state stays home
    return {
        "model": load_local(artifact, device="cpu"),
        "model_name": registration.ref.name,
        "version_name": registration.ref.version,
        "comment": registration.comment or _comment(ckpt, source),
        "metrics": version_metrics(ckpt, registration.evaluations),
        "conda_dependencies": list(CONDA_DEPENDENCIES),
        "sample_input_data": sample_input(),
        "code_paths": [str(Path(fissure.__file__).parent)],
    }


def register(session: Session, ckpt: Checkpoint, registration: Registration,
             source: str = "a checkpoint") -> ModelVersion:
    """Log ``ckpt`` as a new version of ``registration.ref``; returns the ``ModelVersion``.

    ``source`` (the file it came from) goes into the default comment.
    """
    require_ml("registering a model")
    ref = registration.ref
    registry = open_registry(session, ref.database, ref.schema)
    with tempfile.TemporaryDirectory(prefix="fissure-register-") as tmp:
        arguments = log_arguments(ckpt, registration, Path(tmp), source)
        with warnings.catch_warnings():
            # Null cells of the sample (no scale: no mm) are meant; the registry warns of each.
            warnings.filterwarnings("ignore", message="Null value detected")
            try:
                return registry.log_model(**arguments)
            except Exception as exc:
                raise ConfigError(f"{ref.qualified}: registering the model failed "
                                  f"({reason(exc)})") from None


def list_versions(session: Session, name: str | None = None) -> list[dict[str, Any]]:
    """Every version of model ``name`` (``[DB.SCHEMA.]NAME``), or of every model in the
    session's schema: ``model``, ``version``, ``default`` (bool), ``comment``, ``metrics``."""
    ref = ModelRef.parse(name) if name else None
    registry = open_registry(session, ref.database if ref else None, ref.schema if ref else None)
    try:
        names = [ref.name] if ref else [str(n) for n in registry.show_models()["name"]]
    except Exception as exc:
        raise ConfigError(f"model registry: cannot list the models ({reason(exc)})") from None
    rows = []
    for model_name in names:
        try:
            model = registry.get_model(model_name)
            default = model.default.version_name
            rows.extend({"model": model_name, "version": version.version_name,
                         "default": version.version_name == default,
                         "comment": version.comment, "metrics": version.show_metrics()}
                        for version in model.versions())
        except Exception as exc:
            raise CheckpointError(f"{SCHEME}{model_name}: cannot list its versions "
                                  f"({reason(exc)})") from None
    return rows
