"""How many tiles go through the network at once: a number, or ``auto``.

``PredictOptions(batch_size="auto")`` (the default) means :data:`CPU_BATCH` off CUDA, where
a larger batch buys nothing and probing memory means nothing (the OS would swap, not
fail). On CUDA it means the largest power of two of tiles whose forward pass fits the
device's memory, halved for the blending buffers and images in flight beside it
(:func:`probe_batch_size`), at most :data:`AUTO_LIMIT`. The probe runs once per input shape
(tile size) and precision and is remembered by the :class:`~fissure.prediction.Predictor`,
so a run over many photos probes once.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping

import torch
from torch import Tensor

from ..errors import FissureError
from ..runtime import half_largest_fitting

AUTO = "auto"
"""The ``batch_size`` that lets the device decide."""

CPU_BATCH = 8
"""``batch_size: auto`` off CUDA: the batch ``fissure predict`` has always used there."""

AUTO_LIMIT = 256
"""The largest batch ``auto`` tries: 256 tiles of 512 px are four 4000x3000 photos."""

Shape = tuple[int, ...]
Forward = Callable[[Tensor], Tensor]


def check_batch_size(value: int | str) -> int | str:
    """``value`` if it is ``auto`` or an int >= 1, else a FissureError naming the option."""
    if value == AUTO:
        return AUTO
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FissureError(f"--batch-size must be >= 1 or 'auto', got {value!r}")
    return value


def probe_batch_size(fits: Callable[[int], bool], limit: int = AUTO_LIMIT) -> int:
    """:func:`~fissure.runtime.half_largest_fitting`, or a FissureError when nothing fits."""
    batch = half_largest_fitting(fits, limit)
    if batch == 0:
        raise FissureError(
            "--batch-size auto: not even one tile fits this device's memory; "
            "pass a smaller --tile or free device memory"
        )
    return batch


def forward_fits(forward: Forward, shape: Shape, device: torch.device) -> Callable[[int], bool]:
    """``fits(n)``: whether ``forward`` runs on ``n`` zero inputs of ``shape`` without running
    out of device memory. Call it with the model in eval mode (BatchNorm must not learn
    the zeros' statistics)."""

    def fits(n: int) -> bool:
        try:
            with torch.inference_mode():
                forward(torch.zeros((n, *shape), device=device))
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()

    return fits


class BatchSizes:
    """``batch_sizes(shape)``: the batch for network inputs of ``shape`` ``(C, t, t)``.

    A number is used for every shape. ``auto`` probes (``probe``, default: on CUDA) once per
    shape, the answers kept in ``memo`` under ``(shape, key)`` (``key``: what else changes
    the memory a forward takes, such as the precision); without probing it is
    :data:`CPU_BATCH`.
    """

    def __init__(
        self,
        setting: int | str,
        forward: Forward,
        device: torch.device,
        memo: MutableMapping[tuple, int],
        *,
        key: tuple = (),
        probe: bool | None = None,
    ) -> None:
        self.setting = check_batch_size(setting)
        self.forward, self.device, self.memo, self.key = forward, device, memo, key
        self.probe = device.type == "cuda" if probe is None else probe

    def __call__(self, shape: Shape) -> int:
        if self.setting != AUTO:
            return int(self.setting)
        if not self.probe:
            return CPU_BATCH
        memo_key = (tuple(shape), str(self.device), *self.key)
        if memo_key not in self.memo:
            fits = forward_fits(self.forward, tuple(shape), self.device)
            self.memo[memo_key] = probe_batch_size(fits)
        return self.memo[memo_key]
