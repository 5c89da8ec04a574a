"""scripts/bench.py --quick runs end to end and prints its table; no timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fissure.extras import is_installed

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "scripts" / "bench.py"
HEADER = "| section | measurement | fissure | comparison | ratio | target | verdict |"


def run_bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    compare = () if is_installed("segmentation_models_pytorch") else ("--no-comparisons",)
    return subprocess.run(
        [sys.executable, str(BENCH), "--quick", *compare, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def test_quick_run_prints_every_section(tmp_path):
    out = tmp_path / "bench.json"
    result = run_bench("--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert HEADER in result.stdout
    assert "Machine: " in result.stdout and "torch " in result.stdout
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    sections = {line.split("|")[1].strip() for line in rows[2:]}
    assert sections >= {"train", "util", "loader", "e2e", "eval", "predict"}, sections
    doc = json.loads(out.read_text())
    assert doc["machine"]["device"] == "cpu" or doc["machine"]["device"].startswith("cuda")
    assert set(doc["sections"]) >= {"train", "util", "loader", "e2e", "eval", "predict"}


def test_quick_run_without_smp(tmp_path):
    """segmentation_models_pytorch is optional: hidden, the run stops with one line naming the
    extra, unless --no-comparisons asks to skip its rows, each with a note."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "segmentation_models_pytorch.py").write_text("raise ImportError('hidden by test')\n")
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(hide), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, str(BENCH), "--quick", "--only", "train"]
    refused = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].endswith(
        "pip install 'fissure[bench]' (or pass --no-comparisons)")
    result = run_bench("--only", "train", "--no-comparisons", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert HEADER in result.stdout
    assert "segmentation_models_pytorch is not installed" in result.stdout


def test_unknown_section_is_an_error():
    result = run_bench("--only", "nope")
    assert result.returncode != 0
    assert "unknown section" in result.stderr
