"""Predict: inference images/s at a fixed size, and one large photo through tiled prediction."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import torch

from .common import Row, Section, Settings, fmt, load_smp, log, median, paired_ratio, rotate, sync
from .evaluation import peak_rss_bytes, rss_bytes, run_child


class _InferVariant:
    def __init__(self, name: str, run: Callable[[], torch.Tensor]) -> None:
        self.name, self.run = name, run


def bench_predict(st: Settings, device: torch.device) -> Section:
    from fissure.model import ResNetUNet
    from fissure.runtime import InputPolicy, forward_logits

    sec = Section("predict")
    px, b = st.predict_px, st.predict_batch
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b, 3, px, px, generator=gen).to(device)
    torch.manual_seed(0)
    fis = ResNetUNet().to(device).eval().to(memory_format=torch.channels_last)
    nb = ResNetUNet().to(device).eval()
    policy = InputPolicy("crop", px)

    def fissure_run():
        with torch.inference_mode():
            return torch.sigmoid(forward_logits(fis, x, policy, True))

    def notebook_run():
        with torch.no_grad():
            return torch.sigmoid(nb(x)) > 0.5

    variants = [
        _InferVariant("fissure predict path (channels_last, inference_mode)", fissure_run),
        _InferVariant("notebook forward (contiguous, no_grad)", notebook_run),
    ]
    smp = load_smp()
    if smp is not None:
        sm = smp.Unet("resnet34", encoder_weights=None, classes=1).to(device).eval()

        def smp_run():
            with torch.inference_mode():
                return torch.sigmoid(sm(x))

        variants.append(_InferVariant("smp Unet (contiguous, inference_mode)", smp_run))
    else:
        sec.notes.append("segmentation_models_pytorch is not installed: smp inference skipped.")
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for rep in range(st.reps + 1):
        for v in rotate(variants, rep):
            sync(device)
            t = time.perf_counter()
            v.run()
            sync(device)
            if rep:
                times[v.name].append(time.perf_counter() - t)
        if rep:
            log(
                f"predict rep {rep}/{st.reps}: "
                + ", ".join(f"{k.split(' (')[0]} {t[-1]:.2f}s" for k, t in times.items())
            )
    rates = {k: b / median(t) for k, t in times.items()}
    fname = variants[0].name
    for other in [v.name for v in variants[1:]]:
        ratio = paired_ratio(times[other], times[fname])
        sec.rows.append(
            Row(
                "predict",
                f"inference {px}x{px}, batch {b}, images/s: fissure vs {other}",
                fmt(rates[fname]),
                fmt(rates[other]),
                f"{ratio:.2f}x",
                "info",
                "info",
            )
        )
    variants.clear()
    gc.collect()

    w, h = st.photo
    args = ["--child", "photo", str(w), str(h), str(st.tile or 0), device.type]
    log(f"predict: one {w}x{h} photo, tiled, in a child process")
    photo = run_child(args, max(st.max_child_gb, 8.0))
    sec.raw = {"px": px, "batch": b, "seconds": times, "images_per_s": rates, "photo": photo}
    if "error" in photo:
        sec.notes.append(f"tiled photo failed: {photo['error']}")
        return sec
    eff = photo["image_px_per_s"] / photo["tile_px_per_s"]
    sec.rows.append(
        Row(
            "predict",
            f"one {w}x{h} photo, tiled prediction (tile {photo['tile']}, overlap "
            f"{photo['overlap']}, {photo['tiles']} tiles): seconds, peak RSS; ratio = image px/s "
            f"over the bare network's px/s on the same tile batches",
            f"{photo['seconds']:.1f} s, {photo['peak_rss'] / 2**30:.2f} GiB",
            f"network alone {photo['tile_px_per_s'] / 1e6:.2f} Mpx/s",
            f"{eff:.2f}",
            f"info (<= {photo['coverage']:.2f} from overlap)",
            "info",
        )
    )
    sec.notes.append(
        f"Tiled photo: RSS {photo['rss_before'] / 2**30:.2f} GiB before the call (model and "
        f"the uint8 photo loaded), peak {photo['peak_rss'] / 2**30:.2f} GiB; "
        f"{photo['tiles']} tiles cover {1 / photo['coverage']:.2f}x the photo's pixels."
    )
    return sec


def child_photo(width: int, height: int, tile: int, device_type: str) -> dict[str, Any]:
    """One photo through ``predict_image`` as ``fissure predict`` runs it, then the bare
    network on batches of the same tiles for reference (after the peak RSS is read)."""
    import numpy as np

    from fissure.checkpoint import make_checkpoint
    from fissure.config import Config
    from fissure.model import ResNetUNet
    from fissure.prediction import PredictOptions
    from fissure.prediction.predictor import Predictor, default_tiling, predict_image

    device = torch.device(device_type)
    torch.manual_seed(0)
    model = ResNetUNet()
    with torch.no_grad():
        # A trained model on a mostly crack-free photo: next to no predicted crack, so the
        # crack measurement does little and the figure is the network, tiling and blending.
        model.head.conv.bias.fill_(-10.0)
    predictor = Predictor.from_checkpoint(make_checkpoint(model, Config(), epoch=0), device_type)
    del model
    rng = np.random.default_rng(0)
    image = rng.integers(90, 170, size=(height, width, 3), dtype=np.uint8)
    gc.collect()
    rss0 = rss_bytes()
    sync(device)
    t = time.perf_counter()
    pred = predict_image(predictor, image, PredictOptions(tile=tile or None))
    sync(device)
    seconds = time.perf_counter() - t
    peak = peak_rss_bytes()
    tiling = default_tiling(predictor.policy, PredictOptions(tile=tile or None))
    # Reference: the bare network on batches of 8 tiles of the same size.
    tiles = torch.randn(8, 3, tiling.tile, tiling.tile).to(device)
    ref = []
    for _ in range(3):
        sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            predictor.forward(tiles)
        sync(device)
        ref.append(time.perf_counter() - t0)
    tile_px_s = 8 * tiling.tile**2 / median(ref[1:])
    return {
        "width": width,
        "height": height,
        "tile": tiling.tile,
        "overlap": tiling.overlap,
        "tiles": pred.tiles,
        "mode": pred.mode,
        "seconds": seconds,
        "rss_before": rss0,
        "peak_rss": peak,
        "image_px_per_s": width * height / seconds,
        "tile_px_per_s": tile_px_s,
        "coverage": width * height / (pred.tiles * tiling.tile**2),
    }
