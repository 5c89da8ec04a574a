"""fissure as a Snowflake ML Job on a compute pool: ``fissure snowflake train-job``.

A job runs a *payload* folder that ``snowflake.ml.jobs.submit_directory`` uploads to a stage
and mounts in the job's container: here fissure's wheel (built from this source tree with
``pip wheel --no-deps``), the files the command reads (the config), :data:`SPEC` (what to
run) and :data:`ENTRY`, the script the job starts. It installs the wheel with
``pip --no-index --no-deps`` (the job needs no public network: torch and the rest come with
Snowflake's runtime image) and runs ``python -m fissure ...``. No credential travels: inside
the job fissure opens its session from the runtime's token (see
:mod:`~fissure.snowflake.session`).

Several instances (``instances > 1``) run through ML Jobs' *direct per-instance execution*
(``parallel=True``): the entrypoint starts on every instance, which gives it
``SNOWFLAKE_JOB_INDEX``, ``SNOWFLAKE_JOBS_COUNT`` and ``MLRS_HEAD_IP`` (instance 0's
address). The entry script hands them to ``torchrun`` (``--node-rank``, ``--nnodes``,
``--master-addr``, port :data:`MASTER_PORT`), with one process per GPU, and fissure's own
DDP path (:mod:`fissure.training.distributed`) reads torchrun's variables as with
``--devices``. One instance with several GPUs runs ``torchrun --standalone``.

While the job runs its log is streamed to the caller (:func:`follow`); a training job pushes
its run folder (``--push``) under the job's stage folder, from which :func:`pull_run` brings
it back when the job has ended.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, FissureError
from .environment import Log
from .files import listed, reason
from .runs import check_push_target
from .transfer import get_prefix

ENTRY = "fissure_job.py"
"""The script a fissure job starts (written into the payload)."""
SPEC = "fissure_job.json"
"""What the entry script runs: fissure's arguments, and whether through torchrun."""
MASTER_PORT = 29500
"""torchrun's rendezvous port on instance 0 of a multi-instance job."""
TERMINAL = frozenset({"DONE", "FAILED", "CANCELLED", "INTERNAL_ERROR", "DELETED"})
"""ML Job statuses after which nothing more happens (``snowflake.ml.jobs.job``)."""
RUNTIME_MODULES = ("torch", "torchvision", "numpy", "PIL", "scipy", "skimage", "yaml", "click",
                   "tqdm", "pandas", "snowflake.snowpark")
"""What fissure imports that its wheel, installed without dependencies, expects the image
to hold; the entry script names those missing in one line instead of a traceback."""
_SOURCE_FILES = ("pyproject.toml", "README.md", "LICENSE")

ENTRY_SCRIPT = '''"""Entry point of a fissure ML Job, written by fissure.snowflake.jobs.

Installs the fissure wheel shipped beside it (no index: no public network needed), then runs
fissure as fissure_job.json says: through torchrun when the job spans several instances or
GPUs, with ML Jobs' topology variables as torchrun's node rank, node count and address.
"""
import glob
import importlib.util
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def command(spec):
    args = [a.replace("{payload}", HERE) for a in spec["args"]]
    if not spec["distributed"]:
        return [sys.executable, "-m", *args]
    import torch

    per_node = max(torch.cuda.device_count(), 1)
    nodes = int(os.environ.get("SNOWFLAKE_JOBS_COUNT") or 1)
    if nodes == 1 and per_node == 1:
        return [sys.executable, "-m", *args]
    launch = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={per_node}"]
    if nodes == 1:
        launch.append("--standalone")
    else:
        launch += [f"--nnodes={nodes}", f"--node-rank={os.environ['SNOWFLAKE_JOB_INDEX']}",
                   f"--master-addr={os.environ['MLRS_HEAD_IP']}",
                   f"--master-port={spec['master_port']}"]
    return [*launch, "-m", *args]


def main():
    with open(os.path.join(HERE, "fissure_job.json"), encoding="utf-8") as handle:
        spec = json.load(handle)
    wheels = sorted(glob.glob(os.path.join(HERE, "fissure-*.whl")))
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "--no-index",
                           "--no-deps", "--force-reinstall", *wheels])
    missing = [m for m in spec["modules"] if importlib.util.find_spec(m) is None]
    if missing:
        print("fissure job: the runtime image lacks " + ", ".join(missing), flush=True)
        sys.exit(2)
    sys.exit(subprocess.call(command(spec)))


if __name__ == "__main__":
    main()
'''


@dataclass(frozen=True)
class JobSpec:
    """What a fissure job runs: ``python -m ARGS`` (``{payload}`` in an argument is the
    payload folder in the job), through torchrun when ``distributed``; ``files`` are copied
    into the payload under their names."""

    args: tuple[str, ...]
    files: dict[str, Path] = field(default_factory=dict)
    instances: int = 1
    distributed: bool = False


def job_name(kind: str) -> str:
    """``FISSURE_TRAIN_20260101_120000_1A2B3C``: a new job's name, a valid identifier."""
    return f"FISSURE_{kind.upper()}_{time.strftime('%Y%m%d_%H%M%S')}_{uuid.uuid4().hex[:6].upper()}"


def job_folder(stage: str, name: str) -> str:
    """``@S/jobs/NAME``: where ML Jobs uploads the payload of job ``name`` submitted with
    ``stage_name=stage``, and where fissure's job writes its results."""
    return check_push_target(stage).rstrip("/") + "/" + name


def source_tree() -> Path:
    """The folder of fissure's ``pyproject.toml``, which its wheel is built from."""
    import fissure

    root = Path(fissure.__file__).resolve().parents[2]
    project = root / "pyproject.toml"
    if not project.is_file() or 'name = "fissure"' not in project.read_text("utf-8"):
        raise ConfigError(f"{root}: no fissure source tree to build the job's wheel from "
                          "(this fissure is installed without one); pass a built wheel")
    return root


def build_wheel(dest: Path, root: Path | None = None) -> Path:
    """fissure's wheel, built with ``pip wheel --no-deps`` from a copy of the source tree
    (the tree itself gets no ``build/``) into ``dest``; returns its path."""
    root = root or source_tree()
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fissure-wheel-") as tmp:
        copy = Path(tmp) / "src-tree"
        shutil.copytree(root / "src" / "fissure", copy / "src" / "fissure",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for name in _SOURCE_FILES:
            if (root / name).is_file():
                shutil.copy2(root / name, copy / name)
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dest)]
        try:
            import setuptools  # noqa: F401  (present: build offline, without isolation)

            command.append("--no-build-isolation")
        except ImportError:
            pass
        done = subprocess.run([*command, str(copy)], capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        raise FissureError(f"{root}: cannot build fissure's wheel ({lines[-1][:300]})")
    wheels = sorted(dest.glob("fissure-*.whl"))
    if not wheels:
        raise FissureError(f"{root}: pip wheel made no fissure wheel in {dest}")
    return wheels[-1]


def write_payload(folder: Path, spec: JobSpec, wheel: Path) -> Path:
    """The payload of a job in ``folder``: the wheel, ``spec.files``, :data:`SPEC` and
    :data:`ENTRY`; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    if not wheel.is_file():
        raise ConfigError(f"{wheel}: wheel not found")
    shutil.copy2(wheel, folder / wheel.name)
    for name, path in spec.files.items():
        if not Path(path).is_file():
            raise ConfigError(f"{path}: file not found")
        shutil.copy2(path, folder / name)
    document = {"args": list(spec.args), "distributed": spec.distributed,
                "master_port": MASTER_PORT, "modules": list(RUNTIME_MODULES)}
    (folder / SPEC).write_text(json.dumps(document, indent=2) + "\n", "utf-8")
    (folder / ENTRY).write_text(ENTRY_SCRIPT, "utf-8")
    return folder


def submit_payload(session: Any, folder: Path, compute_pool: str, stage: str, name: str,
                   instances: int = 1) -> Any:
    """``snowflake.ml.jobs.submit_directory`` of a payload: job ``name`` on ``compute_pool``,
    its payload under ``stage``, on ``instances`` instances (the entrypoint on each of them
    when more than one); returns the ``MLJob``."""
    from snowflake.ml import jobs

    if instances < 1:
        raise ConfigError(f"--instances: must be at least 1, got {instances}")
    options: dict[str, Any] = {"name": name}
    if instances > 1:
        # every instance must be there: a torchrun group waits for all of its nodes
        options.update(parallel=True, min_instances=instances)
    try:
        return jobs.submit_directory(str(folder), compute_pool, entrypoint=ENTRY,
                                     stage_name=check_push_target(stage),
                                     target_instances=instances, session=session, **options)
    except FissureError:
        raise
    except Exception as exc:  # the library's ValueError/RuntimeError or a SQL error
        raise FissureError(f"{compute_pool}: cannot submit the job ({reason(exc)})") from None


def read_log(job: Any) -> list[str]:
    """The log of ``job`` so far (all of it once the job has ended); a one-line
    FissureError if it cannot be read."""
    try:
        return list(job.get_logs(as_list=True))
    except Exception as exc:
        raise FissureError(f"job {job.id}: cannot read its log ({reason(exc)})") from None


def _log_lines(job: Any) -> list[str]:
    try:
        return read_log(job)
    except FissureError:  # no container yet (PENDING), or a hiccup: the next poll tries again
        return []


def _new_lines(shown: list[str], lines: list[str]) -> list[str]:
    """The lines of ``lines`` after those already ``shown``. The service keeps only a recent
    window of a long log, so the last line shown is looked for when the window has moved."""
    if len(lines) >= len(shown) and lines[:len(shown)] == shown:
        return lines[len(shown):]
    if shown and shown[-1] in lines:
        return lines[len(lines) - lines[::-1].index(shown[-1]):]
    return lines


def follow(job: Any, log: Log = print, poll_s: float = 10.0,
           sleep: Callable[[float], Any] = time.sleep) -> str:
    """Stream ``job``'s log to ``log`` until it ends; returns its last status."""
    shown: list[str] = []
    while True:
        try:
            status = str(job.status)  # before the log: a terminal status means a complete log
        except Exception as exc:
            raise FissureError(f"job {job.id}: cannot read its status ({reason(exc)})") from None
        lines = _log_lines(job)
        fresh = _new_lines(shown, lines)
        for line in fresh:
            log(line)
        shown = shown + fresh if lines[:len(shown)] == shown else lines
        if status in TERMINAL:
            return status
        sleep(poll_s)


def pull_run(session: Any, prefix: str, out: Path) -> list[Path]:
    """Download the files under stage folder ``prefix`` (a pushed run) into ``out``."""
    with tempfile.TemporaryDirectory(prefix="fissure-pull-") as tmp:
        found = get_prefix(session, prefix.rstrip("/") + "/", Path(tmp) / "got")
        if not found:
            raise FissureError(f"{prefix}: no run files there (did the job push its run?)")
        out.mkdir(parents=True, exist_ok=True)
        pulled = []
        for name, (path, _) in sorted(found.items()):
            shutil.move(str(path), out / name)
            pulled.append(out / name)
    return pulled


@dataclass(frozen=True)
class JobResult:
    """A finished job: its id, last status, stage folder and the files pulled back."""

    job_id: str
    status: str
    folder: str
    files: tuple[Path, ...] = ()


def run_job(session: Any, spec: JobSpec, compute_pool: str, stage: str, name: str, *,
            wheel: Path | None = None, log: Log = print, poll_s: float = 10.0) -> Any:
    """Build the payload of ``spec`` (and fissure's wheel unless ``wheel`` is given), submit
    it as job ``name`` on ``compute_pool`` under ``stage`` and stream its log until it ends.

    Returns the ``MLJob``; a job that did not end ``DONE`` is a FissureError naming it.
    """
    with tempfile.TemporaryDirectory(prefix="fissure-job-") as tmp:
        if wheel is None:
            log("building fissure's wheel for the job")
            wheel = build_wheel(Path(tmp) / "wheel")
        folder = write_payload(Path(tmp) / "payload", spec, Path(wheel))
        log(f"submitting {name} on {compute_pool} ({spec.instances} instance(s)); payload "
            f"{listed(sorted(p.name for p in folder.iterdir()))} to {job_folder(stage, name)}/")
        job = submit_payload(session, folder, compute_pool, stage, name, spec.instances)
    status = follow(job, log, poll_s)
    if status != "DONE":
        raise FissureError(f"job {job.id} ended {status} on {compute_pool}; its log is above")
    return job


def train_args(config_name: str, overrides: Sequence[str], push: str) -> tuple[str, ...]:
    """``fissure train`` as a job runs it: the shipped config, a run folder in the job's
    ``/tmp``, ``--push`` to the job's stage folder, no progress bars, and the overrides."""
    sets = [part for item in overrides for part in ("--set", item)]
    return ("fissure", "train", "--config", "{payload}/" + config_name,
            "--out", "/tmp/fissure-job-run", "--push", push, "--quiet", *sets)


@dataclass(frozen=True)
class TrainJob:
    """``fissure snowflake train-job``: ``config`` (with ``overrides``) trained on
    ``compute_pool`` across ``instances``, the job under stage folder ``stage``, its run
    pulled into ``out`` (default ``runs/<job name>``). ``wheel``: a built fissure wheel to
    ship instead of building one; ``poll_s``: seconds between two looks at the log."""

    config: Path
    compute_pool: str
    stage: str
    instances: int = 1
    overrides: tuple[str, ...] = ()
    out: Path | None = None
    wheel: Path | None = None
    poll_s: float = 10.0


def check_train_job(request: TrainJob) -> None:
    """Refuse, before anything is built or sent, what the job could not run: a config that
    does not load, data from a local folder (a job reads a stage), a bad stage or count."""
    from ..config import load_config

    cfg = load_config(request.config, list(request.overrides))
    if cfg.data.source != "stage":
        raise ConfigError(f"{request.config}: data.source is {cfg.data.source!r}; a training "
                          "job reads its data from a stage (data.source: stage; upload a "
                          "folder with `fissure snowflake upload`)")
    check_push_target(request.stage)
    if request.instances < 1:
        raise ConfigError(f"--instances: must be at least 1, got {request.instances}")


def train_job(session: Any, request: TrainJob, log: Log = print) -> JobResult:
    """Run ``fissure train`` as an ML Job (see the module docstring): the config shipped in
    the payload, the run pushed to ``<stage>/<job name>/run/`` and pulled back at the end."""
    check_train_job(request)
    name = job_name("train")
    run_prefix = job_folder(request.stage, name) + "/run/"
    spec = JobSpec(train_args("config.yaml", request.overrides, run_prefix),
                   {"config.yaml": Path(request.config)}, request.instances,
                   distributed=True)
    job = run_job(session, spec, request.compute_pool, request.stage, name,
                  wheel=request.wheel, log=log, poll_s=request.poll_s)
    out = Path(request.out) if request.out else Path("runs") / name.lower()
    files = pull_run(session, run_prefix, out)
    log(f"pulled {', '.join(p.name for p in files)} from {run_prefix} into {out}")
    return JobResult(str(job.id), "DONE", job_folder(request.stage, name), tuple(files))
