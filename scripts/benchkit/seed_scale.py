"""Seed-scale: the original workload at its real size, from synthesis to prediction.

``--pairs N`` synthetic pairs of 448 px in the notebook's stage layout (gzip JPEG images and
masks, a manifest, 0.8/0.1/0.1 split) go through what a user's work does, each step timed:

1. synthesis, as ``fissure data synth --count N --size 448 --gzip --manifest`` (pairs/s);
2. ingest into the Snowpark emulator stage with ``upload_dataset`` (files/s);
3. the stage's local cache filled by ``StageSource`` (files/s);
4. the training set's data alone (the DataLoader of ``resize`` 256 with the default
   augmentation, no model), every epoch from the files against the decoded store;
5. training epochs end to end (``train_one_epoch``) with ``data.cache`` none against
   decoded, interleaved epoch by epoch: the first epoch fills the store;
6. utilisation: training FLOP/s (FlopCounterMode on one step, times images/s) over the
   matmul FLOP/s measured in the same run, bf16 on CUDA and fp32 on a CPU without bf16;
7. evaluation of the test split in a child process (images/s, peak RSS);
8. prediction of photos of 4000x3000 in a child process (photos/s, peak RSS).

On a CPU the training epochs run on the first ``train_pairs`` training pairs (the step
costs about 0.3 s per image there); on CUDA on the whole training split.
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .common import Row, Section, fmt, log, median, paired_ratio, rotate, sync, verdict
from .evaluation import peak_rss_bytes, rss_bytes, run_child
from .step import matmul_gflops

NOTEBOOK_PAIRS = 11_298
NOTEBOOK_TRAIN = 9_038  # 0.8 of 11,298, as generate_dataset splits it
SOURCE_PX = 448


@dataclass
class SeedSettings:
    """Sizes of the seed-scale run; :meth:`for_device` picks them for a CPU or a GPU."""

    pairs: int = 1000
    train_pairs: int | None = 128  # None: the whole training split
    epochs: int = 4  # per variant; the first fills the decoded store
    batch: int | str = 8
    photos: int = 2
    photo: tuple[int, int] = (4000, 3000)
    matmul_n: int = 2048

    @classmethod
    def for_device(cls, device: torch.device, pairs: int | None, quick: bool) -> SeedSettings:
        if quick:
            return cls(pairs=pairs or 24, train_pairs=8, epochs=2, batch=4, photos=1,
                       photo=(320, 240), matmul_n=256)
        if device.type == "cuda":
            return cls(pairs=pairs or NOTEBOOK_PAIRS, train_pairs=None, epochs=3,
                       batch="auto", photos=200, matmul_n=8192)
        return cls(pairs=pairs or 1000)


class _Slice:
    """The first pairs of each split of ``source``: a smaller set over the same files."""

    def __init__(self, source: Any, limits: dict[str, int | None]) -> None:
        self.source, self.limits = source, limits
        self.description = source.description

    def samples(self, split: str) -> list:
        return self.source.samples(split)[: self.limits.get(split)]

    def read(self, locator: str) -> bytes:
        return self.source.read(locator)

    def identity(self, locator: str) -> str | None:
        own = getattr(self.source, "identity", None)
        return own(locator) if callable(own) else None


def _timed(fn) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


# --------------------------------------------------------------------------- data


def _synthesise(root: Path, pairs: int) -> dict[str, Any]:
    from fissure.data.synth import SynthOptions, generate_dataset

    stamp = root / f".done-{pairs}"
    if stamp.is_file():  # a kept --workdir: the figure of the run that made it
        return {"seconds": float(stamp.read_text()), "reused": True}
    shutil.rmtree(root, ignore_errors=True)
    options = SynthOptions(manifest=True, gzip=True)
    counts, seconds = _timed(lambda: generate_dataset(root, pairs, SOURCE_PX, options=options))
    stamp.write_text(str(seconds))
    return {"seconds": seconds, "counts": counts, "reused": False}


def _stage(root: Path, workdir: Path) -> tuple[Any, dict[str, float]]:
    """Upload ``root`` into an emulator stage and fill a fresh local cache from it."""
    from snowflake.snowpark import Session

    from fissure.config import SnowflakeConfig
    from fissure.snowflake.source import StageSource
    from fissure.snowflake.upload import upload_dataset

    cache = workdir / "stage-cache"
    shutil.rmtree(cache, ignore_errors=True)
    session = Session.builder.config("local_testing", True).create()
    cfg = SnowflakeConfig(cache_dir=str(cache))
    counts, up = _timed(lambda: upload_dataset(session, root, cfg, progress=False))
    source = StageSource.from_config(cfg, session=session, reader="cache", progress=False)
    pairs, fill = _timed(lambda: source.samples("all"))
    return source, {"uploaded": counts["uploaded"], "upload_s": up, "fill_s": fill,
                    "files": 2 * len(pairs)}


def _data_passes(source: Any, device: torch.device, epochs: int, root: Path) -> dict:
    """Seconds per pass over the training split's data, from files and from the store."""
    from torch.utils.data import DataLoader

    from fissure.config import AugmentConfig, DataConfig
    from fissure.data import CrackDataset, collate
    from fissure.data.decoded import DecodedStore
    from fissure.data.loader import default_workers
    from fissure.data.transforms import train_transform
    from fissure.training.augment import geometry_transform

    data = DataConfig(size=256)
    cuda = device.type == "cuda"
    transform = geometry_transform(data) if cuda else train_transform(data, AugmentConfig())
    samples = source.samples("train")
    shutil.rmtree(root, ignore_errors=True)
    sets = {"files": CrackDataset(source, samples, transform),
            "decoded": CrackDataset(source, samples, transform, decoded=DecodedStore(root, 256))}
    workers = default_workers(device)
    seconds: dict[str, list[float]] = {k: [] for k in sets}
    for epoch in range(epochs):
        for name in rotate(list(sets), epoch):
            loader = DataLoader(sets[name], batch_size=16, num_workers=workers,
                                collate_fn=collate, pin_memory=cuda)
            _, dt = _timed(lambda loader=loader: sum(len(b["name"]) for b in loader))
            seconds[name].append(dt)
        log(f"seed-scale data epoch {epoch + 1}: files {seconds['files'][-1]:.1f}s, "
            f"decoded {seconds['decoded'][-1]:.1f}s")
    return {"pairs": len(samples), "workers": workers, "seconds": seconds,
            "store_bytes": DecodedStore(root).size_bytes()}


# --------------------------------------------------------------------------- training


def _setups(source: Any, ss: SeedSettings, device: torch.device, data_root: Path) -> dict:
    import fissure.training.loop as loop
    from fissure.config import load_config
    from fissure.training import build_setup

    overrides = [f"data.root={data_root}", "data.size=256", "data.mode=resize",
                 f"train.batch_size={ss.batch}", f"train.device={device.type}",
                 "train.epochs=1000"]
    # Batches augmented on the device need the loop to hand them over (device_batch).
    on_device = None if hasattr(loop, "device_batch") else False
    setups = {}
    for cache in ("none", "decoded"):
        cfg = load_config(None, [*overrides, f"data.cache={cache}"])
        setups[cache] = build_setup(cfg, source, batch_augment=on_device)
    return setups


def _train_epochs(setups: dict, epochs: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds of each training epoch (no validation), the variants interleaved."""
    from fissure.training import TrainState, train_one_epoch
    from fissure.training.interruption import Interrupt

    states = {name: TrainState() for name in setups}
    seconds: dict[str, list[float]] = {name: [] for name in setups}
    for epoch in range(epochs):
        for name in rotate(list(setups), epoch):
            states[name].epoch = epoch
            sync(device)
            _, dt = _timed(lambda name=name: train_one_epoch(
                setups[name], states[name], Interrupt(), log=lambda m: None, progress=False))
            sync(device)
            seconds[name].append(dt)
        log(f"seed-scale training epoch {epoch + 1}: "
            + ", ".join(f"cache {k} {v[-1]:.1f}s" for k, v in seconds.items()))
    return seconds


def _flops_per_image(setup: Any) -> float:
    """Forward + backward FLOPs of one training image at the run's size and precision."""
    from torch.utils.flop_counter import FlopCounterMode

    from fissure.runtime import autocast_for

    model = copy.deepcopy(setup.model).train()
    size, n = setup.cfg.data.size, 2
    x = torch.zeros(n, 3, size, size, device=setup.device)
    with FlopCounterMode(display=False) as counter:
        with autocast_for(setup.device, setup.cfg.train.amp):
            out = model(x)
        out.float().mean().backward()
    return counter.get_total_flops() / n


# --------------------------------------------------------------------------- children


def child_seed_eval(ckpt: str, root: str, device_type: str) -> dict[str, Any]:
    """Evaluate ``ckpt`` on the test split of ``root`` as ``fissure evaluate`` does."""
    from fissure.api import evaluate
    from fissure.data import FolderSource
    from fissure.data.loader import default_workers
    from fissure.evaluation import EvaluateOptions

    n = len(FolderSource(root).samples("test"))
    workers = default_workers(torch.device(device_type))
    options = EvaluateOptions(device=device_type, num_workers=workers)
    rss0 = rss_bytes()
    _, dt = _timed(lambda: evaluate(ckpt, root, "test", None, options, progress=False))
    return {"images": n, "seconds": dt, "images_per_s": n / dt, "workers": workers,
            "rss_before": rss0, "peak_rss": peak_rss_bytes()}


def child_seed_predict(ckpt: str, photos: str, out: str, device_type: str) -> dict[str, Any]:
    """Predict every photo in ``photos`` as ``fissure predict`` does."""
    from fissure.api import predict
    from fissure.prediction import PredictOptions

    n = len(list(Path(photos).glob("*.jpg")))
    rss0 = rss_bytes()
    # The defaults of `fissure predict`: batch_size auto, images read ahead and written
    # behind in threads, 512-px tiles where the checkpoint allows.
    records, dt = _timed(lambda: predict(ckpt, [photos], out, PredictOptions(device=device_type),
                                         progress=False))
    return {"photos": n, "seconds": dt, "photos_per_s": n / dt, "rss_before": rss0,
            "peak_rss": peak_rss_bytes(), "tile": records[0]["tile"],
            "overlap": records[0]["overlap"], "tiles_per_photo": records[0]["tiles"]}


def _photos(folder: Path, count: int, size: tuple[int, int]) -> Path:
    """``count`` JPEG photos of ``size``: synthetic concrete enlarged, a few distinct ones."""
    import numpy as np
    from PIL import Image

    from fissure.data.synth import synth_pair

    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    distinct = []
    for k in range(min(count, 4)):
        image, _ = synth_pair(np.random.default_rng([9, k]), max(64, width // 4))
        big = Image.fromarray(image).resize((width, width), Image.Resampling.BICUBIC)
        distinct.append(big.crop((0, 0, width, height)))
    for i in range(count):
        distinct[i % len(distinct)].save(folder / f"photo_{i:04d}.jpg", quality=90)
    return folder


def _checkpoints(setup: Any, workdir: Path) -> tuple[Path, Path]:
    """The trained model for evaluation, and a copy that predicts next to no crack for
    prediction (as a trained model on sound concrete), so the figure is not measuring
    the crack measurements of a half-trained model's noise."""
    from fissure.checkpoint import make_checkpoint

    trained = workdir / "seed-trained.pt"
    make_checkpoint(setup.model, setup.cfg, epoch=1).save(trained)
    quiet = copy.deepcopy(setup.model)
    with torch.no_grad():
        quiet.head.conv.bias.fill_(-10.0)
    sound = workdir / "seed-sound.pt"
    make_checkpoint(quiet, setup.cfg, epoch=1).save(sound)
    return trained, sound


# --------------------------------------------------------------------------- the section


def bench_seed_scale(
    device: torch.device, workdir: Path, pairs: int | None, quick: bool
) -> Section:
    ss = SeedSettings.for_device(device, pairs, quick)
    sec = Section("seed-scale")
    os.environ["FISSURE_DECODED_CACHE"] = str(workdir / "decoded-train")
    shutil.rmtree(workdir / "decoded-train", ignore_errors=True)
    root = workdir / f"seed-{ss.pairs}"
    log(f"seed-scale: {ss.pairs} pairs of {SOURCE_PX} px, notebook layout, in {root}")
    rss = {"start": rss_bytes()}
    synth = _synthesise(root, ss.pairs)
    rss["synthesised"] = rss_bytes()
    stage_source, stage = _stage(root, workdir)
    rss["stage source, cache filled"] = rss_bytes()
    log(f"seed-scale: upload {stage['upload_s']:.1f}s, cache fill {stage['fill_s']:.1f}s")
    data = _data_passes(stage_source, device, ss.epochs, workdir / "decoded-loader")
    rss["data passes"] = rss_bytes()
    source = _Slice(stage_source, {"train": ss.train_pairs, "val": 16 if quick else 64})
    setups = _setups(source, ss, device, root)
    rss["two training set-ups"] = rss_bytes()
    train = _train_epochs(setups, ss.epochs, device)
    rss["trained"] = rss_bytes()
    flops = _flops_per_image(setups["decoded"])
    peak_mm = matmul_gflops(ss.matmul_n, 5, device) * 1e9
    main_peak = peak_rss_bytes()
    trained, sound = _checkpoints(setups["decoded"], workdir)
    n_train = len(setups["decoded"].train_set)
    setups.clear()
    ev = run_child(["--child", "seed-eval", str(trained), str(root), device.type], 12.0)
    photos = _photos(workdir / "photos", ss.photos, ss.photo)
    pr = run_child(["--child", "seed-predict", str(sound), str(photos),
                    str(workdir / "predictions"), device.type], 12.0)
    sec.raw = {"settings": ss.__dict__, "synth": synth, "stage": stage, "data": data,
               "train_seconds": train, "train_images": n_train, "flops_per_image": flops,
               "matmul_flops": peak_mm, "main_peak_rss": main_peak, "rss": rss, "eval": ev,
               "predict": pr}
    _rows(sec, ss, device)
    _notes(sec, ss)
    return sec


def _notes(sec: Section, ss: SeedSettings) -> None:
    data = sec.raw["data"]
    per_pair = data["store_bytes"] / max(1, data["pairs"])
    full = NOTEBOOK_TRAIN * per_pair + (NOTEBOOK_PAIRS - NOTEBOOK_TRAIN) // 2 * (
        32 + 4 * SOURCE_PX * SOURCE_PX)
    sec.notes.append(
        f"Decoded store: {per_pair / 1024:.0f} KiB per training pair shrunk to 256 px; the "
        f"notebook's 9,038 training pairs plus 1,130 validation pairs at native {SOURCE_PX} px "
        f"would take {full / 2**30:.1f} GiB of disk.")
    if ss.train_pairs is not None:
        sec.notes.append(
            f"Training epochs ran on the first {sec.raw['train_images']} training pairs of the "
            f"stage (a full epoch of {data['pairs']} costs about "
            f"{data['pairs'] / sec.raw['train_images']:.0f}x as long here); the data rows above "
            "them cover the whole training split.")
    rss = sec.raw["rss"]
    sec.notes.append(
        "RSS of the benchmark's process along the way: "
        + ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in rss.items())
        + f". What grows with the pair count is the manifest, the sample lists and the stage "
        f"cache's index: the stage step added "
        f"{(rss['stage source, cache filled'] - rss['synthesised']) / 2**20:.0f} MiB for "
        f"{ss.pairs} pairs, the emulator's own copy of the files included.")
    if sec.raw["synth"].get("reused"):
        sec.notes.append("Synthesis: the data set of an earlier run in --workdir was reused; "
                         "its time is that run's.")


def _later(values: list[float]) -> float:
    """The median of every epoch after the first (the first alone when there is one)."""
    return median(values[1:] or values)


def _rows(sec: Section, ss: SeedSettings, device: torch.device) -> None:
    raw, gpu = sec.raw, device.type == "cuda"
    synth, stage = raw["synth"], raw["stage"]
    full = synth["seconds"] * NOTEBOOK_PAIRS / ss.pairs
    sec.rows.append(Row(
        "seed-scale", f"synthesis of {ss.pairs} pairs of {SOURCE_PX} px, gzip JPEG + manifest "
        f"(`fissure data synth --gzip --manifest`, one process per core)",
        f"{synth['seconds']:.1f} s, {ss.pairs / synth['seconds']:.1f} pairs/s",
        f"11,298 pairs: {full / 60:.1f} min (extrapolated)", "-", "a few minutes", "info"))
    sec.rows.append(Row(
        "seed-scale", "ingest into the emulator stage (`upload_dataset`), files/s",
        fmt(stage["uploaded"] / stage["upload_s"], 1), f"{stage['upload_s']:.1f} s", "-",
        "info", "info"))
    sec.rows.append(Row(
        "seed-scale", "stage cache fill (`StageSource`, cache reader), files/s",
        fmt(stage["files"] / stage["fill_s"], 1), f"{stage['fill_s']:.1f} s", "-", "info",
        "info"))
    data = raw["data"]
    files, dec = data["seconds"]["files"], data["seconds"]["decoded"]
    n = data["pairs"]
    sec.rows.append(Row(
        "seed-scale", f"training data alone ({n} pairs, resize 256, {data['workers']} "
        "workers): first epoch, samples/s, decoded store (filling) vs files",
        fmt(n / dec[0], 1), fmt(n / files[0], 1), f"{files[0] / dec[0]:.2f}x", "info", "info"))
    sec.rows.append(Row(
        "seed-scale", "the same, later epochs: decoded store vs files",
        fmt(n / _later(dec), 1), fmt(n / _later(files), 1),
        f"{_later(files) / _later(dec):.2f}x", "info", "info"))
    _train_rows(sec, ss, gpu)
    _child_rows(sec, gpu)


def _train_rows(sec: Section, ss: SeedSettings, gpu: bool) -> None:
    raw = sec.raw
    n = raw["train_images"]
    files, dec = raw["train_seconds"]["none"], raw["train_seconds"]["decoded"]
    first = dec[0] / files[0]
    later = paired_ratio(files[1:] or files, dec[1:] or dec)
    sec.rows.append(Row(
        "seed-scale", f"training, first epoch ({n} images, resize 256, batch {ss.batch}): "
        "seconds with data.cache decoded (filling) vs none; ratio = decoded / none",
        f"{dec[0]:.1f} s", f"{files[0]:.1f} s", f"{first:.2f}",
        "<= 1.15", verdict(first, 1.15, higher_is_better=False)))
    rate, rate_files = n / _later(dec), n / _later(files)
    target = 2000.0 if gpu else rate_files
    sec.rows.append(Row(
        "seed-scale", "training, later epochs: images/s with data.cache decoded vs none",
        fmt(rate, 1), fmt(rate_files, 1), f"{later:.2f}x (paired)",
        ">= 2,000 img/s" if gpu else ">= 1.0x (none's)",
        verdict(rate, target) if gpu else verdict(later, 1.0)))
    epoch = NOTEBOOK_TRAIN / rate
    sec.rows.append(Row(
        "seed-scale", "one epoch of the notebook's 9,038 training images at that rate "
        "(extrapolated)", f"{epoch:.0f} s", "-", "-", "<= 10 s" if gpu else "info",
        verdict(epoch, 10.0, higher_is_better=False) if gpu else "info"))
    util = raw["flops_per_image"] * rate / raw["matmul_flops"]
    dtype = "bf16" if gpu else "fp32 (no native bf16 here)"
    sec.rows.append(Row(
        "seed-scale", f"utilisation: training FLOP/s over {dtype} matmul FLOP/s, same run",
        f"{raw['flops_per_image'] * rate / 1e9:.0f} GFLOP/s",
        f"{raw['matmul_flops'] / 1e9:.0f} GFLOP/s", f"{util:.2f}",
        ">= 0.30" if gpu else "info", verdict(util, 0.30) if gpu else "info"))
    data = raw["data"]
    supply = data["pairs"] / _later(data["seconds"]["decoded"]) / rate
    sec.rows.append(Row(
        "seed-scale", "loader supply (decoded store, later epochs) over training consumption",
        f"{supply:.1f}x", "-", "-", ">= 1.2x", verdict(supply, 1.2)))
    sec.rows.append(Row(
        "seed-scale", "peak RSS of the benchmark's own process (synthesis parent, stage, "
        "loaders, two training set-ups)", f"{raw['main_peak_rss'] / 2**30:.2f} GiB", "-", "-",
        "< 3 GiB", verdict(raw["main_peak_rss"] / 2**30, 3.0, higher_is_better=False)))


def _child_rows(sec: Section, gpu: bool) -> None:
    ev, pr = sec.raw["eval"], sec.raw["predict"]
    if "error" in ev:
        sec.notes.append(f"evaluation child failed: {ev['error']}")
    else:
        sec.rows.append(Row(
            "seed-scale", f"evaluation of the {ev['images']}-image test split "
            f"(`evaluate`, {ev['workers']} workers): images/s, peak RSS",
            f"{ev['images_per_s']:.2f} img/s, {ev['peak_rss'] / 2**30:.2f} GiB", "-", "-",
            "< 3 GiB", verdict(ev["peak_rss"] / 2**30, 3.0, higher_is_better=False)))
    if "error" in pr:
        sec.notes.append(f"prediction child failed: {pr['error']}")
    else:
        sec.rows.append(Row(
            "seed-scale", f"prediction of {pr['photos']} photos of "
            f"{'x'.join(map(str, sec.raw['settings']['photo']))} (`predict`, "
            f"{pr.get('tiles_per_photo', '?')} tiles of {pr.get('tile', '?')} px each): photos/s",
            f"{pr['photos_per_s']:.3f} photos/s, {pr['peak_rss'] / 2**30:.2f} GiB", "-", "-",
            ">= 10 photos/s" if gpu else "info",
            verdict(pr["photos_per_s"], 10.0) if gpu else "info"))
