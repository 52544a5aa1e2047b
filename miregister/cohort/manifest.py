"""Reading a cohort manifest: one CSV row per pair to register.

The manifest is a CSV file with a header. Columns:

- ``id`` (required): the pair's name; its results go to ``OUT/<id>/``, so it must be a plain
  folder name (no ``/``, ``\\``, no leading ``.``, not ``..``), unique (also ignoring case, for
  case-insensitive file systems).
- ``moving`` (required): the moving image (file or DICOM folder).
- ``fixed``: the fixed image; when absent or empty, the cohort's template.
- ``fixed_mask``, ``moving_mask``: masks on the fixed / moving grid.
- ``labels``: a label map on the moving grid, carried onto the fixed grid with nearest
  neighbour (``OUT/<id>/labels_warped.nii.gz``, pixel type kept).

Paths are relative to the manifest's folder (absolute paths are kept). Other columns are kept
as they are and copied into the summary. Every bad row is reported at once, before any work.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError

__all__ = ["Pair", "read_manifest", "PATH_COLUMNS", "KNOWN_COLUMNS"]

#: Columns that hold paths (resolved against the manifest's folder and checked to exist).
PATH_COLUMNS = ("moving", "fixed", "fixed_mask", "moving_mask", "labels")
#: Columns with a meaning to the cohort runner; any other column is carried into the summary.
KNOWN_COLUMNS = ("id",) + PATH_COLUMNS
#: Names an id may not take: they are the cohort's own files in OUT.
RESERVED_IDS = frozenset({"summary.csv", "summary.html"})


@dataclass(frozen=True)
class Pair:
    """One row of a manifest, paths resolved.

    Attributes
    ----------
    id : str
        The pair's name (its output folder ``OUT/<id>``).
    fixed, moving : str
        Absolute paths of the fixed image (the row's, or the template) and the moving image.
    fixed_mask, moving_mask, labels : str or None
        Absolute paths, when given.
    extra : dict
        The manifest's other columns for this row, in file order (strings).
    """

    id: str
    fixed: str
    moving: str
    fixed_mask: str | None = None
    moving_mask: str | None = None
    labels: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


def read_manifest(manifest: str | os.PathLike, template: str | os.PathLike | None = None) -> list[Pair]:
    """Read and check a cohort manifest.

    Parameters
    ----------
    manifest : str or PathLike
        The CSV file (UTF-8, header row first; see the module docstring for the columns).
    template : str or PathLike, optional
        The fixed image of rows without a ``fixed`` value (relative to the current folder).

    Returns
    -------
    list of Pair
        In manifest order.

    Raises
    ------
    InputError
        Naming every problem at once (row numbers as a spreadsheet shows them, the header being
        row 1): an unreadable file, a missing ``id``/``moving`` column, an empty, unsafe or
        duplicate id, a missing or unreadable image, a row with no fixed image and no template.
    """
    path = Path(manifest)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip() for name in (reader.fieldnames or [])]
            raw_rows = [(index + 2, row) for index, row in enumerate(reader)]
    except FileNotFoundError:
        raise InputError(f"cohort manifest '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"cannot read cohort manifest '{path}': {error}") from None
    missing = [name for name in ("id", "moving") if name not in header]
    if missing:
        raise InputError(
            f"cohort manifest '{path}' has no {' and no '.join(repr(m) for m in missing)} column; its header must "
            f"name at least 'id' and 'moving' (found: {', '.join(header) or 'nothing'})"
        )
    base = path.resolve().parent
    template_path = None if template is None else str(Path(template).resolve())
    problems: list[str] = []
    if template_path is not None:
        problems += [f"template: {p}" for p in _check_image_path(template_path)]
    pairs: list[Pair] = []
    seen: dict[str, int] = {}
    checked: dict[str, list[str]] = {}  # one check per distinct file (a template is shared by every row)
    for line, row in raw_rows:
        values = {(k or "").strip(): (v or "").strip() if isinstance(v, str) else "" for k, v in row.items() if k is not None}
        if not any(values.values()):
            continue  # blank line
        if None in row:
            problems.append(f"row {line}: more values than header columns")
        ident = values.get("id", "")
        row_problems = [f"id {reason}" for reason in _id_problems(ident)]
        key = ident.casefold()
        if ident and key in seen:
            row_problems.append(f"id {ident!r} is also used on row {seen[key]} (ids name output folders and must be unique)")
        seen.setdefault(key, line)
        paths: dict[str, str | None] = {}
        for column in PATH_COLUMNS:
            text = values.get(column, "")
            paths[column] = None if not text else str((base / text).resolve())
        if paths["fixed"] is None:
            if template_path is None:
                row_problems.append("no fixed image: the row has no 'fixed' value and no template was given (--template)")
            paths["fixed"] = template_path
        if paths["moving"] is None:
            row_problems.append("no moving image: the 'moving' value is empty")
        for column in PATH_COLUMNS:
            value = paths[column]
            if value is None or (column == "fixed" and value == template_path and not values.get("fixed")):
                continue
            if value not in checked:
                checked[value] = _check_image_path(value)
            row_problems += [f"{column}: {p}" for p in checked[value]]
        name = f"row {line}" + (f" (id {ident!r})" if ident else "")
        problems += [f"{name}: {p}" for p in row_problems]
        extra = {k: v for k, v in values.items() if k not in KNOWN_COLUMNS}
        if not row_problems:
            pairs.append(Pair(ident, paths["fixed"], paths["moving"], paths["fixed_mask"], paths["moving_mask"], paths["labels"], extra))
    if not raw_rows or (not pairs and not problems):
        problems.append("it lists no pair")
    if problems:
        listed = "\n  ".join(problems)
        raise InputError(f"cohort manifest '{path}' has {len(problems)} problem(s); nothing was registered:\n  {listed}")
    return pairs


def _id_problems(ident: str) -> list[str]:
    """Why ``ident`` cannot name a folder under OUT (empty list when it can)."""
    if not ident:
        return ["is empty"]
    if "/" in ident or "\\" in ident or ident in (".", ".."):
        return [f"{ident!r} is not a plain folder name (no '/', '\\', '.' or '..')"]
    if ident.startswith("."):
        return [f"{ident!r} starts with '.' (hidden folders are the runner's staging space)"]
    if any(ord(c) < 32 for c in ident) or ":" in ident:
        return [f"{ident!r} holds a control character or ':'"]
    if ident.lower() in RESERVED_IDS:
        return [f"{ident!r} is the name of a cohort summary file"]
    return []


def _check_image_path(path: str) -> list[str]:
    """Problems with an input image (empty list when it exists and its header can be read)."""
    target = Path(path)
    if not target.exists():
        return [f"'{path}' does not exist"]
    if target.is_dir():
        return [] if any(target.iterdir()) else [f"'{path}' is an empty folder"]
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        from ..io import _sitk_reason

        return [f"'{path}' cannot be read as an image ({_sitk_reason(error)})"]
    if target.stat().st_size == 0:
        return [f"'{path}' is empty"]
    return []
