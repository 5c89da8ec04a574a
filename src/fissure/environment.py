"""What this machine offers fissure: versions, device, CPU precision, threads, extras.

The same command runs 2.5 times slower on a CPU without AVX-512, and bf16 applies only
where the CPU computes it natively, so every training log starts with one line of this,
``metrics.json`` and ``history.csv`` record it, and ``fissure env`` prints all of it.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torchvision

from . import __version__
from .data.loader import default_workers
from .extras import installed_extras
from .runtime import autocast_dtype, cpu_has_bf16, select_device


@dataclass(frozen=True)
class Environment:
    """A snapshot of the machine as fissure sees it.

    ``amp_dtype`` is what ``train.amp: true`` computes in on ``device`` (``bfloat16`` where
    the hardware has it, else ``float32``); ``cuda`` lists each GPU with its bf16 support.
    """

    fissure: str
    python: str
    torch: str
    torchvision: str
    device: str
    cpu_capability: str
    cpu_bf16: bool
    amp_dtype: str
    threads: int
    loader_workers: int
    cuda: tuple[dict[str, Any], ...] = ()
    extras: dict[str, bool] = field(default_factory=dict)

    def line(self) -> str:
        """One line for the top of a log."""
        gpus = ", ".join(g["name"] for g in self.cuda) or "none"
        return (f"fissure {self.fissure}, torch {self.torch}, Python {self.python}; "
                f"device {self.device}; CPU {self.cpu_capability} "
                f"({'native' if self.cpu_bf16 else 'no native'} bf16), train.amp: true "
                f"computes in {self.amp_dtype}; {_count(self.threads, 'thread')}, "
                f"{_count(self.loader_workers, 'loader worker')}; GPUs: {gpus}")

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for ``metrics.json``."""
        return asdict(self)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _gpus() -> tuple[dict[str, Any], ...]:
    if not torch.cuda.is_available():
        return ()
    found = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        found.append({"index": index, "name": props.name,
                      "memory_gib": round(props.total_memory / 2**30, 1),
                      "bf16": props.major >= 8})  # bf16 tensor cores from Ampere on
    return tuple(found)


def describe_environment(device: str = "auto") -> Environment:
    """The :class:`Environment` for ``device`` (``auto``: the one training would choose)."""
    chosen = select_device(device)
    return Environment(
        fissure=__version__,
        python=platform.python_version(),
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        device=str(chosen),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        cpu_bf16=cpu_has_bf16(),
        amp_dtype=str(autocast_dtype(chosen, True)).removeprefix("torch."),
        threads=torch.get_num_threads(),
        loader_workers=default_workers(chosen),
        cuda=_gpus(),
        extras=installed_extras(),
    )
