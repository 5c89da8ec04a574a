#!/usr/bin/env python
"""Speed of fissure, measured side by side with what it replaces, in one process.

Every figure is a ratio against a comparison measured in the same run (the same process,
or for peak memory a child process per method launched by this run), so the noise of a
shared machine cancels out as far as it can: the variants of a measurement are interleaved,
rotating their order every repetition, and each figure is the median of ``--reps``
repetitions after one warm-up.

Sections (``--only``):

* ``train``   training step throughput, fissure's ResNetUNet (contiguous and channels_last)
  against ``segmentation_models_pytorch.Unet("resnet34")``: same Adam 1e-4, same
  BCEWithLogits, same batch.
* ``util``    training GFLOP/s (FlopCounterMode on one forward+backward) over the GFLOP/s of
  a large matmul measured in the same repetitions.
* ``loader``  DataLoader samples/s (gzip PNG -> decode -> crop -> augment -> tensor) for 0, 1
  and 2 workers, against the training step's consumption rate.
* ``e2e``     steady-state epoch time: the notebook's pipeline (scripts/notebook_baseline.py)
  against ``fissure.workflow.train`` with its defaults, epochs alternating.
* ``eval``    peak RSS and time of the notebook's flatten-to-lists + sklearn evaluation against
  fissure's streaming evaluation, on the same synthetic predictions, one child process each.
* ``predict`` images/s at 448 px (fissure's predict path, the notebook's forward, smp) and one
  4000x3000 photo through tiled prediction (seconds, peak RSS), in a child process.

``util`` and ``loader`` need the training rates, so they add ``train``.

Usage::

    python scripts/bench.py                      # everything, a 15-30 min run on 2 CPU cores
    python scripts/bench.py --only train,util --json bench.json
    python scripts/bench.py --quick              # tiny sizes: a smoke test, not a measurement
    python scripts/bench.py --device cuda        # unchanged on a GPU

The markdown table goes to stdout, progress to stderr. ``segmentation_models_pytorch`` and
``psutil`` come from the ``bench`` extra; without smp its comparisons are skipped with a note.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

SCRIPTS = Path(__file__).resolve().parent
SECTIONS = ("train", "util", "loader", "e2e", "eval", "predict")
NEEDS = {"util": ("train",), "loader": ("train",)}


# --------------------------------------------------------------------------- settings


@dataclass
class Settings:
    """Sizes of every measurement; :meth:`quick` shrinks them to a smoke test."""

    reps: int = 5  # measured repetitions after one warm-up
    # train / util
    size: int = 256
    batch: int = 8
    steps: int = 2  # training steps per repetition and variant
    matmul_n: int = 2048
    matmul_reps: int = 5
    # loader
    loader_pairs: int = 64
    loader_source: int = 448
    loader_workers: tuple[int, ...] = (0, 1, 2)
    # e2e
    e2e_pairs: int = 50
    e2e_source: int = 448
    e2e_batch: int = 16
    # eval
    eval_px: int = 448
    eval_sizes: tuple[int, ...] = (113, 1130)
    notebook_eval_sizes: tuple[int, ...] = (113, 226)
    notebook_eval_target: int = 1130
    # predict
    predict_px: int = 448
    predict_batch: int = 8
    photo: tuple[int, int] = (4000, 3000)  # width, height
    tile: int | None = None  # None: the default tiling of a 256-px resize-mode checkpoint
    max_child_gb: float = 8.0
    parallel_children: bool = False
    eval_allocator_variant: bool = True

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            reps=1,
            size=64,
            batch=2,
            steps=1,
            matmul_n=256,
            matmul_reps=2,
            loader_pairs=6,
            loader_source=96,
            loader_workers=(0, 1),
            e2e_pairs=4,
            e2e_source=96,
            e2e_batch=2,
            eval_px=64,
            eval_sizes=(4, 16),
            notebook_eval_sizes=(4, 8),
            notebook_eval_target=16,
            predict_px=64,
            predict_batch=2,
            photo=(160, 120),
            tile=64,
            max_child_gb=4.0,
            parallel_children=True,
            eval_allocator_variant=False,
        )


@dataclass
class Row:
    """One line of the results table."""

    section: str
    measurement: str
    fissure: str
    comparison: str
    ratio: str
    target: str
    verdict: str


@dataclass
class Section:
    name: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def verdict(ratio: float, target: float, higher_is_better: bool = True) -> str:
    if ratio != ratio:  # NaN
        return "not measured"
    ok = ratio >= target if higher_is_better else ratio <= target
    return "met" if ok else "missed"


def fmt(x: float, digits: int = 2) -> str:
    return "n/a" if x != x else f"{x:.{digits}f}"


# --------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def total_ram_gb() -> float:
    try:
        import psutil

        return psutil.virtual_memory().total / 2**30
    except ImportError:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return pages / 2**30


def machine_info(device: torch.device) -> dict[str, Any]:
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gb": round(total_ram_gb(), 1),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "device": str(device),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def machine_line(info: dict[str, Any]) -> str:
    dev = info["device"] + (f" ({info['gpu']})" if "gpu" in info else "")
    load = info.get("load_average_start")
    return (
        f"{info['cpu']}, {info['cores']} cores, {info['ram_gb']} GiB RAM, torch {info['torch']} "
        f"({info['torch_threads']} threads), Python {info['python']}, device {dev}; "
        f"load average at start {load}"
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rotate(items: list[Any], k: int) -> list[Any]:
    k %= max(1, len(items))
    return items[k:] + items[:k]


def load_smp():
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        return None
    return smp


# --------------------------------------------------------------------------- data sets


def gzip_tree(root: Path) -> None:
    """Replace every ``*.png`` under ``root`` by ``*.png.gz`` (as the user's stage holds them)."""
    for png in sorted(root.rglob("*.png")):
        png.with_name(png.name + ".gz").write_bytes(gzip.compress(png.read_bytes(), 6))
        png.unlink()


def gz_dataset(root: Path, count: int, size: int, fractions=(0.7, 0.15, 0.15)) -> Path:
    """Synthetic pairs of ``size`` px under ``root/{train,val,test}``, gzip-compressed."""
    from fissure.data.synth import generate_dataset

    stamp = root / f".done-{count}-{size}-{'-'.join(map(str, fractions))}"
    if stamp.is_file():
        return root
    log(f"generating {count} synthetic pairs of {size} px in {root}")
    generate_dataset(root, count=count, size=size, seed=0, fractions=fractions)
    gzip_tree(root)
    stamp.touch()
    return root


# --------------------------------------------------------------------------- train + util


class StepRunner:
    """One model's training step: zero_grad, forward, BCEWithLogits, backward, Adam step."""

    def __init__(
        self,
        name: str,
        model: torch.nn.Module,
        channels_last: bool,
        device: torch.device,
        st: Settings,
    ) -> None:
        from fissure.inference import autocast_for

        self.name, self.device = name, device
        self.model = model.to(device).train()
        fmt_ = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=fmt_)
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(st.batch, 3, st.size, st.size, generator=gen).to(device)
        self.x = self.x.contiguous(memory_format=fmt_)
        self.y = (torch.rand(st.batch, 1, st.size, st.size, generator=gen) < 0.02).float()
        self.y = self.y.to(device)
        self.loss_fn = torch.nn.BCEWithLogitsLoss()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.autocast = lambda: autocast_for(device, True)
        self.flops = 0

    def forward_backward(self) -> torch.Tensor:
        with self.autocast():
            out = self.model(self.x)
        loss = self.loss_fn(out.float(), self.y)
        loss.backward()
        return loss

    def step(self) -> float:
        self.opt.zero_grad(set_to_none=True)
        loss = self.forward_backward()
        self.opt.step()
        return loss.item()

    def count_flops(self) -> int:
        from torch.utils.flop_counter import FlopCounterMode

        self.opt.zero_grad(set_to_none=True)
        with FlopCounterMode(display=False) as counter:
            self.forward_backward()
        self.opt.zero_grad(set_to_none=True)
        self.flops = int(counter.get_total_flops())
        return self.flops


def matmul_gflops(n: int, reps: int, device: torch.device) -> float:
    """Median GFLOP/s of an n x n matmul in the training dtype (fp32 on CPU)."""
    dtype = torch.float32  # the training steps run under autocast_for: bf16/fp16 on CUDA only
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=c)
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        torch.mm(a, b, out=c)
        sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / median(times) / 1e9


def build_train_runners(st: Settings, device: torch.device, notes: list[str]) -> list[StepRunner]:
    from fissure.model import ResNetUNet

    torch.manual_seed(0)
    runners = [
        StepRunner("fissure contiguous", ResNetUNet(), False, device, st),
        StepRunner("fissure channels_last", ResNetUNet(), True, device, st),
    ]
    smp = load_smp()
    if smp is None:
        notes.append(
            "segmentation_models_pytorch is not installed: the smp comparison is "
            "skipped (pip install -e '.[bench]')."
        )
    else:
        for cl in (False, True):
            model = smp.Unet("resnet34", encoder_weights=None, classes=1)
            name = "smp contiguous" if not cl else "smp channels_last"
            runners.append(StepRunner(name, model, cl, device, st))
    return runners


def bench_train(st: Settings, device: torch.device, want_util: bool) -> tuple[Section, Section]:
    sec = Section("train")
    util = Section("util")
    runners = build_train_runners(st, device, sec.notes)
    for r in runners:
        r.count_flops()
    step_times: dict[str, list[float]] = {r.name: [] for r in runners}
    mm: list[float] = []
    utils: dict[str, list[float]] = {r.name: [] for r in runners}
    ratios: dict[str, list[float]] = {r.name: [] for r in runners}
    for rep in range(st.reps + 1):
        rep_times = {}
        for r in rotate(runners, rep):
            sync(device)
            t = time.perf_counter()
            for _ in range(st.steps):
                r.step()
            sync(device)
            rep_times[r.name] = (time.perf_counter() - t) / st.steps
        peak = matmul_gflops(st.matmul_n, st.matmul_reps, device)
        label = "warm-up" if rep == 0 else f"rep {rep}/{st.reps}"
        log(
            f"train {label}: "
            + ", ".join(f"{k} {v:.2f}s" for k, v in rep_times.items())
            + f"; matmul {peak:.0f} GFLOP/s"
        )
        if rep == 0:
            continue
        mm.append(peak)
        for r in runners:
            step_times[r.name].append(rep_times[r.name])
            utils[r.name].append(r.flops / rep_times[r.name] / 1e9 / peak)
            base = "smp contiguous" if "smp contiguous" in rep_times else None
            if base:
                ratios[r.name].append(rep_times[base] / rep_times[r.name])

    rates = {r.name: st.batch / median(step_times[r.name]) for r in runners}
    sec.raw = {
        "batch": st.batch,
        "size": st.size,
        "steps_per_rep": st.steps,
        "reps": st.reps,
        "step_seconds": step_times,
        "images_per_s": rates,
        "gflop_per_step": {r.name: r.flops / 1e9 for r in runners},
        "ratio_vs_smp_contiguous_per_rep": ratios,
    }
    what = f"training step, {st.size}x{st.size}, batch {st.batch}, images/s"
    have_smp = "smp contiguous" in rates
    for name in ("fissure contiguous", "fissure channels_last"):
        if have_smp:
            ratio = median(ratios[name])
            sec.rows.append(
                Row(
                    "train",
                    f"{what} ({name} vs smp contiguous)",
                    fmt(rates[name]),
                    fmt(rates["smp contiguous"]),
                    f"{ratio:.2f}x",
                    ">= 1.0x",
                    verdict(ratio, 1.0),
                )
            )
        else:
            sec.rows.append(
                Row(
                    "train",
                    f"{what} ({name})",
                    fmt(rates[name]),
                    "smp absent",
                    "n/a",
                    ">= 1.0x",
                    "not measured",
                )
            )
    if have_smp:
        ratio = median(
            [
                a / b
                for a, b in zip(
                    step_times["smp channels_last"],
                    step_times["fissure channels_last"],
                    strict=True,
                )
            ]
        )
        sec.rows.append(
            Row(
                "train",
                f"{what} (both channels_last)",
                fmt(rates["fissure channels_last"]),
                fmt(rates["smp channels_last"]),
                f"{ratio:.2f}x",
                ">= 1.0x",
                verdict(ratio, 1.0),
            )
        )
    fastest = {name: min(t) for name, t in step_times.items()}
    if have_smp:
        sec.notes.append(
            "Robustness check, ratio of the fastest step of each over all repetitions: "
            + ", ".join(
                f"{name} {fastest['smp contiguous'] / fastest[name]:.2f}x"
                for name in ("fissure contiguous", "fissure channels_last")
            )
            + f" vs smp contiguous; both channels_last "
            f"{fastest['smp channels_last'] / fastest['fissure channels_last']:.2f}x."
        )
    sec.raw["fastest_step_seconds"] = fastest
    # Repetitions where the matmul ran near this run's best were the least slowed by other
    # processes; on a shared machine two intra-op threads wait at every barrier for a core.
    quiet = [k for k, m in enumerate(mm) if m >= 0.8 * max(mm)]
    sec.raw["uncontended_reps"] = quiet
    if have_smp and 0 < len(quiet) < len(mm):
        q = {name: [step_times[name][k] for k in quiet] for name in step_times}

        def qratio(a: str, b: str) -> float:
            return median([x / y for x, y in zip(q[a], q[b], strict=True)])

        sec.notes.append(
            f"Only the {len(quiet)} of {len(mm)} least contended repetitions (matmul >= 80 % of "
            f"this run's best, {max(mm):.0f} GFLOP/s): "
            f"fissure contiguous {qratio('smp contiguous', 'fissure contiguous'):.2f}x, "
            f"fissure channels_last {qratio('smp contiguous', 'fissure channels_last'):.2f}x vs "
            f"smp contiguous; both channels_last "
            f"{qratio('smp channels_last', 'fissure channels_last'):.2f}x; fissure "
            f"{st.batch / median(q['fissure channels_last']):.2f} img/s channels_last."
        )
    cl_gain = median(
        [
            a / b
            for a, b in zip(
                step_times["fissure contiguous"], step_times["fissure channels_last"], strict=True
            )
        ]
    )
    sec.notes.append(
        "GFLOP per training step (FlopCounterMode, forward+backward): "
        + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in ((r.name, r.flops) for r in runners))
        + f"; channels_last speeds fissure up {cl_gain:.2f}x over contiguous."
    )

    util.raw = {"matmul_n": st.matmul_n, "matmul_gflops": mm, "utilisation": utils}
    peak = median(mm)
    for name in ("fissure channels_last", "fissure contiguous", "smp contiguous"):
        if name not in utils:
            continue
        u = median(utils[name])
        gflops = [r for r in runners if r.name == name][0].flops / median(step_times[name]) / 1e9
        target = ">= 0.5" if device.type == "cpu" else "info"
        v = verdict(u, 0.5) if device.type == "cpu" else "info"
        util.rows.append(
            Row(
                "util",
                f"training GFLOP/s over {st.matmul_n}^2 matmul GFLOP/s ({name})",
                f"{gflops:.0f} GFLOP/s",
                f"{peak:.0f} GFLOP/s",
                f"{u:.2f}",
                target,
                v,
            )
        )
    if 0 < len(quiet) < len(mm):
        parts = []
        for name in ("fissure channels_last", "fissure contiguous", "smp contiguous"):
            if name in utils:
                parts.append(f"{name} {median([utils[name][k] for k in quiet]):.2f}")
        util.notes.append(
            f"Utilisation over the {len(quiet)} least contended repetitions only: "
            + ", ".join(parts)
            + "; contention slows the many short parallel regions of a training step far more "
            "than one long matmul."
        )
    if not want_util:
        util.rows.clear()
        util.notes.clear()
    return sec, util


def profile_train_step(st: Settings, device: torch.device, top: int = 15) -> str:
    """torch.profiler table of one fissure channels_last training step (after a warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    from fissure.model import ResNetUNet

    runner = StepRunner("fissure channels_last", ResNetUNet(), True, device, st)
    runner.step()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        runner.step()
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=top)


# --------------------------------------------------------------------------- loader


def bench_loader(
    st: Settings, device: torch.device, train_rates: dict[str, float], workdir: Path
) -> Section:
    from torch.utils.data import DataLoader

    from fissure.config import AugmentConfig, DataConfig
    from fissure.data import CrackDataset, FolderSource, collate
    from fissure.data.loader import default_workers
    from fissure.data.transforms import train_transform

    sec = Section("loader")
    root = gz_dataset(
        workdir / f"loader-{st.loader_pairs}-{st.loader_source}", st.loader_pairs, st.loader_source
    )
    source = FolderSource(root)
    data = DataConfig(root=str(root), mode="crop", size=st.size)
    dataset = CrackDataset(source, source.samples("all"), train_transform(data, AugmentConfig()))
    n = len(dataset)
    # (label, workers, intra-op threads of the main process while it iterates; None: as is)
    variants: list[tuple[str, int, int | None]] = []
    default = default_workers(device)  # what `fissure train` uses when num_workers is unset
    def label_of(w: int) -> str:
        return f"{w} worker{'s' if w != 1 else ''}"

    for w in sorted({*st.loader_workers, default}):
        variants.append((label_of(w), w, None))
        if w == 0 and torch.get_num_threads() > 1:
            variants.append(("0 workers, 1 intra-op thread", 0, 1))
    loaders = {
        label: DataLoader(
            dataset,
            batch_size=st.batch,
            shuffle=True,
            num_workers=w,
            collate_fn=collate,
            persistent_workers=w > 0,
        )
        for label, w, _ in variants
    }
    rates: dict[str, list[float]] = {label: [] for label, _, _ in variants}
    threads = torch.get_num_threads()
    for rep in range(st.reps + 1):
        for label, _, n_threads in rotate(variants, rep):
            torch.set_num_threads(n_threads or threads)
            t = time.perf_counter()
            seen = sum(len(b["name"]) for b in loaders[label])
            dt = time.perf_counter() - t
            torch.set_num_threads(threads)
            if rep:
                rates[label].append(seen / dt)
        if rep:
            log(
                f"loader rep {rep}/{st.reps}: "
                + ", ".join(f"{label} {rates[label][-1]:.1f}/s" for label, _, _ in variants)
            )
    loaders.clear()  # persistent workers exit with their loader
    gc.collect()

    consume = train_rates.get("fissure channels_last", float("nan"))
    med = {label: median(v) for label, v in rates.items()}
    sec.raw = {
        "pairs": n,
        "source_px": st.loader_source,
        "crop": st.size,
        "batch": st.batch,
        "samples_per_s": rates,
        "train_images_per_s": consume,
    }
    for label, _, _ in variants:
        ratio = med[label] / consume
        sec.rows.append(
            Row(
                "loader",
                f"DataLoader alone, gzip PNG {st.loader_source} px -> decode -> crop {st.size} -> "
                f"augment -> tensor, {label}: samples/s vs the training step's images/s",
                fmt(med[label], 1),
                f"{consume:.2f} img/s (train step)",
                f"{ratio:.1f}x",
                ">= 1.0x",
                verdict(ratio, 1.0),
            )
        )
    # CPU cost of one sample on one core: the fastest single-process variant.
    single = [med[label] for label, w, _ in variants if w == 0]
    data_s = 1.0 / max(single) if single else float("nan")
    compute_s = 1.0 / consume
    share = data_s / (data_s + compute_s)
    sec.raw.update(
        {"data_cpu_s_per_image": data_s, "compute_s_per_image": compute_s, "data_share": share}
    )
    sec.notes.append(
        f"Split on this machine: preparing one sample costs {data_s * 1000:.0f} ms of one core, "
        f"the training step {compute_s * 1000:.0f} ms per image on {threads} threads, so data "
        f"is {share:.1%} of the work when done serially; worker processes can hide at most "
        f"that share, and on {os.cpu_count()} cores they compete with the step's threads."
    )
    sec.notes.append(
        f"`fissure train` uses {default} workers here when train.num_workers is unset: "
        f"{med[label_of(default)]:.1f} samples/s against the training step's "
        f"{consume:.1f} images/s."
    )
    if "0 workers, 1 intra-op thread" in med:
        slow = med["0 workers, 1 intra-op thread"] / med["0 workers"]
        sec.notes.append(
            f"In the main process with {threads} intra-op threads each small per-sample tensor "
            f"op waits for a second thread that another process may hold: the same pipeline "
            f"runs {slow:.1f}x faster with 1 thread (DataLoader workers always use 1)."
        )
    return sec


# --------------------------------------------------------------------------- e2e


class _TimedLoader:
    """Wraps a DataLoader; records time spent waiting for batches and the iteration span."""

    def __init__(self, loader, kind: str, sink: list[dict[str, float]]) -> None:
        self.loader, self.kind, self.sink = loader, kind, sink

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        start = time.perf_counter()
        wait = 0.0
        it = iter(self.loader)  # worker start-up counts as waiting
        wait += time.perf_counter() - start
        while True:
            t = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                wait += time.perf_counter() - t
                break
            wait += time.perf_counter() - t
            yield batch
        self.sink.append({"kind": self.kind, "wait": wait, "span": time.perf_counter() - start})


def bench_e2e(st: Settings, device: torch.device, workdir: Path) -> Section:
    import fissure.engine as engine
    from fissure.config import load_config
    from fissure.data import build_source
    from fissure.workflow import train

    sys.path.insert(0, str(SCRIPTS))
    from notebook_baseline import NotebookPipeline, folder_pairs

    sec = Section("e2e")
    root = gz_dataset(
        workdir / f"e2e-{st.e2e_pairs}-{st.e2e_source}",
        st.e2e_pairs,
        st.e2e_source,
        fractions=(0.8, 0.1, 0.1),
    )
    train_pairs, val_pairs = folder_pairs(root, "train"), folder_pairs(root, "val")
    epochs = st.reps + 1
    notebook = NotebookPipeline(
        train_pairs,
        val_pairs,
        device=str(device),
        batch_size=st.e2e_batch,
        size=st.size,
        num_epochs=epochs,
        save_path=workdir / "notebook_best.pth",
        progress=False,
    )
    cfg_overrides = [
        f"data.root={root}",
        f"data.size={st.size}",
        f"train.batch_size={st.e2e_batch}",
        f"train.epochs={epochs}",
        "train.patience=0",
        f"train.device={device.type}",
    ]
    cfg = load_config(None, cfg_overrides)
    fis_loads: list[dict[str, float]] = []
    fis_epochs: list[dict[str, float]] = []
    nb_epochs: list[dict[str, Any]] = []
    w0_loads: list[dict[str, float]] = []
    w0_epochs: list[dict[str, float]] = []
    sink = {"loads": fis_loads}
    clock = {"last": time.perf_counter()}
    original_loader = engine.make_loader

    def timed_loader(*args, **kwargs):
        # Called by Trainer.train_epoch and Trainer.validate; the caller names the pass.
        kind = "val" if sys._getframe(1).f_code.co_name == "validate" else "train"
        return _TimedLoader(original_loader(*args, **kwargs), kind, sink["loads"])

    # The same defaults with train.num_workers=0, driven epoch by epoch through the Trainer
    # (train_epoch + validate + save_last, as fit does, without best.pt and plots).
    cfg_w0 = load_config(None, [*cfg_overrides, "train.num_workers=0"])
    w0 = engine.Trainer(
        cfg_w0,
        build_source(cfg_w0.data),
        workdir / "e2e-run-w0",
        progress=False,
        log=lambda m: None,
    )

    def w0_epoch() -> dict[str, float]:
        sink["loads"] = w0_loads
        t = time.perf_counter()
        w0.train_epoch()
        w0.validate()
        w0.state.epoch += 1
        w0.save_last()
        seconds = time.perf_counter() - t
        sink["loads"] = fis_loads
        loads = {d["kind"]: d for d in w0_loads[-2:]}
        return {
            "seconds": seconds,
            "train_seconds": loads["train"]["span"],
            "train_data_wait": loads["train"]["wait"],
            "val_seconds": loads["val"]["span"],
            "val_data_wait": loads["val"]["wait"],
        }

    def on_log(msg: str) -> None:
        if not msg.startswith("epoch "):
            return
        now = time.perf_counter()
        loads = {d["kind"]: d for d in fis_loads[-2:]}
        fis_epochs.append(
            {
                "seconds": now - clock["last"],
                "train_seconds": loads["train"]["span"],
                "train_data_wait": loads["train"]["wait"],
                "val_seconds": loads["val"]["span"],
                "val_data_wait": loads["val"]["wait"],
            }
        )
        # Alternate the order of the other two so neither always follows fissure's epoch.
        if len(nb_epochs) % 2:
            w0_epochs.append(w0_epoch())
            nb_epochs.append(notebook.epoch())
        else:
            nb_epochs.append(notebook.epoch())
            w0_epochs.append(w0_epoch())
        k = len(nb_epochs)
        log(
            f"e2e epoch {k}/{epochs}{' (warm-up)' if k == 1 else ''}: fissure "
            f"{fis_epochs[-1]['seconds']:.1f}s, notebook {nb_epochs[-1]['seconds']:.1f}s, "
            f"fissure num_workers=0 {w0_epochs[-1]['seconds']:.1f}s"
        )
        clock["last"] = time.perf_counter()

    engine.make_loader = timed_loader
    try:
        result = train(cfg, workdir / "e2e-run", overwrite=True, progress=False, log=on_log)
    finally:
        engine.make_loader = original_loader
    n_train = len(train_pairs)
    fis, nb, fw0 = fis_epochs[1:], nb_epochs[1:], w0_epochs[1:]
    ratios_w0 = [a["seconds"] / b["seconds"] for a, b in zip(nb, fw0, strict=True)]
    ratios = [a["seconds"] / b["seconds"] for a, b in zip(nb, fis, strict=True)]
    ratio = median(ratios)
    f_med, n_med = (median([e["seconds"] for e in x]) for x in (fis, nb))
    sec.rows.append(
        Row(
            "e2e",
            f"steady-state epoch (train {n_train} + val {len(val_pairs)} pairs of "
            f"{st.e2e_source} px gzip PNG, resize {st.size}, batch {st.e2e_batch}), seconds; "
            "ratio = notebook / fissure",
            f"{f_med:.1f} s",
            f"{n_med:.1f} s (notebook)",
            f"{ratio:.2f}x",
            ">= 1.5x" if device.type == "cpu" else "info",
            verdict(ratio, 1.5) if device.type == "cpu" else "info",
        )
    )

    sec.rows.append(
        Row(
            "e2e",
            "the same epoch with fissure's train.num_workers=0 (Trainer epoch, same process); "
            "ratio = notebook / fissure",
            f"{median([e['seconds'] for e in fw0]):.1f} s",
            f"{n_med:.1f} s (notebook)",
            f"{median(ratios_w0):.2f}x",
            ">= 1.5x" if device.type == "cpu" else "info",
            verdict(median(ratios_w0), 1.5) if device.type == "cpu" else "info",
        )
    )

    def split(rows: list[dict[str, float]]) -> dict[str, float]:
        keys = ("seconds", "train_seconds", "train_data_wait", "val_seconds", "val_data_wait")
        out = {k: median([r[k] for r in rows]) for k in keys}
        out["train_compute"] = median([r["train_seconds"] - r["train_data_wait"] for r in rows])
        out["other"] = out["seconds"] - out["train_seconds"] - out["val_seconds"]
        return out

    fs, ns, ws = split(fis), split(nb), split(fw0)
    sec.raw = {
        "train_pairs": n_train,
        "val_pairs": len(val_pairs),
        "epochs": epochs,
        "fissure_epochs": fis_epochs,
        "notebook_epochs": nb_epochs,
        "ratio_per_epoch": ratios,
        "fissure_split": fs,
        "fissure_workers0_epochs": w0_epochs,
        "fissure_workers0_split": ws,
        "ratio_per_epoch_workers0": ratios_w0,
        "notebook_split": ns,
        "fissure_history_seconds": [h["seconds"] for h in result.history],
        "fissure_config": [
            f"train.num_workers={cfg.train.num_workers}",
            f"train.channels_last={cfg.train.channels_last}",
            f"data.mode={cfg.data.mode}",
        ],
    }
    for label, s in (
        ("notebook", ns),
        (f"fissure (num_workers={cfg.train.num_workers})", fs),
        ("fissure (num_workers=0)", ws),
    ):
        sec.notes.append(
            f"{label}: epoch {s['seconds']:.1f} s = train {s['train_seconds']:.1f} s (waiting "
            f"for data {s['train_data_wait']:.1f} s, compute {s['train_compute']:.1f} s = "
            f"{s['train_compute'] / n_train * 1000:.0f} ms/image) + val {s['val_seconds']:.1f} s "
            f"(data {s['val_data_wait']:.1f} s) + checkpoints/logs {s['other']:.1f} s"
        )
    best = min(fs["train_compute"], ws["train_compute"])
    sec.notes.append(
        f"Compute-bound limit: the notebook spends {ns['train_data_wait']:.1f} s of its "
        f"{ns['seconds']:.1f} s epoch waiting for data, so removing all of it gains "
        f"{ns['seconds'] / max(ns['seconds'] - ns['train_data_wait'], 1e-9):.2f}x; even an "
        f"epoch of nothing but fissure's fastest training compute ({best:.1f} s, "
        f"{best / n_train * 1000:.0f} ms/image) would be "
        f"{ns['seconds'] / max(best, 1e-9):.2f}x faster than the notebook's."
    )
    gc.collect()
    return sec


# --------------------------------------------------------------------------- eval

EVAL_BATCH = 8


def synthetic_predictions(first: int, count: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(probs, masks)`` ``(count, 1, size, size)`` float32 for images ``first..``; each image
    depends only on its index. One image in eight is crack-free; the others carry thin straight
    cracks (about 1.3 % of pixels) that the probabilities mostly, not perfectly, recover."""
    probs, masks = [], []
    for i in range(first, first + count):
        g = torch.Generator().manual_seed(i)
        mask = torch.zeros(size, size)
        if i % 8:
            for _ in range(3):
                r = int(torch.randint(0, size - 3, (1,), generator=g))
                w = 1 + int(torch.randint(0, 3, (1,), generator=g))
                if int(torch.randint(0, 2, (1,), generator=g)):
                    mask[r : r + w, :] = 1
                else:
                    mask[:, r : r + w] = 1
        noise = torch.rand(size, size, generator=g)
        probs.append((noise**3 * 0.6 + mask * 0.45).clamp(0, 1))
        masks.append(mask)
    return torch.stack(probs)[:, None], torch.stack(masks)[:, None]


def rss_bytes() -> int:
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """This process's peak RSS. On Linux from VmHWM: ``ru_maxrss`` would report the parent's
    peak in a child, because Linux carries it over fork and exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def child_eval(method: str, n: int, size: int) -> dict[str, Any]:
    """Evaluate ``n`` synthetic predictions with ``method``; time counts the method's own work."""
    if method == "notebook":
        import numpy as np  # noqa: F401  (loaded before the baseline RSS, as in the notebook)
        from sklearn.metrics import classification_report, confusion_matrix
    else:
        from fissure.config import EvalConfig
        from fissure.evaluation import EvalResult, metrics_document
    batch = 16 if method == "notebook" else EVAL_BATCH
    synthetic_predictions(0, 1, size)
    rss0 = rss_bytes()
    busy = 0.0
    if method == "notebook":
        y_true, y_pred = [], []
        for first in range(0, n, batch):
            probs, masks = synthetic_predictions(first, min(batch, n - first), size)
            t = time.perf_counter()
            # compute_final_metrics: the probabilities stand in for torch.sigmoid(outputs)
            preds = (probs > 0.5).float()
            y_true.extend(masks.view(-1).cpu().numpy())
            y_pred.extend(preds.view(-1).cpu().numpy())
            busy += time.perf_counter() - t
        t = time.perf_counter()
        cm = confusion_matrix(y_true, y_pred)
        report = classification_report(y_true, y_pred, target_names=["Béton Sain", "Fissure"])
        busy += time.perf_counter() - t
        summary = {"confusion_matrix": cm.tolist(), "report_chars": len(report)}
    else:
        # A tuned threshold that differs from 0.5, so counts are kept at two thresholds.
        result = EvalResult.create(0.45, EvalConfig())
        for first in range(0, n, batch):
            probs, masks = synthetic_predictions(first, min(batch, n - first), size)
            names = [f"img{i:05d}" for i in range(first, first + len(probs))]
            t = time.perf_counter()
            result.update(probs, masks, names)
            busy += time.perf_counter() - t
        t = time.perf_counter()
        doc = metrics_document(result)
        rows = result.per_image()
        busy += time.perf_counter() - t
        counts = doc["pixel_micro"]["iou"]
        summary = {"iou": counts, "per_image_rows": len(rows)}
        # What the accumulators keep: per-image sweep tables and rows, never pixels.
        live = sum(tab.numel() * tab.element_size() for tab in result.sweep._tables)
        live += sum(sys.getsizeof(r) + 5 * 28 for m in result.meters.values() for r in m.rows)
        live += sum(sys.getsizeof(r) + 4 * 28 for m in result.tolerant.values() for r in m.rows)
    out = {
        "method": method,
        "n": n,
        "size": size,
        "seconds": busy,
        "rss_before": rss0,
        "peak_rss": peak_rss_bytes(),
        "summary": summary,
    }
    if method != "notebook":
        out["live_bytes"] = live
    return out


def run_child(
    args: list[str], max_gb: float, timeout: float = 3600, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run this script as a child with ``args`` (and ``env`` added to the environment); kill
    it (our own child, by pid) above ``max_gb`` of RSS. Returns its JSON or ``{"error": ...}``."""
    threads = ["--threads", str(torch.get_num_threads())]
    cmd = [sys.executable, str(Path(__file__).resolve()), *threads, *args]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env} if env else None,
    )
    killed = None
    try:
        import psutil

        watched = psutil.Process(proc.pid)
    except ImportError:
        watched = None
    start = time.monotonic()
    while proc.poll() is None:
        time.sleep(0.2)
        if watched is not None:
            try:
                if watched.memory_info().rss > max_gb * 2**30:
                    killed = f"killed above {max_gb} GiB RSS"
                    proc.kill()
            except Exception:
                pass
        if time.monotonic() - start > timeout:
            killed = f"killed after {timeout} s"
            proc.kill()
    out, err = proc.communicate()
    if killed or proc.returncode:
        return {"error": killed or f"exit {proc.returncode}: {err.strip().splitlines()[-1:]}"}
    return json.loads(out.strip().splitlines()[-1])


# glibc grows its mmap threshold after large frees, so freed per-batch buffers stay on the heap
# and RSS creeps with fragmentation; a fixed threshold shows the live memory instead.
FIXED_MMAP = {"MALLOC_MMAP_THRESHOLD_": str(256 * 1024)}
EVAL_METHODS = {
    "notebook": ("notebook", None),
    "fissure": ("fissure", None),
    "fissure, fixed mmap threshold": ("fissure", FIXED_MMAP),
}


def bench_eval(st: Settings) -> Section:
    sec = Section("eval")
    px = st.eval_px
    results: dict[str, dict[int, dict[str, Any]]] = {m: {} for m in EVAL_METHODS}
    # Estimate before running: the notebook keeps ~45 B per pixel per list (numpy scalar + ptr)
    # plus sklearn's array copies, about 113 B per pixel in all.
    avail = _available_gb()
    jobs: list[tuple[str, int]] = []
    for n in st.notebook_eval_sizes:
        need = 113 * n * px * px / 2**30 + 0.8
        if need > min(st.max_child_gb, 0.5 * avail):
            sec.notes.append(
                f"notebook method at {n} images not run: needs about {need:.1f} GiB "
                f"(cap {st.max_child_gb} GiB, {avail:.1f} GiB available)."
            )
            continue
        jobs.append(("notebook", n))
    for n in st.eval_sizes:
        jobs.append(("fissure", n))
        if st.eval_allocator_variant:
            jobs.append(("fissure, fixed mmap threshold", n))

    def run(job: tuple[str, int]) -> dict[str, Any]:
        label, n = job
        method, env = EVAL_METHODS[label]
        log(f"eval: {label}, {n} images of {px} px")
        args = ["--child", "eval", method, str(n), str(px)]
        return run_child(args, st.max_child_gb, env=env)

    # Timings need the children one at a time; --quick only checks that they run.
    workers = len(jobs) if st.parallel_children else 1
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for (label, n), res in zip(jobs, pool.map(run, jobs), strict=True):
            results[label][n] = res
    sec.raw = {"px": px, "results": results, "fixed_mmap_env": FIXED_MMAP}
    gib = 2**30
    good = {label: {k: v for k, v in d.items() if "error" not in v} for label, d in results.items()}
    for label, d in results.items():
        for n, v in d.items():
            if "error" in v:
                sec.notes.append(f"{label} at {n} images failed: {v['error']}")
    nb, fi = good["notebook"], good["fissure"]
    target = st.notebook_eval_target
    if len(nb) >= 2 and target in fi:
        (n1, a), (n2, b) = sorted(nb.items())[:2]
        slope_m = (b["peak_rss"] - a["peak_rss"]) / (n2 - n1)
        slope_t = (b["seconds"] - a["seconds"]) / (n2 - n1)
        nb_mem = a["peak_rss"] + slope_m * (target - n1)
        nb_time = a["seconds"] + slope_t * (target - n1)
        f = fi[target]
        ratio = nb_mem / f["peak_rss"]
        sec.rows.append(
            Row(
                "eval",
                f"evaluation of {target} predictions of {px}x{px}: peak RSS, fissure streaming vs "
                f"the notebook's lists + sklearn (extrapolated linearly from {n1} and {n2} "
                "images, which were measured)",
                f"{f['peak_rss'] / gib:.2f} GiB",
                f"{nb_mem / gib:.1f} GiB (notebook, extrapolated)",
                f"{ratio:.1f}x less",
                ">= 10x",
                verdict(ratio, 10.0),
            )
        )
        sec.rows.append(
            Row(
                "eval",
                f"evaluation of {target} predictions: seconds of the method's own work "
                "(fissure also computes a 99-threshold sweep and 2-px tolerant counts)",
                f"{f['seconds']:.1f} s",
                f"{nb_time:.1f} s (notebook, extrapolated)",
                f"{nb_time / f['seconds']:.2f}x",
                "info",
                "info",
            )
        )
        sec.raw["notebook_extrapolated"] = {"n": target, "peak_rss": nb_mem, "seconds": nb_time}
    for n in sorted(set(nb) & set(fi)):
        a, f = nb[n], fi[n]
        ratio = a["peak_rss"] / f["peak_rss"]
        sec.rows.append(
            Row(
                "eval",
                f"evaluation of {n} predictions of {px}x{px}: peak RSS (both measured)",
                f"{f['peak_rss'] / gib:.2f} GiB",
                f"{a['peak_rss'] / gib:.2f} GiB (notebook)",
                f"{ratio:.1f}x less",
                ">= 10x",
                verdict(ratio, 10.0),
            )
        )
    for label in ("fissure", "fissure, fixed mmap threshold"):
        d = good[label]
        if len(d) < 2:
            continue
        (n1, a), (n2, b) = sorted(d.items())[:2]
        growth = b["peak_rss"] / a["peak_rss"]
        sec.rows.append(
            Row(
                "eval",
                f"{label}: peak RSS at {n2} vs {n1} images ({n2 / n1:.0f}x the data)",
                f"{b['peak_rss'] / gib:.2f} GiB",
                f"{a['peak_rss'] / gib:.2f} GiB",
                f"{growth:.2f}x",
                "~1.0x (size-independent)",
                verdict(growth, 1.1, False),
            )
        )
    for label, d in good.items():
        for n, v in sorted(d.items()):
            sec.notes.append(
                f"{label}, {n} images: peak RSS {v['peak_rss'] / gib:.2f} GiB, "
                f"{(v['peak_rss'] - v['rss_before']) / gib:.2f} GiB above the "
                f"{v['rss_before'] / gib:.2f} GiB after imports; {v['seconds']:.1f} s"
                + (f"; live state {v['live_bytes'] / 1e6:.1f} MB" if "live_bytes" in v else "")
            )
    return sec


def _available_gb() -> float:
    try:
        import psutil

        return psutil.virtual_memory().available / 2**30
    except ImportError:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable"):
                return int(line.split()[1]) / 2**20
    return 4.0


# --------------------------------------------------------------------------- predict


class _InferVariant:
    def __init__(self, name: str, run: Callable[[], torch.Tensor]) -> None:
        self.name, self.run = name, run


def bench_predict(st: Settings, device: torch.device) -> Section:
    from fissure.inference import InputPolicy, forward_logits
    from fissure.model import ResNetUNet

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
        ratio = median([o / f for o, f in zip(times[other], times[fname], strict=True)])
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
    from fissure.prediction import Predictor, default_tiling, predict_image

    device = torch.device(device_type)
    torch.manual_seed(0)
    model = ResNetUNet()
    with torch.no_grad():
        # A trained model on a mostly crack-free photo: next to no predicted crack, so the
        # crack measurement does little and the figure is the network, tiling and blending.
        model.final.bias.fill_(-10.0)
    predictor = Predictor.from_checkpoint(make_checkpoint(model, Config(), epoch=0), device_type)
    del model
    rng = np.random.default_rng(0)
    image = rng.integers(90, 170, size=(height, width, 3), dtype=np.uint8)
    gc.collect()
    rss0 = rss_bytes()
    sync(device)
    t = time.perf_counter()
    pred = predict_image(predictor, image, tile=tile or None)
    sync(device)
    seconds = time.perf_counter() - t
    peak = peak_rss_bytes()
    tiling = default_tiling(predictor.policy, tile or None)
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


# --------------------------------------------------------------------------- output


def markdown(sections: list[Section], info: dict[str, Any], command: str) -> str:
    lines = [
        "# fissure speed benchmark",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine_line(info)}",
        "",
        "| section | measurement | fissure | comparison | ratio | target | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for sec in sections:
        for r in sec.rows:
            lines.append(
                f"| {r.section} | {r.measurement} | {r.fissure} | {r.comparison} | "
                f"{r.ratio} | {r.target} | {r.verdict} |"
            )
    notes = [(s.name, n) for s in sections for n in s.notes]
    if notes:
        lines += ["", "Notes:", ""]
        lines += [f"- {name}: {n}" for name, n in notes]
    lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="fissure speed benchmarks, each against its comparison in the same run.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test only")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {', '.join(SECTIONS)}",
    )
    parser.add_argument("--json", type=Path, help="also write every raw figure to this file")
    parser.add_argument("--reps", type=int, help="measured repetitions after the warm-up")
    parser.add_argument("--e2e-pairs", type=int, help="pairs in the end-to-end data set")
    parser.add_argument(
        "--workdir", type=Path, help="keep generated data sets here (default: a temporary folder)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also print a torch.profiler table of one training step to stderr",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads (default: torch's own; 1 with --quick)",
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads or args.quick:
        # A smoke test on a shared 2-core machine: one thread avoids fighting for the cores.
        torch.set_num_threads(args.threads or 1)
    if args.child:
        kind, *rest = args.child
        if kind == "eval":
            out = child_eval(rest[0], int(rest[1]), int(rest[2]))
        elif kind == "photo":
            out = child_photo(int(rest[0]), int(rest[1]), int(rest[2]), rest[3])
        else:
            raise SystemExit(f"unknown child {kind}")
        print(json.dumps(out))
        return 0

    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        raise SystemExit(
            f"--only: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}"
        )
    wanted = set(only)
    for s in only:
        wanted.update(NEEDS.get(s, ()))
    st = Settings.quick() if args.quick else Settings()
    if args.reps:
        st.reps = args.reps
    if args.e2e_pairs:
        st.e2e_pairs = args.e2e_pairs
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    info = machine_info(device)
    command = "python scripts/bench.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    log(f"machine: {machine_line(info)}")
    sections: list[Section] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fissure-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        rates: dict[str, float] = {}
        if "train" in wanted:
            log("section train (+ util)")
            train_sec, util_sec = bench_train(st, device, "util" in wanted)
            rates = train_sec.raw["images_per_s"]
            sections += [train_sec, util_sec]
            gc.collect()
            if args.profile:
                log(
                    "profile of one fissure channels_last training step:\n"
                    + profile_train_step(st, device)
                )
        if "loader" in wanted:
            log("section loader")
            sections.append(bench_loader(st, device, rates, workdir))
        if "e2e" in wanted:
            log("section e2e")
            sections.append(bench_e2e(st, device, workdir))
        if "eval" in wanted:
            log("section eval")
            sections.append(bench_eval(st))
        if "predict" in wanted:
            log("section predict")
            sections.append(bench_predict(st, device))
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    info["wall_seconds"] = round(time.perf_counter() - started, 1)
    print(markdown(sections, info, command))
    if args.json:
        doc = {
            "command": command,
            "machine": info,
            "settings": asdict(st),
            "sections": {
                s.name: {"rows": [asdict(r) for r in s.rows], "notes": s.notes, "raw": s.raw}
                for s in sections
            },
        }
        args.json.write_text(json.dumps(doc, indent=2, default=str))
    log(f"done in {info['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
