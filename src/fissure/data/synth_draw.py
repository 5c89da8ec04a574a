"""Drawing one synthetic concrete photo and its crack mask (:func:`synth_pair`).

The crack is rasterised once as a signed coverage field; the mask is the hard threshold of
that field and the image receives the soft, blurred version, so label and pixels agree
exactly while the image still looks antialiased. :mod:`fissure.data.synth` writes whole
datasets of these.

``thin=True`` draws hairline cracks instead: every mask pixel lies within
:data:`THIN_MAX_RADIUS` of the centreline, so the mask is 1-2 px across, and the crack's
length follows the image area so that it covers at most :data:`THIN_MAX_FRACTION` of the
pixels, the regime of thin real cracks (0.1-0.5 %) where a model drifts to blank masks.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from fissure.errors import DataError

MIN_SIZE = 32
MAX_WIDTH = 6.0
# Crack pixel fraction we aim for in cracked images; outside it we redraw the crack.
_FRACTION_BAND = (0.008, 0.06)
_MAX_REDRAWS = 12
THIN_MAX_FRACTION = 0.005
"""A thin-mode crack never covers more than this share of its image."""
THIN_MAX_RADIUS = 0.7
"""Below 1/sqrt(2): a band of this half-width holds at most two pixel centres across at any
angle, so thin-mode masks are 1-2 px wide."""
_THIN_BAND = (0.001, THIN_MAX_FRACTION)


# --------------------------------------------------------------------------- background


def _smooth_noise(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Unit-variance-ish noise with features about ``scale`` pixels across.

    Upsampling a coarse grid is far cheaper than a large-sigma Gaussian on the full image.
    """
    cells = max(2, int(math.ceil(size / max(scale, 1.0)))) + 1
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    fine = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(fine, dtype=np.float32)


def _speckles(rng: np.random.Generator, size: int, density: float, sigma: float) -> np.ndarray:
    """Blurred random impulses: aggregate grains and air pores of roughly ``sigma`` radius."""
    count = rng.poisson(density * size * size)
    field = np.zeros((size, size), np.float32)
    rows = rng.integers(0, size, count)
    cols = rng.integers(0, size, count)
    np.add.at(field, (rows, cols), rng.uniform(0.5, 1.0, count).astype(np.float32))
    # Re-normalise so the peak amplitude does not shrink as sigma grows.
    return gaussian_filter(field, sigma) * (2.0 * math.pi * sigma * sigma)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Concrete-like luminance (H, W) float32 in roughly 0..255, before colour is applied."""
    base = rng.uniform(110.0, 190.0)
    lum = np.full((size, size), base, np.float32)
    lum += _smooth_noise(rng, size, size / 2.5) * rng.uniform(5.0, 14.0)
    lum += _smooth_noise(rng, size, rng.uniform(8.0, 20.0)) * rng.uniform(3.0, 8.0)
    lum += gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), 0.7) * (
        rng.uniform(5.0, 11.0)
    )

    # Aggregate: lighter and darker grains of two sizes; pores are small and dark.
    lum += _speckles(rng, size, rng.uniform(0.004, 0.015), 1.0) * rng.uniform(10.0, 28.0)
    lum -= _speckles(rng, size, rng.uniform(0.002, 0.008), 1.2) * rng.uniform(8.0, 22.0)
    lum -= _speckles(rng, size, rng.uniform(0.0002, 0.0015), 0.8) * rng.uniform(25.0, 55.0)

    # Stains (water marks, efflorescence): large irregular blobs, usually darker.
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for _ in range(rng.integers(0, 4)):
        cy, cx = rng.uniform(0.0, 1.0, 2)
        sigma = rng.uniform(0.08, 0.3)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * sigma * sigma))
        blob *= 1.0 + 0.5 * _smooth_noise(rng, size, size / 6)
        lum += np.clip(blob, 0.0, None) * rng.uniform(-28.0, 12.0)

    # Illumination: a linear gradient plus a mild vignette, as from a flash or low sun.
    angle = rng.uniform(0.0, 2.0 * math.pi)
    ramp = (xx - 0.5) * math.cos(angle) + (yy - 0.5) * math.sin(angle)
    shade = 1.0 + rng.uniform(0.0, 0.35) * ramp
    shade -= rng.uniform(0.0, 0.25) * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
    return lum * shade


# --------------------------------------------------------------------------- cracks


def _walk(
    rng: np.random.Generator, start: np.ndarray, heading: float, length: float, step: float
) -> np.ndarray:
    """Random-walk polyline (N, 2) in (x, y) whose heading meanders around ``heading``."""
    n = max(2, int(length / step))
    turns = rng.normal(0.0, 0.22, n)
    kinks = rng.random(n) < 0.06
    turns[kinks] += rng.normal(0.0, 0.7, int(kinks.sum()))
    points = np.empty((n + 1, 2), np.float64)
    points[0] = start
    theta = heading
    for i in range(n):
        # Mean reversion keeps the crack going somewhere instead of curling up.
        theta = heading + 0.8 * (theta - heading) + turns[i]
        points[i + 1] = points[i] + step * np.array([math.cos(theta), math.sin(theta)])
    jitter = rng.normal(0.0, 0.45, points.shape)
    jitter[0] = 0.0
    return points + jitter


def _profile(rng: np.random.Generator, n: int, spread: float) -> np.ndarray:
    """Smooth positive multiplier (n,) around 1 for width and contrast along a crack."""
    raw = gaussian_filter(rng.standard_normal(n + 8), max(1.0, n / 10), mode="nearest")[4:-4]
    raw /= raw.std() + 1e-6
    return np.exp(spread * raw)


def _taper(n: int, start: float, end: float) -> np.ndarray:
    """Multiplier (n,) that narrows towards the tips; a tip at 1.0 does not taper."""
    t = np.linspace(0.0, 1.0, n)
    head = np.clip(t / 0.2, 0.0, 1.0)
    tail = np.clip((1.0 - t) / 0.2, 0.0, 1.0)
    return (start + (1.0 - start) * head) * (end + (1.0 - end) * tail)


def _crack_strokes(
    rng: np.random.Generator, size: int, thin: bool = False
) -> list[tuple[np.ndarray, ...]]:
    """Main crack plus one or two branches as (points, widths, darkness) strokes."""
    max_width = 2.0 * THIN_MAX_RADIUS if thin else min(MAX_WIDTH, 1.0 + size / 50.0)
    # Thin cracks are shortened on small images: a 1.2 px line 1.5 sides long would cover
    # 0.5 % of a 360 px image; at 512 px the main crack stays under 0.3 % of the pixels.
    reach = min(1.0, size / 600.0) if thin else 1.0
    step = max(2.0, size / 64.0)
    centre = rng.uniform(0.2, 0.8, 2) * size
    heading = rng.uniform(0.0, math.pi)
    left = _walk(rng, centre, heading + math.pi, rng.uniform(0.3, 0.75) * size * reach, step)
    right = _walk(rng, centre, heading, rng.uniform(0.3, 0.75) * size * reach, step)
    main = np.concatenate([left[::-1], right[1:]])
    n = len(main)
    w0 = rng.uniform(1.0, max_width)
    widths = w0 * _profile(rng, n, 0.3) * _taper(n, 0.35, 0.35)
    dark0 = rng.uniform(0.4, 0.8) if thin else rng.uniform(0.3, 0.75)
    strokes = [(main, widths, dark0 * _profile(rng, n, 0.2))]

    for _ in range(rng.integers(1, 3)):
        at = int(rng.integers(int(0.2 * n), int(0.8 * n)))
        local = main[min(at + 1, n - 1)] - main[max(at - 1, 0)]
        side = rng.choice([-1.0, 1.0])
        angle = math.atan2(local[1], local[0]) + side * rng.uniform(0.35, 1.2)
        branch = _walk(rng, main[at], angle, rng.uniform(0.12, 0.4) * size * reach, step)
        m = len(branch)
        bw = widths[at] * rng.uniform(0.45, 0.85) * _profile(rng, m, 0.2) * _taper(m, 1.0, 0.3)
        strokes.append((branch, bw, dark0 * rng.uniform(0.8, 1.0) * _profile(rng, m, 0.2)))
    top = max_width if thin else MAX_WIDTH
    return [(pts, np.clip(w, 1.0, top), np.clip(d, 0.15, 0.85)) for pts, w, d in strokes]


def _rasterise(
    strokes: list[tuple[np.ndarray, ...]], rough: np.ndarray, max_radius: float = math.inf
) -> tuple[np.ndarray, np.ndarray]:
    """Hard mask (bool) and soft darkening field in [0, 1) for a set of strokes.

    A pixel is crack when its centre lies within half the local width (plus the edge
    roughness ``rough``, at most ``max_radius``) of the centreline; the darkening uses a
    one-pixel linear falloff around that edge, so every mask pixel is darkened by at least
    half the local contrast.
    """
    size = rough.shape[0]
    mask = np.zeros((size, size), bool)
    dark = np.zeros((size, size), np.float32)
    for points, widths, contrast in strokes:
        for i in range(len(points) - 1):
            p0, p1 = points[i], points[i + 1]
            r0, r1 = widths[i] / 2.0, widths[i + 1] / 2.0
            pad = max(r0, r1) + 1.5
            x_lo = max(0, int(math.floor(min(p0[0], p1[0]) - pad)))
            x_hi = min(size, int(math.ceil(max(p0[0], p1[0]) + pad)) + 1)
            y_lo = max(0, int(math.floor(min(p0[1], p1[1]) - pad)))
            y_hi = min(size, int(math.ceil(max(p0[1], p1[1]) + pad)) + 1)
            if x_lo >= x_hi or y_lo >= y_hi:
                continue
            ys, xs = np.ogrid[y_lo:y_hi, x_lo:x_hi]
            v = p1 - p0
            vv = float(v @ v) or 1e-9
            t = np.clip(((xs - p0[0]) * v[0] + (ys - p0[1]) * v[1]) / vv, 0.0, 1.0)
            dist = np.hypot(xs - (p0[0] + t * v[0]), ys - (p0[1] + t * v[1]))
            # Never below half a pixel, so hairline cracks stay connected.
            radius = np.clip(r0 + t * (r1 - r0) + rough[y_lo:y_hi, x_lo:x_hi], 0.5, max_radius)
            cover = np.clip(radius + 0.5 - dist, 0.0, 1.0)
            # Deeper (darker) along the centreline, as a real crack is shadowed inside.
            depth = 1.0 - 0.3 * np.clip(dist / np.maximum(radius, 0.5), 0.0, 1.0) ** 2
            c = contrast[i] + t * (contrast[i + 1] - contrast[i])
            mask[y_lo:y_hi, x_lo:x_hi] |= dist <= radius
            region = dark[y_lo:y_hi, x_lo:x_hi]
            np.maximum(region, (cover * depth * c).astype(np.float32), out=region)
    return mask, dark


def _thin_crack(
    rng: np.random.Generator, size: int, rough: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mask and darkening of a hairline crack covering at most THIN_MAX_FRACTION of the image.

    Redraws until the share is within the band; if none is, the smallest draw is shortened
    from its far end (its branches first), so the cap holds on any size.
    """
    best: tuple[float, list[tuple[np.ndarray, ...]]] | None = None
    for _ in range(_MAX_REDRAWS):
        strokes = _crack_strokes(rng, size, thin=True)
        mask, dark = _rasterise(strokes, rough, THIN_MAX_RADIUS)
        if _THIN_BAND[0] <= mask.mean() <= _THIN_BAND[1]:
            return mask, dark
        if best is None or mask.mean() < best[0]:
            best = (float(mask.mean()), strokes)
    strokes = best[1]
    while True:
        mask, dark = _rasterise(strokes, rough, THIN_MAX_RADIUS)
        if mask.mean() <= THIN_MAX_FRACTION:
            return mask, dark
        pts, widths, contrast = strokes[-1]
        keep = max(2, len(pts) * 3 // 4)
        if len(strokes) > 1 and keep == len(pts):
            strokes = strokes[:-1]
        else:
            strokes = [*strokes[:-1], (pts[:keep], widths[:keep], contrast[:keep])]


def synth_pair(
    rng: np.random.Generator, size: int, with_crack: bool = True, thin: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic concrete photo and its crack mask.

    Args:
        rng: Source of randomness; the result is a pure function of its state.
        size: Side length in pixels of the square image (at least 32).
        with_crack: If False, the image is bare concrete and the mask is all zero.
        thin: A hairline crack, 1-2 px wide and at most 0.5 % of the pixels, instead of a
            1-6 px crack covering about 1-6 %.

    Returns:
        ``(image, mask)``: an (H, W, 3) uint8 RGB image and an (H, W) uint8 mask in {0, 255}.
    """
    if size < MIN_SIZE:
        raise DataError(f"synthetic image size must be at least {MIN_SIZE} pixels, got {size}")
    lum = _background(rng, size)
    mask = np.zeros((size, size), bool)
    if with_crack:
        # Ragged edges: real crack walls break around aggregate instead of running smooth.
        rough = _smooth_noise(rng, size, 3.0) * rng.uniform(0.2, 0.5)
        if thin:
            mask, dark = _thin_crack(rng, size, rough * 0.3)
        else:
            for _ in range(_MAX_REDRAWS):
                strokes = _crack_strokes(rng, size)
                mask, dark = _rasterise(strokes, rough)
                if _FRACTION_BAND[0] <= mask.mean() <= _FRACTION_BAND[1]:
                    break
        # Blur only the image's darkening, never the mask, so labels stay crisp; a hairline
        # is blurred less, or it would fade into the sensor noise.
        dark = gaussian_filter(dark, rng.uniform(0.3, 0.55) if thin else rng.uniform(0.35, 0.8))
        lum = lum * (1.0 - dark)

    tint = 1.0 + rng.normal(0.0, 0.012, 3).astype(np.float32)
    rgb = lum[..., None] * tint
    # Sensor noise goes on last so the crack interior is textured like the surface.
    rgb += rng.normal(0.0, rng.uniform(1.5, 4.0), rgb.shape).astype(np.float32)
    image = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return image, mask.astype(np.uint8) * 255
