"""Reading and writing transforms in ITK formats (SimpleITK, ANTs, elastix-compatible files).

Every file holds a fixed -> moving map in physical space (mm, LPS), ITK's convention and ours.

Formats, chosen by the file name's extension:

* ``.tfm`` / ``.txt`` (ITK text), ``.mat`` (ITK MATLAB, as ANTs writes): linear transforms
  (and, in ``.tfm``/``.txt``, a cubic ``BSpline`` as ITK's ``BSplineTransform``), linear ones
  always written as ``AffineTransform_double_D_D`` with ``Parameters`` = the row-major
  matrix ``A`` then the translation ``t`` and ``FixedParameters`` = the centre ``c``
  (``T(x) = A (x - c) + c + t``), exactly what ``sitk.WriteTransform`` writes. A linear
  :class:`~miregister.transforms.composite.Composite` is collapsed into one affine.
* ``.nii`` / ``.nii.gz`` / ``.nrrd`` / ``.nhdr`` / ``.mha`` / ``.mhd``: a displacement-field
  image on the ``reference`` grid, vector pixels = ``T(x) - x`` in mm (physical LPS axes),
  float64. It loads with ``sitk.DisplacementFieldTransform(sitk.ReadImage(path))`` and ANTs
  reads such warps. Any transform can be written so (``reference`` is required).
* ``.h5`` / ``.hdf5`` (ITK HDF5): any transform; a :class:`Composite` becomes an ITK
  ``CompositeTransform`` with its members in the same order, linear members as affines,
  B-splines as ``BSplineTransform`` and others as displacement fields on ``reference``.

Batches: a file holds one transform. A transform with ``batch_size > 1`` is written one pair
at a time with ``index=i``; without ``index`` it is an error. Files are written atomically
(temporary file in the same folder, then ``os.replace``).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..grid import Grid
from .base import SpatialTransform
from .composite import Composite
from .displacement import DisplacementField
from .linear import Affine, CenteredLinearTransform, Rigid, Similarity, Translation

__all__ = ["write_transform", "read_transform", "to_sitk", "from_sitk"]

_LINEAR_EXTENSIONS = (".tfm", ".txt", ".mat")
_HDF5_EXTENSIONS = (".h5", ".hdf5")
_IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def _extension(path: Path) -> str:
    name = path.name.lower()
    for ext in _IMAGE_EXTENSIONS + _LINEAR_EXTENSIONS + _HDF5_EXTENSIONS:
        if name.endswith(ext):
            return ext
    known = ", ".join(_LINEAR_EXTENSIONS + _HDF5_EXTENSIONS + _IMAGE_EXTENSIONS)
    raise ValueError(f"cannot tell the transform format of {str(path)!r}: use one of {known}")


def _pick(batch_size: int, index: int | None, what: str) -> int:
    """The batch entry to write: ``index``, or 0 for a batch of one."""
    if index is None:
        if batch_size != 1:
            raise ValueError(
                f"{what} holds {batch_size} transforms (batch_size > 1) but a file holds one: "
                "write one file per pair with index=i"
            )
        return 0
    if not -batch_size <= index < batch_size:
        raise ValueError(f"index {index} out of range for batch_size {batch_size}")
    return index if batch_size > 1 else 0


# ---------------------------------------------------------------------- to SimpleITK
def _affine_to_sitk(transform: SpatialTransform, index: int | None) -> sitk.AffineTransform:
    d = transform.ndim
    i = _pick(transform.batch_size, index, type(transform).__name__)
    matrices = transform.affine_matrix().detach().cpu().double()
    m = matrices[i if matrices.shape[0] > 1 else 0].numpy()
    center = getattr(transform, "center", None)
    c = np.zeros(d) if center is None else center.detach().cpu().double().numpy()[i if center.shape[0] > 1 else 0]
    a, offset = m[:d, :d], m[:d, d]
    out = sitk.AffineTransform(d)
    out.SetMatrix(tuple(a.ravel().tolist()))
    out.SetCenter(tuple(c.tolist()))
    out.SetTranslation(tuple((offset + a @ c - c).tolist()))  # ITK: T(x) = A (x - c) + c + t
    return out


def _field_image(transform: SpatialTransform, reference: Grid | None, index: int | None) -> sitk.Image:
    """The displacement ``T(x) - x`` on ``reference`` as an ITK vector image (float64, mm)."""
    if reference is None:
        raise ValueError(f"writing a {type(transform).__name__} as a displacement field needs reference=Grid")
    if reference.ndim != transform.ndim:
        raise ValueError(f"reference grid is {reference.ndim}D but the transform is {transform.ndim}D")
    i = _pick(transform.batch_size, index, type(transform).__name__)
    with torch.no_grad():
        field = transform.displacement_field(reference, dtype=torch.float64)
    array = field[i if field.shape[0] > 1 else 0].detach().cpu().numpy().astype(np.float64)
    image = sitk.GetImageFromArray(array, isVector=True)  # (*shape, D) -> vector pixels
    reference.copy_to_sitk(image)
    return image


def _has_native_sitk(transform: SpatialTransform) -> bool:
    """Whether the transform converts itself exactly (``to_sitk(batch_index=...)``, e.g. :class:`BSpline`)."""
    return callable(getattr(transform, "to_sitk", None))


def to_sitk(transform: SpatialTransform, reference: Grid | None = None, index: int | None = None) -> sitk.Transform:
    """Convert one pair (``index``) of a transform to a ``SimpleITK.Transform``.

    Linear transforms become ``sitk.AffineTransform`` (centre kept), a :class:`Composite` a
    ``sitk.CompositeTransform`` in the same order, a transform with its own exact
    ``to_sitk(batch_index=)`` (the cubic ``BSpline``: ``sitk.BSplineTransform``) that, and
    anything else a ``sitk.DisplacementFieldTransform`` sampled on ``reference`` (required then).
    """
    if isinstance(transform, Composite):
        _pick(transform.batch_size, index, "Composite")
        members = [to_sitk(t, reference, index if t.batch_size > 1 else None) for t in transform.transforms]
        return sitk.CompositeTransform(members)
    if transform.is_linear:
        return _affine_to_sitk(transform, index)
    if _has_native_sitk(transform):  # e.g. BSpline -> sitk.BSplineTransform, exact and compact
        return transform.to_sitk(batch_index=_pick(transform.batch_size, index, type(transform).__name__))
    image = sitk.Cast(_field_image(transform, reference, index), sitk.sitkVectorFloat64)
    return sitk.DisplacementFieldTransform(image)


def _atomic_write(path: Path, ext: str, write) -> None:
    """Call ``write(temporary_path)`` then move the file into place (no partial files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A private staging folder, not mkstemp: a file created there keeps the umask's permissions
    # (mkstemp's 0600 would make transforms unreadable to the user's group, unlike images).
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tmp = staging / f"staged{ext}"
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_transform(
    transform: SpatialTransform,
    path: str | os.PathLike,
    reference: Grid | None = None,
    index: int | None = None,
) -> Path:
    """Write a fixed -> moving transform to an ITK file (format from the extension; see module doc).

    Parameters
    ----------
    transform : SpatialTransform
        What to write.
    path : str or PathLike
        ``.tfm``/``.txt``/``.mat`` (linear), ``.h5``/``.hdf5`` (any) or an image
        (``.nii[.gz]``, ``.nrrd``, ``.mha``, ...) for a displacement field.
    reference : Grid, optional
        Grid (normally the fixed image's) on which non-linear transforms are sampled;
        required for displacement-field images and for non-linear members of ``.h5`` files.
    index : int, optional
        Which pair of a batched transform to write; required when ``batch_size > 1``.

    Returns
    -------
    Path
        The written path.

    Raises
    ------
    ValueError
        Unknown extension, non-linear transform to a linear-only format, missing reference,
        dimension mismatch, or ``batch_size > 1`` without ``index``.
    """
    path = Path(path)
    ext = _extension(path)
    if ext in _IMAGE_EXTENSIONS:
        image = _field_image(transform, reference, index)
        _atomic_write(path, ext, lambda tmp: sitk.WriteImage(image, tmp))
        return path
    native_text = ext in (".tfm", ".txt") and _has_native_sitk(transform)  # ITK text holds B-splines too
    if ext in _LINEAR_EXTENSIONS and not transform.is_linear and not native_text:
        raise ValueError(
            f"{ext} files hold linear transforms only; write a {type(transform).__name__} to .h5 "
            "or as a displacement-field image (.nii.gz, .nrrd, .mha) with reference=grid"
        )
    if ext in _LINEAR_EXTENSIONS and transform.is_linear:
        tx: sitk.Transform = _affine_to_sitk(transform, index)  # a linear composite collapses here
    else:
        tx = to_sitk(transform, reference, index)
    _atomic_write(path, ext, lambda tmp: sitk.WriteTransform(tx, tmp))
    return path


# ---------------------------------------------------------------------- from SimpleITK
def _linear_class(name: str) -> type[CenteredLinearTransform]:
    if "Translation" in name:
        return Translation
    if "Similarity" in name:
        return Similarity
    if "Euler" in name or "Rigid" in name or "Versor" in name:
        return Rigid
    return Affine


def from_sitk(tx: sitk.Transform, dtype: torch.dtype = torch.float32) -> SpatialTransform:
    """Convert a ``SimpleITK.Transform`` into a miregister transform (batch size 1).

    Linear ITK transforms (affine, Euler, versor, similarity, translation, scale, ...) become
    the matching :mod:`~miregister.transforms.linear` class with ITK's centre; a displacement
    field becomes :class:`DisplacementField`, a cubic ``BSplineTransform`` a ``BSpline`` and a
    composite a :class:`Composite` (same order).

    Raises
    ------
    ValueError
        For a dimension other than 2 or 3 or an unsupported kind.
    """
    d = tx.GetDimension()
    if d not in (2, 3):
        raise ValueError(f"only 2D and 3D transforms are supported, got a {d}D {tx.GetName()}")
    name = tx.GetName()
    if name == "CompositeTransform":
        composite = sitk.CompositeTransform(tx)
        members = [from_sitk(composite.GetNthTransform(i), dtype) for i in range(composite.GetNumberOfTransforms())]
        if not members:
            raise ValueError("the composite transform is empty")
        return Composite(members)
    if name == "DisplacementFieldTransform":
        image = sitk.DisplacementFieldTransform(tx).GetDisplacementField()
        return _field_from_image(image, dtype)
    if name == "BSplineTransform":
        from .bspline import BSpline  # imported here: the B-spline module is optional for linear IO

        return BSpline.from_sitk(tx, dtype=dtype)
    if tx.IsLinear():
        # Read the mapping itself (origin and unit vectors) so every ITK linear kind is handled.
        origin = np.asarray(tx.TransformPoint((0.0,) * d))
        columns = [np.asarray(tx.TransformPoint(tuple(np.eye(d)[k]))) - origin for k in range(d)]
        m = np.eye(d + 1)
        m[:d, :d] = np.stack(columns, axis=1)
        m[:d, d] = origin
        fixed = tx.GetFixedParameters()
        center = np.asarray(fixed[:d]) if len(fixed) >= d else None
        return _linear_class(name).from_matrix(m, center=center, dtype=dtype)
    raise ValueError(f"unsupported ITK transform kind {name!r} (supported: linear, displacement field, composite)")


def _field_from_image(image: sitk.Image, dtype: torch.dtype) -> DisplacementField:
    d = image.GetDimension()
    if d not in (2, 3):
        raise ValueError(f"only 2D and 3D displacement fields are supported, got a {d}D image")
    if image.GetNumberOfComponentsPerPixel() != d:
        raise ValueError(
            f"not a displacement field: a {d}D image needs {d} components per pixel, "
            f"got {image.GetNumberOfComponentsPerPixel()}"
        )
    array = sitk.GetArrayFromImage(image)  # (*shape, D), physical mm
    field = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64)).to(dtype)
    return DisplacementField(Grid.from_sitk(image), field)


def read_transform(path: str | os.PathLike, ndim: int | None = None, dtype: torch.dtype = torch.float32) -> SpatialTransform:
    """Read an ITK transform file or displacement-field image (fixed -> moving, mm).

    Parameters
    ----------
    path : str or PathLike
        ``.tfm``/``.txt``/``.mat``/``.h5``/``.hdf5`` transform file, or a displacement-field
        image (``.nii[.gz]``, ``.nrrd``, ``.mha``, ...).
    ndim : int, optional
        Expected dimension; a file of another dimension is an error.
    dtype : torch.dtype
        Dtype of the returned parameters/field.

    Returns
    -------
    SpatialTransform
        :class:`Affine`/:class:`Rigid`/:class:`Similarity`/:class:`Translation` (by ITK kind),
        ``BSpline``, :class:`DisplacementField` or :class:`Composite`; batch size 1.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        Unreadable or unsupported file, or a dimension other than ``ndim`` (or than 2/3).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no transform file at {str(path)!r}")
    ext = _extension(path)
    try:
        if ext in _IMAGE_EXTENSIONS:
            transform: SpatialTransform = _field_from_image(sitk.ReadImage(str(path)), dtype)
        else:
            transform = from_sitk(sitk.ReadTransform(str(path)), dtype)
    except RuntimeError as error:  # SimpleITK reports unreadable files as RuntimeError
        raise ValueError(f"cannot read a transform from {str(path)!r}: {str(error).strip().splitlines()[-1] if str(error).strip() else error}") from error
    if ndim is not None and transform.ndim != ndim:
        raise ValueError(f"{str(path)!r} holds a {transform.ndim}D transform, expected {ndim}D")
    return transform
