"""The cohort runner's small files: atomic writes and the per-pair resume fingerprint.

``OUT/<id>/cohort.json`` is the single source of the resume decision. It is written last,
after the run's folder (:func:`miregister.outputs.write_run`, all or nothing) and the warped
label map, so its presence means the pair is complete. It holds the pair's fingerprint
(inputs as path, size and SHA-256; transform chain and options; miregister version), the
files the pair wrote, and how the pair ran (status, seconds, worker).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_text", "read_marker", "write_marker", "MARKER"]

#: The per-pair resume marker, next to the run's files.
MARKER = "cohort.json"


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`miregister.outputs.atomic_write`)."""
    from ..outputs import atomic_write

    return atomic_write(path, lambda staged: Path(staged).write_text(text, encoding="utf-8"))


def write_marker(folder: str | os.PathLike, marker: dict[str, Any]) -> Path:
    """Write ``folder/cohort.json`` atomically (the pair's completion and resume record)."""
    return atomic_write_text(Path(folder) / MARKER, json.dumps(marker, indent=2, sort_keys=True))


def read_marker(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The pair's ``cohort.json``, or None when absent or unreadable."""
    try:
        value = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
