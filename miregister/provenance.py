"""Where a result came from: input files (path, size, SHA-256) and software versions.

Recorded in every ``report.json`` (keys ``inputs`` and ``software``) so that a user can tell
which files and which versions produced a result, and so that the cohort runner can tell
whether a pair's existing result still matches its inputs (resume).
"""
from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["file_record", "software_versions"]


def file_record(path: str | os.PathLike) -> dict[str, Any]:
    """``{"path", "size", "sha256"}`` of a file (absolute path, bytes, hex digest), or of a
    DICOM folder (size and digest over its files in name order)."""
    path = Path(path).resolve()
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    size = 0
    for file in files:
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
    return {"path": str(path), "size": size, "sha256": digest.hexdigest()}


def software_versions() -> dict[str, str]:
    """Versions of miregister, PyTorch, SimpleITK, NumPy and Python."""
    import numpy
    import SimpleITK
    import torch

    from . import __version__

    return {
        "miregister": __version__, "torch": torch.__version__, "SimpleITK": SimpleITK.Version_VersionString(),
        "numpy": numpy.__version__, "python": platform.python_version(),
    }
