"""Models at work inside Snowflake: ``predict-stage`` and ``train-job``.

:func:`predict_stage` predicts a stage folder with a registered model where the images are
(a stored procedure on the warehouse, or an ML Job on a compute pool; see
:mod:`fissure.snowflake.batch`); :func:`train_job` trains on a compute pool as an ML Job
and brings the run folder back (:mod:`fissure.snowflake.jobs`). Each opens the session it
needs once, as every library call does (:class:`~fissure.snowflake.session.Sessions`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..snowflake.batch import predict_stage as run_predict_stage
from ..snowflake.batch import prepare_request
from ..snowflake.jobs import JobResult, TrainJob, check_train_job
from ..snowflake.jobs import train_job as run_train_job
from ..snowflake.registry import require_ml
from ..snowflake.session import Sessions
from .runs import Log


@dataclass(frozen=True)
class PredictStageOptions:
    """How :func:`predict_stage` runs: ``masks`` (a stage folder for the mask PNGs, or
    None), the model ``version`` (None: the reference's, else the default), a
    ``compute_pool`` (None: the session's warehouse), ``redo`` images already in the table,
    and the images' scale ``px_per_mm`` (fills the ``*_MM*`` columns)."""

    masks: str | None = None
    version: str | None = None
    compute_pool: str | None = None
    redo: bool = False
    px_per_mm: float | None = None


def predict_stage(model: str, folder: str, table: str, options: PredictStageOptions | None = None,
                  *, connection: str | None = None, log: Log = print) -> dict[str, Any]:
    """Predict every image below stage ``folder`` with registered ``model``
    (``[snowflake://][DB.SCHEMA.]NAME[/VERSION]``) inside Snowflake, one row per image
    appended to ``table``; returns the summary (``images``, ``skipped``, ``predicted``,
    ``failed``, ``masks``, ``errors``, ``model``, ``version``, ``table``)."""
    require_ml("predict-stage")
    options = options or PredictStageOptions()
    with Sessions(connection, log=log) as sessions:
        session = sessions.get()
        request = prepare_request(session, model, folder, table, version=options.version,
                                  masks=options.masks, redo=options.redo,
                                  px_per_mm=options.px_per_mm)
        return run_predict_stage(session, request, options.compute_pool, log)


def train_job(request: TrainJob, *, connection: str | None = None,
              log: Log = print) -> JobResult:
    """Train ``request.config`` (with its overrides) as a Snowflake ML Job on
    ``request.compute_pool``, on ``request.instances`` nodes through fissure's DDP path, its
    payload and run under stage folder ``request.stage``; streams the job's log to ``log``
    and pulls the run into ``request.out`` (default ``runs/<job name>``)."""
    require_ml("train-job")
    check_train_job(request)  # a bad config fails before any session is opened
    with Sessions(connection, log=log) as sessions:
        return run_train_job(sessions.get(), request, log)
