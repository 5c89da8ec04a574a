#!/usr/bin/env bash
# One-step set-up and run: creates .venv if missing, installs fissure with its dev extras,
# then runs the demo (`demo`) or the test suite (`test`). Extra arguments go to the command.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.fissure-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[dev,export]"
    touch "$stamp"
fi
task=${1:-demo}
shift || true
case "$task" in
    demo) exec .venv/bin/fissure demo "$@" ;;
    test) exec .venv/bin/python -m pytest -q "$@" ;;
    *) echo "usage: scripts/dev.sh demo|test [args...]" >&2; exit 2 ;;
esac
