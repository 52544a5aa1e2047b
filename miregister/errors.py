"""The exceptions miregister raises: one hierarchy rooted in :class:`MiregisterError`.

Every class also derives from the built-in exception a caller would catch without knowing
miregister (``ValueError`` for bad values, ``OSError`` for output folders), so existing
``except ValueError`` code keeps working. The command line maps them to exit codes:
:class:`UsageError` -> 2 (bad command line), every other :class:`MiregisterError` -> 1.
"""
from __future__ import annotations

__all__ = ["MiregisterError", "UsageError", "InputError", "RegistrationError", "OutputError"]


class MiregisterError(Exception):
    """Base of every error miregister raises on purpose (the message names the problem)."""


class UsageError(MiregisterError, ValueError):
    """An option or argument value that is out of range or unknown (command line: exit 2)."""


class InputError(MiregisterError, ValueError):
    """Bad input data: a missing, truncated or corrupt file, NaN voxels, bad spacing, a constant
    image, an empty mask, mismatched dimensions, an unreadable transform (command line: exit 1)."""


class RegistrationError(MiregisterError, ValueError):
    """A registration that cannot proceed or failed: no overlap, a diverging metric (exit 1)."""


class OutputError(MiregisterError, OSError):
    """An output path that cannot be written: read-only, under a file, a folder owned by
    another run (command line: exit 1)."""
