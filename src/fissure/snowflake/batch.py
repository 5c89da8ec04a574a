"""``fissure snowflake predict-stage``: a registered model over a stage folder, inside Snowflake.

The images never travel to the client. The work is one function, :func:`run_batch`, which
runs inside Snowflake with the session it is given:

* on a warehouse, as a temporary caller's-rights **stored procedure** (:func:`call_procedure`:
  ``session.sproc.register`` with fissure's code as an import), which reads each image with
  ``SnowflakeFile`` (the native stage reader there) and writes each mask with
  ``session.file.put_stream``, something a model's UDF cannot do;
* on a compute pool (``compute_pool``), as an ML Job (:mod:`~fissure.snowflake.jobs`) that
  runs ``python -m fissure.snowflake.batch REQUEST`` with the job's own session.

Either way it lists the folder's images (``LIST``), skips those the results table already
holds for this model version (unless ``redo``, which first deletes them), loads the version
(:func:`fissure.snowflake.registry.read_checkpoint`) as the registry's own
:class:`~fissure.snowflake.crack_model.CrackModel`, predicts the images in chunks, writes
``<stem>.png`` masks below ``masks`` (the folder's layout kept), and appends one row per image
to the table (:data:`SCHEMA`). Images that cannot be read or decoded get no row (a rerun tries
them again); the summary names them.

Snowpark's emulator has no ``LIST``; its stage is a local folder, which :func:`image_paths`
walks instead, so the whole procedure runs there for real in the tests.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..data import is_stage_path
from ..data.image import is_image_name, without_gz
from ..errors import ConfigError, DataError, FissureError
from .environment import Log, in_warehouse_sandbox
from .files import canonical_stage, is_missing_error, reason, validate_stage_name
from .jobs import JobSpec, job_name, read_log, run_job
from .runs import check_push_target
from .session import is_local_testing
from .transfer import fetch_file, list_stage, put_bytes

MEASURES = ("AREA_PX", "AREA_PCT", "N_SEGMENTS", "LENGTH_PX", "MAX_WIDTH_PX", "MEAN_WIDTH_PX",
            "AREA_MM2", "LENGTH_MM", "MAX_WIDTH_MM", "MEAN_WIDTH_MM")
"""The measurement columns, as :class:`~fissure.snowflake.crack_model.CrackModel` names them."""
_LONGS = {"WIDTH", "HEIGHT", "AREA_PX", "N_SEGMENTS"}
COLUMNS = ("PATH", "WIDTH", "HEIGHT", *MEASURES, "THRESHOLD", "MASK_PATH", "MODEL_NAME",
           "MODEL_VERSION", "PREDICTED_AT")
"""The results table, one row per image; ``PREDICTED_AT`` is UTC, ``MASK_PATH`` null
without ``--masks``, the ``*_MM*`` columns null without a scale."""
PACKAGES = ("snowflake-snowpark-python", "snowflake-ml-python", "pytorch", "torchvision",
            "pillow", "numpy", "pandas", "scipy", "scikit-image", "pyyaml", "tqdm")
"""What the procedure imports, from Snowflake's Anaconda channel."""
SUMMARY_TAG = "FISSURE_BATCH_SUMMARY "
"""The log line prefix of a job's summary, which the client reads back."""
_IDENT = re.compile(r'^(?:[A-Za-z_][A-Za-z0-9_$]*|"[^"]+")$')


@dataclass(frozen=True)
class BatchRequest:
    """One predict-stage run: the model version (concrete, resolved by the client), the
    stage ``folder`` (ends in ``/``), the results ``table``, the ``masks`` folder or None,
    ``redo``, the image scale and how many images go through the model per call."""

    model: str
    version: str
    folder: str
    table: str
    masks: str | None = None
    redo: bool = False
    px_per_mm: float | None = None
    database: str | None = None
    schema: str | None = None
    chunk: int = 16
    flush_rows: int = 256

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> BatchRequest:
        return cls(**json.loads(text))


def _identifier(text: str, what: str) -> str:
    parts = text.strip().split(".")
    if not text.strip() or len(parts) > 3 or not all(_IDENT.match(p) for p in parts):
        raise ConfigError(f"{what}: {text!r} is not a valid Snowflake name "
                          "(NAME or DB.SCHEMA.NAME)")
    return text.strip()


def check_request(request: BatchRequest) -> BatchRequest:
    """``request`` with its folders spelled with a final ``/``; a one-line ConfigError or
    DataError for a bad table name, folder or masks folder."""
    if not is_stage_path(request.folder):
        raise DataError(f"{request.folder!r}: not a stage folder (e.g. @DB.SCHEMA.STAGE/photos/)")
    folder = request.folder.rstrip("/") + "/"
    if "/" in folder.rstrip("/"):
        validate_stage_name(folder.rstrip("/"))
    masks = check_push_target(request.masks).rstrip("/") + "/" if request.masks else None
    if masks and masks.casefold().startswith(folder.casefold()):  # LIST would find them
        raise ConfigError(f"{masks}: the masks folder must be outside the photos, {folder}")
    if request.px_per_mm is not None and not request.px_per_mm > 0:
        raise ConfigError(f"px_per_mm: must be positive, got {request.px_per_mm}")
    return BatchRequest(**{**asdict(request), "folder": folder, "masks": masks,
                           "table": _identifier(request.table, "--table")})


def image_paths(session: Any, folder: str) -> list[str]:
    """The image files below stage ``folder``, sorted: ``LIST`` on an account; in
    Snowpark's emulator, which has no ``LIST``, a walk of the folder that holds its stage."""
    if not is_local_testing(session):
        return [path for path, _ in list_stage(session, folder) if is_image_name(path)]
    from snowflake.snowpark.mock._stage_registry import extract_stage_name_and_prefix

    stage, below = extract_stage_name_and_prefix(folder)
    root = Path(session._conn.stage_registry[stage]._working_directory)
    top = root / below
    found = [f"{folder}{Path(dirpath, name).relative_to(top).as_posix()}"
             for dirpath, _, names in os.walk(top) for name in names]
    return sorted(path for path in found if is_image_name(path))


def read_image(session: Any, path: str) -> bytes:
    """The bytes of one stage file: ``SnowflakeFile`` where it is the native reader (the
    warehouse, and the emulator), else a GET into a private folder (the Container Runtime,
    where the client ``SnowflakeFile`` mixes up files of the same base name)."""
    if in_warehouse_sandbox() or is_local_testing(session):
        from snowflake.snowpark.files import SnowflakeFile

        with SnowflakeFile.open(path, "rb", require_scoped_url=False) as handle:
            return handle.read()
    with tempfile.TemporaryDirectory(prefix="fissure-batch-") as tmp:
        return fetch_file(session, path, Path(tmp)).read_bytes()


def mask_paths(folder: str, masks: str, paths: list[str]) -> dict[str, str]:
    """Image path -> mask path: ``masks`` + the image's path below ``folder`` with its
    suffix (and ``.gz``) replaced by ``.png``; images whose masks would share a name keep
    their whole file name (``a.jpg.png``), and its ``.gz`` too where that is not enough
    (``a.jpg.gz.png`` beside ``a.jpg.png``)."""

    def stem(path: str) -> str:
        rel = PurePosixPath(path[len(folder):])
        return str(rel.with_name(PurePosixPath(without_gz(rel.name)).stem + ".png"))

    def whole(path: str, keep_gz: bool) -> str:
        full = PurePosixPath(path[len(folder):])
        return str(full.with_name((full.name if keep_gz else without_gz(full.name)) + ".png"))

    counts = Counter(stem(p).casefold() for p in paths)
    # a.jpg and a.jpg.gz would still share a.jpg.png: those keep the .gz as well
    second = Counter(whole(p, False).casefold() for p in paths if counts[stem(p).casefold()] > 1)
    out = {}
    for path in paths:
        rel = stem(path)
        if counts[rel.casefold()] > 1:
            rel = whole(path, second[whole(path, False).casefold()] > 1)
        out[path] = masks + rel
    return out


def _schema() -> Any:
    from snowflake.snowpark.types import (
        DoubleType,
        LongType,
        StringType,
        StructField,
        StructType,
        TimestampType,
    )

    def kind(column: str) -> Any:
        if column in _LONGS:
            return LongType()
        if column in ("PATH", "MASK_PATH", "MODEL_NAME", "MODEL_VERSION"):
            return StringType()
        return TimestampType() if column == "PREDICTED_AT" else DoubleType()

    return StructType([StructField(c, kind(c)) for c in COLUMNS])


def _mine(request: BatchRequest) -> Any:
    """The rows of this model version under the request's folder, as a Snowpark condition."""
    from snowflake.snowpark.functions import col, lit

    return ((col("MODEL_NAME") == lit(request.model))
            & (col("MODEL_VERSION") == lit(request.version))
            & col("PATH").startswith(lit(request.folder)))


def done_paths(session: Any, request: BatchRequest) -> set[str]:
    """The images the table already holds for this model version (none if no table); with
    ``redo`` those rows are deleted instead, and none count as done."""
    try:
        table = session.table(request.table)
        if request.redo:
            table.delete(_mine(request))
            return set()
        return {row[0] for row in table.filter(_mine(request)).select("PATH").collect()}
    except Exception as exc:
        if is_missing_error(exc):
            return set()
        raise DataError(f"{request.table}: cannot read ({reason(exc)})") from None


def load_model(session: Any, request: BatchRequest) -> Any:
    """The registry's :class:`~fissure.snowflake.crack_model.CrackModel` of the request's
    version: its checkpoint downloaded from the registry, loaded for this machine."""
    from .crack_model import load_local
    from .registry import ModelRef, read_checkpoint

    ref = ModelRef(request.model, request.version, request.database, request.schema)
    ckpt = read_checkpoint(session, ref)
    # /tmp is writable in Snowflake; the model is loaded when built, so the copy can go.
    with tempfile.TemporaryDirectory(prefix="fissure-batch-model-") as folder:
        ckpt.save(Path(folder) / "checkpoint.pt")
        return load_local(Path(folder) / "checkpoint.pt")


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), max(1, size)):
        yield items[start:start + max(1, size)]


def _cell(value: Any) -> Any:
    """A pandas cell as a table value: None for NaN, Python numbers for numpy ones."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def _predict_chunk(session: Any, model: Any, request: BatchRequest, paths: list[str],
                   targets: dict[str, str], summary: dict[str, Any]) -> list[list[Any]]:
    """Predict ``paths``, write their masks; returns their table rows (failures: none)."""
    from .crack_model import input_frame

    images: list[bytes] = []
    unread: dict[str, str] = {}
    for path in paths:
        try:
            images.append(read_image(session, path))
        except Exception as exc:  # one unreadable photo must not stop thousands
            images.append(b"")  # an empty image: the model fails this row alone
            unread[path] = str(exc) if isinstance(exc, FissureError) else f"{path}: {reason(exc)}"
    out = model.predict(input_frame(images, paths, request.px_per_mm))
    rows = []
    for path, (_, result) in zip(paths, out.iterrows(), strict=True):
        if result["ERROR"]:
            summary["failed"] += 1
            summary["errors"].append(unread.get(path) or f"{path}: {result['ERROR']}")
            continue
        mask = targets.get(path)
        if mask is not None:
            put_bytes(session, mask, bytes(result["MASK_PNG"]))
            summary["masks"] += 1
        rows.append([path, *(_cell(result[c]) for c in ("WIDTH", "HEIGHT", *MEASURES)),
                     float(result["THRESHOLD"]), mask, request.model, request.version])
    return rows


def _append(session: Any, table: str, rows: list[list[Any]]) -> None:
    if rows:
        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        frame = session.create_dataframe([[*row, now] for row in rows], schema=_schema())
        frame.write.save_as_table(table, mode="append")


def run_batch(session: Any, request_json: str) -> str:
    """Predict a stage folder inside Snowflake (see the module docstring); the handler of
    the stored procedure and of the job. Returns the summary as JSON: ``images`` listed,
    ``skipped``, ``predicted``, ``failed``, ``masks`` written, the first ``errors``."""
    request = check_request(BatchRequest.from_json(request_json))
    paths = image_paths(session, request.folder)
    done = done_paths(session, request)
    todo = [p for p in paths if p not in done]
    summary: dict[str, Any] = {"images": len(paths), "skipped": len(paths) - len(todo),
                               "predicted": 0, "failed": 0, "masks": 0, "errors": [],
                               "table": request.table, "model": request.model,
                               "version": request.version}
    if todo:
        model = load_model(session, request)
        targets = mask_paths(request.folder, request.masks, todo) if request.masks else {}
        pending: list[list[Any]] = []
        for paths_chunk in _chunks(todo, request.chunk):
            rows = _predict_chunk(session, model, request, paths_chunk, targets, summary)
            summary["predicted"] += len(rows)
            pending += rows
            if len(pending) >= request.flush_rows:  # rows so far survive a later failure
                _append(session, request.table, pending)
                pending = []
        _append(session, request.table, pending)
    summary["errors"] = summary["errors"][:20]
    return json.dumps(summary)


def procedure(session, request_json):  # typed where it is registered, see below
    """:func:`run_batch` as the stored procedure's handler. Snowpark reads a handler's type
    hints, which must name its own ``Session`` class; this one has none, and the procedure's
    types are given where it is registered."""
    return run_batch(session, request_json)


def call_procedure(session: Any, request: BatchRequest) -> dict[str, Any]:
    """:func:`run_batch` as a temporary caller's-rights stored procedure on the session's
    warehouse, fissure's package uploaded as its import; returns the summary."""
    from snowflake.snowpark.types import StringType

    import fissure

    try:
        registered = session.sproc.register(
            procedure, return_type=StringType(), input_types=[StringType()],
            is_permanent=False, replace=True, packages=list(PACKAGES), execute_as="caller",
            imports=[(str(Path(fissure.__file__).parent), "fissure")])
    except Exception as exc:  # packages the warehouse cannot resolve, privileges
        raise FissureError(f"{request.folder}: cannot register the prediction procedure "
                           f"({reason(exc)})") from None
    try:
        return json.loads(registered(request.to_json()))
    except FissureError:
        raise
    except Exception as exc:  # a SQL error, carrying the procedure's own message
        raise FissureError(f"{request.folder}: the prediction procedure failed "
                           f"({reason(exc)})") from None


def prepare_request(session: Any, model: str, folder: str, table: str, *,
                    version: str | None = None, masks: str | None = None, redo: bool = False,
                    px_per_mm: float | None = None) -> BatchRequest:
    """The checked request of a run, its version resolved now (``version``, else the one
    ``model``, a ``[snowflake://][DB.SCHEMA.]NAME[/VERSION]``, names, else the default), so
    that the rows and the skipping name one concrete version."""
    from .registry import ModelRef, model_version

    ref = ModelRef.parse(model)
    if not is_local_testing(session):  # the table's PATH must not depend on the spelling
        folder, masks = canonical_stage(folder), masks and canonical_stage(masks)
    request = check_request(BatchRequest(ref.name, "", folder, table, masks, redo, px_per_mm,
                                         ref.database, ref.schema))
    found = model_version(session, ref.name, version or ref.version, database=ref.database,
                          schema=ref.schema)
    return BatchRequest(**{**asdict(request), "version": str(found.version_name)})


def predict_stage(session: Any, request: BatchRequest, compute_pool: str | None = None,
                  log: Log = print) -> dict[str, Any]:
    """Run ``request`` inside Snowflake: on the session's warehouse as a stored procedure,
    or as an ML Job on ``compute_pool``; returns the summary."""
    where = f"compute pool {compute_pool}" if compute_pool else "the session's warehouse"
    log(f"predicting {request.folder} with {request.model} version {request.version} "
        f"inside Snowflake, on {where}")
    if compute_pool:
        return run_on_pool(session, request, compute_pool, log)
    return call_procedure(session, request)


def run_on_pool(session: Any, request: BatchRequest, compute_pool: str, log: Log = print,
                wheel: Path | None = None) -> dict[str, Any]:
    """:func:`run_batch` as an ML Job on ``compute_pool`` (a GPU there is used); its log is
    streamed to ``log`` and its summary read back from it."""
    with tempfile.TemporaryDirectory(prefix="fissure-batch-req-") as tmp:
        spec_file = Path(tmp) / "request.json"
        spec_file.write_text(request.to_json(), "utf-8")
        spec = JobSpec(("fissure.snowflake.batch", "{payload}/request.json"),
                       {"request.json": spec_file})
        payload = request.folder.split("/", 1)[0] + "/fissure_jobs/"  # the images' stage
        job = run_job(session, spec, compute_pool, payload, job_name("predict"), wheel=wheel,
                      log=log)
    for line in reversed(read_log(job)):
        if SUMMARY_TAG in line:
            return json.loads(line.split(SUMMARY_TAG, 1)[1])
    raise FissureError(f"job {job.id}: ended without a summary line in its log")


def main(argv: list[str]) -> int:
    """``python -m fissure.snowflake.batch REQUEST.json``: the job's side of :func:`run_on_pool`."""
    from .session import open_session

    request = Path(argv[0]).read_text("utf-8")
    summary = run_batch(open_session(), request)
    print(SUMMARY_TAG + summary, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
