"""Self-describing checkpoints, written atomically and read with ``weights_only=True``.

A checkpoint is a plain dict of tensors and primitives, so it loads without unpickling
code. It carries everything ``evaluate`` and ``predict`` need: model configuration,
weights, decision threshold, input normalisation and size policy, the resolved config,
epoch, metrics and the package version. ``last.pt`` adds the training state for resume.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .config import Config, config_from_dict, config_to_dict
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .errors import CheckpointError, FissureError
from .model import ENCODERS, ResNetUNet, build_model, load_weights

FORMAT = "fissure-checkpoint"
FORMAT_VERSION = 1


def make_checkpoint(
    model: torch.nn.Module,
    cfg: Config,
    *,
    epoch: int,
    metrics: dict[str, Any] | None = None,
    threshold: float = 0.5,
    train_state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the checkpoint dict; tensors are moved to CPU so any machine can load it."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ckpt: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fissure_version": __version__,
        "model": {"arch": "ResNetUNet", "encoder": cfg.model.encoder,
                  "n_classes": cfg.model.n_classes},
        "state_dict": state,
        "threshold": float(threshold),
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "input": {"mode": cfg.data.mode, "size": cfg.data.size},
        "config": config_to_dict(cfg),
        "epoch": int(epoch),
        "metrics": dict(metrics or {}),
    }
    if train_state is not None:
        ckpt["train_state"] = train_state
    return ckpt


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename over it.

    A crash, ``kill -9`` or full disk at any moment leaves either the old file or the new
    one, never a torn mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _is_notebook_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and "encoder0.0.weight" in obj and "final.weight" in obj


def _from_notebook(state: dict[str, torch.Tensor], origin: str) -> dict[str, Any]:
    """Wrap the original notebook's bare ``best_model.pth`` (resnet34, 256 px, threshold 0.5)."""
    cfg = config_from_dict({"data": {"size": 256}, "model": {"encoder": "resnet34"}})
    model = build_model("resnet34")
    load_weights(model, state, origin)
    return make_checkpoint(model, cfg, epoch=0, metrics={"source": "notebook state_dict"})


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint (plain or gzip-compressed) without running any code."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise CheckpointError(f"{path}: corrupt gzip data ({exc})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # protocol notes from the restricted unpickler
            obj = torch.load(io.BytesIO(raw), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch words a blocked class as "... GLOBAL x.y ..."; anything else is just garbage.
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found:
            raise CheckpointError(f"{path}: refused to load, it would import {found.group(1)} "
                                  "(only tensors and plain values are allowed)") from None
        raise CheckpointError(f"{path}: not a readable torch checkpoint") from None
    except Exception as exc:  # torch raises many types for garbage input; none is useful
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({reason})") from None
    if _is_notebook_state_dict(obj):
        return _from_notebook(obj, str(path))
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fissure checkpoint")
    if obj.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer fissure "
                              f"({obj.get('fissure_version')}); upgrade to read it")
    encoder = obj.get("model", {}).get("encoder")
    if encoder not in ENCODERS:
        raise CheckpointError(f"{path}: unknown encoder {encoder!r} in checkpoint")
    return obj


def checkpoint_config(ckpt: dict[str, Any], origin: str = "checkpoint") -> Config:
    try:
        return config_from_dict(ckpt["config"])
    except (KeyError, FissureError) as exc:
        raise CheckpointError(f"{origin}: stored config is unusable ({exc})") from None


def model_from_checkpoint(
    ckpt: dict[str, Any], origin: str = "checkpoint", encoder: str | None = None
) -> ResNetUNet:
    """Rebuild the model; ``encoder``, when given, must match the one the weights are for."""
    spec = ckpt["model"]
    if encoder is not None and encoder != spec["encoder"]:
        raise CheckpointError(f"{origin}: made for encoder {spec['encoder']}, "
                              f"but {encoder} was asked for")
    model = build_model(spec["encoder"], pretrained=False, n_classes=spec.get("n_classes", 1))
    load_weights(model, ckpt["state_dict"], origin)
    return model
