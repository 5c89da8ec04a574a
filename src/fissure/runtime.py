"""How a model runs: on which device, in which precision, and at which input size.

Shapes: ``images`` (N, 3, H, W) normalised float; probabilities (N, 1, H, W) in [0, 1]
at the input's resolution. A model trained on whole images shrunk to ``size`` (``resize``
mode) sees its input shrunk the same way and its logits are upsampled back; a model
trained on native-resolution crops (``crop`` mode) sees the image as it is.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .model import ResNetUNet


@dataclass(frozen=True)
class InputPolicy:
    """How images are fed to a model: its training mode and size, and whether it runs in
    mixed precision (a checkpoint's :attr:`~fissure.checkpoint.Checkpoint.policy`)."""

    mode: str = "resize"
    size: int = 256
    amp: bool = True  # mixed precision where the hardware has it (see autocast_for)


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; any other name is used as given."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX). Elsewhere torch emulates
    bf16, which is slower than fp32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def autocast_dtype(device: torch.device, enabled: bool = True) -> torch.dtype:
    """The dtype the model's convolutions run in under :func:`autocast_for`: bf16 (else fp16)
    on CUDA, bf16 on CPUs with native bf16, where a training step measured 2x faster than
    fp32 (BENCHMARKS.md §1); fp32 elsewhere and when ``enabled`` is false."""
    if enabled and device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if enabled and device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return torch.float32


def autocast_for(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """Mixed precision in :func:`autocast_dtype`, or nothing where that is fp32."""
    dtype = autocast_dtype(device, enabled)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def forward_logits(
    model: ResNetUNet, images: torch.Tensor, policy: InputPolicy, amp: bool | None = None
) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) float32 logits at the input's resolution; ``amp``
    overrides ``policy.amp``."""
    height, width = images.shape[-2:]
    resize = policy.mode == "resize" and (height, width) != (policy.size, policy.size)
    x = images
    if resize:
        x = F.interpolate(x, size=(policy.size, policy.size), mode="bilinear",
                          align_corners=False, antialias=True)
    if next(model.parameters()).is_contiguous(memory_format=torch.channels_last):
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast_for(images.device, policy.amp if amp is None else amp):
        logits = model(x)
    logits = logits.float()
    if resize:
        logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
    return logits


@torch.inference_mode()
def predict_probs(
    model: ResNetUNet, images: torch.Tensor, policy: InputPolicy, amp: bool | None = None
) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) crack probabilities; the model must be in eval mode."""
    return torch.sigmoid(forward_logits(model, images, policy, amp))
