"""E2e: steady-state epoch time, the notebook's pipeline against ``fissure.workflow.train``."""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .common import SCRIPTS, Row, Section, Settings, gz_dataset, log, median, verdict


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
    import fissure.training.loop as engine
    import fissure.training.validation as validation
    from fissure.api import build_source, train
    from fissure.config import load_config
    from fissure.runtime import autocast_dtype
    from fissure.training import RunKeeper, build_setup
    from fissure.training.interruption import Interrupt

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
    fp32_loads: list[dict[str, float]] = []
    fp32_epochs: list[dict[str, float]] = []
    sink = {"loads": fis_loads}
    clock = {"last": time.perf_counter()}
    original_loader = engine.make_loader

    def timed_loader(*args, **kwargs):
        # Called by train_one_epoch and validate; the caller names the pass.
        kind = "val" if sys._getframe(1).f_code.co_name == "validate" else "train"
        return _TimedLoader(original_loader(*args, **kwargs), kind, sink["loads"])

    # The same defaults in fp32 (train.amp=false: what a CPU without native bf16 runs, and
    # fissure's CPU default before bf16), driven epoch by epoch through the training loop's
    # functions (train_one_epoch + validate + save_last, as fit does, without best.pt and
    # plots).
    cfg_fp32 = load_config(None, [*cfg_overrides, "train.amp=false"])
    fp32 = build_setup(cfg_fp32, build_source(cfg_fp32.data))
    fp32_keeper = RunKeeper(fp32, workdir / "e2e-run-fp32")
    (workdir / "e2e-run-fp32").mkdir(parents=True, exist_ok=True)
    quiet = {"log": lambda m: None, "progress": False}

    def fp32_epoch() -> dict[str, float]:
        sink["loads"] = fp32_loads
        t = time.perf_counter()
        engine.train_one_epoch(fp32, fp32_keeper.state, Interrupt(), **quiet)
        engine.validate(fp32, fp32_keeper.state, **quiet)
        fp32_keeper.state.epoch += 1
        fp32_keeper.save_last()
        seconds = time.perf_counter() - t
        sink["loads"] = fis_loads
        loads = {d["kind"]: d for d in fp32_loads[-2:]}
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
            fp32_epochs.append(fp32_epoch())
            nb_epochs.append(notebook.epoch())
        else:
            nb_epochs.append(notebook.epoch())
            fp32_epochs.append(fp32_epoch())
        k = len(nb_epochs)
        log(
            f"e2e epoch {k}/{epochs}{' (warm-up)' if k == 1 else ''}: fissure "
            f"{fis_epochs[-1]['seconds']:.1f}s, notebook {nb_epochs[-1]['seconds']:.1f}s, "
            f"fissure fp32 {fp32_epochs[-1]['seconds']:.1f}s"
        )
        clock["last"] = time.perf_counter()

    # Training batches come through the loop's make_loader, validation through its own.
    engine.make_loader = validation.make_loader = timed_loader
    try:
        result = train(cfg, workdir / "e2e-run", overwrite=True, progress=False, log=on_log)
    finally:
        engine.make_loader = validation.make_loader = original_loader
    n_train = len(train_pairs)
    fis, nb, ffp32 = fis_epochs[1:], nb_epochs[1:], fp32_epochs[1:]
    ratios_fp32 = [a["seconds"] / b["seconds"] for a, b in zip(nb, ffp32, strict=True)]
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
            "the same epoch with fissure in fp32, train.amp=false (loop functions, same process); "
            "ratio = notebook / fissure",
            f"{median([e['seconds'] for e in ffp32]):.1f} s",
            f"{n_med:.1f} s (notebook)",
            f"{median(ratios_fp32):.2f}x",
            ">= 1.5x" if device.type == "cpu" else "info",
            verdict(median(ratios_fp32), 1.5) if device.type == "cpu" else "info",
        )
    )

    def split(rows: list[dict[str, float]]) -> dict[str, float]:
        keys = ("seconds", "train_seconds", "train_data_wait", "val_seconds", "val_data_wait")
        out = {k: median([r[k] for r in rows]) for k in keys}
        out["train_compute"] = median([r["train_seconds"] - r["train_data_wait"] for r in rows])
        out["other"] = out["seconds"] - out["train_seconds"] - out["val_seconds"]
        return out

    fs, ns, ws = split(fis), split(nb), split(ffp32)
    sec.raw = {
        "train_pairs": n_train,
        "val_pairs": len(val_pairs),
        "epochs": epochs,
        "fissure_epochs": fis_epochs,
        "notebook_epochs": nb_epochs,
        "ratio_per_epoch": ratios,
        "fissure_split": fs,
        "fissure_fp32_epochs": fp32_epochs,
        "fissure_fp32_split": ws,
        "ratio_per_epoch_fp32": ratios_fp32,
        "notebook_split": ns,
        "fissure_history_seconds": [h["seconds"] for h in result.history],
        "fissure_config": [
            f"train.num_workers={cfg.train.num_workers}",
            f"train.channels_last={cfg.train.channels_last}",
            f"data.mode={cfg.data.mode}",
            f"train.amp={cfg.train.amp} (compute dtype {autocast_dtype(device, cfg.train.amp)})",
        ],
    }
    for label, s in (
        ("notebook", ns),
        ("fissure defaults", fs),
        ("fissure fp32 (train.amp=false)", ws),
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
