"""Sliding-window inference at native resolution.

Inspection photos are far larger than the tiles the network was trained on, and resizing
them would thin hairline cracks out of existence. Instead the image is cut into
overlapping square tiles, each tile is predicted on its own, and the per-tile
probabilities are blended back with smooth weights so that tile seams do not show.

Conventions:

* ``image`` tensors are ``(C, H, W)`` float, already normalised for the network.
* ``forward`` maps a batch ``(B, C, t, t)`` to logits ``(B, 1, t, t)``.
* Blending happens on *probabilities* (sigmoid of each tile's logits), not on logits:
  a weighted mean of probabilities stays in ``[0, 1]`` and one over-confident tile cannot
  swamp its neighbours the way an unbounded logit can.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

import torch
import torch.nn.functional as F
from torch import Tensor

from fissure.errors import FissureError

TILE_MULTIPLE = 32
"""Tiles must be a multiple of this: the U-Net downsamples five times."""

WEIGHT_FLOOR = 1e-6
"""Smallest blend weight; keeps the normalising sum strictly positive everywhere."""

Forward = Callable[[Tensor], Tensor]


def tile_origins(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of windows of size ``tile`` that cover ``[0, length)``.

    Windows step by ``stride``; the last one is moved back to end flush with ``length``
    rather than running past it. When ``length <= tile`` a single origin ``0`` is returned
    (the caller pads the axis up to ``tile``).
    """
    if length < 1 or tile < 1:
        raise FissureError(f"tile_origins needs length >= 1 and tile >= 1, got {length}, {tile}")
    if not 1 <= stride <= tile:
        raise FissureError(f"stride must be in [1, tile={tile}] to leave no gaps, got {stride}")
    if length <= tile:
        return [0]
    last = length - tile
    origins = list(range(0, last, stride))
    origins.append(last)
    return origins


def _ramp(tile: int, overlap: int) -> Tensor:
    """1-D blend profile ``(tile,)`` float64: rises from the edges, flat 1 in the middle.

    Tile pixels near the edge were predicted from zero padding instead of real context, so
    the outer quarter of the overlap band gets only ``WEIGHT_FLOOR``; the cosine ramp spans
    the middle half of the band. Ramps of two neighbours overlapping by ``overlap`` sum to
    exactly 1, so the floor band of one tile always sits on the flat part of the other.
    """
    idx = torch.arange(tile, dtype=torch.float64)
    dist = torch.minimum(idx, tile - 1 - idx)
    dead = overlap // 4
    span = overlap - 2 * dead
    if span <= 0:
        return torch.ones(tile, dtype=torch.float64)
    t = ((dist - dead + 0.5) / span).clamp(0.0, 1.0)
    return (0.5 - 0.5 * torch.cos(math.pi * t)).clamp_min(WEIGHT_FLOOR)


def blend_window(tile: int, overlap: int, device: torch.device | str | None = None) -> Tensor:
    """Separable blend weights ``(tile, tile)`` float32, strictly positive.

    Equal to 1 everywhere except within ``overlap`` pixels of an edge, where a raised-cosine
    ramp (see :func:`_ramp`) falls towards ``WEIGHT_FLOOR``. ``overlap == 0`` gives all ones.
    """
    if tile < 1 or not 0 <= overlap < tile:
        raise FissureError(
            f"blend_window needs 0 <= overlap < tile, got tile={tile}, overlap={overlap}"
        )
    ramp = _ramp(tile, overlap)
    window = torch.outer(ramp, ramp).clamp_min(WEIGHT_FLOOR)
    return window.to(device=device, dtype=torch.float32)


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one image go.

    The image ``(H, W)`` is padded by ``pad_h = (top, bottom)`` and ``pad_w = (left, right)``
    into a canvas of ``padded_height x padded_width``; tiles of ``tile x tile`` start at
    every ``(y, x)`` in ``origins_y x origins_x`` (canvas coordinates).
    """

    height: int
    width: int
    tile: int
    overlap: int
    pad_h: tuple[int, int]
    pad_w: tuple[int, int]
    origins_y: tuple[int, ...]
    origins_x: tuple[int, ...]

    @property
    def n_tiles(self) -> int:
        return len(self.origins_y) * len(self.origins_x)

    @property
    def padded_height(self) -> int:
        return self.height + sum(self.pad_h)

    @property
    def padded_width(self) -> int:
        return self.width + sum(self.pad_w)

    def windows(self) -> Iterator[tuple[int, int]]:
        """Yield tile origins ``(y, x)`` in row-major order, without building a list."""
        for y in self.origins_y:
            for x in self.origins_x:
                yield y, x


def _axis_padding(length: int, tile: int, overlap: int) -> tuple[int, int]:
    """Padding ``(before, after)`` for one axis.

    ``overlap // 2`` on both sides keeps border pixels off the low-weight rim of the edge
    tiles; axes shorter than a tile get the shortfall split evenly on top of that.
    """
    margin = overlap // 2
    short = max(0, tile - (length + 2 * margin))
    return margin + short // 2, margin + short - short // 2


def plan_tiles(height: int, width: int, tile: int, overlap: int) -> TilePlan:
    """Plan the tiling of an ``(height, width)`` image; see :class:`TilePlan`.

    ``tile`` must be a positive multiple of 32 and ``0 <= overlap < tile``.
    """
    if height < 1 or width < 1:
        raise FissureError(f"cannot tile an empty image of size {height}x{width}")
    if tile < TILE_MULTIPLE or tile % TILE_MULTIPLE:
        raise FissureError(f"tile must be a positive multiple of {TILE_MULTIPLE}, got {tile}")
    if not 0 <= overlap < tile:
        raise FissureError(f"overlap must be in [0, tile={tile}), got {overlap}")
    pad_h = _axis_padding(height, tile, overlap)
    pad_w = _axis_padding(width, tile, overlap)
    stride = tile - overlap
    return TilePlan(
        height=height,
        width=width,
        tile=tile,
        overlap=overlap,
        pad_h=pad_h,
        pad_w=pad_w,
        origins_y=tuple(tile_origins(height + sum(pad_h), tile, stride)),
        origins_x=tuple(tile_origins(width + sum(pad_w), tile, stride)),
    )


def _pad_axis(x: Tensor, before: int, after: int, dim: int) -> Tensor:
    """Pad ``x`` ``(C, H, W)`` along ``dim`` (-2 or -1) by reflection.

    Reflection needs the pad to be shorter than the axis; tiny images fall back to
    repeating the edge pixel.
    """
    if before == 0 and after == 0:
        return x
    mode = "reflect" if max(before, after) < x.shape[dim] else "replicate"
    pad = (before, after, 0, 0) if dim == -1 else (0, 0, before, after)
    return F.pad(x, pad, mode=mode)


def pad_to_plan(image: Tensor, plan: TilePlan) -> Tensor:
    """Pad ``image`` ``(C, H, W)`` to the plan's canvas ``(C, padded_height, padded_width)``."""
    canvas = _pad_axis(image, *plan.pad_h, dim=-2)
    return _pad_axis(canvas, *plan.pad_w, dim=-1)


def _batched(items: Iterable[tuple[int, int]], size: int) -> Iterator[list[tuple[int, int]]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def _tile_probabilities(forward: Forward, tiles: Tensor, tta: bool) -> Tensor:
    """Probabilities ``(B, t, t)`` float32 for a batch of tiles ``(B, C, t, t)``.

    With ``tta`` the batch is also run flipped left-right and top-bottom; each result is
    flipped back before the three are averaged.
    """
    flips: list[tuple[int, ...]] = [(), (-1,), (-2,)] if tta else [()]
    total = torch.zeros(tiles.shape[0], tiles.shape[-2], tiles.shape[-1], device=tiles.device)
    for dims in flips:
        view = tiles.flip(dims) if dims else tiles
        logits = forward(view)
        expected = (tiles.shape[0], 1, tiles.shape[-2], tiles.shape[-1])
        if tuple(logits.shape) != expected:
            raise FissureError(
                f"model returned shape {tuple(logits.shape)} for tiles {tuple(view.shape)}, "
                f"expected {expected}"
            )
        probs = torch.sigmoid(logits.to(device=tiles.device, dtype=torch.float32))[:, 0]
        total += probs.flip(dims) if dims else probs
    return total / len(flips)


def predict_tiled(
    forward: Forward,
    image: Tensor,
    tile: int = 256,
    overlap: int = 64,
    batch_size: int = 8,
    tta: bool = False,
    progress: Callable[[int], None] | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Crack probabilities ``(1, H, W)`` float32 on CPU for ``image`` ``(C, H, W)``.

    ``forward`` maps ``(B, C, tile, tile)`` to logits ``(B, 1, tile, tile)``; it is called
    ``ceil(n_tiles / batch_size)`` times (three times as often with ``tta``) and never
    sees more than ``batch_size`` tiles, so peak memory is one batch plus the padded image
    and two ``(H', W')`` float32 accumulators. ``progress`` is called after every batch with
    the number of tiles it held. Tiles are moved to ``device`` (default: the image's).

    Per-tile probabilities are blended with :func:`blend_window` weights:
    ``sum(w * p) / sum(w)``.
    """
    if image.ndim != 3:
        raise FissureError(f"expected an image tensor of shape (C, H, W), got {tuple(image.shape)}")
    if batch_size < 1:
        raise FissureError(f"batch_size must be >= 1, got {batch_size}")
    plan = plan_tiles(image.shape[-2], image.shape[-1], tile, overlap)
    target = torch.device(device) if device is not None else image.device

    with torch.no_grad():
        canvas = pad_to_plan(image.to(device=target, dtype=torch.float32), plan)
        weight = blend_window(tile, overlap, device=target)
        weighted = torch.zeros(plan.padded_height, plan.padded_width, device=target)
        total_weight = torch.zeros_like(weighted)
        for batch in _batched(plan.windows(), batch_size):
            tiles = torch.stack([canvas[:, y : y + tile, x : x + tile] for y, x in batch])
            probs = _tile_probabilities(forward, tiles, tta)
            for (y, x), prob in zip(batch, probs, strict=True):
                weighted[y : y + tile, x : x + tile] += weight * prob
                total_weight[y : y + tile, x : x + tile] += weight
            if progress is not None:
                progress(len(batch))
        blended = weighted / total_weight

    top, left = plan.pad_h[0], plan.pad_w[0]
    cropped = blended[top : top + plan.height, left : left + plan.width]
    return cropped.unsqueeze(0).cpu()
