"""Named errors and the exit codes the CLI maps them to.

Every error the library raises on purpose is a :class:`TiledsrError`; its
message is one line naming the file, field or value at fault and what to do.
"""
from __future__ import annotations

__all__ = [
    "Cancelled",
    "InputError",
    "ModelNotAvailable",
    "OutOfMemory",
    "PresetError",
    "TiledsrError",
]


class TiledsrError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class InputError(TiledsrError):
    """Bad input file, bad argument or bad value (exit code 2)."""

    exit_code = 2


class PresetError(InputError):
    """A preset that is missing, unreadable or invalid (exit code 2)."""


class ModelNotAvailable(TiledsrError):
    """A model is not installed, not cached or cannot be loaded (exit code 3)."""

    exit_code = 3


class OutOfMemory(TiledsrError):
    """Out of memory even at the smallest tile (exit code 4)."""

    exit_code = 4


class Cancelled(TiledsrError):
    """The run was interrupted or cancelled by a progress callback (exit code 130)."""

    exit_code = 130
