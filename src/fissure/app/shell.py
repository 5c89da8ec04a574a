"""The app's frame: its settings (``--checkpoint``, ``--runs``), the page choice and the
one-line error every page falls back on.

:func:`run_app` is what the script Streamlit runs (:mod:`fissure.app.main`) calls, and
what a Streamlit in Snowflake app's main file calls too.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

import streamlit as st

from ..errors import FissureError
from . import inspect_page, runs_page

PAGES = ("Inspect", "Runs")


@dataclass(frozen=True)
class AppSettings:
    """What ``fissure app`` was started with: the default checkpoint (a file or stage path)
    and the folder of training runs and evaluations."""

    checkpoint: str | None = None
    runs: str | None = None


def parse_args(argv: Sequence[str]) -> AppSettings:
    """The settings in the arguments ``streamlit run main.py -- ...`` passes on."""
    parser = argparse.ArgumentParser(prog="fissure app", add_help=False)
    parser.add_argument("--checkpoint")
    parser.add_argument("--runs")
    known, _ = parser.parse_known_args(list(argv))
    return AppSettings(known.checkpoint, known.runs)


def run_app(settings: AppSettings | None = None) -> None:
    """Draw the app: the page chosen in the sidebar, with ``settings``."""
    settings = settings or AppSettings()
    st.set_page_config(page_title="fissure", page_icon=":mag:", layout="wide")
    st.sidebar.title("fissure")
    page = st.sidebar.radio("Page", PAGES, key="page", horizontal=True)
    try:
        if page == "Inspect":
            inspect_page.render(settings.checkpoint)
        else:
            runs_page.render(settings.runs)
    except FissureError as exc:
        st.error(str(exc))
