#!/usr/bin/env bash
# One-step set-up and run: creates .venv if missing, installs fissure with its dev extras,
# then runs the demo (`demo`) or the test suite (`test`). Extra arguments go to the command.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ] && ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "dev.sh: fissure needs Python 3.10 or newer; $PY is $("$PY" -V 2>&1)" \
         "(set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.fissure-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[dev,export,app,snowflake-ml]"
    touch "$stamp"
fi
# The app's browser test drives Debian's Chromium; install it where we may (root with apt).
install_browser() {
    if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then return; fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq chromium chromium-driver >/dev/null; } \
          || echo "dev.sh: could not install chromium; the app's browser test will skip" >&2
    else
        echo "dev.sh: no chromium/chromedriver and not root with apt: the app's browser test" \
             "will skip (apt-get install chromium chromium-driver)" >&2
    fi
}
task=${1:-demo}
shift || true
case "$task" in
    demo) exec .venv/bin/fissure demo "$@" ;;
    test) install_browser; exec .venv/bin/python -m pytest -q "$@" ;;
    *) echo "usage: scripts/dev.sh demo|test [args...]" >&2; exit 2 ;;
esac
