"""Running a trained model on images of any size.

Shapes: ``images`` (N, 3, H, W) normalised float; probabilities (N, 1, H, W) in [0, 1]
at the input's resolution. A model trained on whole images shrunk to ``size`` (``resize``
mode) sees its input shrunk the same way and its logits are upsampled back; a model
trained on native-resolution crops (``crop`` mode) sees the image as it is.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .model import ResNetUNet


@dataclass(frozen=True)
class InputPolicy:
    """How images are fed to a model: its training mode and size (from the checkpoint)."""

    mode: str = "resize"
    size: int = 256

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> InputPolicy:
        spec = ckpt.get("input", {})
        return cls(mode=spec.get("mode", "resize"), size=int(spec.get("size", 256)))


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; any other name is used as given."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_for(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA only (bf16 where supported); on CPU bf16 measured slower."""
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def forward_logits(
    model: ResNetUNet, images: torch.Tensor, policy: InputPolicy, amp: bool = True
) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) float32 logits at the input's resolution."""
    height, width = images.shape[-2:]
    resize = policy.mode == "resize" and (height, width) != (policy.size, policy.size)
    x = images
    if resize:
        x = F.interpolate(x, size=(policy.size, policy.size), mode="bilinear",
                          align_corners=False, antialias=True)
    if next(model.parameters()).is_contiguous(memory_format=torch.channels_last):
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast_for(images.device, amp):
        logits = model(x)
    logits = logits.float()
    if resize:
        logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
    return logits


@torch.inference_mode()
def predict_probs(
    model: ResNetUNet, images: torch.Tensor, policy: InputPolicy, amp: bool = True
) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) crack probabilities; the model must be in eval mode."""
    return torch.sigmoid(forward_logits(model, images, policy, amp))
