"""``fissure snowflake predict-stage`` and ``train-job``: models at work inside Snowflake."""

from __future__ import annotations

from pathlib import Path

import click

from ..api.deploy import PredictStageOptions, TrainJob, predict_stage, train_job
from .snowflake import snowflake


@snowflake.command("predict-stage")
@click.argument("model")
@click.argument("folder", metavar="@STAGE/FOLDER/")
@click.option("--table", required=True, help="Results table: one row per image (appended).")
@click.option("--masks", metavar="@STAGE/FOLDER/", help="Also write the mask PNGs here.")
@click.option("--version", help="Model version (default: the model's default version).")
@click.option("--compute-pool", help="Run as an ML Job on this compute pool, not the warehouse.")
@click.option("--redo", is_flag=True, help="Predict again images already in the table.")
@click.option("--connection", help="Snowflake connection name (connections.toml).")
def snowflake_predict_stage(model, folder, table, masks, version, compute_pool, redo,
                            connection) -> None:
    """Predict every image below a stage folder inside Snowflake; no image is downloaded.

    MODEL is a registered model: NAME, DB.SCHEMA.NAME or snowflake://NAME/VERSION. Images
    already in --table for that model version are skipped unless --redo.

    \b
    Example:
      fissure snowflake predict-stage CRACKS @DB.SCH.STAGE/photos/ --table CRACK_RESULTS \\
          --masks @DB.SCH.STAGE/pred/
    """
    options = PredictStageOptions(masks=masks, version=version, compute_pool=compute_pool,
                                  redo=redo)
    summary = predict_stage(model, folder, table, options, connection=connection,
                            log=click.echo)
    for error in summary["errors"]:
        click.echo(f"failed: {error}")
    masks_note = f", {summary['masks']} mask(s) written" if masks else ""
    click.echo(f"{summary['predicted']} image(s) predicted, {summary['skipped']} already in "
               f"{summary['table']}, {summary['failed']} failed{masks_note} "
               f"({summary['model']} version {summary['version']})")


@snowflake.command("train-job")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="YAML config; its data must come from a stage (data.source: stage).")
@click.option("--compute-pool", required=True, help="Compute pool to train on.")
@click.option("--instances", default=1, show_default=True, type=int,
              help="Nodes; more than 1 trains data-parallel across them (torchrun).")
@click.option("--stage", required=True, metavar="@STAGE/FOLDER/",
              help="Stage folder for the job's payload and its run folder.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key (repeatable).")
@click.option("--out", type=click.Path(file_okay=False),
              help="Where to pull the run folder (default: runs/<job name>).")
@click.option("--connection", help="Snowflake connection name (connections.toml).")
def snowflake_train_job(config_path, compute_pool, instances, stage, overrides, out,
                        connection) -> None:
    """Train as a Snowflake ML Job on a compute pool; stream its log, pull the run back.

    fissure reaches the job as a wheel built from this source tree and shipped with the
    config; the job needs no public network. No credential is sent.

    \b
    Example:
      fissure snowflake train-job --config stage.yaml --compute-pool GPU_POOL \\
          --instances 2 --stage @DB.SCH.STAGE/jobs/
    """
    request = TrainJob(Path(config_path), compute_pool, stage, instances, tuple(overrides),
                       Path(out) if out else None)
    result = train_job(request, connection=connection, log=click.echo)
    click.echo(f"job {result.job_id} done; run folder {result.files[0].parent}")
