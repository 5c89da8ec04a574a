"""Local data: sources of image/mask pairs, decoding, transforms, the torch Dataset and
loader, and the synthetic set. A Snowflake stage plugs in through the same
:class:`PairSource` interface from :mod:`fissure.snowflake`."""

from __future__ import annotations

from ..config import DataConfig
from ..errors import ConfigError
from .dataset import CrackDataset, collate, crack_fraction, iter_groups, load_pair
from .image import decode_image, decode_mask, load_image, load_mask
from .sources import FolderSource, PairSource, Sample, is_stage_path

__all__ = [
    "CrackDataset",
    "FolderSource",
    "PairSource",
    "Sample",
    "build_source",
    "is_stage_path",
    "collate",
    "crack_fraction",
    "iter_groups",
    "decode_image",
    "decode_mask",
    "load_image",
    "load_mask",
    "load_pair",
]


def build_source(data: DataConfig) -> FolderSource:
    """The local folders ``data`` names (``data.source: folder``).

    A stage (``data.source: stage``) is read by :class:`fissure.snowflake.source.StageSource`,
    which :func:`fissure.api.build_source` builds; this layer knows only local data.
    """
    if data.source != "folder":
        raise ConfigError(f"data.source: {data.source!r} data is read through fissure.api."
                          "build_source, not fissure.data.build_source")
    return FolderSource(
        data.root,
        split_files=data.split_files,
        val_fraction=data.val_fraction,
        test_fraction=data.test_fraction,
        split_seed=data.split_seed,
    )
