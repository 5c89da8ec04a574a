"""What a dataset holds and what this machine offers: ``fissure data stats`` and ``env``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import DataConfig, load_config
from ..data.stats import dataset_stats, implied_crop
from ..environment import describe_environment
from ..losses import auto_pos_weight
from ..snowflake.session import Sessions, describe_session
from .runs import build_source


def data_stats(
    data: str | Path, *, connection: str | None = None, progress: bool = True
) -> dict[str, Any]:
    """Per split of a dataset folder (or a config's data), its sizes, crack share, widths and
    crack-free share, and the recipe settings they imply: the largest crop every training
    image holds and the ``pos_weight`` that ``pos_weight: auto`` would derive.

    A config's stage is read through ``connection`` (else the config's, else the active
    session); a session opened for it is closed before returning."""
    path = Path(data)
    data_cfg = load_config(path).data if path.is_file() else replace(
        DataConfig(), root=str(path), split_files=None)
    with Sessions(connection) as sessions:
        session = (sessions.get(data_cfg.snowflake.connection) if data_cfg.source == "stage"
                   else None)
        splits = dataset_stats(build_source(data_cfg, progress=progress, session=session),
                               progress)
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
