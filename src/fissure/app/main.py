"""The script ``fissure app`` hands to ``streamlit run``.

Arguments after ``--`` are the app's (``--checkpoint``, ``--runs``). A Streamlit in
Snowflake app's main file does the same with no arguments (see the README).
"""

import sys

from fissure.app.shell import parse_args, run_app

run_app(parse_args(sys.argv[1:]))
