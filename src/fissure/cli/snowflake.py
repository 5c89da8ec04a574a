"""``fissure snowflake``: datasets and models between this machine and Snowflake (a stage,
and the Model Registry)."""

from __future__ import annotations

import json

import click

from .. import api
from ..config import SnowflakeConfig
from .group import cli


@cli.group()
def snowflake() -> None:
    """Move datasets and models between this machine and a Snowflake stage, and version
    models in the Snowflake Model Registry.

    Every command takes --connection NAME (an entry of connections.toml); inside Snowflake
    the active session is used instead; outside, without it, the config's connection, then
    the connector's default connection.
    """


@snowflake.command("upload")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--stage", default="MY_FISSURE_STAGE", show_default=True,
              help="Stage name (qualified with --database/--schema unless it has dots).")
@click.option("--manifest", default="V_TRAINING_DATA", show_default=True,
              help="Manifest view to create (its table is <manifest>_TABLE).")
@click.option("--database", default="PROJET_FISSURES", show_default=True)
@click.option("--schema", default="STORAGE_SCHEMA", show_default=True)
@click.option("--connection", help="Snowflake connection name (connections.toml).")
@click.option("--replace-view", is_flag=True,
              help="Replace a same-named view that fissure did not create.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def snowflake_upload(data_dir, stage, manifest, database, schema, connection, replace_view,
                     quiet) -> None:
    """Put a local dataset into a stage and build the manifest view training reads.

    DATA_DIR is any layout `fissure train` reads (train/val/test or images/masks).
    Files go to images/NAME.gz and masks/NAME.gz; the view has IMAGE_NAME, MASK_NAME
    and IMAGE_GROUP (TRAIN/VAL/TEST). Running it again uploads only changed files.

    \b
    Example:
      fissure snowflake upload data/crack_segmentation_dataset --connection prod
    """
    names = SnowflakeConfig(database=database, schema=schema, stage=stage, manifest=manifest)
    counts = api.upload_data(data_dir, names, connection=connection, replace_view=replace_view,
                             progress=not quiet)
    click.echo(f"uploaded {counts['uploaded']} file(s), {counts['skipped']} already there; "
               f"{counts['manifest']} lists {counts['rows']} pair(s) in {counts['stage']}")


@snowflake.command("pull")
@click.argument("stage_path")
@click.option("--out", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Folder to write the file into.")
@click.option("--connection", help="Snowflake connection name (connections.toml).")
def snowflake_pull(stage_path, out, connection) -> None:
    """Download one stage file, e.g. a pushed model; gzip files arrive decompressed.

    \b
    Example:
      fissure snowflake pull @DB.SCH.STAGE/models/best_model.pth.gz --out models/
    """
    click.echo(f"wrote {api.pull(stage_path, out, connection=connection)}")




@snowflake.command("register")
@click.argument("checkpoint")
@click.option("--model", "model", required=True, metavar="[DB.SCHEMA.]NAME",
              help="Registry model to add a version to (created at its first version).")
@click.option("--version", "version", metavar="NAME",
              help="Version name (default: one the registry makes up).")
@click.option("--comment", help="Version comment (default: encoder, epoch, threshold, source).")
@click.option("--metrics", "metrics", multiple=True, type=click.Path(dir_okay=False),
              help="An evaluation's metrics.json whose figures become version metrics "
                   "(repeatable; default: the metrics.json beside CHECKPOINT, if any).")
@click.option("--connection", help="Snowflake connection name (connections.toml).")
def snowflake_register(checkpoint, model, version, comment, metrics, connection) -> None:
    """Log a checkpoint in the Snowflake Model Registry as a model version.

    CHECKPOINT is a file or a stage path. The version wraps fissure's predictor; its
    PREDICT function takes IMAGE bytes or a stage PATH per row (and PX_PER_MM) and returns
    the mask PNG and crack measurements. Validation figures, the threshold, encoder,
    input policy and fissure version are logged as metrics. Afterwards, evaluate and
    predict take snowflake://NAME/VERSION as their checkpoint. Needs the snowflake-ml
    extra and CREATE MODEL on the schema.

    \b
    Example:
      fissure snowflake register runs/demo/best.pt --model CRACKS --version V1
      fissure predict snowflake://CRACKS/V1 photos/ --out pred/
    """
    done = api.register_checkpoint(checkpoint, model, version=version, comment=comment,
                                   metrics=list(metrics) or None, connection=connection,
                                   log=click.echo)
    click.echo(f"registered {checkpoint} as {done['reference']}")


# shown by `fissure snowflake models`, in this order, when logged
_SHOWN = ("threshold", "epoch", "encoder", "input_size", "val_iou", "val_f1_tuned",
          "test_iou", "test_f1", "test_f1_tolerant")


def _metric_text(metrics: dict) -> str:
    def fmt(value: object) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    return "  ".join(f"{key}={fmt(metrics[key])}" for key in _SHOWN if key in metrics)


@snowflake.command("models")
@click.argument("name", required=False, metavar="[[DB.SCHEMA.]NAME]")
@click.option("--json", "as_json", is_flag=True, help="Every metric of every version, as JSON.")
@click.option("--connection", help="Snowflake connection name (connections.toml).")
def snowflake_models(name, as_json, connection) -> None:
    """List registered model versions with their metrics (* marks the default version).

    Without NAME, every model of the session's schema.

    \b
    Example:
      fissure snowflake models CRACKS --connection prod
    """
    rows = api.list_models(name, connection=connection)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo("no registered model versions")
    for row in rows:
        mark = "*" if row["default"] else " "
        click.echo(f"{mark} snowflake://{row['model']}/{row['version']}  "
                   f"{_metric_text(row['metrics'] or {})}")
