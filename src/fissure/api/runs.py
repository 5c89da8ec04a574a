"""Training runs: a fresh or resumed run folder, trained, and pushed to a stage if asked."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from ..checkpoint import load_checkpoint
from ..config import (
    Config,
    DataConfig,
    changed_keys,
    load_config,
    read_yaml,
    save_config,
)
from ..data import PairSource
from ..data import build_source as folder_source
from ..environment import describe_environment
from ..errors import CheckpointError, ConfigError, FissureError
from ..report import EVAL_FILES, TensorBoardLog, plot_curves, write_history, write_skipped
from ..snowflake import registry
from ..snowflake import runs as stage_runs
from ..snowflake.environment import loader_workers, writable_dir
from ..snowflake.runs import check_push_target
from ..snowflake.session import Sessions
from ..snowflake.source import StageSource
from ..training import RunKeeper, build_setup, fit, is_main_process, process_group

# A folder holding any of these has made progress worth keeping; config.yaml alone has not.
RUN_FILES = ("last.pt", "best.pt", "history.csv")
Log = Callable[[str], None]
Start = Literal["new", "overwrite", "resume"]
"""How a run begins in its folder: fresh, replacing an earlier run, or continuing it."""


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


def _recorded(cfg: Config) -> Config:
    """``cfg`` as ``config.yaml`` keeps it: a stage refresh is done once, not on resume."""
    fetched = replace(cfg.data.snowflake, refresh=False)
    return replace(cfg, data=replace(cfg.data, snowflake=fetched))


def prepare_run_dir(out: str | Path | None, overwrite: bool = False) -> Path:
    """The run folder: ``out`` if it holds no run (or ``overwrite``), else a ``FissureError``;
    when not given, a new ``runs/<timestamp>`` (``-2``, ``-3``... where runs started in the
    same second), below ``/tmp`` inside Snowflake when the working folder is read-only.

    Nothing is removed here: :func:`clear_run` does that once the new run has been built.
    """
    if out is None:
        return _claim(writable_dir(Path("runs") / time.strftime("%Y%m%d-%H%M%S")))
    run_dir = Path(out)
    if run_dir.exists() and not run_dir.is_dir():
        raise FissureError(f"{run_dir}: exists and is not a folder")
    existing = [name for name in RUN_FILES if (run_dir / name).exists()]
    if existing and not overwrite:
        raise FissureError(f"{run_dir}: already holds a run ({', '.join(existing)}); "
                           "use --resume to continue it, --overwrite to replace it, "
                           "or another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _claim(base: Path) -> Path:
    """A folder made by this call: ``base``, else ``base-2``, ``base-3``..."""
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        folder = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise FissureError(f"{base}: 999 runs started in this second; give --out")


def clear_run(run_dir: Path) -> None:
    """Remove what an earlier run left in ``run_dir``: its checkpoints, history, config,
    curves, kept epochs, TensorBoard events and the evaluation of its model. Other files
    are the user's and stay."""
    for name in (*RUN_FILES, "config.yaml", "curves.png", "skipped.csv", *EVAL_FILES):
        (run_dir / name).unlink(missing_ok=True)
    for pattern in ("epochs/epoch_*.pt", "tensorboard/events.out.tfevents.*"):
        for path in run_dir.glob(pattern):
            path.unlink(missing_ok=True)


def _fit(cfg: Config, source: PairSource, run_dir: Path, *, start: Start, progress: bool,
         log: Log) -> TrainResult:
    """Build the run from ``cfg``, train it (continuing ``last.pt`` when ``start`` is
    ``"resume"``) and write history, curves and skipped files after every epoch.

    Only a run that has been built changes the folder: ``"overwrite"`` clears the earlier
    run and ``config.yaml`` is written then (with the batch and crop that ``auto`` chose),
    so a config that fails to build leaves the folder as it was.
    """
    resuming = start == "resume"
    workers = loader_workers(cfg.train.num_workers, log)  # 0 in the warehouse sandbox
    with process_group():
        setup = build_setup(replace(cfg, train=replace(cfg.train, num_workers=workers)), source,
                            resuming=resuming)
        for note in setup.notes:
            log(note)
        keeper = RunKeeper(setup, run_dir)
        step = keeper.resume() if resuming else 0
        if setup.dist.main:
            if start == "overwrite":
                clear_run(run_dir)
            recorded = replace(setup.cfg, train=replace(setup.cfg.train,
                                                        num_workers=cfg.train.num_workers))
            save_config(_recorded(recorded), run_dir / "config.yaml")
        board = TensorBoardLog(run_dir) if cfg.train.tensorboard else None
        if resuming:
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


def _stage_session(cfg: Config, push: str | None, sessions: Sessions,
                   register: registry.ModelRef | None = None) -> Any:
    """The session a run needs (stage data, ``push`` or ``register``), opened before training
    starts so that a missing one fails now rather than after hours."""
    if push:
        check_push_target(push)
    if register is not None:
        registry.require_ml("--register")
    if push or register is not None or cfg.data.source == "stage":
        return sessions.get(cfg.data.snowflake.connection)
    return None


def _push(sessions: Sessions, cfg: Config, run_dir: Path, push: str | None, log: Log) -> None:
    """Upload the run; the session is looked up again: hours of training may have closed it."""
    if push and is_main_process():  # under torchrun every rank gets here; one upload is enough
        name = cfg.data.snowflake.connection
        stage_runs.push_run(sessions.get(name), run_dir, push, log=log,
                            reopen=lambda: sessions.reopen(name))


def _register(sessions: Sessions, cfg: Config, result: TrainResult,
              ref: registry.ModelRef | None, log: Log) -> None:
    """Log the run's ``best.pt`` as a new version of ``ref``, with its validation metrics and
    those of a ``metrics.json`` in the run folder."""
    if ref is None or not is_main_process():
        return
    session = sessions.get(cfg.data.snowflake.connection)  # reopened if hours closed it
    entry = registry.Registration(ref, None, tuple(registry.evaluations_beside(result.best)))
    logged = registry.register(session, load_checkpoint(result.best), entry, str(result.best))
    log(f"registered {result.best} as {registry.SCHEME}{ref.qualified}/{logged.version_name}")


def train(
    cfg: Config,
    out: str | Path | None = None,
    *,
    overwrite: bool = False,
    push: str | None = None,
    register: str | None = None,
    connection: str | None = None,
    progress: bool = True,
    log: Log = print,
) -> TrainResult:
    """Train a model as ``cfg`` says, writing ``best.pt``, ``last.pt``, history and curves.

    ``data.snowflake.refresh`` fetches a stage source's files again instead of using the
    local cache (``config.yaml`` records it as false: a resume need not fetch again);
    ``push`` (``@STAGE/models/RUN/``) uploads the run's results there at the end;
    ``register`` (``[DB.SCHEMA.]NAME[/VERSION]``) logs ``best.pt`` as a new version of that
    Model Registry model at the end, with its metrics (needs the ``snowflake-ml`` extra).
    """
    ref = registry.registration_ref(register) if register else None
    return _session_fit(cfg, lambda: _new_run_dir(out, overwrite, log),
                        start="overwrite" if overwrite else "new", push=push, ref=ref,
                        connection=connection, progress=progress, log=log)


def _session_fit(
    cfg: Config,
    run_dir_for: Callable[[], Path],
    *,
    start: Start,
    push: str | None,
    ref: registry.ModelRef | None,
    connection: str | None,
    progress: bool,
    log: Log,
) -> TrainResult:
    """What :func:`train` and :func:`resume` share: the session (when the data, ``push``
    or ``ref`` needs one), the source, the fit, then the upload and the registration.

    ``run_dir_for`` is called once the source has been built, so that a source that
    cannot be read leaves no new run folder and no rewritten ``config.yaml`` behind.
    """
    if is_main_process():
        log(describe_environment(cfg.train.device).line())
    with Sessions(connection, log=log) as sessions:
        session = _stage_session(cfg, push, sessions, ref)
        source = build_source(cfg.data, progress=progress, session=session)
        run_dir = run_dir_for()
        result = _fit(cfg, source, run_dir, start=start, progress=progress, log=log)
        _push(sessions, cfg, run_dir, push, log)
        _register(sessions, cfg, result, ref, log)
    return result


def _new_run_dir(out: str | Path | None, overwrite: bool, log: Log) -> Path:
    """The run folder, checked and made by rank 0 only (:func:`prepare_run_dir`)."""
    if is_main_process():
        # Inside Snowflake a read-only working folder sends the run under /tmp (logged).
        run_dir = prepare_run_dir(None if out is None else writable_dir(out, log), overwrite)
        log(f"run folder: {run_dir}")
        return run_dir
    if out is None:
        raise ConfigError("--out: give the run folder explicitly when training under torchrun")
    # rank 0 of a torchrun group owns the folder; the others never write it
    return writable_dir(out, lambda line: None)


RESUME_KEYS = (
    "train.epochs", "train.max_minutes", "train.patience", "train.min_delta",
    "train.num_workers", "train.device", "train.amp", "train.channels_last", "train.compile",
    "train.tensorboard", "train.keep_every", "train.nonfinite",
    "data.root", "data.cache", "data.on_error", "data.max_skip_fraction",
    "data.snowflake.connection", "data.snowflake.cache_dir", "data.snowflake.refresh",
    "eval.",
)
"""The settings a resumed run may change: its length and budget, stopping, where and how
fast it runs, where its data lies, and evaluation. The others shaped the model, the
optimiser, the schedule or the order of the samples; last.pt continues them as they were."""


def _check_resumable(recorded: Config, cfg: Config, run_dir: Path) -> None:
    """A ConfigError naming the overrides a resume cannot honour (see :data:`RESUME_KEYS`)."""
    refused = [key for key in changed_keys(recorded, cfg)
               if not any(key == k or (k.endswith(".") and key.startswith(k))
                          for k in RESUME_KEYS)]
    if refused:
        raise ConfigError(
            f"{', '.join(refused)}: cannot change when resuming {run_dir}, whose last.pt "
            f"continues the model, optimiser and schedule built with it; start a new run "
            f"instead (fissure train --config {run_dir / 'config.yaml'} --set ... --out NEW)")


def resume(
    run_dir: str | Path,
    overrides: Sequence[str] = (),
    *,
    push: str | None = None,
    register: str | None = None,
    connection: str | None = None,
    progress: bool = True,
    log: Log = print,
) -> TrainResult:
    """Continue the run in ``run_dir`` from its ``last.pt`` (``train.epochs=N`` may extend it);
    ``push`` uploads its results to a stage folder and ``register`` logs ``best.pt`` in the
    Model Registry at the end, as :func:`train` does."""
    ref = registry.registration_ref(register) if register else None
    run_dir = Path(run_dir)
    if not (run_dir / "last.pt").is_file():
        raise CheckpointError(f"{run_dir}: no last.pt to resume from")
    recorded = read_yaml(run_dir / "config.yaml")
    cfg = load_config(None, overrides, base=recorded)
    _check_resumable(load_config(None, (), base=recorded), cfg, run_dir)

    return _session_fit(cfg, lambda: run_dir, start="resume", push=push, ref=ref,
                        connection=connection, progress=progress, log=log)


