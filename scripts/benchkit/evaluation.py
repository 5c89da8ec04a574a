"""Eval: peak RSS and time of the notebook's evaluation against fissure's streaming one,
one child process each; also the child-process and RSS helpers that predict uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from .common import BENCH, Row, Section, Settings, log, verdict

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
    """Run ``scripts/bench.py`` as a child with ``args`` (and ``env`` added to the environment);
    kill it (our own child, by pid) above ``max_gb`` of RSS. Returns its JSON or
    ``{"error": ...}``."""
    threads = ["--threads", str(torch.get_num_threads())]
    cmd = [sys.executable, str(BENCH), *threads, *args]
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
