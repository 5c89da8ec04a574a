"""The ``fissure`` command line: parse options, call the library, print."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import click

from . import __version__, workflow
from .config import load_config
from .errors import FissureError
from .report import fmt, metrics_table


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
def train(config_path, out, overrides, resume_dir, overwrite, device, quiet) -> None:
    """Train a model; writes best.pt, last.pt, history.csv, curves.png and config.yaml.

    \b
    Examples:
      fissure train --config configs/default.yaml --out runs/demo
      fissure train --config configs/cfd.yaml --set train.epochs=5 --set data.size=128
      fissure train --resume runs/demo
    """
    extra = list(overrides) + ([f"train.device={device}"] if device else [])
    if resume_dir:
        result = workflow.resume(resume_dir, extra, progress=not quiet, log=click.echo)
    else:
        if not config_path:
            raise click.UsageError("give --config FILE (or --resume RUN_DIR)")
        cfg = load_config(config_path, extra)
        result = workflow.train(cfg, out, overwrite=overwrite, progress=not quiet,
                                log=click.echo)
    click.echo(f"best epoch {result.best_epoch} (score {fmt(result.best_score)}); "
               f"checkpoint {result.best}")


@cli.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--data", help="Dataset folder or YAML config (default: the checkpoint's data).")
@click.option("--split", default="test", show_default=True,
              type=click.Choice(["train", "val", "test", "all"]))
@click.option("--out", type=click.Path(file_okay=False), help="Folder for metrics.json.")
@click.option("--threshold", type=float, help="Decision threshold (default: the checkpoint's).")
@click.option("--device", default="auto", show_default=True)
@click.option("--workers", default=0, show_default=True, help="DataLoader workers.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def evaluate(checkpoint, data, split, out, threshold, device, workers, quiet) -> None:
    """Score a checkpoint on a split with streaming, empty-mask-aware metrics.

    \b
    Example:
      fissure evaluate runs/demo/best.pt --data data/synth --split test --out runs/demo/eval
    """
    metrics = workflow.evaluate(checkpoint, data, split, out, threshold=threshold,
                                device=device, num_workers=workers, progress=not quiet)
    click.echo(metrics_table(metrics))
    if out:
        click.echo(f"wrote {Path(out) / 'metrics.json'}")


@cli.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for <stem>.png masks.")
@click.option("--threshold", type=float, help="Decision threshold (default: the checkpoint's).")
@click.option("--save-prob", is_flag=True, help="Also write <stem>_prob.png (8-bit).")
@click.option("--device", default="auto", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def predict(checkpoint, inputs, out, threshold, save_prob, device, quiet) -> None:
    """Predict crack masks for image files or folders of any size.

    \b
    Example:
      fissure predict runs/demo/best.pt photos/ --out predictions/
    """
    records = workflow.predict(checkpoint, inputs, out, threshold=threshold, save_prob=save_prob,
                               device=device, progress=not quiet)
    click.echo(f"wrote {len(records)} mask(s) to {out}")


@cli.group()
def data() -> None:
    """Make and inspect datasets."""


@data.command("synth")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--count", default=200, show_default=True, help="Number of image/mask pairs.")
@click.option("--size", default=256, show_default=True, help="Image side in pixels.")
@click.option("--seed", default=0, show_default=True, help="Same seed, same bytes.")
def data_synth(out, count, size, seed) -> None:
    """Write a synthetic crack dataset to OUT/{train,val,test}/{images,masks}.

    \b
    Example:
      fissure data synth data/synth --count 200 --size 256 --seed 0
    """
    from .data.synth import generate_dataset

    counts = generate_dataset(out, count=count, size=size, seed=seed, progress=True)
    click.echo(f"wrote {sum(counts.values())} pairs to {out} "
               + ", ".join(f"{k} {v}" for k, v in counts.items()))


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
    summary = workflow.demo(cfg, out, progress=not quiet, log=click.echo)
    click.echo(metrics_table(summary["metrics"]))
    for label, path in summary["outputs"].items():
        click.echo(f"{label:>12}: {path}")


def main() -> None:
    cli(prog_name="fissure")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
