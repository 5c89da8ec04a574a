"""How a model runs: on which device, in which precision, and at which input size.

A model trained on whole images shrunk to ``size`` (``resize`` mode) sees its input shrunk
the same way (:func:`resize_images`) and its logits are upsampled back
(:func:`resize_logits`); a model trained on native-resolution crops (``crop`` mode) sees the
image as it is. :func:`forward_logits` and :func:`predict_probs` do both for a batch; the
prediction package reuses the two resize steps for images batched with other images' tiles.

Shapes:
    images: (N, 3, H, W) float, normalised.
    probabilities: (N, 1, H, W) float32 in [0, 1], at the input's resolution.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .model import ResNetUNet

FLIP_VIEWS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,))
"""The views of test-time augmentation, as dims to flip: as is, left-right, top-bottom.
Training flips and turns crops, so each view is one the model has seen; predictions are
flipped back and their probabilities averaged."""


@dataclass(frozen=True)
class InputPolicy:
    """How images are fed to a model: its training mode and size, and mixed precision.

    A checkpoint's :attr:`~fissure.checkpoint.Checkpoint.policy`. ``mode`` is ``resize``
    (whole images shrunk to ``size x size``) or ``crop`` (native-resolution crops of
    ``size``); ``amp`` asks for mixed precision where the hardware has it (see
    :func:`autocast_for`).
    """

    mode: str = "resize"
    size: int = 256
    amp: bool = True


def half_largest_fitting(fits: Callable[[int], bool], limit: int) -> int:
    """Half the largest power of two ``n <= limit`` for which ``fits(n)`` (at least 1), or
    0 when not even ``fits(1)``: the ``batch_size: auto`` of training and of prediction,
    each of which raises its own error on 0.

    Tries 1, 2, 4, ... and stops at the first that does not fit: memory grows with the
    batch, so nothing larger would. Halved because the probe measures one step alone, and a
    run holds more beside it (optimizer state, blending buffers, batches in flight).
    """
    best, n = 0, 1
    while n <= limit and fits(n):
        best, n = n, n * 2
    return max(1, best // 2) if best else 0


def select_device(name: str = "auto") -> torch.device:
    """The device called ``name``; ``auto`` picks cuda, then mps, then cpu."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX).

    Elsewhere torch emulates bf16, which is slower than fp32.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def autocast_dtype(device: torch.device, enabled: bool = True) -> torch.dtype:
    """The dtype the model's convolutions run in under :func:`autocast_for`.

    bf16 (else fp16) on CUDA; bf16 on CPUs with native bf16, where a training step was
    measured 1.97x faster than in fp32; fp32 elsewhere and when ``enabled`` is false.
    """
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


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images resized to ``size x size`` as ``resize``-mode training saw them; unchanged if
    they already are that size.

    Bilinear with antialiasing, so that shrinking averages pixels instead of skipping them.

    Shapes:
        images: (N, C, H, W) float.
        returns: (N, C, size, size), the same tensor when H == W == size.
    """
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(
        images, size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )


def resize_logits(logits: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Logits upsampled (bilinear) back to the input's ``shape``; unchanged if they already
    have it.

    Shapes:
        logits: (N, 1, h, w) float.
        returns: (N, 1, *shape), the same tensor when (h, w) == shape.
    """
    if tuple(logits.shape[-2:]) == tuple(shape):
        return logits
    return F.interpolate(logits, size=tuple(shape), mode="bilinear", align_corners=False)


def forward_logits(
    model: ResNetUNet, images: torch.Tensor, policy: InputPolicy, amp: bool | None = None
) -> torch.Tensor:
    """Logits at the input's resolution, the input fed as ``policy`` says.

    ``amp`` overrides ``policy.amp``. A channels-last model gets channels-last input.

    Shapes:
        images: (N, 3, H, W) float, normalised.
        returns: (N, 1, H, W) float32 logits.
    """
    height, width = images.shape[-2:]
    resize = policy.mode == "resize" and (height, width) != (policy.size, policy.size)
    x = resize_images(images, policy.size) if resize else images
    if next(model.parameters()).is_contiguous(memory_format=torch.channels_last):
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast_for(images.device, policy.amp if amp is None else amp):
        logits = model(x)
    logits = logits.float()
    return resize_logits(logits, (height, width)) if resize else logits


@torch.inference_mode()
def predict_probs(
    model: ResNetUNet,
    images: torch.Tensor,
    policy: InputPolicy,
    amp: bool | None = None,
    tta: bool = False,
) -> torch.Tensor:
    """Crack probabilities, the sigmoid of :func:`forward_logits`; ``model`` in eval mode.

    With ``tta``, the mean of the probabilities of the :data:`FLIP_VIEWS` (3x the compute).

    Shapes:
        images: (N, 3, H, W) float, normalised.
        returns: (N, 1, H, W) float32 in [0, 1].
    """
    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(forward_logits(model, x, policy, amp))

    if not tta:
        return forward(images)
    views = flipped_views(forward, images, tta)
    return sum(views[1:], views[0]) / len(views)


def flipped_views(
    forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, tta: bool
) -> list[torch.Tensor]:
    """``forward(images)`` and, with ``tta``, ``forward`` of the other :data:`FLIP_VIEWS`,
    each flipped back: one output per view, aligned with ``images``.

    Shapes:
        images: (N, C, H, W).
        returns: one (N, ..., H, W) tensor per view.
    """
    out = []
    for dims in FLIP_VIEWS if tta else ((),):
        result = forward(images.flip(dims) if dims else images)
        out.append(result.flip(dims) if dims else result)
    return out
