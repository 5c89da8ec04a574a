"""Tiles: where they go on an image and how they blend back into one probability map.

Inspection photos are far larger than the tiles the network was trained on, and resizing
them would thin hairline cracks out of existence. So an image is padded
(:func:`pad_to_plan`) and cut into overlapping square windows (:func:`plan_tiles`); each
window is predicted on its own and the probabilities are blended back with smooth weights
(:func:`blend_window`) so that seams do not show. Blending happens on *probabilities*
(sigmoid of each tile's logits), not on logits: a weighted mean of probabilities stays in
``[0, 1]``, and one over-confident tile cannot swamp its neighbours the way an unbounded
logit can.

An image on its way through the network is a *job* (:class:`Job`): :class:`TiledJob`
(native-resolution windows, blended) or :class:`ResizedJob` (the whole image shrunk to the
training size, as :func:`fissure.runtime.predict_probs` does). A job yields its network
inputs with ``pieces()``, takes back one logit map per TTA view with ``add()`` and, once
``remaining`` is 0, gives its probability map with ``probability()``.
:class:`~fissure.prediction.batching.TileBatcher` runs the inputs of consecutive jobs
through the network in shared batches, so a folder of small images fills batches as well as
one large photo does.

Shapes: an image is ``(C, H, W)`` float, normalised for the network; a ``forward`` maps
tiles ``(B, C, t, t)`` to logits ``(B, 1, t, t)``; a probability map is ``(H, W)`` float32
on the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import FissureError
from ..runtime import resize_images, resize_logits

TILE_MULTIPLE = 32
"""Tiles must be a multiple of this: the U-Net downsamples five times."""

WEIGHT_FLOOR = 1e-6
"""Smallest blend weight; keeps the normalising sum strictly positive everywhere."""

Forward = Callable[[Tensor], Tensor]


def check_tile(tile: int) -> int:
    """``tile`` if it is a positive multiple of :data:`TILE_MULTIPLE`, else a FissureError."""
    if tile < TILE_MULTIPLE or tile % TILE_MULTIPLE:
        raise FissureError(f"--tile must be a positive multiple of {TILE_MULTIPLE}, got {tile}")
    return tile


def check_overlap(overlap: int, tile: int | None) -> int:
    """``overlap`` if it lies in ``[0, tile)`` (only ``>= 0`` while ``tile`` is unknown)."""
    if overlap < 0 or (tile is not None and overlap >= tile):
        bound = "tile" if tile is None else f"tile={tile}"
        raise FissureError(f"--overlap must be in [0, {bound}), got {overlap}")
    return overlap


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
    """1-D blend profile: rises from the edges, flat 1 in the middle.

    Tile pixels near the edge were predicted from zero padding instead of real context, so
    the outer quarter of the overlap band gets only ``WEIGHT_FLOOR``; the cosine ramp spans
    the middle half of the band. Ramps of two neighbours overlapping by ``overlap`` sum to
    exactly 1, so the floor band of one tile always sits on the flat part of the other.

    Shapes:
        returns: (tile,) float64.
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
    """Separable blend weights, strictly positive.

    Equal to 1 everywhere except within ``overlap`` pixels of an edge, where a raised-cosine
    ramp (see :func:`_ramp`) falls towards ``WEIGHT_FLOOR``. ``overlap == 0`` gives all ones.

    Shapes:
        returns: (tile, tile) float32 on ``device``.
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
        """Number of windows."""
        return len(self.origins_y) * len(self.origins_x)

    @property
    def padded_height(self) -> int:
        """Canvas height: the image's plus the padding."""
        return self.height + sum(self.pad_h)

    @property
    def padded_width(self) -> int:
        """Canvas width: the image's plus the padding."""
        return self.width + sum(self.pad_w)

    def windows(self) -> Iterator[tuple[int, int]]:
        """Tile origins ``(y, x)`` in row-major order, without building a list."""
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
    check_tile(tile)
    check_overlap(overlap, tile)
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
    """Pad ``x`` along ``dim`` (-2 or -1) by reflection.

    Reflection needs the pad to be shorter than the axis; tiny images fall back to
    repeating the edge pixel.

    Shapes:
        x: (C, H, W).
        returns: (C, H + before + after, W) or (C, H, W + before + after).
    """
    if before == 0 and after == 0:
        return x
    mode = "reflect" if max(before, after) < x.shape[dim] else "replicate"
    pad = (before, after, 0, 0) if dim == -1 else (0, 0, before, after)
    return F.pad(x, pad, mode=mode)


def pad_to_plan(image: Tensor, plan: TilePlan) -> Tensor:
    """``image`` padded to the plan's canvas.

    Shapes:
        image: (C, H, W).
        returns: (C, plan.padded_height, plan.padded_width).
    """
    canvas = _pad_axis(image, *plan.pad_h, dim=-2)
    return _pad_axis(canvas, *plan.pad_w, dim=-1)


def _check_chw(image: Tensor) -> None:
    if image.ndim != 3:
        raise FissureError(f"expected an image tensor of shape (C, H, W), got {tuple(image.shape)}")


class Job(Protocol):
    """One image on its way through the network; see the module docstring.

    ``mode`` is ``tiled`` or ``resize``; ``n_tiles`` counts network inputs per TTA view;
    ``tile``/``overlap`` are None for a resized image.
    """

    mode: str
    n_tiles: int
    remaining: int
    tile: int | None
    overlap: int | None

    def pieces(self) -> Iterator[tuple[Any, Tensor]]:
        """``(key, input)`` pairs, ``input`` ``(C, t, t)``; ``key`` goes back to ``add``."""
        ...

    def add(self, key: Any, logits: list[Tensor]) -> None:
        """Take the ``(1, t, t)`` logits of one input, one map per TTA view."""
        ...

    def probability(self) -> Tensor:
        """``(H, W)`` float32 on the CPU, once ``remaining`` is 0."""
        ...


class TiledJob:
    """Native-resolution windows of one image, their probabilities blended.

    The blend is ``sum(w * p) / sum(w)`` over the tiles covering a pixel, with ``w`` the
    :func:`blend_window`. Holds the padded image and two float32 accumulators of its size.

    Shapes:
        image: (C, H, W) float, normalised.
    """

    mode = "tiled"

    def __init__(self, image: Tensor, tile: int, overlap: int) -> None:
        _check_chw(image)
        self.plan = plan_tiles(image.shape[-2], image.shape[-1], tile, overlap)
        self.tile, self.overlap = tile, overlap
        self.canvas = pad_to_plan(image, self.plan)
        self.weight = blend_window(tile, overlap, device=image.device)
        self.weighted = torch.zeros(self.canvas.shape[-2:], device=image.device)
        self.total = torch.zeros_like(self.weighted)
        self.remaining = self.n_tiles = self.plan.n_tiles

    def pieces(self) -> Iterator[tuple[Any, Tensor]]:
        """Each window's origin ``(y, x)`` and its ``(C, t, t)`` view of the canvas."""
        t = self.plan.tile
        for y, x in self.plan.windows():
            yield (y, x), self.canvas[:, y : y + t, x : x + t]

    def add(self, key: tuple[int, int], logits: list[Tensor]) -> None:
        """Blend in the window at ``key``; ``logits``: one ``(1, t, t)`` map per TTA view,
        already flipped back."""
        prob = sum(torch.sigmoid(lg[0]) for lg in logits) / len(logits)
        (y, x), t = key, self.plan.tile
        self.weighted[y : y + t, x : x + t] += self.weight * prob
        self.total[y : y + t, x : x + t] += self.weight
        self.remaining -= 1

    def probability(self) -> Tensor:
        """The blended ``(H, W)`` float32 probabilities, padding cut off, on the CPU."""
        top, left, plan = self.plan.pad_h[0], self.plan.pad_w[0], self.plan
        blended = self.weighted[top : top + plan.height, left : left + plan.width]
        return (blended / self.total[top : top + plan.height, left : left + plan.width]).cpu()


class ResizedJob:
    """The whole image resized to ``size x size``, its logits upsampled back.

    The resize steps are :func:`fissure.runtime.predict_probs`'s, so the result equals
    what ``evaluate`` computes for the same image.

    Shapes:
        image: (C, H, W) float, normalised.
    """

    mode = "resize"
    n_tiles = 1
    tile = overlap = None

    def __init__(self, image: Tensor, size: int) -> None:
        _check_chw(image)
        self.shape = tuple(image.shape[-2:])
        self.small = resize_images(image[None], size)[0]
        self.remaining = 1
        self.prob: Tensor | None = None

    def pieces(self) -> Iterator[tuple[Any, Tensor]]:
        """The one ``(C, size, size)`` input."""
        yield None, self.small

    def add(self, key: Any, logits: list[Tensor]) -> None:
        """Take the ``(1, size, size)`` logits, one map per TTA view."""
        up = [resize_logits(lg[None], self.shape) for lg in logits]
        self.prob = (sum(torch.sigmoid(u[0, 0]) for u in up) / len(up)).cpu()
        self.remaining = 0

    def probability(self) -> Tensor:
        """``(H, W)`` float32 probabilities on the CPU."""
        assert self.prob is not None
        return self.prob
