"""The inputs of a prediction run: finding the images, and naming their outputs.

:class:`InputImage` is one image to predict (a local file or a stage file, read when
needed); :func:`find_inputs` turns files, folders and stage paths into them (stage paths
through :data:`Fetch`); :func:`output_names` gives each its base name in the output folder,
and :func:`check_inputs_kept` refuses outputs that would overwrite an input.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath

from ..data import is_stage_path
from ..data.image import image_stem, is_image_name, read_bytes
from ..errors import DataError, FissureError
from .options import OutputOptions


@dataclass(frozen=True)
class InputImage:
    """One image to predict.

    ``source`` is what the records report (a path as given, or a stage path); ``read``
    returns the file's bytes (plain or gzip); ``location`` is its full path, which tells
    images with the same file name apart (see :func:`output_names`).
    """

    source: str
    read: Callable[[], bytes]
    location: PurePosixPath

    @classmethod
    def from_path(cls, path: Path) -> InputImage:
        """A local file, read when needed."""
        return cls(str(path), partial(read_bytes, path), PurePosixPath(path.resolve().as_posix()))


Fetch = Callable[[str, str], Iterable[InputImage]]
"""``fetch(stage_path, pattern)``: the images under a stage path such as ``@stage/photos``."""


def _inside(path: Path, folder: Path | None) -> bool:
    return folder is not None and path.resolve().is_relative_to(folder)


def _hidden(path: Path, folder: Path) -> bool:
    """A dot-file or a file in a dot-folder below ``folder``: macOS ``._IMG.jpg`` resource
    forks, ``.ipynb_checkpoints``, ``.git``; never photos."""
    return any(part.startswith(".") for part in path.relative_to(folder).parts)


def find_inputs(
    inputs: Sequence[str | Path],
    pattern: str = "**/*",
    *,
    fetch: Fetch | None = None,
    exclude: str | Path | None = None,
) -> list[InputImage]:
    """The images named by ``inputs``: files, folders searched with ``pattern``, stage paths.

    Folder matches must have an image suffix (``.png``, ``.jpg``, ... optionally ``.gz``)
    and are not hidden (no name below the folder starts with a dot); files named directly
    are taken as they are. Anything under ``exclude`` (the output folder) is skipped so
    that a rerun does not predict its own masks. An input starting with ``@`` is a stage
    path and needs ``fetch``. Repeated images are listed once.
    """
    skip = Path(exclude).resolve() if exclude is not None else None
    found: list[InputImage] = []
    for item in inputs:
        text = str(item)
        if is_stage_path(text):
            if fetch is None:
                raise FissureError(f"{text}: stage inputs need the Snowflake source")
            found.extend(fetch(text, pattern))
            continue
        path = Path(item)
        if path.is_dir():
            found.extend(
                InputImage.from_path(p)
                for p in sorted(path.glob(pattern))
                if p.is_file() and is_image_name(p.name) and not _hidden(p, path)
                and not _inside(p, skip)
            )
        elif path.is_file():
            found.append(InputImage.from_path(path))
        else:
            raise DataError(f"{path}: no such file or folder")
    if not found:
        raise DataError(f"no image files found in {', '.join(map(str, inputs))}")
    unique = {image.location: image for image in reversed(found)}
    return [image for image in found if unique[image.location] is image]


def _by_folder(locations: list[PurePosixPath], stem: str) -> list[str]:
    """``site1__img`` and ``site2__img``: the path below the folders the images share."""
    parents = [loc.parent.parts for loc in locations]
    shared = 0
    while all(len(p) > shared and p[shared] == parents[0][shared] for p in parents):
        shared += 1
    return ["__".join((*p[shared:], stem)) for p in parents]


def _by_suffix(locations: list[PurePosixPath], name: str) -> list[str]:
    """``x__png`` and ``x__jpg``: the file suffix, for same-named images in one folder."""
    suffixes = [loc.name[len(image_stem(loc.name)) :].lstrip(".") for loc in locations]
    return [f"{name}__{sfx.replace('.', '_')}" if sfx else name for sfx in suffixes]


def output_names(images: Sequence[InputImage]) -> list[str]:
    """Base names of each image's output files, unique within a run.

    An image's stem when no other input shares it. Images that share a stem are named by
    their folders below the deepest folder they all share, joined with ``__``
    (``a/x.png``, ``b/x.png`` -> ``a__x``, ``b__x``); same folder, different suffix gets
    the suffix (``x.png``, ``x.jpg`` -> ``x__png``, ``x__jpg``). Any name still taken (also
    by another image's ``_prob``/``_overlay`` file, ignoring case) gets ``__2``, ``__3``...
    """
    locations = [image.location for image in images]
    names = [image_stem(loc.name) for loc in locations]
    for rename in (_by_folder, _by_suffix):
        for name in [n for n, count in Counter(names).items() if count > 1]:
            idx = [i for i, n in enumerate(names) if n == name]
            for i, new in zip(idx, rename([locations[i] for i in idx], name), strict=True):
                names[i] = new
    taken: set[str] = set()
    unique = []
    for name in names:
        candidate, k = name, 1
        while {f"{candidate}{s}".casefold() for s in ("", "_prob", "_overlay")} & taken:
            k += 1
            candidate = f"{name}__{k}"
        taken |= {f"{candidate}{s}".casefold() for s in ("", "_prob", "_overlay")}
        unique.append(candidate)
    return unique


def _output_suffixes(output: OutputOptions) -> list[str]:
    """What follows ``<name>`` in the files written for one image."""
    return [
        ".png",
        *(["_prob.png"] if output.save_prob else []),
        *(["_overlay.jpg", "_overlay.png"] if output.overlay else []),
        *([".geojson"] if output.geojson else []),
    ]


def check_inputs_kept(
    images: Sequence[InputImage], names: Sequence[str], out_dir: Path, output: OutputOptions
) -> None:
    """Refuse a run whose outputs would overwrite one of its input images.

    ``fissure predict site/x.png --out site`` would replace the photo with its mask: files
    named directly are not skipped as folder scans skip the output folder. Compared
    ignoring case, as a case-insensitive disk would.
    """
    inputs = {str(image.location).casefold(): image.source for image in images}
    root = out_dir.resolve()
    for name in names:
        for suffix in _output_suffixes(output):
            target = root / f"{name}{suffix}"
            source = inputs.get(target.as_posix().casefold())
            if source is not None:
                raise DataError(f"{target}: the output would overwrite the input image "
                                f"{source}; write to another --out folder")
