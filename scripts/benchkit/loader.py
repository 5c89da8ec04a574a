"""Loader: DataLoader samples/s against the training step's consumption rate."""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path

import torch

from .common import Row, Section, Settings, fmt, gz_dataset, log, median, rotate, verdict


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
