"""Data: sources of image/mask pairs, decoding, transforms and the torch Dataset."""

from __future__ import annotations

from ..config import DataConfig
from .dataset import CrackDataset, collate, crack_fraction, iter_groups, load_pair
from .image import decode_image, decode_mask, load_image, load_mask
from .sources import FolderSource, PairSource, Sample

__all__ = [
    "CrackDataset",
    "FolderSource",
    "PairSource",
    "Sample",
    "build_source",
    "collate",
    "crack_fraction",
    "iter_groups",
    "decode_image",
    "decode_mask",
    "load_image",
    "load_mask",
    "load_pair",
]


def build_source(data: DataConfig, refresh: bool = False, progress: bool = True) -> PairSource:
    """The source that ``data.source`` names: local folders or a Snowflake stage.

    ``refresh`` and ``progress`` concern the stage's local cache (fetch again; show a bar).
    """
    if data.source == "stage":
        # Imported here: Snowpark is heavy and only stage users pay for it.
        from .snowflake import StageSource

        return StageSource.from_config(data.snowflake, refresh=refresh, progress=progress)
    return FolderSource(
        data.root,
        split_files=data.split_files,
        val_fraction=data.val_fraction,
        test_fraction=data.test_fraction,
        split_seed=data.split_seed,
    )
