"""Snowflake: the only package that imports the ``snowflake`` library.

* :mod:`~fissure.snowflake.session`: opening or finding a Snowpark session, and where this
  process runs. Every other function here takes the session as a parameter; none is kept
  in a module global.
* :mod:`~fissure.snowflake.files`: stage names, retried transfers, single-file GET and PUT,
  manifest tables.
* :mod:`~fissure.snowflake.cache`: the local copy of a stage's files that training reads.
* :mod:`~fissure.snowflake.source`: the manifest read into samples, and
  :class:`~fissure.snowflake.source.StageSource`, a :class:`fissure.data.PairSource`.
* :mod:`~fissure.snowflake.upload`: a local dataset put into a stage, with its manifest.
* :mod:`~fissure.snowflake.runs`: runs pushed and files pulled, stage checkpoints, stage
  inputs and outputs of prediction.

Snowpark is imported inside functions only: it is heavy, and only stage users need it.
Nothing is imported here, so ``import fissure.snowflake.runs`` loads what it needs and no more.
"""
