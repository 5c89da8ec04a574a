"""The ``fissure`` command line: parse options, call the library, print.

One module per command group; importing them registers their commands on :data:`cli`.
"""

from __future__ import annotations

from . import data, deploy, snowflake, tools, workflow  # noqa: F401  (registers the commands)
from .group import cli

__all__ = ["cli", "main"]


def main() -> None:
    cli(prog_name="fissure")
