"""``fissure data``: make, fetch and describe datasets."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .. import api
from ..errors import FissureError
from .group import cli


@cli.group()
def data() -> None:
    """Make and inspect datasets."""


@data.command("synth")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--count", default=200, show_default=True, help="Number of image/mask pairs.")
@click.option("--size", type=int, show_default="256, or 512 with --thin",
              help="Image side in pixels.")
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
@click.option("--thin", is_flag=True,
              help="Hairline cracks: 1-2 px wide, at most 0.5 % of each image's pixels.")
def data_synth(out, count, size, seed, gzip_files, manifest, image_format, workers,
               thin) -> None:
    """Write a synthetic crack dataset to OUT/{train,val,test}/{images,masks}.

    With --manifest, the notebook's stage layout instead (images/, masks/, manifest.csv).
    With --thin, hairline cracks (1-2 px wide, under 0.5 % crack pixels, 512 px unless
    --size is given): the thin, rare cracks on which a model drifts to blank masks.

    \b
    Examples:
      fissure data synth data/synth --count 200 --size 256 --seed 0
      fissure data synth data/thin --count 200 --thin
      fissure data synth data/notebook --count 11298 --size 448 --gzip --manifest
    """
    from ..data.synth import MANIFEST_NAME, SynthOptions, generate_dataset

    options = SynthOptions(manifest=manifest, gzip=gzip_files, image_format=image_format,
                           workers=workers, thin=thin)
    counts = generate_dataset(out, count=count, size=size, seed=seed, progress=True,
                              options=options)
    click.echo(f"wrote {sum(counts.values())} pairs to {out} "
               + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if manifest:
        click.echo(f"manifest: {Path(out) / MANIFEST_NAME}")


@data.command("stats")
@click.argument("root", type=click.Path(exists=True))
@click.option("--connection", help="Snowflake connection name (connections.toml), for a "
              "config whose data is a stage.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def data_stats(root, connection, quiet) -> None:
    """Per split of ROOT: image sizes, crack-pixel share, crack widths, crack-free images.

    ROOT is a dataset folder (any layout fissure reads) or a YAML config. The last lines
    give the settings the data implies: the largest crop every training image holds, and
    the pos_weight that `pos_weight: auto` derives from the crack share.

    \b
    Example:
      fissure data stats data/cfd
    """
    found = api.data_stats(root, connection=connection, progress=not quiet)
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
    from ..data.public import get_dataset

    def accept(_notice: str) -> bool:
        if not sys.stdin.isatty():
            raise FissureError(f"{name}: pass --yes to accept the licence above "
                               "(there is no terminal to ask on)")
        return click.confirm("Accept this licence and download?", default=False)

    result = get_dataset(name, out, force=force, confirm=None if yes else accept,
                         progress=not quiet, log=click.echo)
    click.echo(f"{result.out}: " + ", ".join(f"{k} {v}" for k, v in result.counts.items()))


