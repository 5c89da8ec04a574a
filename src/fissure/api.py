"""The library API: what every ``fissure`` command calls, for notebooks and scripts alike.

::

    import fissure
    cfg = fissure.load_config("configs/default.yaml", ["train.epochs=2"])
    run = fissure.train(cfg, "runs/demo")
    metrics = fissure.evaluate(run.best, split="test", out="runs/demo/eval")
    fissure.predict(run.best, ["photos/"], "runs/demo/pred")

Checkpoints, inputs and outputs may be Snowflake stage paths (``@DB.SCHEMA.STAGE/...``).
A call opens the session it needs once and passes it down (see
:mod:`fissure.snowflake.session`). Inside Snowflake (a notebook, a stored procedure, the
Container Runtime) the active session is used, and a connection name is ignored with one
line saying so. Outside, ``connection`` (a ``connections.toml`` name, what ``--connection``
gives) comes first, then the name a config or checkpoint holds
(``data.snowflake.connection``), then the process's active session, then the connector's
default connection. Inside Snowflake, run folders and outputs whose folder cannot be written
go under ``/tmp``, and loader workers are 0 in the warehouse sandbox.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .checkpoint import Checkpoint
from .config import (
    Config,
    DataConfig,
    SnowflakeConfig,
    check_threshold,
    load_config,
    read_yaml,
    save_config,
)
from .data import CrackDataset, PairSource, is_stage_path
from .data import build_source as folder_source
from .data.stats import dataset_stats, implied_crop
from .data.transforms import eval_transform
from .environment import describe_environment
from .errors import CheckpointError, ConfigError, DataError, FissureError
from .evaluation import EvaluateOptions, evaluate_dataset, metrics_document, reload_samples
from .losses import auto_pos_weight
from .model import ResNetUNet
from .prediction import OutputOptions, PredictOptions, predict_files
from .report import (
    TensorBoardLog,
    pick_samples,
    plot_curves,
    write_eval_reports,
    write_history,
    write_skipped,
)
from .runtime import autocast_dtype
from .snowflake import runs as stage_runs
from .snowflake.environment import loader_workers, writable_dir
from .snowflake.runs import check_push_target, push_outputs, read_checkpoint, stage_fetcher
from .snowflake.session import Sessions, describe_session
from .snowflake.source import StageSource
from .snowflake.upload import upload_data as upload_dataset
from .training import RunKeeper, build_setup, fit, is_main_process, process_group

__all__ = [
    "EvaluateOptions",
    "environment",
    "OutputOptions",
    "PredictOptions",
    "TrainResult",
    "build_source",
    "data_stats",
    "demo",
    "evaluate",
    "load_model",
    "predict",
    "pull",
    "push_run",
    "resume",
    "train",
    "upload_data",
]

# A folder holding any of these has made progress worth keeping; config.yaml alone has not.
RUN_FILES = ("last.pt", "best.pt", "history.csv")
Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainResult:
    """A finished (or early-stopped) run: its folder, checkpoints, best epoch and history."""

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

    For a stage, ``session`` reads it (default: the session ``data.snowflake.connection``
    names, else the active one); ``refresh`` fetches its files again instead of using the
    local cache, and ``progress`` shows the cache's bar.
    """
    if data.source != "stage":
        return folder_source(data)
    session = session or Sessions().get(data.snowflake.connection)
    return StageSource.from_config(data.snowflake, session=session, refresh=refresh,
                                   progress=progress)


def prepare_run_dir(out: str | Path | None, overwrite: bool = False) -> Path:
    """A fresh run folder: ``out`` if it holds no run, or ``runs/<timestamp>`` when not given
    (below ``/tmp`` inside Snowflake when the working folder is read-only)."""
    if out is None:
        out = writable_dir(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
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


def _fit(cfg: Config, source: PairSource, run_dir: Path, *, resuming: bool, progress: bool,
         log: Log) -> TrainResult:
    """Build the run from ``cfg``, train it (continuing ``last.pt`` when ``resuming``) and
    write history, curves and skipped files after every epoch."""
    board = TensorBoardLog(run_dir) if cfg.train.tensorboard else None
    workers = loader_workers(cfg.train.num_workers, log)  # 0 in the warehouse sandbox
    cfg = replace(cfg, train=replace(cfg.train, num_workers=workers))
    with process_group():
        setup = build_setup(cfg, source)
        for note in setup.notes:
            log(note)
        if setup.cfg.train.batch_size != cfg.train.batch_size and setup.dist.main:
            save_config(setup.cfg, run_dir / "config.yaml")  # a resume keeps the probed batch
        keeper = RunKeeper(setup, run_dir)
        step = 0
        if resuming:
            step = keeper.resume()
            log(f"resuming {run_dir} after epoch {keeper.state.epoch}"
                + (f", step {step}" if step else ""))
        else:
            log(f"device {setup.device}; {len(setup.train_set)} train / {len(setup.val_set)} "
                f"val images from {source.description}; {setup.workers} loader workers")

        def after_epoch(history: list[dict[str, Any]]) -> None:
            if board is not None:
                board.log(history[-1])
            write_history(history, run_dir / "history.csv")
            plot_curves(history, run_dir / "curves.png", iou_threshold=cfg.train.threshold)
            if keeper.state.skipped:
                write_skipped(keeper.state.skipped, run_dir / "skipped.csv")

        state = fit(setup, keeper, start_step=step, progress=progress, log=log,
                    on_epoch_end=after_epoch)
    return TrainResult(run_dir, run_dir / "best.pt", run_dir / "last.pt", state.best_epoch,
                       state.best, state.history)


def _stage_session(cfg: Config, push: str | None, sessions: Sessions) -> Any:
    """The session a run needs (stage data, or ``push``), opened before training starts so
    that a missing one fails now rather than after hours."""
    if push:
        check_push_target(push)
    if push or cfg.data.source == "stage":
        return sessions.get(cfg.data.snowflake.connection)
    return None


def _push(sessions: Sessions, cfg: Config, run_dir: Path, push: str | None, log: Log) -> None:
    """Upload the run; the session is looked up again: hours of training may have closed it."""
    if push and is_main_process():  # under torchrun every rank gets here; one upload is enough
        name = cfg.data.snowflake.connection
        stage_runs.push_run(sessions.get(name), run_dir, push, log=log,
                            reopen=lambda: sessions.reopen(name))


def train(
    cfg: Config,
    out: str | Path | None = None,
    *,
    overwrite: bool = False,
    push: str | None = None,
    connection: str | None = None,
    refresh: bool = False,
    progress: bool = True,
    log: Log = print,
) -> TrainResult:
    """Train a model as ``cfg`` says, writing ``best.pt``, ``last.pt``, history and curves.

    ``refresh`` fetches a stage source's files again instead of using the local cache;
    ``push`` (``@STAGE/models/RUN/``) uploads the run's results there at the end.
    """
    if is_main_process():
        log(describe_environment(cfg.train.device).line())
    with Sessions(connection, log=log) as sessions:
        session = _stage_session(cfg, push, sessions)
        source = build_source(cfg.data, refresh, progress, session=session)
        run_dir = _new_run_dir(cfg, out, overwrite, log)
        result = _fit(cfg, source, run_dir, resuming=False, progress=progress, log=log)
        _push(sessions, cfg, run_dir, push, log)
    return result


def _new_run_dir(cfg: Config, out: str | Path | None, overwrite: bool, log: Log) -> Path:
    """The run folder, made and given ``config.yaml`` by rank 0 only."""
    if is_main_process():
        # Inside Snowflake a read-only working folder sends the run under /tmp (logged).
        run_dir = prepare_run_dir(None if out is None else writable_dir(out, log), overwrite)
        save_config(cfg, run_dir / "config.yaml")
        log(f"run folder: {run_dir}")
        return run_dir
    if out is None:
        raise ConfigError("--out: give the run folder explicitly when training under torchrun")
    # rank 0 of a torchrun group owns the folder; the others never write it
    return writable_dir(out, lambda line: None)


def resume(
    run_dir: str | Path,
    overrides: Sequence[str] = (),
    *,
    push: str | None = None,
    connection: str | None = None,
    progress: bool = True,
    log: Log = print,
) -> TrainResult:
    """Continue the run in ``run_dir`` from its ``last.pt`` (``train.epochs=N`` may extend it);
    ``push`` uploads its results to a stage folder at the end, as :func:`train` does."""
    run_dir = Path(run_dir)
    if not (run_dir / "last.pt").is_file():
        raise CheckpointError(f"{run_dir}: no last.pt to resume from")
    cfg = load_config(None, overrides, base=read_yaml(run_dir / "config.yaml"))
    if is_main_process():
        log(describe_environment(cfg.train.device).line())
    with Sessions(connection, log=log) as sessions:
        session = _stage_session(cfg, push, sessions)
        source = build_source(cfg.data, progress=progress, session=session)
        if overrides and is_main_process():
            save_config(cfg, run_dir / "config.yaml")
        result = _fit(cfg, source, run_dir, resuming=True, progress=progress, log=log)
        _push(sessions, cfg, run_dir, push, log)
    return result


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


def _checkpoint(checkpoint: str | Path | Checkpoint, sessions: Sessions) -> Checkpoint:
    """A loaded checkpoint, a file, or a stage path (plain or gzip) read through a session."""
    if isinstance(checkpoint, Checkpoint):
        return checkpoint
    session = sessions.get() if is_stage_path(str(checkpoint)) else None
    return read_checkpoint(checkpoint, session)


def load_model(
    checkpoint: str | Path, device: str = "auto", *, connection: str | None = None
) -> tuple[ResNetUNet, Checkpoint]:
    """(model in eval mode on ``device``, checkpoint) from a checkpoint file or stage path."""
    with Sessions(connection) as sessions:
        ckpt = _checkpoint(checkpoint, sessions)
    return ckpt.build_model(device), ckpt


def evaluate(
    checkpoint: str | Path | Checkpoint,
    data: str | Path | None = None,
    split: str = "test",
    out: str | Path | None = None,
    options: EvaluateOptions | None = None,
    *,
    connection: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score a checkpoint on a split in one streaming pass; returns the metrics document.

    ``data`` is a dataset folder or YAML config (default: the checkpoint's data). The tuned
    threshold is the checkpoint's unless ``options.threshold`` is given; every figure is also
    reported at 0.5. With ``out``, writes ``metrics.json``, ``per_image.csv``,
    ``confusion_matrix.png``, ``pr_curve.png`` and ``samples.png`` there.
    """
    with Sessions(connection) as sessions:
        return _evaluate(checkpoint, data, split, out, options or EvaluateOptions(), sessions,
                         progress)


def _evaluate(checkpoint: str | Path | Checkpoint, data: str | Path | None, split: str,
              out: str | Path | None, opts: EvaluateOptions, sessions: Sessions,
              progress: bool) -> dict[str, Any]:
    """:func:`evaluate`, with the call's sessions."""
    ckpt = _checkpoint(checkpoint, sessions)
    model = ckpt.build_model(opts.device)
    data_cfg = data_config_for(ckpt.config, data)
    session = sessions.get(data_cfg.snowflake.connection) if data_cfg.source == "stage" else None
    source = build_source(data_cfg, progress=progress, session=session)
    dataset = CrackDataset(source, source.samples(split), eval_transform(), data_cfg.on_error)
    if opts.threshold is not None:
        thr, origin = check_threshold(opts.threshold, "--threshold"), "given with --threshold"
    else:
        thr, origin = ckpt.threshold, "stored in the checkpoint"
    dev = next(model.parameters()).device
    policy = ckpt.policy if opts.amp is None else replace(ckpt.policy, amp=opts.amp)
    workers = loader_workers(opts.num_workers) or 0  # 0 in the warehouse sandbox
    result = evaluate_dataset(model, dataset, policy, thr, ckpt.config.eval, dev,
                              workers, progress)
    dtype = str(autocast_dtype(dev, policy.amp)).removeprefix("torch.")
    header = {"checkpoint": str(checkpoint if not isinstance(checkpoint, Checkpoint)
                                else checkpoint.origin),
              "data": source.description, "split": split, "device": str(dev),
              "compute_dtype": dtype, "environment": describe_environment(str(dev)).as_dict(),
              "thresholds": {"tuned_source": origin}}
    metrics = metrics_document(result, header)
    if out is not None:
        out = writable_dir(out)  # /tmp inside Snowflake when the folder is read-only
        rows = result.per_image()
        picks = pick_samples(rows, opts.samples_per_group)
        write_eval_reports(metrics, rows, reload_samples(model, dataset, picks, policy, dev), out)
    return metrics


def predict(
    checkpoint: str | Path | Checkpoint,
    inputs: Sequence[str | Path],
    out: str | Path,
    options: PredictOptions | None = None,
    output: OutputOptions | None = None,
    *,
    connection: str | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Predict files, folders (searched with ``output.glob``) and stage paths; returns records.

    Writes ``<stem>.png`` masks (input size), overlays, optional probability maps, and
    ``predictions.csv``/``.json`` with one record per image (see
    :mod:`fissure.prediction.files`). ``checkpoint`` and ``out`` may be stage paths: a stage
    ``out`` (``@STAGE/predictions/``) gets the files uploaded, and the records name them there.
    """
    options, output = options or PredictOptions(), output or OutputOptions()
    if is_stage_path(str(out)):
        check_push_target(str(out))  # before any work, not after
    with Sessions(connection) as sessions:
        return _predict(_checkpoint(checkpoint, sessions), inputs, str(out), options, output,
                        sessions, progress)


def _predict(ckpt: Checkpoint, inputs: Sequence[str | Path], out: str,
             options: PredictOptions, output: OutputOptions, sessions: Sessions,
             progress: bool) -> list[dict[str, Any]]:
    """:func:`predict`, with the call's sessions."""
    fetch = None
    if any(is_stage_path(str(item)) for item in inputs):
        fetch = stage_fetcher(sessions.get())
    if not is_stage_path(out):
        out = str(writable_dir(out))  # /tmp inside Snowflake when the folder is read-only
        return predict_files(ckpt, inputs, out, options, output, fetch=fetch, progress=progress)
    with tempfile.TemporaryDirectory(prefix="fissure-predict-") as tmp:
        records = predict_files(ckpt, inputs, tmp, options, output, fetch=fetch,
                                progress=progress)
        return push_outputs(sessions.get(), tmp, out, records)


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
    metrics = evaluate(run.best, split="test", out=out / "eval", progress=progress)
    predict(run.best, [data_dir / "test" / "images"], out / "predictions", progress=progress)
    return {"metrics": metrics,
            "outputs": {"run folder": run.run_dir, "checkpoint": run.best,
                        "curves": run.run_dir / "curves.png", "evaluation": out / "eval",
                        "predictions": out / "predictions"}}


def data_stats(data: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Per split of a dataset folder (or a config's data), its sizes, crack share, widths and
    crack-free share, and the recipe settings they imply: the largest crop every training
    image holds and the ``pos_weight`` that ``pos_weight: auto`` would derive."""
    path = Path(data)
    data_cfg = load_config(path).data if path.is_file() else replace(
        DataConfig(), root=str(path), split_files=None)
    splits = dataset_stats(build_source(data_cfg, progress=progress), progress)
    train = next((s for s in splits if s.split == "train"), splits[0])
    implied = {"data.size (crop mode)": implied_crop(train)}
    if train.crack_fraction > 0:
        implied["train.loss.params.pos_weight"] = round(auto_pos_weight(train.crack_fraction), 2)
    return {"splits": splits, "implied": implied}


def environment(device: str = "auto", connection: str | None = None) -> dict[str, str]:
    """What ``fissure env`` prints: versions, device, CPU precision, threads, GPUs, extras,
    and the Snowflake session a command would use (named, never opened)."""
    env = describe_environment(device)
    gpus = "; ".join(f"{g['index']}: {g['name']}, {g['memory_gib']} GiB, "
                     f"{'bf16' if g['bf16'] else 'no bf16'}" for g in env.cuda) or "none"
    amp = (f"bf16 autocast ({env.amp_dtype})" if env.amp_dtype != "float32"
           else "fp32 (no native bf16 here)")
    return {
        "fissure": env.fissure, "python": env.python, "torch": env.torch,
        "torchvision": env.torchvision, "device": env.device,
        "cpu capability": f"{env.cpu_capability} "
                          f"({'native' if env.cpu_bf16 else 'no native'} bf16)",
        "train.amp": amp, "cuda devices": gpus, "threads": str(env.threads),
        "loader workers": f"{env.loader_workers} (train.num_workers default on {env.device})",
        "extras": ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in env.extras.items()),
        "snowflake session": describe_session(connection),
    }


# -- moving datasets and runs between this machine and a stage -----------------------------


def upload_data(data_dir: str | Path, names: SnowflakeConfig | None = None, *,
                connection: str | None = None, replace_view: bool = False,
                progress: bool = True) -> dict[str, Any]:
    """Put a local dataset (any layout ``train`` reads) into a stage and build the manifest
    view training reads; ``names`` gives the database, schema, stage and manifest (default:
    the notebook's). Idempotent. Returns ``uploaded``/``skipped`` counts, manifest ``rows``
    and the qualified ``stage`` and ``manifest`` names."""
    names = names or SnowflakeConfig()
    with Sessions(connection) as sessions:
        return upload_dataset(sessions.get(names.connection), data_dir, names,
                              replace_view=replace_view, progress=progress)


def push_run(run_dir: str | Path, prefix: str, *, connection: str | None = None,
             log: Log = print) -> list[str]:
    """Upload a run's ``best.pt``, ``config.yaml`` and metrics under the stage folder
    ``prefix``; ``connection`` defaults to the one the run's config names."""

    run_dir = Path(run_dir)
    check_push_target(prefix)
    configured = None
    if (run_dir / "config.yaml").is_file():
        stored = read_yaml(run_dir / "config.yaml").get("data") or {}
        configured = (stored.get("snowflake") or {}).get("connection")
    with Sessions(connection, log=log) as sessions:
        return stage_runs.push_run(sessions.get(configured), run_dir, prefix, log=log,
                                   reopen=lambda: sessions.reopen(configured))


def pull(stage_path: str, out: str | Path = ".", *, connection: str | None = None) -> Path:
    """Download one stage file (a model, a mask) into folder ``out``, gunzipped when it was
    gzip; returns the local path (``best_model.pth.gz`` arrives as ``best_model.pth``)."""
    with Sessions(connection) as sessions:
        return stage_runs.pull(sessions.get(), stage_path, out)
