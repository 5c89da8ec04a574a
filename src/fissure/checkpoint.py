"""Self-describing checkpoints: one typed :class:`Checkpoint`, written atomically and read
with ``weights_only=True``.

On disk a checkpoint is a plain dict of tensors and primitives (:data:`FORMAT_VERSION`), so
it loads without unpickling code::

    format, format_version, fissure_version
    model       {arch, encoder, n_classes, decoder_channels (only when not the notebook's)}
    state_dict  the weights, on the CPU
    threshold   the decision threshold (probability > threshold is crack)
    normalization {mean, std}, input {mode, size}
    config      the resolved config; epoch; metrics
    train_state (last.pt only) optimiser, scheduler, scaler, EMA and run state for resume

Every reader goes through :func:`load_checkpoint`, which also accepts the original
notebook's bare ``state_dict`` (resnet34, 256 px, threshold 0.5) and gzip-compressed files.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .config import (
    DEFAULT_THRESHOLD,
    Config,
    ModelConfig,
    check_threshold,
    config_from_dict,
    config_to_dict,
)
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .errors import CheckpointError, FissureError
from .model import ENCODERS, ResNetUNet, build_model, load_weights
from .runtime import InputPolicy, select_device
from .writes import replacing

FORMAT = "fissure-checkpoint"
FORMAT_VERSION = 2
"""2: weights under the model's part names (``encoder.*``, ``decoder.*``, ``head.*``);
version 1 files, with the notebook's flat names (``encoder0.*`` ... ``final.*``), still load."""
NOTEBOOK_SIZE = 256
"""The original notebook resized every image to 256 x 256."""


@dataclass(frozen=True)
class Checkpoint:
    """A trained model and what ``evaluate`` and ``predict`` need to use it.

    ``policy`` says how images are fed to the model (training mode, size, mixed
    precision); ``mean``/``std`` their normalisation; ``threshold`` the decision
    threshold. ``train_state`` is set in ``last.pt`` only. ``origin`` names the file in
    error messages.
    """

    model: ModelConfig
    state_dict: dict[str, torch.Tensor]
    threshold: float
    policy: InputPolicy
    config: Config
    epoch: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    fissure_version: str = __version__
    train_state: dict[str, Any] | None = None
    origin: str = "checkpoint"

    @property
    def encoder(self) -> str:
        """The encoder the weights are for (``resnet34`` ...)."""
        return self.model.encoder

    @classmethod
    def create(
        cls,
        model: torch.nn.Module,
        cfg: Config,
        *,
        epoch: int,
        metrics: dict[str, Any] | None = None,
        threshold: float = DEFAULT_THRESHOLD,
        train_state: dict[str, Any] | None = None,
    ) -> Checkpoint:
        """From a model being trained with ``cfg``; weights are copied to the CPU so that
        any machine can load the file."""
        return cls(
            model=cfg.model,
            state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
            threshold=check_threshold(threshold),
            policy=InputPolicy(cfg.data.mode, cfg.data.size, cfg.train.amp),
            config=cfg,
            epoch=int(epoch),
            metrics=dict(metrics or {}),
            train_state=train_state,
        )

    def build_model(
        self, device: str | torch.device = "cpu", *, channels_last: bool = False
    ) -> ResNetUNet:
        """The model with these weights, in eval mode on ``device`` (``auto`` picks one).

        ``channels_last`` (NHWC) lets cuDNN and oneDNN choose faster convolutions; it is
        the caller's choice because it may change the last bits of a result.
        """
        model = build_model(self.model.encoder, pretrained=False, n_classes=self.model.n_classes,
                            decoder_channels=self.model.decoder_channels)
        load_weights(model, self.state_dict, self.origin)
        model = model.to(select_device(str(device))).eval()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def check_encoder(self, encoder: str) -> None:
        """CheckpointError unless the weights were made for ``encoder``."""
        if encoder != self.model.encoder:
            raise CheckpointError(
                f"{self.origin}: made for encoder {self.model.encoder}, but {encoder} was asked for"
            )

    def to_dict(self) -> dict[str, Any]:
        """The on-disk form (:data:`FORMAT_VERSION`): plain values and CPU tensors."""
        spec: dict[str, Any] = {
            "arch": "ResNetUNet",
            "encoder": self.model.encoder,
            "n_classes": self.model.n_classes,
        }
        if self.model.decoder_channels is not None:
            # Absent means the notebook's widths, which is what every older file holds.
            spec["decoder_channels"] = list(self.model.decoder_channels)
        obj: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "fissure_version": self.fissure_version,
            "model": spec,
            "state_dict": self.state_dict,
            "threshold": float(self.threshold),
            "normalization": {"mean": list(self.mean), "std": list(self.std)},
            "input": {"mode": self.policy.mode, "size": self.policy.size},
            "config": config_to_dict(self.config),
            "epoch": int(self.epoch),
            "metrics": dict(self.metrics),
        }
        if self.train_state is not None:
            obj["train_state"] = self.train_state
        return obj

    def save(self, path: str | Path) -> None:
        """Write atomically to ``path`` (see :func:`save_atomic`)."""
        save_atomic(self.to_dict(), path)


def make_checkpoint(
    model: torch.nn.Module,
    cfg: Config,
    *,
    epoch: int,
    metrics: dict[str, Any] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    train_state: dict[str, Any] | None = None,
) -> Checkpoint:
    """:meth:`Checkpoint.create`, as a function."""
    return Checkpoint.create(
        model, cfg, epoch=epoch, metrics=metrics, threshold=threshold, train_state=train_state
    )


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over it.

    A crash, ``kill -9`` or full disk at any moment leaves either the old file or the new
    one, never a torn mix.
    """
    path = Path(path)
    try:
        with replacing(path, durable=True) as tmp:
            try:
                torch.save(obj, tmp)
            except (OSError, RuntimeError) as exc:
                # Sized before ``replacing`` removes it: the size tells a full disk apart.
                raise CheckpointError(_write_failure(path, exc, _size_or_zero(tmp))) from exc
    except OSError as exc:  # the flush or the rename
        raise CheckpointError(_write_failure(path, exc, 0)) from exc


def _size_or_zero(path: Path) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _write_failure(path: Path, exc: BaseException, written: int) -> str:
    """One line for a failed write. A full disk surfaces from ``torch.save`` as an opaque
    ``RuntimeError`` ("unexpected pos ..."), so the free space decides what to call it."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    mib = 1024 * 1024
    if free is not None and free < written + mib:
        return (
            f"{path}: could not write the checkpoint: the disk is full "
            f"({free / mib:.0f} MiB free after {written / mib:.0f} MiB written); "
            "the previous file, if any, is unchanged"
        )
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"{path}: could not write the checkpoint ({reason}); "
        "the previous file, if any, is unchanged"
    )


def _is_notebook_state_dict(obj: Any) -> bool:
    """A bare ``model.state_dict()``: the notebook's flat names, or today's part names."""
    names = (("encoder0.0.weight", "final.weight"), ("encoder.stem.0.weight", "head.conv.weight"))
    return isinstance(obj, dict) and any(all(n in obj for n in pair) for pair in names)


def _bare_encoder(state: dict[str, Any]) -> str:
    """The encoder a bare state dict was saved from: the notebook's flat names are always
    resnet34; today's part names tell resnet50 by its bottleneck blocks (``conv3``) and
    resnet18 (8 residual blocks) from resnet34 (16) by counting them."""
    if "encoder0.0.weight" in state:
        return "resnet34"
    if any(".conv3." in key for key in state):
        return "resnet50"
    blocks = {".".join(key.split(".")[1:3]) for key in state if key.startswith("encoder.layer")}
    return "resnet18" if len(blocks) <= 8 else "resnet34"


def _from_notebook(state: dict[str, torch.Tensor], origin: str) -> Checkpoint:
    """A bare ``model.state_dict()``, such as the original notebook's ``best_model.pth``:
    its encoder (:func:`_bare_encoder`; the notebook's is resnet34), 256 px, threshold 0.5."""
    encoder = _bare_encoder(state)
    cfg = config_from_dict({"data": {"size": NOTEBOOK_SIZE}, "model": {"encoder": encoder}})
    model = build_model(encoder)
    load_weights(model, state, origin)  # a clear error now, not at first use
    return Checkpoint.create(model, cfg, epoch=0, metrics={"source": "notebook state_dict"})


def _read(path: Path, map_location: str | torch.device) -> Any:
    """The unpickled object in ``path`` (plain or gzip), loaded with ``weights_only=True``."""
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
            return torch.load(io.BytesIO(raw), map_location=map_location, weights_only=True)
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


def _decoder_channels(spec: dict[str, Any], cfg: Config) -> tuple[int, ...] | None:
    """The decoder widths the weights were trained with: the model entry's, else the stored
    config's (both are written), else None, the notebook's widths that older files hold."""
    raw = spec.get("decoder_channels", cfg.model.decoder_channels)
    if raw is None:
        return None
    if not isinstance(raw, (list, tuple)) or len(raw) != 4 or any(
        not isinstance(w, int) or isinstance(w, bool) or w < 1 for w in raw
    ):
        raise FissureError(f"model.decoder_channels: four positive widths, got {raw!r}")
    return tuple(raw)


def checkpoint_from_dict(obj: Any, origin: str = "checkpoint") -> Checkpoint:
    """Validate an unpickled checkpoint (format 1, or a notebook state dict) and type it."""
    if _is_notebook_state_dict(obj):
        return _from_notebook(obj, origin)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{origin}: not a fissure checkpoint")
    if obj.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{origin}: written by a newer fissure "
                              f"({obj.get('fissure_version')}); upgrade to read it")
    spec = obj.get("model") or {}
    if spec.get("encoder") not in ENCODERS:
        raise CheckpointError(f"{origin}: unknown encoder {spec.get('encoder')!r} in checkpoint")
    try:
        return _typed(obj, spec, origin)
    except KeyError as exc:
        raise CheckpointError(f"{origin}: stored values are unusable (no {exc})") from None
    except (FissureError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{origin}: stored values are unusable ({exc})") from None


def _typed(obj: dict[str, Any], spec: dict[str, Any], origin: str) -> Checkpoint:
    """The :class:`Checkpoint` of a format-1 dict; a KeyError, TypeError or ValueError
    (which the caller words) where a stored value is missing or of the wrong kind."""
    cfg = config_from_dict(obj.get("config") or {})
    model_cfg = ModelConfig(encoder=spec["encoder"], n_classes=int(spec.get("n_classes", 1)),
                            decoder_channels=_decoder_channels(spec, cfg))
    if model_cfg.n_classes != 1:
        raise FissureError(f"model.n_classes is {model_cfg.n_classes}, fissure needs 1")
    threshold = check_threshold(obj.get("threshold", DEFAULT_THRESHOLD), "threshold")
    if not isinstance(obj["state_dict"], dict):
        raise TypeError("state_dict is not a mapping of tensors")
    spec_in = obj.get("input") or {}
    norm = obj.get("normalization") or {}
    return Checkpoint(
        model=model_cfg,
        state_dict=obj["state_dict"],
        threshold=threshold,
        policy=InputPolicy(
            str(spec_in.get("mode", "resize")), int(spec_in.get("size", NOTEBOOK_SIZE)),
            cfg.train.amp,
        ),
        config=cfg,
        epoch=int(obj.get("epoch", 0)),
        metrics=dict(obj.get("metrics") or {}),
        mean=tuple(float(v) for v in norm.get("mean") or IMAGENET_MEAN),
        std=tuple(float(v) for v in norm.get("std") or IMAGENET_STD),
        fissure_version=str(obj.get("fissure_version", "unknown")),
        train_state=obj.get("train_state"),
        origin=origin,
    )


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read and validate a checkpoint file (plain or gzip-compressed) without running code."""
    path = Path(path)
    return checkpoint_from_dict(_read(path, map_location), str(path))
