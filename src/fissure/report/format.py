"""How reports write numbers: the terminal number format and the JSON writer."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..writes import replacing


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN and inf become null, tensors and numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "tolist"):
        return _clean(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(data: dict[str, Any], path: str | Path) -> None:
    """Write ``data`` as indented JSON, whole or not at all; undefined numbers (NaN, inf)
    are written as null."""
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(_clean(data), indent=2) + "\n", encoding="utf-8")


def fmt(value: Any, digits: int = 4) -> str:
    """A figure for a terminal table: floats to ``digits`` decimals, None as "undefined"."""
    if value is None:
        return "undefined"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)
