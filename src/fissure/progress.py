"""Progress bars that suit where the output goes.

In a terminal, tqdm bars redraw in place, nested ones included. Anywhere else (a CI log,
output redirected to a file, a notebook's captured cell) each redraw becomes a line of its
own, and a nested bar adds cursor movements on top. There only the outer bar of a nest is
drawn, at most every :data:`LOG_INTERVAL` seconds, and inner bars stay silent.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm.auto import tqdm

LOG_INTERVAL = 10.0
"""Seconds between redraws of a bar whose output is not a terminal."""


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default: ``sys.stderr``, where tqdm draws) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or file-less stream
        return False


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    desc: str,
    unit: str = "it",
    total: float | None = None,
    enabled: bool = True,
    inner: bool = False,
    leave: bool = True,
) -> tqdm:
    """A tqdm bar over ``iterable`` (or updated by hand with ``total``).

    ``inner`` marks a bar drawn below another one (tiles within images, a validation pass
    within an epoch): it is shown only in a terminal. Outside a terminal a bar redraws at
    most every :data:`LOG_INTERVAL` seconds and stays on screen when done, so a log holds
    a few lines per bar, not one per update. ``enabled=False`` draws nothing.
    """
    terminal = is_terminal()
    disable = not enabled or (inner and not terminal)
    if terminal:
        return tqdm(iterable, desc=desc, unit=unit, total=total, disable=disable, leave=leave,
                    dynamic_ncols=True)
    return tqdm(iterable, desc=desc, unit=unit, total=total, disable=disable, leave=True,
                mininterval=LOG_INTERVAL, maxinterval=LOG_INTERVAL, ncols=80)
