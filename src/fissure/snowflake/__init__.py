"""Snowflake: the only package that imports the ``snowflake`` library.

* :mod:`~fissure.snowflake.environment`: where this process runs (the warehouse sandbox,
  the Container Runtime, outside) and the defaults that follow: the stage reader, loader
  workers, writable folders.
* :mod:`~fissure.snowflake.session`: which session an operation uses, opened with
  keep-alive and reopened when closed. Every other function here takes the session as a
  parameter; none is kept in a module global.
* :mod:`~fissure.snowflake.files`: stage names, what an error means (missing file,
  transient, session gone), retries, manifest tables.
* :mod:`~fissure.snowflake.transfer`: GET and PUT, one file or a whole prefix per query,
  and LIST.
* :mod:`~fissure.snowflake.cache`: the local copy of a stage's files that training reads.
* :mod:`~fissure.snowflake.source`: the manifest read into samples, and
  :class:`~fissure.snowflake.source.StageSource`, a :class:`fissure.data.PairSource`.
* :mod:`~fissure.snowflake.upload`: a local dataset put into a stage, with its manifest.
* :mod:`~fissure.snowflake.runs`: runs pushed and files pulled, stage checkpoints, stage
  inputs and outputs of prediction.
* :mod:`~fissure.snowflake.registry`: checkpoints as Model Registry versions, listed with
  their metrics, and ``snowflake://NAME/VERSION`` references resolved to checkpoints.
* :mod:`~fissure.snowflake.crack_model`: the registry's ``CustomModel``: fissure's predictor
  over one row per image (bytes or a stage path), masks and measurements out.
* :mod:`~fissure.snowflake.batch`: predict-stage, a registered model over a stage folder
  inside Snowflake (a stored procedure on the warehouse, or an ML Job on a compute pool).
* :mod:`~fissure.snowflake.jobs`: fissure as a Snowflake ML Job: the wheel payload,
  multi-node torchrun, the streamed log, the run pulled back.

Snowpark and snowflake-ml are imported inside functions only: they are heavy, and only stage
users need them.
Nothing is imported here, so ``import fissure.snowflake.runs`` loads what it needs and no more.
"""
