"""Modules of ``scripts/bench.py``, one per concept: ``common`` (settings, rows, statistics,
machine, data sets), then one per section: ``step`` (train + util), ``loader``, ``e2e``,
``evaluation`` (eval, and the child-process helpers) and ``prediction`` (predict).
``scripts/bench.py`` stays the entry point: it parses the options, runs the sections, prints the
table and dispatches ``--child`` runs, which it starts by re-running itself."""
