"""The root ``fissure`` group, its error handling and the options commands share."""

from __future__ import annotations

import traceback

import click

from .. import __version__
from ..errors import FissureError


class FissureGroup(click.Group):
    """Turns a :class:`FissureError`, or an ``OSError`` of the machine (an output folder
    that is a file, a full disk, no permission), into a one-line message naming the file
    and exit code 1 (``--debug`` shows the traceback)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (FissureError, OSError) as exc:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            raise click.ClickException(_one_line(exc)) from None
        except KeyboardInterrupt:
            raise click.ClickException("interrupted") from None


def _one_line(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


# evaluate and predict run a trained model the same way
AMP_OPTION = click.option(
    "--amp/--no-amp", default=None,
    help="Mixed precision where the hardware has it (bf16 on CPUs with AVX512-BF16 or AMX; "
         "bf16/fp16 on CUDA). Default: as the checkpoint was trained. "
         "--no-amp: fp32, the same figures on every machine.")


@click.group(cls=FissureGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fissure")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Find cracks in photos of concrete, pixel by pixel.

    \b
    Train, evaluate and predict with a ResNet-encoder U-Net on image/mask folders or a
    Snowflake stage. Start with `fissure demo` (from the repository root).
    """
    ctx.ensure_object(dict)["debug"] = debug

