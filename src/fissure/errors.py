"""Exceptions that carry a one-line, user-facing reason.

The CLI prints ``str(error)`` of any :class:`FissureError` without a traceback, so every
message names the file, key or stage path at fault.
"""


class FissureError(Exception):
    """Base class for errors the user can act on."""


class ConfigError(FissureError):
    """A configuration key is unknown, missing or of the wrong type."""


class DataError(FissureError):
    """A data file or folder is missing, unreadable, corrupt or inconsistent."""


class SourceUnavailable(DataError):
    """The source itself failed (a network after its retries, a session, a stage that is not
    there), not one of its files: every other file would fail the same way, so a run that
    reports a bad file and goes on stops at this one."""


class SplitAbsent(DataError):
    """A source has no such split, or it holds no pair: a layout's answer, not a fault in
    its files (a listing of the splits skips it)."""


class CheckpointError(FissureError):
    """A file is not a fissure checkpoint, or does not fit the model asked for."""


class MissingExtra(FissureError):
    """An optional feature's packages are not installed; the message names the extra."""
