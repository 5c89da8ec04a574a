"""Files and tables a person reads: training history and curves, evaluation reports.

:mod:`.format` holds the number format and JSON writer both kinds of report share.
"""

from .evaluation import (
    EVAL_FILES,
    classification_report_text,
    metrics_table,
    pick_samples,
    plot_confusion,
    plot_pr_curve,
    plot_samples,
    write_eval_reports,
    write_per_image,
)
from .format import fmt, write_json
from .training import TensorBoardLog, plot_curves, write_history, write_skipped

__all__ = [
    "EVAL_FILES",
    "TensorBoardLog",
    "classification_report_text",
    "fmt",
    "metrics_table",
    "pick_samples",
    "plot_confusion",
    "plot_curves",
    "plot_pr_curve",
    "plot_samples",
    "write_eval_reports",
    "write_history",
    "write_json",
    "write_per_image",
    "write_skipped",
]
