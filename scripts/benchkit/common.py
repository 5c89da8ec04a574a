"""Shared pieces of the benchmark: settings, result rows, statistics, machine and data sets."""

from __future__ import annotations

import gzip
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

SCRIPTS = Path(__file__).resolve().parents[1]  # scripts/, where notebook_baseline.py lives
BENCH = SCRIPTS / "bench.py"  # the entry point; child processes re-run it with --child


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


def paired_ratio(slower: list[float], faster: list[float]) -> float:
    """Median over repetitions of ``slower[k] / faster[k]``: each ratio pairs two variants
    timed in the same repetition, so the load of that moment cancels out."""
    return median([a / b for a, b in zip(slower, faster, strict=True)])


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


def random_batch(
    batch: int, size: int, memory_format: torch.memory_format = torch.channels_last
) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded batch to time training steps on: (batch, 3, size, size) normal images in
    ``memory_format`` and (batch, 1, size, size) masks of about 2 % crack pixels, as CFD's
    (the loss value does not change a step's cost)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen).contiguous(memory_format=memory_format)
    y = (torch.rand(batch, 1, size, size, generator=gen) < 0.02).float()
    return x, y


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
