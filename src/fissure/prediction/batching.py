"""Network inputs of many jobs (:class:`~fissure.prediction.tiles.Job`) in shared batches:
a folder of small images fills batches as well as one large photo does.

Shapes: a ``forward`` maps tiles ``(B, C, t, t)`` to logits ``(B, 1, t, t)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..errors import FissureError
from ..runtime import flipped_views
from .tiles import Forward, Job


def _view_logits(forward: Forward, tiles: Tensor, tta: bool) -> list[Tensor]:
    """Logits per view: as is and, with ``tta``, the other
    :data:`~fissure.runtime.FLIP_VIEWS`; each flipped back.

    Shapes:
        tiles: (B, C, t, t).
        returns: one (B, 1, t, t) float32 tensor per view.
    """

    def checked(view: Tensor) -> Tensor:
        logits = forward(view).float()
        if logits.shape != (tiles.shape[0], 1, *tiles.shape[-2:]):
            raise FissureError(
                f"model returned shape {tuple(logits.shape)} for tiles "
                f"{tuple(tiles.shape)}, expected one channel of the same size"
            )
        return logits

    return flipped_views(checked, tiles, tta)


class TileBatcher:
    """Gathers the inputs of any number of jobs into batches of one input shape.

    A batch runs as soon as ``batch_size`` (>= 1) inputs of one shape are queued, so the
    network never sees more; ``batch_size`` may also be a function of the input shape
    ``(C, t, t)`` (see :class:`~fissure.prediction.autobatch.BatchSizes`), asked when that
    shape first comes. ``on_batch`` is called after each batch with the number it held.
    ``forward`` maps ``(B, C, t, t)`` to ``(B, 1, t, t)`` logits.
    """

    def __init__(
        self,
        forward: Forward,
        batch_size: int | Callable[[tuple[int, ...]], int],
        tta: bool,
        on_batch: Callable[[int], None],
    ) -> None:
        self.forward, self.batch_size, self.tta, self.on_batch = forward, batch_size, tta, on_batch
        self.pending: dict[tuple[int, ...], list[tuple[Job, Any, Tensor]]] = {}
        self.limits: dict[tuple[int, ...], int] = {}

    def _limit(self, shape: tuple[int, ...]) -> int:
        if shape not in self.limits:
            size = self.batch_size
            self.limits[shape] = size(shape) if callable(size) else size
        return self.limits[shape]

    def add(self, job: Job) -> list[Job]:
        """Queue ``job``'s inputs; returns the jobs that batches run meanwhile completed."""
        finished = []
        for key, piece in job.pieces():
            shape = tuple(piece.shape)
            queue = self.pending.setdefault(shape, [])
            queue.append((job, key, piece))
            if len(queue) >= self._limit(shape):
                finished += self._run(self.pending.pop(shape))
        return finished

    def flush(self) -> list[Job]:
        """Run the inputs still queued; returns the jobs that completed."""
        finished = []
        for shape in list(self.pending):
            finished += self._run(self.pending.pop(shape))
        return finished

    def _run(self, queue: list[tuple[Job, Any, Tensor]]) -> list[Job]:
        views = _view_logits(self.forward, torch.stack([piece for _, _, piece in queue]), self.tta)
        done = []
        for i, (job, key, _) in enumerate(queue):
            job.add(key, [v[i] for v in views])
            if job.remaining == 0:
                done.append(job)
        self.on_batch(len(queue))
        return done
