"""The ``fissure`` command line: parse options, call the library, print."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import click

from . import __version__, api
from .api import EvaluateOptions, OutputOptions, PredictOptions
from .config import SnowflakeConfig, load_config
from .errors import FissureError
from .report import EVAL_FILES, fmt, metrics_table
from .training.distributed import is_main_process, launch, strip_option


class FissureGroup(click.Group):
    """Turns a :class:`FissureError` into a one-line message and exit code 1 (``--debug`` shows
    the traceback)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FissureError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            raise click.ClickException("interrupted") from None


# evaluate and predict run a trained model the same way
AMP_OPTION = click.option(
    "--amp/--no-amp", default=None,
    help="Mixed precision where the hardware has it (bf16 on CPUs with AVX512-BF16 or AMX; "
         "bf16/fp16 on CUDA). Default: as the checkpoint was trained. "
         "--no-amp: fp32, the same figures on every machine.")


def _width_bounds(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, ...]:
    """``--width-classes 0.1,0.3,1`` as numbers; PredictOptions checks that they rise."""
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"widths in mm such as 0.1,0.3,1, got {value!r}") from None


@click.group(cls=FissureGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fissure")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Find cracks in photos of concrete, pixel by pixel.

    \b
    Train, evaluate and predict with a ResNet-encoder U-Net on image/mask folders or a
    Snowflake stage. Start with `fissure demo`.
    """
    ctx.ensure_object(dict)["debug"] = debug


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="YAML config file (see configs/).")
@click.option("--out", type=click.Path(file_okay=False),
              help="Run folder (default: runs/<timestamp>).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set train.epochs=3 (repeatable).")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False),
              help="Continue the run in this folder from its last.pt.")
@click.option("--overwrite", is_flag=True, help="Replace a run already in --out.")
@click.option("--device", help="Force a device: cpu, cuda, cuda:1, mps (default: auto).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--connection", help="Snowflake connection name (connections.toml) for stage data.")
@click.option("--refresh", is_flag=True, help="Fetch stage data again instead of the local cache.")
@click.option("--push", metavar="@STAGE/PREFIX/",
              help="Upload best.pt, config.yaml and metrics to this stage folder at the end.")
@click.option("--devices", type=int, metavar="N",
              help="Data-parallel on N processes of this machine (runs torchrun for you).")
def train(config_path, out, overrides, resume_dir, overwrite, device, quiet, connection,
          refresh, push, devices) -> None:
    """Train a model; writes best.pt, last.pt, history.csv, curves.png and config.yaml.

    \b
    Examples:
      fissure train --config configs/default.yaml --out runs/demo
      fissure train --config configs/cfd.yaml --set train.epochs=5 --set data.size=128
      fissure train --resume runs/demo
      fissure train --config stage.yaml --connection prod --push @DB.SCH.STAGE/models/run1/
      fissure train --config configs/default.yaml --out runs/ddp --devices 2
    """
    if devices:
        sys.exit(launch(devices, strip_option(sys.argv[1:], "--devices")))
    extra = list(overrides) + ([f"train.device={device}"] if device else [])
    if resume_dir:
        if refresh:
            raise click.UsageError("--refresh applies to new runs; with --resume use "
                                   "--set data.snowflake.refresh=true")
        result = api.resume(resume_dir, extra, push=push, connection=connection,
                            progress=not quiet, log=click.echo)
    else:
        if not config_path:
            raise click.UsageError("give --config FILE (or --resume RUN_DIR)")
        cfg = load_config(config_path, extra)
        result = api.train(cfg, out, overwrite=overwrite, push=push, connection=connection,
                           refresh=refresh, progress=not quiet, log=click.echo)
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
@click.option("--device", default="auto", show_default=True)
@click.option("--workers", default=0, show_default=True, help="DataLoader workers.")
@AMP_OPTION
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--connection", help="Snowflake connection name for a stage checkpoint or data.")
def evaluate(checkpoint, data, split, out, threshold, device, workers, amp, quiet,
             connection) -> None:
    """Score a checkpoint on a split with streaming, empty-mask-aware metrics.

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
    """
    options = EvaluateOptions(threshold=threshold, device=device, amp=amp, num_workers=workers)
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
              help="Tile side in px, a multiple of 32 (default: the training size).")
@click.option("--overlap", type=int, help="Tile overlap in px (default: tile // 4).")
@click.option("--tta", is_flag=True, help="Average with left-right and top-bottom flips (3x).")
@click.option("--batch-size", default=8, show_default=True, help="Tiles per forward pass.")
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
@click.option("--device", default="auto", show_default=True)
@AMP_OPTION
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--connection", help="Snowflake connection name for a stage checkpoint or --out.")
def predict(checkpoint, inputs, out, pattern, threshold, tile, overlap, tta, batch_size,
            save_prob, overlay, min_area, px_per_mm, width_bounds, geojson, device, amp, quiet,
            connection) -> None:
    """Find cracks in photos of any size: masks, overlays and measurements.

    INPUTS are image files (gzip too) and folders. Writes <stem>.png (0/255 mask of
    the photo's size), <stem>_overlay.jpg, and predictions.csv and predictions.json with
    size, tiling and crack area, segments, length and width per image. Images that share
    a stem are named by their folders (a__x.png, b__x.png). Large photos are predicted
    in overlapping tiles at native resolution.

    \b
    Example:
      fissure predict runs/demo/best.pt photos/ --out predictions/ --px-per-mm 4.2
      fissure predict @DB.SCH.STAGE/models/best_model.pth.gz photos/ --out @DB.SCH.STAGE/pred/
    """
    options = PredictOptions(threshold=threshold, tile=tile, overlap=overlap, tta=tta,
                             batch_size=batch_size, min_area=min_area, px_per_mm=px_per_mm,
                             amp=amp, device=device, width_bounds=width_bounds)
    output = OutputOptions(overlay=overlay, save_prob=save_prob, glob=pattern, geojson=geojson)
    records = api.predict(checkpoint, inputs, out, options, output, connection=connection,
                          progress=not quiet)
    cracked = sum(1 for r in records if r["n_segments"])
    click.echo(f"{cracked} of {len(records)} image(s) with cracks; wrote masks, "
               f"{Path(out) / 'predictions.csv'} and cracks.csv")


@cli.command("app")
@click.option("--checkpoint", help="The model the Inspect page opens with: a checkpoint file "
                                   "or a stage path (@DB.SCH.STAGE/models/best.pt).")
@click.option("--runs", type=click.Path(file_okay=False),
              help="Folder of training runs and evaluations for the Runs page.")
@click.option("--port", type=int, help="Port to serve on (default: Streamlit's, 8501).")
@click.option("--address", help="Address to serve on (default: every interface; 127.0.0.1 "
                                "keeps it to this machine).")
@click.option("--headless", is_flag=True, help="Serve without opening a browser.")
def app(checkpoint, runs, port, address, headless) -> None:
    """Inspect photos crack by crack in a browser: tune, measure, export; browse runs.

    Starts the Streamlit app (pip install 'fissure[app]') until Ctrl+C.

    \b
    Example:
      fissure app --checkpoint runs/demo/run/best.pt --runs runs/
    """
    from .app import launch as launch_app

    sys.exit(launch_app(checkpoint, runs, port=port, address=address, headless=headless))


@cli.group()
def data() -> None:
    """Make and inspect datasets."""


@data.command("synth")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--count", default=200, show_default=True, help="Number of image/mask pairs.")
@click.option("--size", default=256, show_default=True, help="Image side in pixels.")
@click.option("--seed", default=0, show_default=True, help="Same seed, same bytes.")
@click.option("--gzip", "gzip_files", is_flag=True,
              help="gzip every file (x.jpg.gz), as the notebook's stage holds them.")
@click.option("--manifest", is_flag=True,
              help="The notebook's stage layout: images/, masks/, manifest.csv (IMAGE_NAME, "
                   "MASK_NAME, IMAGE_GROUP) and split_*.txt; JPEG and a 0.8/0.1/0.1 split.")
@click.option("--format", "image_format", type=click.Choice(["png", "jpg"]),
              help="Image and mask format (default: jpg with --manifest, else png).")
@click.option("--workers", type=click.IntRange(min=1),
              help="Processes drawing images (default: one per core from 256 pairs).")
def data_synth(out, count, size, seed, gzip_files, manifest, image_format, workers) -> None:
    """Write a synthetic crack dataset to OUT/{train,val,test}/{images,masks}.

    With --manifest, the notebook's stage layout instead (images/, masks/, manifest.csv).

    \b
    Examples:
      fissure data synth data/synth --count 200 --size 256 --seed 0
      fissure data synth data/notebook --count 11298 --size 448 --gzip --manifest
    """
    from .data.synth import MANIFEST_NAME, SynthOptions, generate_dataset

    options = SynthOptions(manifest=manifest, gzip=gzip_files, image_format=image_format,
                           workers=workers)
    counts = generate_dataset(out, count=count, size=size, seed=seed, progress=True,
                              options=options)
    click.echo(f"wrote {sum(counts.values())} pairs to {out} "
               + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if manifest:
        click.echo(f"manifest: {Path(out) / MANIFEST_NAME}")


@data.command("stats")
@click.argument("root", type=click.Path(exists=True))
@click.option("--quiet", is_flag=True, help="No progress bar.")
def data_stats(root, quiet) -> None:
    """Per split of ROOT: image sizes, crack-pixel share, crack widths, crack-free images.

    ROOT is a dataset folder (any layout fissure reads) or a YAML config. The last lines
    give the settings the data implies: the largest crop every training image holds, and
    the pos_weight that `pos_weight: auto` derives from the crack share.

    \b
    Example:
      fissure data stats data/cfd
    """
    found = api.data_stats(root, progress=not quiet)
    for s in found["splits"]:
        sizes = ", ".join(f"{k} x{n}" for k, n in list(s.sizes.items())[:3])
        more = f" (+{len(s.sizes) - 3} more)" if len(s.sizes) > 3 else ""
        widths = ("none" if s.width_median is None
                  else f"median {s.width_median:.1f}, p90 {s.width_p90:.1f} px")
        click.echo(f"{s.split:>5}: {s.images} images, sides {s.min_side}-{s.max_side} px "
                   f"({sizes}{more}); crack {100 * s.crack_fraction:.2f} % of pixels; "
                   f"crack-free {100 * s.crack_free_share:.0f} %; widths {widths}")
    for key, value in found["implied"].items():
        click.echo(f"implied {key}: {value}")


@data.command("get")
@click.argument("name")
@click.option("--out", type=click.Path(file_okay=False),
              help="Folder to write (default: data/NAME).")
@click.option("--force", is_flag=True,
              help="Download again even if OUT holds the dataset; accept a download whose "
                   "SHA-256 differs from the pinned or recorded one; replace folders that "
                   "fissure did not write.")
@click.option("--yes", "-y", is_flag=True, help="Accept the dataset's licence without asking.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def data_get(name, out, force, yes, quiet) -> None:
    """Download a public crack dataset NAME into OUT in fissure's folder layout.

    \b
    NAME: cfd (CrackForest, 118 photos, with the Koenig split files) or deepcrack
    (DeepCrack, 300 train / 237 test). The source and licence are shown first and must be
    accepted (--yes accepts them). An interrupted download resumes when run again.
    OUT/README.md records the source URL, the licence and the SHA-256 of the download.

    \b
    Examples:
      fissure data get cfd                  # -> data/cfd, what configs/cfd.yaml reads
      fissure data get deepcrack --out /data/deepcrack --yes
    """
    from .data.public import get_dataset

    def accept(_notice: str) -> bool:
        if not sys.stdin.isatty():
            raise FissureError(f"{name}: pass --yes to accept the licence above "
                               "(there is no terminal to ask on)")
        return click.confirm("Accept this licence and download?", default=False)

    result = get_dataset(name, out, force=force, confirm=None if yes else accept,
                         progress=not quiet, log=click.echo)
    click.echo(f"{result.out}: " + ", ".join(f"{k} {v}" for k, v in result.counts.items()))


@cli.command()
@click.option("--config", "config_path", default="configs/default.yaml", show_default=True,
              type=click.Path(dir_okay=False))
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo(config_path, out, overrides, quiet) -> None:
    """Synthesise a dataset, then train, evaluate and predict on it, end to end.

    \b
    Example:
      fissure demo --out runs/demo
    """
    cfg = load_config(config_path, overrides)
    summary = api.demo(cfg, out, progress=not quiet, log=click.echo)
    click.echo(metrics_table(summary["metrics"]))
    for label, path in summary["outputs"].items():
        click.echo(f"{label:>12}: {path}")


@cli.command("env")
@click.option("--device", default="auto", show_default=True,
              help="The device to describe (auto: the one training would choose).")
@click.option("--connection", help="Snowflake connection name to describe (never opened).")
def env(device, connection) -> None:
    """Show what this machine offers fissure: versions, device, CPU precision, extras.

    \b
    The CPU capability says whether train.amp computes in bf16 (natively, about twice as
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
    from .prediction.export import export_model

    result = export_model(checkpoint, out, fmt, opset=opset, verify=not no_verify)
    checked = ("" if result.max_abs_diff is None
               else f"; matches PyTorch within {result.max_abs_diff:.1e}")
    click.echo(f"wrote {result.path} ({result.format}){checked}")


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


def main() -> None:
    cli(prog_name="fissure")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
