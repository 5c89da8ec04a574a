"""``fissure train``, ``evaluate``, ``predict`` and ``demo``: the model's life cycle."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .. import api
from ..api import EvaluateOptions, OutputOptions, PredictOptions
from ..config import load_config
from ..report import EVAL_FILES, fmt, metrics_table
from ..training.distributed import is_main_process, launch, strip_option
from .group import AMP_OPTION, cli

DEMO_CONFIG = "configs/default.yaml"
"""The demo's config, relative to the repository root."""


def _width_bounds(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, ...]:
    """``--width-classes 0.1,0.3,1`` as numbers; PredictOptions checks that they rise."""
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"widths in mm such as 0.1,0.3,1, got {value!r}") from None



def _batch_size(ctx: click.Context, param: click.Parameter, value: str) -> int | str:
    """``--batch-size 16`` as a number, ``auto`` as it is; PredictOptions checks both."""
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"a number of tiles or auto, got {value!r}") from None


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="YAML config file (see configs/).")
@click.option("--out", type=click.Path(file_okay=False),
              help="Run folder (default: runs/<timestamp>).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set train.epochs=3 (repeatable).")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False),
              help="Continue the run in this folder from its last.pt, with its "
                   "config.yaml (--set still applies; --config, --out and --overwrite do "
                   "not).")
@click.option("--overwrite", is_flag=True, help="Replace a run already in --out.")
@click.option("--device", help="Force a device: cpu, cuda, cuda:1, mps (default: auto).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--connection", help="Snowflake connection name (connections.toml) for stage data.")
@click.option("--refresh", is_flag=True, help="Fetch stage data again instead of the local cache.")
@click.option("--push", metavar="@STAGE/PREFIX/",
              help="Upload best.pt, config.yaml, history.csv and curves.png (and metrics.json "
                   "if present) to this stage folder at the end.")
@click.option("--register", metavar="[DB.SCHEMA.]NAME[/VERSION]",
              help="Log best.pt in the Snowflake Model Registry at the end, as a new version "
                   "of this model, with its metrics (needs the snowflake-ml extra).")
@click.option("--devices", type=int, metavar="N",
              help="Data-parallel on N processes of this machine (runs torchrun for you).")
def train(config_path, out, overrides, resume_dir, overwrite, device, quiet, connection,
          refresh, push, register, devices) -> None:
    """Train a model; writes best.pt, last.pt, history.csv, curves.png and config.yaml.

    \b
    Examples:
      fissure train --config configs/default.yaml --out runs/demo
      fissure train --config configs/cfd.yaml --set train.epochs=5 --set data.size=128
      fissure train --resume runs/demo
      fissure train --config stage.yaml --connection prod --push @DB.SCH.STAGE/models/run1/
      fissure train --config stage.yaml --connection prod --register CRACKS
      fissure train --config configs/default.yaml --out runs/ddp --devices 2
    """
    if devices:
        sys.exit(launch(devices, strip_option(sys.argv[1:], "--devices")))
    extra = list(overrides) + ([f"train.device={device}"] if device else [])
    if resume_dir:
        if refresh:
            raise click.UsageError("--refresh applies to new runs; with --resume use "
                                   "--set data.snowflake.refresh=true")
        ignored = [flag for flag, given in (("--config", config_path), ("--out", out),
                                            ("--overwrite", overwrite)) if given]
        if ignored:
            raise click.UsageError(f"{', '.join(ignored)}: not with --resume, which continues "
                                   f"{resume_dir} with its own config.yaml in that folder "
                                   "(change a setting with --set)")
        result = api.resume(resume_dir, extra, push=push, register=register,
                            connection=connection, progress=not quiet, log=click.echo)
    else:
        if not config_path:
            raise click.UsageError("give --config FILE (or --resume RUN_DIR)")
        cfg = load_config(config_path, extra + (["data.snowflake.refresh=true"] if refresh else []))
        result = api.train(cfg, out, overwrite=overwrite, push=push, register=register,
                           connection=connection, progress=not quiet, log=click.echo)
    if is_main_process():
        click.echo(f"best epoch {result.best_epoch} (score {fmt(result.best_score)}); "
                   f"checkpoint {result.best}")


@cli.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--data", help="Dataset folder or YAML config (default: the checkpoint's data).")
@click.option("--split", default="test", show_default=True,
              type=click.Choice(["train", "val", "test", "all"]))
@click.option("--out", type=click.Path(file_okay=False),
              help="Folder for metrics.json, per_image.csv and the three plots.")
@click.option("--threshold", type=float,
              help="Tuned decision threshold (default: the checkpoint's); 0.5 is always shown too.")
@click.option("--device", default="auto", show_default=True,
              help="cpu, cuda, cuda:1, mps, or auto (a GPU where there is one).")
@click.option("--workers", default=0, show_default=True, help="DataLoader workers.")
@AMP_OPTION
@click.option("--tta/--no-tta", default=None,
              help="Average each image with its left-right and top-bottom flips (3x; "
                   "default: the checkpoint's eval.tta).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--connection",
              help="Snowflake connection name for a stage or registry checkpoint, or data.")
def evaluate(checkpoint, data, split, out, threshold, device, workers, amp, tta, quiet,
             connection) -> None:
    """Score a checkpoint on a split with streaming, empty-mask-aware metrics.

    CHECKPOINT is a file, a stage path, or a registered version: snowflake://NAME/VERSION
    or snowflake://NAME/default (the model's default version; DB.SCHEMA.NAME also works).

    \b
    Writes into --out:
      metrics.json          every figure with its definition, at 0.5 and the tuned threshold
      per_image.csv         one row per image: pixels, IoU, F1, detection outcome
      confusion_matrix.png  pixel counts and row-normalised, at the tuned threshold
      pr_curve.png          exact and tolerant PR curves with the ODS points
      samples.png           worst, median and best images by per-image IoU

    \b
    Example:
      fissure evaluate runs/demo/best.pt --data data/synth --split test --out runs/demo/eval
      fissure evaluate @DB.SCH.STAGE/models/run1/best.pt --data stage.yaml --connection prod
      fissure evaluate snowflake://CRACKS/default --data data/cfd --connection prod
    """
    options = EvaluateOptions(threshold=threshold, device=device, amp=amp, tta=tta,
                              num_workers=workers)
    metrics = api.evaluate(checkpoint, data, split, out, options, connection=connection,
                           progress=not quiet)
    click.echo(metrics_table(metrics))
    if out:
        click.echo(f"wrote {', '.join(EVAL_FILES)} to {Path(out).resolve()}")


@cli.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder (or @STAGE/prefix/) for masks, overlays and predictions.csv/json.")
@click.option("--glob", "pattern", default="**/*", show_default=True,
              help="Files to take from input folders (image suffixes only).")
@click.option("--threshold", type=float, help="Decision threshold (default: the checkpoint's).")
@click.option("--tile", type=int,
              help="Tile side in px, a multiple of 32 (default: the training size, or 512 "
                   "where a crop-mode checkpoint computes fewer pixels so).")
@click.option("--overlap", type=int, help="Tile overlap in px (default: tile // 4).")
@click.option("--tta/--no-tta", default=None,
              help="Average with left-right and top-bottom flips (3x; default: the "
                   "checkpoint's eval.tta).")
@click.option("--batch-size", default="auto", show_default=True, callback=_batch_size,
              help="Tiles per forward pass, or auto: 8 on a CPU; on CUDA the largest batch "
                   "that fits the GPU, probed once per tile size and halved.")
@click.option("--save-prob", is_flag=True, help="Also write <stem>_prob.png (8-bit).")
@click.option("--overlay/--no-overlay", default=True, show_default=True,
              help="Write <stem>_overlay.jpg, cracks in magenta over the photo.")
@click.option("--min-area", type=int,
              help="Ignore cracks smaller than this many px in the measurements "
                   "(default: the checkpoint's eval.min_area).")
@click.option("--px-per-mm", type=float, help="Image scale; adds mm and mm2 measurements.")
@click.option("--width-classes", "width_bounds", default="0.1,0.3,1", show_default=True,
              metavar="MM,MM,MM", callback=_width_bounds,
              help="Upper widths in mm of hairline, fine and medium cracks in cracks.csv "
                   "(wider is wide; needs --px-per-mm).")
@click.option("--geojson", is_flag=True,
              help="Also write <stem>.geojson: each crack's outline (pixel coordinates) and "
                   "record, a GeoJSON FeatureCollection for GIS and annotation tools.")
@click.option("--device", default="auto", show_default=True,
              help="cpu, cuda, cuda:1, mps, or auto (a GPU where there is one).")
@AMP_OPTION
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--connection",
              help="Snowflake connection name for a stage or registry checkpoint, or --out.")
def predict(checkpoint, inputs, out, pattern, threshold, tile, overlap, tta, batch_size,
            save_prob, overlay, min_area, px_per_mm, width_bounds, geojson, device, amp, quiet,
            connection) -> None:
    """Find cracks in photos of any size: masks, overlays and measurements.

    CHECKPOINT is a file, a stage path, or a registered version (snowflake://NAME/VERSION,
    snowflake://NAME/default). INPUTS are image files (gzip too) and folders. Writes
    <stem>.png (0/255 mask of the photo's size), <stem>_overlay.jpg (and <stem>_prob.png
    with --save-prob, <stem>.geojson with --geojson); predictions.csv and predictions.json
    with size, tiling and crack area, segments, length and width per image; and cracks.csv
    with one row per crack (length, widths, orientation, class). Images that share
    a stem are named by their folders (a__x.png, b__x.png). Large photos are predicted
    in overlapping tiles at native resolution. Hidden files in folders are skipped; an
    image that cannot be read is reported (predictions.csv, error column) and the run
    goes on.

    \b
    Example:
      fissure predict runs/demo/best.pt photos/ --out predictions/ --px-per-mm 4.2
      fissure predict @DB.SCH.STAGE/models/best_model.pth.gz photos/ --out @DB.SCH.STAGE/pred/
      fissure predict snowflake://CRACKS/V1 photos/ --out predictions/ --connection prod
    """
    options = PredictOptions(threshold=threshold, tile=tile, overlap=overlap, tta=tta,
                             batch_size=batch_size, min_area=min_area, px_per_mm=px_per_mm,
                             amp=amp, device=device, width_bounds=width_bounds)
    output = OutputOptions(overlay=overlay, save_prob=save_prob, glob=pattern, geojson=geojson)
    records = api.predict(checkpoint, inputs, out, options, output, connection=connection,
                          progress=not quiet)
    unread = [r["error"] for r in records if r.get("error")]
    cracked = sum(1 for r in records if r.get("n_segments"))
    click.echo(f"{cracked} of {len(records) - len(unread)} image(s) with cracks; wrote masks, "
               f"{Path(out) / 'predictions.csv'} and cracks.csv")
    if unread:
        click.echo(f"{len(unread)} image(s) could not be read and have no outputs (the error "
                   f"column of predictions.csv says why), e.g. {unread[0]}", err=True)



@cli.command()
@click.option("--config", "config_path", default=DEMO_CONFIG, show_default=True,
              type=click.Path(dir_okay=False), help="The config to train with.")
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for data/, run/, eval/ and predictions/.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set train.epochs=1 (repeatable).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo(config_path, out, overrides, quiet) -> None:
    """Synthesise a dataset, then train, evaluate and predict on it, end to end.

    \b
    Writes into --out (run/, eval/ and predictions/ are replaced when run again):
      data/         synthetic train/val/test image and mask folders (made once, kept)
      run/          the training run: best.pt, last.pt, history.csv, curves.png
      eval/         fissure evaluate's files for the test split
      predictions/  fissure predict's files for the test photos

    \b
    Example:
      fissure demo --out runs/demo
    """
    if config_path == DEMO_CONFIG and not Path(config_path).is_file():
        raise click.UsageError(f"{DEMO_CONFIG} is not here: run `fissure demo` from the "
                               "repository root (a clone of fissure), or give --config")
    cfg = load_config(config_path, overrides)
    summary = api.demo(cfg, out, progress=not quiet, log=click.echo)
    click.echo(metrics_table(summary["metrics"]))
    for label, path in summary["outputs"].items():
        click.echo(f"{label:>12}: {path}")

