"""Files and tables a person reads: training history and curves, evaluation reports."""

from .training import (
    fmt,
    metrics_table,
    plot_curves,
    write_history,
    write_json,
    write_skipped,
)

__all__ = ["fmt", "metrics_table", "plot_curves", "write_history", "write_json", "write_skipped"]
