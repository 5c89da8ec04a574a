"""The machine as fissure sees it: `fissure env`, the first log line, what runs record
(fissure.environment)."""

import csv
import json

import torch
from click.testing import CliRunner

from fissure import api
from fissure.cli import cli
from fissure.environment import describe_environment
from fissure.runtime import cpu_has_bf16


def test_the_environment_says_what_train_amp_will_do():
    env = describe_environment("cpu")
    assert env.device == "cpu" and env.cpu_capability == torch.backends.cpu.get_cpu_capability()
    assert env.amp_dtype == ("bfloat16" if cpu_has_bf16() else "float32")
    assert env.cpu_bf16 == cpu_has_bf16() and env.loader_workers == 0
    assert env.threads == torch.get_num_threads() and set(env.extras) >= {"export", "bench"}
    line = env.line()
    assert "\n" not in line and env.cpu_capability in line
    assert f"train.amp: true computes in {env.amp_dtype}" in line
    assert " 1 threads" not in line and " 1 loader workers" not in line
    assert json.dumps(env.as_dict())


def test_fissure_env_prints_every_item():
    result = CliRunner().invoke(cli, ["env", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    for key in ("python", "torch", "torchvision", "device", "cpu capability", "train.amp",
                "cuda devices", "threads", "loader workers", "extras", "snowflake session"):
        assert f"{key}: " in result.output, key
    from fissure.extras import installed_extras

    export = "yes" if installed_extras()["export"] else "no"  # as this machine has it
    assert f"export {export}" in result.output and "snowflake session: " in result.output


def test_a_run_logs_records_and_reports_the_machine(tiny_config, tmp_path):
    lines: list[str] = []
    run = api.train(tiny_config, tmp_path / "run", progress=False, log=lines.append)
    assert lines[0] == describe_environment(tiny_config.train.device).line()
    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    env = describe_environment("cpu")
    assert rows[0]["device"] == "cpu" and rows[0]["cpu"] == env.cpu_capability
    assert rows[0]["compute_dtype"] == env.amp_dtype
    metrics = api.evaluate(run.best, split="test", options=api.EvaluateOptions(device="cpu"),
                           progress=False)
    assert metrics["environment"]["cpu_capability"] == env.cpu_capability
    assert metrics["environment"]["amp_dtype"] == env.amp_dtype
