"""Evaluation of a checkpoint on a split: one streaming pass, then the metrics document.

:mod:`.streaming` runs the model once and keeps only counts (:class:`EvalResult`);
:mod:`.document` turns those counts into ``metrics.json``, where every figure names its
definition. The files a person reads are written by :mod:`fissure.report.evaluation`.
"""

from ..config import DEFAULT_THRESHOLD  # importable from here, as before the layout change
from .document import metrics_document
from .options import EvaluateOptions
from .streaming import (
    EvalResult,
    SampleView,
    ToleranceMeter,
    evaluate_dataset,
    reload_samples,
)

__all__ = [
    "EvaluateOptions",
    "DEFAULT_THRESHOLD",
    "EvalResult",
    "SampleView",
    "ToleranceMeter",
    "evaluate_dataset",
    "metrics_document",
    "reload_samples",
]
