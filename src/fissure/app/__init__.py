"""The inspector's app: ``fissure app``, a Streamlit app to look at every crack, tune the
threshold live, measure and export, in a browser or in Streamlit in Snowflake.

* :mod:`~fissure.app.start`: :func:`launch`, ``streamlit run`` on :mod:`~fissure.app.main`;
* :mod:`~fissure.app.shell`: the frame, its settings and the page choice;
* :mod:`~fissure.app.inspect_page` and :mod:`~fissure.app.runs_page`: the two pages;
* :mod:`~fissure.app.inspection`, :mod:`~fissure.app.models`, :mod:`~fissure.app.sources`,
  :mod:`~fissure.app.report` and :mod:`~fissure.app.runs`: what the pages show, without
  Streamlit.

Importing this package needs no Streamlit (the ``app`` extra); the pages do.
"""

from .start import APP_SCRIPT, launch, streamlit_command

__all__ = ["APP_SCRIPT", "launch", "streamlit_command"]
