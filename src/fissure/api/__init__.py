"""The library API: what every ``fissure`` command calls, for notebooks and scripts alike.

::

    import fissure
    cfg = fissure.load_config("configs/default.yaml", ["train.epochs=2"])
    run = fissure.train(cfg, "runs/demo")
    metrics = fissure.evaluate(run.best, split="test", out="runs/demo/eval")
    fissure.predict(run.best, ["photos/"], "runs/demo/pred")

Checkpoints, inputs and outputs may be Snowflake stage paths (``@DB.SCHEMA.STAGE/...``);
checkpoints may also be Model Registry versions (``snowflake://NAME/VERSION``, see
:func:`register_checkpoint` and :func:`list_models`). Inside Snowflake, :func:`predict_stage`
predicts a stage folder into a table and :func:`train_job` trains on a compute pool.
A call opens the session it needs once and passes it down (see
:mod:`fissure.snowflake.session`). Inside Snowflake (a notebook, a stored procedure, the
Container Runtime) the active session is used, and a connection name is ignored with one
line saying so. Outside, ``connection`` (a ``connections.toml`` name, what ``--connection``
gives) comes first, then the name a config or checkpoint holds
(``data.snowflake.connection``), then the process's active session, then the connector's
default connection. Inside Snowflake, run folders and outputs whose folder cannot be written
go under ``/tmp``, and loader workers are 0 in the warehouse sandbox.
"""

from ..evaluation import EvaluateOptions
from ..prediction import OutputOptions, PredictOptions
from .deploy import PredictStageOptions, TrainJob, predict_stage, train_job
from .info import data_stats, environment
from .models import data_config_for, demo, evaluate, load_model, predict
from .runs import RUN_FILES, TrainResult, build_source, prepare_run_dir, resume, train
from .stage import list_models, pull, push_run, register_checkpoint, upload_data

__all__ = [
    "EvaluateOptions",
    "OutputOptions",
    "PredictOptions",
    "PredictStageOptions",
    "RUN_FILES",
    "TrainJob",
    "TrainResult",
    "build_source",
    "data_config_for",
    "data_stats",
    "demo",
    "environment",
    "evaluate",
    "list_models",
    "load_model",
    "predict",
    "predict_stage",
    "prepare_run_dir",
    "pull",
    "push_run",
    "register_checkpoint",
    "resume",
    "train",
    "train_job",
    "upload_data",
]
