"""The library API behind the CLI: train, resume, evaluate and predict on run folders.

Every function here is what a ``fissure`` command calls, so a notebook gets the same
behaviour as the command line::

    from fissure import load_config, train, evaluate, predict
    cfg = load_config("configs/default.yaml", ["train.epochs=2"])
    run = train(cfg, "runs/demo")
    metrics = evaluate(run.best, split="test", out="runs/demo/eval")
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .checkpoint import Checkpoint
from .config import Config, DataConfig, check_threshold, load_config, read_yaml, save_config
from .data import CrackDataset, PairSource
from .data import build_source as folder_source
from .data.transforms import eval_transform
from .errors import CheckpointError, ConfigError, DataError, FissureError
from .evaluation import evaluate_dataset, metrics_document, reload_samples
from .model import ResNetUNet
from .prediction.files import Fetch, InputImage, find_inputs, predict_files
from .report import (
    TensorBoardLog,
    pick_samples,
    plot_curves,
    write_eval_reports,
    write_history,
    write_skipped,
)
from .runtime import autocast_dtype
from .snowflake.runs import check_push_target, fetch_stage_image, push_run, read_checkpoint
from .training.distributed import is_main_process
from .training.loop import Trainer

# A folder holding any of these has made progress worth keeping; config.yaml alone has not.
RUN_FILES = ("last.pt", "best.pt", "history.csv")
Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    best: Path
    last: Path
    best_epoch: int
    best_score: float | None
    history: list[dict[str, Any]]


def build_source(
    data: DataConfig, refresh: bool = False, progress: bool = True, session: Any = None
) -> PairSource:
    """The pairs ``data.source`` names: local folders, or a Snowflake stage and its manifest.

    For a stage, ``session`` is the Snowpark session to read it with (default: the one
    ``data.snowflake.connection`` names, else the active one); ``refresh`` fetches the
    files again instead of using the local cache, ``progress`` shows its bar.
    """
    if data.source != "stage":
        return folder_source(data)
    from .snowflake.source import StageSource  # Snowpark is heavy; only stage users pay

    return StageSource.from_config(data.snowflake, refresh=refresh, session=session,
                                   progress=progress)


def prepare_run_dir(out: str | Path | None, overwrite: bool = False) -> Path:
    """A fresh run folder: ``out`` if it holds no run, or ``runs/<timestamp>`` when not given."""
    if out is None:
        out = Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(out)
    if run_dir.exists() and not run_dir.is_dir():
        raise FissureError(f"{run_dir}: exists and is not a folder")
    existing = [name for name in RUN_FILES if (run_dir / name).exists()]
    if existing and not overwrite:
        raise FissureError(f"{run_dir}: already holds a run ({', '.join(existing)}); "
                           "use --resume to continue it, --overwrite to replace it, "
                           "or another --out")
    if existing:
        for name in (*RUN_FILES, "config.yaml", "curves.png", "skipped.csv"):
            (run_dir / name).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _run(trainer: Trainer, start_step: int = 0) -> TrainResult:
    run_dir = trainer.run_dir

    board = TensorBoardLog(run_dir) if trainer.cfg.train.tensorboard else None

    def after_epoch(history: list[dict[str, Any]]) -> None:
        if board is not None:
            board.log(history[-1])
        write_history(history, run_dir / "history.csv")
        plot_curves(history, run_dir / "curves.png")
        if trainer.state.skipped:
            write_skipped(trainer.state.skipped, run_dir / "skipped.csv")

    trainer.on_epoch_end = after_epoch
    state = trainer.fit(start_step)
    return TrainResult(run_dir, run_dir / "best.pt", run_dir / "last.pt", state.best_epoch,
                       state.best, state.history)


def train(
    cfg: Config,
    out: str | Path | None = None,
    *,
    overwrite: bool = False,
    source: PairSource | None = None,
    refresh: bool = False,
    push: str | None = None,
    progress: bool = True,
    log: Log = print,
) -> TrainResult:
    """Train a model as ``cfg`` says, writing ``best.pt``, ``last.pt``, history and curves.

    ``refresh`` fetches a stage source's files again instead of using the local cache;
    ``push`` (``@STAGE/models/RUN/``) uploads the run's results there at the end.
    """
    if push:
        check_push_target(push, cfg.data.snowflake.connection)  # before training, not after
    source = source or build_source(cfg.data, refresh, progress)
    if is_main_process():
        run_dir = prepare_run_dir(out, overwrite)
        save_config(cfg, run_dir / "config.yaml")
        log(f"run folder: {run_dir}")
    elif out is None:
        raise ConfigError("--out: give the run folder explicitly when training under torchrun")
    else:  # rank 0 of a torchrun group owns the folder; the others never write to it
        run_dir = Path(out)
    trainer = Trainer(cfg, source, run_dir, progress=progress, log=log)
    log(f"device {trainer.device}; {len(trainer.train_set)} train / {len(trainer.val_set)} val "
        f"images from {source.description}; {trainer.workers} loader workers")
    result = _run(trainer)
    if push and is_main_process():
        push_run(run_dir, push, log=log)
    return result


def resume(
    run_dir: str | Path,
    overrides: Sequence[str] = (),
    *,
    source: PairSource | None = None,
    progress: bool = True,
    log: Log = print,
) -> TrainResult:
    """Continue the run in ``run_dir`` from its ``last.pt`` (``train.epochs=N`` may extend it)."""
    run_dir = Path(run_dir)
    if not (run_dir / "last.pt").is_file():
        raise CheckpointError(f"{run_dir}: no last.pt to resume from")
    cfg = load_config(None, overrides, base=read_yaml(run_dir / "config.yaml"))
    source = source or build_source(cfg.data, progress=progress)
    trainer = Trainer(cfg, source, run_dir, progress=progress, log=log)
    step = trainer.resume()
    if overrides and is_main_process():
        save_config(cfg, run_dir / "config.yaml")
    log(f"resuming {run_dir} after epoch {trainer.state.epoch}"
        + (f", step {step}" if step else ""))
    return _run(trainer, step)


def data_config_for(ckpt_cfg: Config, data: str | Path | None) -> DataConfig:
    """``--data``: a YAML config's data section, a dataset folder, or None (the checkpoint's)."""
    if data is None:
        return ckpt_cfg.data
    path = Path(data)
    if path.is_file():
        return load_config(path).data
    if not path.is_dir():
        raise DataError(f"{path}: no such data folder or config file")
    same_root = Path(ckpt_cfg.data.root).expanduser().resolve() == path.resolve()
    return replace(ckpt_cfg.data, source="folder", root=str(path),
                   split_files=ckpt_cfg.data.split_files if same_root else None)


def load_model(checkpoint: str | Path, device: str = "auto") -> tuple[ResNetUNet, Checkpoint]:
    """(model in eval mode on ``device``, checkpoint) from a checkpoint file or stage path."""
    ckpt = read_checkpoint(checkpoint)  # a stage path too
    return ckpt.build_model(device), ckpt


def evaluate(
    checkpoint: str | Path,
    data: str | Path | None = None,
    split: str = "test",
    out: str | Path | None = None,
    *,
    threshold: float | None = None,
    device: str = "auto",
    num_workers: int = 0,
    samples_per_group: int = 2,
    amp: bool | None = None,
    progress: bool = True,
    log: Log = print,
) -> dict[str, Any]:
    """Score a checkpoint on a split in one streaming pass; returns the metrics document.

    The tuned threshold is the checkpoint's unless ``threshold`` is given; every figure is also
    reported at 0.5. ``amp`` (default: as the checkpoint was trained) runs the model in mixed
    precision where the hardware has it; ``False`` gives fp32 figures on every machine.
    With ``out``, writes ``metrics.json``, ``per_image.csv``, ``confusion_matrix.png``,
    ``pr_curve.png`` and ``samples.png`` there (the worst, median and best
    ``samples_per_group`` images by per-image IoU, re-read and predicted again).
    """
    model, ckpt = load_model(checkpoint, device)
    ckpt_cfg = ckpt.config
    data_cfg = data_config_for(ckpt_cfg, data)
    source = build_source(data_cfg, progress=progress)
    dataset = CrackDataset(source, source.samples(split), eval_transform(), data_cfg.on_error)
    if threshold is not None:
        thr, origin = check_threshold(threshold, "--threshold"), "given with --threshold"
    else:
        thr, origin = ckpt.threshold, "stored in the checkpoint"
    dev = next(model.parameters()).device
    policy = ckpt.policy
    if amp is not None:
        policy = replace(policy, amp=amp)
    result = evaluate_dataset(model, dataset, policy, thr, ckpt_cfg.eval, dev, num_workers,
                              progress)
    dtype = str(autocast_dtype(dev, policy.amp)).removeprefix("torch.")
    header = {"checkpoint": str(checkpoint), "data": source.description, "split": split,
              "device": str(dev), "compute_dtype": dtype,
              "thresholds": {"tuned_source": origin}}
    metrics = metrics_document(result, header)
    if out is not None:
        rows = result.per_image()
        views = reload_samples(model, dataset, pick_samples(rows, samples_per_group), policy, dev)
        write_eval_reports(metrics, rows, views, out)
    return metrics


def _input_files(inputs: Sequence[str | Path], pattern: str = "**/*") -> list[InputImage]:
    """Images named by ``inputs``; see :func:`fissure.prediction_files.find_inputs`."""
    return find_inputs(inputs, pattern)


def predict(
    checkpoint: str | Path,
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    threshold: float | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    tta: bool = False,
    batch_size: int = 8,
    glob: str = "**/*",
    save_prob: bool = False,
    overlay: bool = True,
    min_area: int | None = None,
    px_per_mm: float | None = None,
    device: str = "auto",
    amp: bool | None = None,
    fetch: Fetch | None = None,
    progress: bool = True,
    log: Log = print,
) -> list[dict[str, Any]]:
    """Predict files, folders (searched with ``glob``) and, given ``fetch``, stage paths.

    Writes ``<stem>.png`` masks (input size), overlays, optional probability maps, and
    ``predictions.csv``/``.json`` with one record per image; returns the records. See
    :mod:`fissure.prediction` for tiling and :mod:`fissure.prediction_files` for outputs.
    """
    return predict_files(checkpoint, inputs, out, glob=glob, threshold=threshold, tile=tile,
                         overlap=overlap, tta=tta, batch_size=batch_size, min_area=min_area,
                         px_per_mm=px_per_mm, save_prob=save_prob, overlay=overlay,
                         device=device, amp=amp, fetch=fetch, progress=progress)


def demo(cfg: Config, out: str | Path = "runs/demo", *, count: int = 120, seed: int = 0,
         progress: bool = True, log: Log = print) -> dict[str, Any]:
    """Synthesise a dataset under ``out/data``, train, evaluate on its test split, predict.

    The synthetic data is only a smoke test of the whole pipeline, never an accuracy claim.
    """
    from .data.synth import generate_dataset

    out = Path(out)
    data_dir = out / "data"
    if not (data_dir / "train").is_dir():
        log(f"writing {count} synthetic pairs of {cfg.data.size} px to {data_dir}")
        generate_dataset(data_dir, count=count, size=cfg.data.size, seed=seed)
    cfg = replace(cfg, data=replace(cfg.data, source="folder", root=str(data_dir),
                                    split_files=None))
    run = train(cfg, out / "run", overwrite=True, progress=progress, log=log)
    metrics = evaluate(run.best, split="test", out=out / "eval", progress=progress, log=log)
    test_images = data_dir / "test" / "images"
    predict(run.best, [test_images], out / "predictions", progress=progress, log=log)
    return {"metrics": metrics,
            "outputs": {"run folder": run.run_dir, "checkpoint": run.best,
                        "curves": run.run_dir / "curves.png", "evaluation": out / "eval",
                        "predictions": out / "predictions"}}


# -- Snowflake stage paths as checkpoints, inputs and outputs (the rest is in .remote) ------


def predict_with_stage(checkpoint: str | Path, inputs: Sequence[str | Path], out: str | Path,
                       **options: Any) -> list[dict[str, Any]]:
    """:func:`predict` (same ``options``), where ``checkpoint`` and ``out`` may be stage paths.

    For a stage ``out`` (``@STAGE/predictions/``) the outputs are written to a temporary
    folder and uploaded there; the records and predictions.csv/json name the stage copies.
    """
    ckpt = read_checkpoint(checkpoint) if str(checkpoint).startswith("@") else checkpoint
    if any(str(item).startswith("@") for item in inputs):
        options.setdefault("fetch", fetch_stage_image)
    if not str(out).startswith("@"):
        return predict(ckpt, inputs, out, **options)
    import tempfile

    from .snowflake.source import push_files, resolve_session

    prefix = check_push_target(str(out)).rstrip("/")
    session = resolve_session()
    with tempfile.TemporaryDirectory(prefix="fissure-predict-") as tmp:
        records = predict(ckpt, inputs, tmp, **options)

        def staged(text: str) -> str:
            return text.replace(tmp + "/", prefix + "/")

        files = sorted(p for p in Path(tmp).iterdir() if p.is_file())
        for file in files:
            if file.suffix in (".csv", ".json"):
                file.write_text(staged(file.read_text("utf-8")), "utf-8")
        push_files(session, files, prefix)
    return [{k: staged(v) if isinstance(v, str) else v for k, v in r.items()} for r in records]
