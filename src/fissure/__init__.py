"""fissure: pixel-wise crack segmentation for concrete inspection photos.

The notebook API mirrors the CLI::

    import fissure
    cfg = fissure.load_config("configs/default.yaml", ["train.epochs=2"])
    run = fissure.train(cfg, "runs/demo")
    metrics = fissure.evaluate(run.best, split="test", out="runs/demo/eval")
    fissure.predict(run.best, ["photos/"], "runs/demo/pred")
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# name -> module; imported on first use so `import fissure` stays light.
_EXPORTS = {
    "Config": "config",
    "load_config": "config",
    "build_model": "model",
    "ResNetUNet": "model",
    "load_checkpoint": "checkpoint",
    "build_source": "api",
    "Checkpoint": "checkpoint",
    "train": "api",
    "resume": "api",
    "evaluate": "api",
    "predict": "api",
    "load_model": "api",
    "demo": "api",
    "EvaluateOptions": "api",
    "PredictOptions": "prediction",
    "OutputOptions": "prediction",
    "predict_image": "prediction",
    "Prediction": "prediction",
    "Predictor": "prediction",
    "export_model": "prediction.export",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    if not name.startswith("_"):
        # `import fissure` then `fissure.api.…`, as `import os` then `os.path`.
        try:
            return import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module 'fissure' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = ["__version__", *_EXPORTS]
