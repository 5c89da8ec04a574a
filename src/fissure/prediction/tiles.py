"""Batches of tiles drawn from several images at once, for :mod:`fissure.prediction`.

An image becomes a *job*: :class:`TiledJob` (native-resolution windows blended as
:func:`fissure.tiling.predict_tiled` does) or :class:`ResizedJob` (the whole image shrunk
to the training size, as :func:`fissure.inference.predict_probs` does). A job yields its
network inputs with ``pieces()``, takes back one logit map per TTA view with ``add()`` and,
once ``remaining`` is 0, gives its ``(H, W)`` float32 ``probability()`` on the CPU.
:class:`TileBatcher` runs the inputs of consecutive jobs through the network in shared
batches, so a folder of small images fills batches as well as one large photo does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import FissureError
from .tiling import blend_window, pad_to_plan, plan_tiles


class Job(Protocol):
    """One image on its way through the network; see the module docstring."""

    mode: str
    n_tiles: int
    remaining: int
    tile: int | None
    overlap: int | None

    def pieces(self) -> Iterator[tuple[Any, Tensor]]: ...

    def add(self, key: Any, logits: list[Tensor]) -> None: ...

    def probability(self) -> Tensor: ...


class TiledJob:
    """Blends tile probabilities for one image, as :func:`fissure.tiling.predict_tiled` does."""

    mode = "tiled"

    def __init__(self, image: Tensor, tile: int, overlap: int) -> None:
        self.plan = plan_tiles(image.shape[-2], image.shape[-1], tile, overlap)
        self.tile, self.overlap = tile, overlap
        self.canvas = pad_to_plan(image, self.plan)
        self.weight = blend_window(tile, overlap, device=image.device)
        self.weighted = torch.zeros(self.canvas.shape[-2:], device=image.device)
        self.total = torch.zeros_like(self.weighted)
        self.remaining = self.n_tiles = self.plan.n_tiles

    def pieces(self) -> Iterator[tuple[Any, Tensor]]:
        t = self.plan.tile
        for y, x in self.plan.windows():
            yield (y, x), self.canvas[:, y : y + t, x : x + t]

    def add(self, key: tuple[int, int], logits: list[Tensor]) -> None:
        """``logits``: one ``(1, t, t)`` map per TTA view, already flipped back."""
        prob = sum(torch.sigmoid(lg[0]) for lg in logits) / len(logits)
        (y, x), t = key, self.plan.tile
        self.weighted[y : y + t, x : x + t] += self.weight * prob
        self.total[y : y + t, x : x + t] += self.weight
        self.remaining -= 1

    def probability(self) -> Tensor:
        top, left, plan = self.plan.pad_h[0], self.plan.pad_w[0], self.plan
        blended = self.weighted[top : top + plan.height, left : left + plan.width]
        return (blended / self.total[top : top + plan.height, left : left + plan.width]).cpu()


class ResizedJob:
    """The whole image shrunk to ``size``; logits upsampled back as ``predict_probs`` does."""

    mode = "resize"
    n_tiles = 1
    tile = overlap = None

    def __init__(self, image: Tensor, size: int) -> None:
        self.shape = tuple(image.shape[-2:])
        self.small = image
        if self.shape != (size, size):
            self.small = F.interpolate(
                image[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )[0]
        self.remaining = 1
        self.prob: Tensor | None = None

    def pieces(self) -> Iterator[tuple[Any, Tensor]]:
        yield None, self.small

    def add(self, key: Any, logits: list[Tensor]) -> None:
        up = [
            lg[None]
            if tuple(lg.shape[-2:]) == self.shape
            else F.interpolate(lg[None], size=self.shape, mode="bilinear", align_corners=False)
            for lg in logits
        ]
        self.prob = (sum(torch.sigmoid(u[0, 0]) for u in up) / len(up)).cpu()
        self.remaining = 0

    def probability(self) -> Tensor:
        assert self.prob is not None
        return self.prob


def _view_logits(forward: Callable[[Tensor], Tensor], tiles: Tensor, tta: bool) -> list[Tensor]:
    """Logits ``(B, 1, t, t)`` float32 per view: as is, and with ``tta`` flipped both ways."""
    views: list[tuple[int, ...]] = [(), (-1,), (-2,)] if tta else [()]
    out = []
    for dims in views:
        logits = forward(tiles.flip(dims) if dims else tiles).float()
        if logits.shape != (tiles.shape[0], 1, *tiles.shape[-2:]):
            raise FissureError(
                f"model returned shape {tuple(logits.shape)} for tiles "
                f"{tuple(tiles.shape)}, expected one channel of the same size"
            )
        out.append(logits.flip(dims) if dims else logits)
    return out


class TileBatcher:
    """Gathers tiles of any number of images into batches of one tile shape."""

    def __init__(
        self,
        forward: Callable[[Tensor], Tensor],
        batch_size: int,
        tta: bool,
        on_batch: Callable[[int], None],
    ) -> None:
        if batch_size < 1:
            raise FissureError(f"--batch-size must be >= 1, got {batch_size}")
        self.forward, self.batch_size, self.tta, self.on_batch = forward, batch_size, tta, on_batch
        self.pending: dict[tuple[int, ...], list[tuple[Job, Any, Tensor]]] = {}

    def add(self, job: Job) -> list[Job]:
        """Queue ``job``'s tiles; returns the jobs that batches run meanwhile completed."""
        finished = []
        for key, piece in job.pieces():
            queue = self.pending.setdefault(tuple(piece.shape), [])
            queue.append((job, key, piece))
            if len(queue) == self.batch_size:
                finished += self._run(self.pending.pop(tuple(piece.shape)))
        return finished

    def flush(self) -> list[Job]:
        """Run the tiles still queued; returns the jobs that completed."""
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
