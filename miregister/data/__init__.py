"""Sample images shipped with the package: paths to small MNI152-derived brains.

The images are package data, so they are there after ``pip install miregister`` as well as in a
checkout (where ``data/<file>`` links to them)::

    from miregister import data
    data.list()                       # ['mni152_brainmask_2mm', 'mni152_labels_2mm', ...]
    data.path("mni152_t1_2mm")        # .../miregister/data/mni152_t1_2mm.nii.gz

Every image is derived from the MNI ICBM152 2009a template (Copyright (C) 1993-2009 Louis
Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill University);
the licence notice and the recipe of each file are in ``NOTICE.md`` next to the images and in
``data/README.md`` of the source tree. Geometry is as SimpleITK reads it (mm, ITK/LPS).
"""
from __future__ import annotations

import atexit
import builtins
from contextlib import ExitStack
from importlib import resources
from pathlib import Path

__all__ = ["path", "list", "SUFFIX"]

#: File suffix of every sample image.
SUFFIX = ".nii.gz"

# Resources inside a zip (zipimport) are extracted once per process and removed at exit.
_extracted = ExitStack()
atexit.register(_extracted.close)


def list() -> builtins.list[str]:  # noqa: A001 - the name a user looks for: data.list()
    """Names of the sample images (without ``.nii.gz``), sorted.

    Returns
    -------
    list of str
        E.g. ``"mni152_t1_2mm"`` (T1, 98 x 116 x 94, 2 mm), ``"mni152_t2like_2mm"`` (synthetic
        T2-like contrast, same grid), ``"mni152_t2like_moved_2mm"`` (the same, moved by a known
        rigid transform), ``"mni152_labels_2mm"`` (0 background, 1 CSF, 2 GM, 3 WM),
        ``"mni152_brainmask_2mm"`` and the 2-D axial slices ``"mni152_t1_slice"``,
        ``"mni152_t2like_slice"``.
    """
    return sorted(
        entry.name[: -len(SUFFIX)] for entry in resources.files(__name__).iterdir() if entry.name.endswith(SUFFIX)
    )


def path(name: str) -> Path:
    """The file path of sample image ``name`` (with or without the ``.nii.gz`` suffix).

    Parameters
    ----------
    name : str
        One of :func:`list`.

    Returns
    -------
    pathlib.Path
        A readable NIfTI file (``miregister.read_image``, ``SimpleITK.ReadImage``, or the
        ``miregister`` command line).

    Raises
    ------
    UsageError
        For a name that is not a sample image (the message lists the names).
    """
    from ..errors import UsageError

    stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    names = list()
    if stem not in names:
        raise UsageError(f"no sample image named {name!r}; the sample images are {', '.join(names)}")
    resource = resources.files(__name__) / (stem + SUFFIX)
    if isinstance(resource, Path):  # an ordinary installation or a checkout
        return resource
    return Path(_extracted.enter_context(resources.as_file(resource)))
