"""Where the Inspect page's photos come from: uploads, a local folder or a stage.

Each source gives :class:`PhotoFile` items, read only when a photo is opened. Decoding is
:func:`fissure.data.image.decode_image`, as for ``fissure predict``; a file that cannot
be decoded is a :class:`~fissure.errors.DataError` whose one line the page shows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..data import is_stage_path
from ..data.image import decode_image, is_image_name
from ..errors import DataError, FissureError
from ..prediction.inputs import InputImage, find_inputs
from ..snowflake.runs import stage_fetcher
from ..snowflake.transfer import list_stage


class Uploaded(Protocol):
    """What the page needs of a Streamlit ``UploadedFile``."""

    name: str
    file_id: str

    def getvalue(self) -> bytes: ...


@dataclass(frozen=True)
class PhotoFile:
    """One photo to inspect: its ``name`` as shown and reported, ``key`` telling it apart
    from every other photo of the session, and ``read`` returning its bytes."""

    name: str
    key: str
    read: Callable[[], bytes]


def uploaded_photos(files: Iterable[Uploaded]) -> list[PhotoFile]:
    """The photos of a ``st.file_uploader``, in upload order."""
    return [PhotoFile(f.name, f"upload:{f.file_id}", f.getvalue) for f in files]


def _photo(image: InputImage) -> PhotoFile:
    return PhotoFile(image.source, f"file:{image.location}", image.read)


def folder_photos(folder: str | Path, pattern: str = "**/*") -> list[PhotoFile]:
    """The images in a local ``folder`` matching ``pattern``, as ``fissure predict`` finds
    them; a missing folder or one without images is a DataError."""
    path = Path(str(folder).strip()).expanduser()
    if not path.is_dir():
        raise DataError(f"{path}: no such folder")
    return [_photo(image) for image in find_inputs([path], pattern)]


def _listed(session: Any, prefix: str) -> list[str]:
    """The image files under stage folder ``prefix``, as ``fissure predict`` lists them
    (:func:`~fissure.snowflake.transfer.list_stage`: only that folder, any kind of stage)."""
    try:
        listing = list_stage(session, prefix)
    except FissureError as exc:
        raise FissureError(f"{exc}; name its photos one per line instead") from None
    return [path for path, _ in listing if is_image_name(path)]


def stage_photos(session: Any, spec: str) -> list[PhotoFile]:
    """The photos named by ``spec``: stage paths one per line, each an image file
    (``@DB.SCH.STAGE/photos/a.jpg``) or a folder whose images are listed."""
    lines = [line.strip() for line in spec.splitlines() if line.strip()]
    if not lines:
        raise DataError("name a stage folder or photos, e.g. @DB.SCHEMA.STAGE/photos/")
    fetch = stage_fetcher(session)
    photos = []
    for line in lines:
        if not is_stage_path(line):
            raise DataError(f"{line}: not a stage path (e.g. @DB.SCHEMA.STAGE/photos/)")
        paths = [line] if is_image_name(line) else _listed(session, line)
        if not paths:
            raise DataError(f"{line}: no photos there")
        photos += [_photo(image) for path in paths for image in fetch(path, "**/*")]
    return photos


def read_photo(photo: PhotoFile) -> tuple[np.ndarray, str]:
    """The photo's (H, W, 3) uint8 RGB pixels and a digest of its bytes.

    Anything wrong with the file, unreadable or not an image, is a DataError naming it.
    """
    try:
        data = photo.read()
    except FissureError:
        raise
    except OSError as exc:
        raise DataError(f"{photo.name}: cannot be read ({exc.strerror or exc})") from None
    try:
        rgb = decode_image(data, photo.name)
    except FissureError:
        raise
    except Exception as exc:  # PIL raises many kinds for a damaged file
        raise DataError(f"{photo.name}: not a readable image ({type(exc).__name__})") from None
    return rgb, hashlib.sha1(data).hexdigest()
