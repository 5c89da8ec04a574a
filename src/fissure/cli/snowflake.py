"""``fissure snowflake``: datasets and models between this machine and Snowflake."""

from __future__ import annotations

import click

from .. import api
from ..config import SnowflakeConfig
from .group import cli


@cli.group()
def snowflake() -> None:
    """Move datasets and models between this machine and a Snowflake stage.

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


