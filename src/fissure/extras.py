"""Optional features, the packages they need, and the ``pip`` extra that brings them.

A feature checks for its packages before it starts, so a missing one is a single line
naming the extra (``pip install 'fissure[export]'``), not a traceback from deep inside the
library that happened to import it. Presence is looked up without importing anything.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

from .errors import MissingExtra

EXTRAS: dict[str, tuple[str, ...]] = {
    "export": ("onnx", "onnxruntime", "onnxscript"),
    "tensorboard": ("tensorboard",),
    "bench": ("segmentation_models_pytorch", "psutil"),
    "app": ("streamlit",),
    "snowflake-ml": ("snowflake.ml",),
}
"""Each extra of ``pyproject.toml`` and the modules it installs."""


def is_installed(module: str) -> bool:
    """Whether ``module`` can be imported, found without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a half-removed module
        return False


def missing(extra: str, modules: Sequence[str] | None = None) -> list[str]:
    """The modules of ``extra`` (or just ``modules`` of it) that are not installed."""
    return [m for m in (modules or EXTRAS[extra]) if not is_installed(m)]


def require(extra: str, feature: str, modules: Sequence[str] | None = None) -> None:
    """Raise :class:`MissingExtra` naming ``extra`` unless ``feature``'s modules are installed.

    ``modules`` narrows the check to what ``feature`` really imports (ONNX export needs onnx
    and onnxscript; onnxruntime only verifies the file).
    """
    absent = missing(extra, modules)
    if absent:
        raise MissingExtra(f"{feature} needs {', '.join(absent)}, which is not installed: "
                           f"pip install 'fissure[{extra}]'")


def installed_extras() -> dict[str, bool]:
    """``{extra: every module of it installed}`` for each optional feature."""
    return {extra: not missing(extra) for extra in EXTRAS}
