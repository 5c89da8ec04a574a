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

Snowpark is imported inside functions only: it is heavy, and only stage users need it.
Nothing is imported here, so ``import fissure.snowflake.runs`` loads what it needs and no more.
"""
