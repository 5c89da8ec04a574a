"""``fissure app``, ``env`` and ``export``: the tools around a trained model."""

from __future__ import annotations

import sys

import click

from .. import api
from .group import cli


@cli.command("app")
@click.option("--checkpoint", help="The model the Inspect page opens with: a checkpoint file "
                                   "or a stage path (@DB.SCH.STAGE/models/best.pt).")
@click.option("--runs", type=click.Path(file_okay=False),
              help="Folder of training runs and evaluations for the Runs page.")
@click.option("--port", type=int, help="Port to serve on (default: Streamlit's, 8501).")
@click.option("--address", default="127.0.0.1", show_default=True,
              help="Address to serve on. The app reads any file and folder this user can, "
                   "and its Snowflake connections: 0.0.0.0 opens it to the network.")
@click.option("--headless", is_flag=True, help="Serve without opening a browser.")
def app(checkpoint, runs, port, address, headless) -> None:
    """Inspect photos crack by crack in a browser: tune, measure, export; browse runs.

    Starts the Streamlit app (pip install 'fissure[app]') until Ctrl+C.

    \b
    Example:
      fissure app --checkpoint runs/demo/run/best.pt --runs runs/
    """
    from ..app import launch as launch_app

    if address not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"serving on {address}: whoever reaches it can read the files and use the "
                   "Snowflake connections of this user", err=True)
    sys.exit(launch_app(checkpoint, runs, port=port, address=address, headless=headless))


@cli.command("env")
@click.option("--device", default="auto", show_default=True,
              help="The device to describe (auto: the one training would choose).")
@click.option("--connection", help="Snowflake connection name to describe (never opened).")
def env(device, connection) -> None:
    """Show what this machine offers fissure: versions, device, CPU precision, extras.

    \b
    The CPU capability says whether train.amp computes in bf16 (natively, 1.6-2 times as
    fast as fp32) or stays in fp32; a CPU without AVX-512 runs the same config about 2.5
    times slower than one with it.

    \b
    Example:
      fissure env
    """
    info = api.environment(device, connection)
    width = max(map(len, info))
    for key, value in info.items():
        click.echo(f"{key:>{width}}: {value}")


@cli.command("export")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", default="onnx", show_default=True,
              type=click.Choice(["onnx", "torchscript"]))
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="File to write, e.g. crack.onnx or crack.pt.")
@click.option("--opset", default=18, show_default=True, help="ONNX opset (17 or later).")
@click.option("--no-verify", is_flag=True, help="Skip checking the file against PyTorch.")
def export(checkpoint, fmt, out, opset, no_verify) -> None:
    """Export a checkpoint to ONNX or TorchScript, with free batch, height and width.

    The graph takes (N, 3, H, W) float32 images normalised with ImageNet mean/std and
    returns (N, 1, H, W) crack probabilities; threshold them with the checkpoint's
    threshold, stored in the file's metadata. The file is checked against PyTorch on
    random inputs of three sizes unless --no-verify.

    \b
    Example:
      fissure export runs/demo/best.pt --format onnx --out crack.onnx
    """
    from ..prediction.export import export_model

    result = export_model(checkpoint, out, fmt, opset=opset, verify=not no_verify)
    checked = ("" if result.max_abs_diff is None
               else f"; matches PyTorch within {result.max_abs_diff:.1e}")
    click.echo(f"wrote {result.path} ({result.format}){checked}")


