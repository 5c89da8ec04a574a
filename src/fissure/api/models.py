"""A trained model at work: evaluate it on a split, predict photos, or run the demo."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..checkpoint import Checkpoint
from ..config import Config, DataConfig, check_threshold, load_config
from ..data import CrackDataset, is_stage_path
from ..data.transforms import eval_transform
from ..environment import describe_environment
from ..errors import DataError
from ..evaluation import EvaluateOptions, evaluate_dataset, metrics_document, reload_samples
from ..model import ResNetUNet
from ..prediction import OutputOptions, PredictOptions, predict_files
from ..report import pick_samples, write_eval_reports
from ..runtime import autocast_dtype
from ..snowflake.environment import loader_workers, writable_dir
from ..snowflake.registry import is_registry_reference
from ..snowflake.registry import read_checkpoint as read_registered
from ..snowflake.runs import check_push_target, push_outputs, read_checkpoint, stage_fetcher
from ..snowflake.session import Sessions
from .runs import Log, build_source, train


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
    """A loaded checkpoint, a file, a stage path (plain or gzip) read through a session, or
    a registered version (``snowflake://NAME/VERSION``, ``snowflake://NAME/default``)."""
    if isinstance(checkpoint, Checkpoint):
        return checkpoint
    if is_registry_reference(str(checkpoint)):
        return read_registered(sessions.get(), str(checkpoint))
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
    eval_cfg = ckpt.config.eval if opts.tta is None else replace(ckpt.config.eval,
                                                                  tta=opts.tta)
    result = evaluate_dataset(model, dataset, policy, thr, eval_cfg, dev, workers, progress)
    dtype = str(autocast_dtype(dev, policy.amp)).removeprefix("torch.")
    header = {"checkpoint": str(checkpoint if not isinstance(checkpoint, Checkpoint)
                                else checkpoint.origin),
              "data": source.description, "split": split, "device": str(dev),
              "compute_dtype": dtype, "tta": eval_cfg.tta,
              "environment": describe_environment(str(dev)).as_dict(),
              "thresholds": {"tuned_source": origin}}
    metrics = metrics_document(result, header)
    if out is not None:
        out = writable_dir(out)  # /tmp inside Snowflake when the folder is read-only
        rows = result.per_image()
        picks = pick_samples(rows, opts.samples_per_group)
        views = reload_samples(model, dataset, picks, policy, dev, eval_cfg.tta)
        write_eval_reports(metrics, rows, views, out)
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
    from ..data.synth import generate_dataset

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


