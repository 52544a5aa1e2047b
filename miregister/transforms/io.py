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
  float32 (as ANTs writes its warps; float64 doubles the size for no gain). It loads with
  ``sitk.DisplacementFieldTransform(sitk.ReadImage(path, sitk.sitkVectorFloat64))`` (ITK's
  displacement transform holds float64) and ANTs reads it as a warp. Any transform can be
  written so (``reference`` is required).
* ``.h5`` / ``.hdf5`` (ITK HDF5): any transform; a :class:`Composite` becomes an ITK
  ``CompositeTransform`` with its members in the same order, linear members as affines,
  B-splines as ``BSplineTransform`` and others as displacement fields on ``reference``.

Reading accepts every ITK transform type SimpleITK can read: linear ones of any
parametrisation (Euler, versor, similarity, scale, scale-versor, scale-skew-versor, affine,
translation, ...) exactly, as the matching miregister class or an :class:`Affine` when no
simpler one holds them exactly; displacement fields, cubic B-splines and composites.

Transform lists as antsApplyTransforms takes them (:func:`compose_ants_list`): ``-t A -t B``
maps a reference point x to ``B(A(x))`` -- the first listed acts first on reference points
and the last lands in the image's space (ANTs says "the last transform is applied first",
thinking of the image being moved). ``ants.registration``'s ``fwdtransforms``
``[1Warp, 0GenericAffine]`` therefore works as given.

Batches: a file holds one transform. A transform with ``batch_size > 1`` is written one pair
at a time with ``index=i``; without ``index`` it is an error. Files are written atomically
(:func:`miregister.outputs.atomic_write`: staged in a folder beside the target, then ``os.replace``).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch

from ..grid import Grid
from ..io import write_sitk_image
from ..outputs import atomic_write
from .base import SpatialTransform
from .composite import Composite
from .displacement import DisplacementField
from .linear import Affine, CenteredLinearTransform, Rigid, Similarity, Translation

from ..errors import InputError

__all__ = [
    "write_transform", "read_transform", "to_sitk", "from_sitk", "as_transform",
    "parse_transform_spec", "compose_ants_list", "inverse_writers", "write_inverse",
]

_LINEAR_EXTENSIONS = (".tfm", ".txt", ".mat")
_HDF5_EXTENSIONS = (".h5", ".hdf5")
_IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def _extension(path: Path) -> str:
    name = path.name.lower()
    for ext in _IMAGE_EXTENSIONS + _LINEAR_EXTENSIONS + _HDF5_EXTENSIONS:
        if name.endswith(ext):
            return ext
    known = ", ".join(_LINEAR_EXTENSIONS + _HDF5_EXTENSIONS + _IMAGE_EXTENSIONS)
    raise InputError(f"cannot tell the transform format of {str(path)!r}: use one of {known}")


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


#: Voxels per slab when a displacement field is written (float64 work of ~25 MB per slab).
FIELD_SLAB_VOXELS = 1 << 20


def _field_image(
    transform: SpatialTransform, reference: Grid | None, index: int | None, pixel: type = np.float32
) -> sitk.Image:
    """The displacement ``T(x) - x`` on ``reference`` as an ITK vector image (mm; ``pixel`` float32
    for files, float64 inside ITK transforms, which hold doubles)."""
    if reference is None:
        raise ValueError(f"writing a {type(transform).__name__} as a displacement field needs reference=Grid")
    if reference.ndim != transform.ndim:
        raise ValueError(f"reference grid is {reference.ndim}D but the transform is {transform.ndim}D")
    i = _pick(transform.batch_size, index, type(transform).__name__)
    # Slab by slab into the file's pixel type: the float64 field of a whole 1 mm brain and its
    # copies would take ~150 bytes a voxel at once.
    array = np.empty((*reference.shape, reference.ndim), dtype=pixel)
    with torch.no_grad():
        for lo, hi in reference.slabs(FIELD_SLAB_VOXELS):
            field = transform.displacement_field(reference.slab(lo, hi), dtype=torch.float64)
            array[lo:hi] = field[i if field.shape[0] > 1 else 0].cpu().numpy()
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
    image = _field_image(transform, reference, index, pixel=np.float64)
    return sitk.DisplacementFieldTransform(image)


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
        atomic_write(path, lambda staged: write_sitk_image(image, staged))
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
    atomic_write(path, lambda staged: sitk.WriteTransform(tx, str(staged)))
    return path


# ---------------------------------------------------------------------- from SimpleITK
def _linear_class(name: str) -> type[CenteredLinearTransform]:
    """The miregister class an ITK linear type is meant as (checked for exactness by the caller)."""
    if name.startswith(("Scale", "ComposeScale")):  # ScaleVersor3D, ScaleSkewVersor3D, Scale, ScaleLogarithmic
        return Affine
    if "Translation" in name:
        return Translation
    if "Similarity" in name:
        return Similarity
    if "Euler" in name or "Rigid" in name or "Versor" in name:
        return Rigid
    return Affine


def _linear_from_matrix(m: np.ndarray, center: np.ndarray | None, name: str, dtype: torch.dtype) -> CenteredLinearTransform:
    """The class ``name`` suggests when it reproduces ``m`` exactly, else an :class:`Affine`
    (e.g. a rigid type holding a reflection)."""
    cls = _linear_class(name)
    if cls is not Affine:
        trial = cls.from_matrix(m, center=center, dtype=torch.float64)
        error = np.abs(trial.affine_matrix().detach().numpy()[0] - m).max()
        if error > 1e-9 * max(1.0, np.abs(m).max()):
            cls = Affine
    return cls.from_matrix(m, center=center, dtype=dtype)


def from_sitk(tx: sitk.Transform, dtype: torch.dtype = torch.float32) -> SpatialTransform:
    """Convert a ``SimpleITK.Transform`` into a miregister transform (batch size 1), exactly.

    Every linear ITK type (affine, Euler, versor, similarity, translation, scale,
    scale-logarithmic, scale-versor, scale-skew-versor, ...) is read through its mapping (the
    images of the origin and the unit vectors, in float64), so no parametrisation is lost; it
    becomes :class:`Translation`, :class:`Rigid` or :class:`Similarity` when its type says so
    and that class holds it exactly, an :class:`Affine` otherwise, keeping ITK's centre. A
    displacement field becomes :class:`DisplacementField`, a cubic ``BSplineTransform`` a
    ``BSpline`` and a composite a :class:`Composite` (same order).

    Raises
    ------
    InputError
        For a dimension other than 2 or 3, an empty composite, a B-spline of another order or
        a non-linear kind miregister cannot represent (the message names the ITK type).
    """
    d = tx.GetDimension()
    name = tx.GetName()
    if d not in (2, 3):
        raise InputError(f"only 2D and 3D transforms are supported, got a {d}D {name}")
    if name == "CompositeTransform" and not _wrapped_linear(tx):
        composite = sitk.CompositeTransform(tx)
        members = [from_sitk(_nth_transform(composite, i), dtype) for i in range(composite.GetNumberOfTransforms())]
        if not members:
            raise InputError("the composite transform is empty")
        return Composite(members)
    if name == "DisplacementFieldTransform":
        image = sitk.DisplacementFieldTransform(tx).GetDisplacementField()
        return _field_from_image(image, dtype)
    if name == "BSplineTransform":
        from .bspline import BSpline  # imported here: the B-spline module is optional for linear IO

        order = sitk.BSplineTransform(tx).GetOrder()
        if order != 3:
            raise InputError(f"a BSplineTransform of order {order}: miregister reads cubic (order 3) B-splines only")
        return BSpline.from_sitk(tx, dtype=dtype)
    if tx.IsLinear():
        origin = np.asarray(tx.TransformPoint((0.0,) * d))
        columns = [np.asarray(tx.TransformPoint(tuple(np.eye(d)[k]))) - origin for k in range(d)]
        m = np.eye(d + 1)
        m[:d, :d] = np.stack(columns, axis=1)
        m[:d, d] = origin
        fixed = tx.GetFixedParameters()
        center = np.asarray(fixed[:d]) if len(fixed) >= d else None
        # ITK's "Transform" wrapper hides the real type (ScaleLogarithmic, QuaternionRigid, ...): use the mapping
        return _linear_from_matrix(m, center, name if name != "Transform" else "Affine", dtype)
    raise InputError(
        f"the ITK transform type {name} is not supported (miregister reads linear transforms, "
        "displacement fields, cubic B-splines and composites of them)"
    )


def as_transform(value: "SpatialTransform | sitk.Transform | str | os.PathLike", ndim: int | None = None) -> SpatialTransform:
    """A miregister transform from a transform, a ``SimpleITK.Transform`` or a transform file path.

    Parameters
    ----------
    value : SpatialTransform, SimpleITK.Transform, str or PathLike
        Returned as is, converted with :func:`from_sitk`, or read with :func:`read_transform`.
    ndim : int, optional
        Expected dimension (a transform of another is an :class:`InputError`).
    """
    if isinstance(value, SpatialTransform):
        transform = value
    elif isinstance(value, sitk.Transform):
        transform = from_sitk(value, dtype=torch.float64)
    elif isinstance(value, (str, os.PathLike)):
        return read_transform(value, ndim=ndim, dtype=torch.float64)
    else:
        raise InputError(f"expected a transform, a SimpleITK transform or a transform file path, got {type(value).__name__}")
    if ndim is not None and transform.ndim != ndim:
        raise InputError(f"the transform is {transform.ndim}D, expected {ndim}D")
    return transform


def _field_from_image(image: sitk.Image, dtype: torch.dtype) -> DisplacementField:
    d = image.GetDimension()
    if d not in (2, 3):
        raise InputError(f"only 2D and 3D displacement fields are supported, got a {d}D image")
    if image.GetNumberOfComponentsPerPixel() != d:
        raise InputError(
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
    InputError
        (a ValueError) ``path`` does not exist ("file not found: PATH"); unreadable or unsupported file -- the message names the file and, for
        an ITK type miregister cannot represent, the type -- or a dimension other than ``ndim``
        (or than 2/3).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"file not found: {str(path)!r} (a transform file was expected there)")
    ext = _extension(path)
    try:
        if ext in _IMAGE_EXTENSIONS:
            transform: SpatialTransform = _field_from_image(sitk.ReadImage(str(path)), dtype)
        else:
            transform = from_sitk(_read_itk_transform(path), dtype)
    except InputError as error:
        raise InputError(f"{path} is not a transform file miregister can read: {error}") from error
    except RuntimeError as error:  # SimpleITK reports unreadable files as RuntimeError
        raise InputError(f"{path} is not a transform file miregister can read: {_itk_reason(str(error), ext)}") from None
    if ndim is not None and transform.ndim != ndim:
        raise InputError(f"{path} holds a {transform.ndim}D transform, expected {ndim}D")
    return transform


def _wrapped_linear(tx: sitk.Transform) -> bool:
    """SimpleITK shows an ITK type it has no class for (Rigid2D, CenteredRigid2D, ...) as a
    one-member composite whose member is that composite again: read such a one by its mapping."""
    if not tx.IsLinear():
        return False
    composite = sitk.CompositeTransform(tx)
    return composite.GetNumberOfTransforms() == 1 and _nth_transform(composite, 0).GetName() == "CompositeTransform"


# SimpleITK's Python layer "downcasts" what it reads to the matching class and fails (KeyError)
# for types its table lacks (ComposeScaleSkewVersor3DTransform in SimpleITK 2.x); the generic
# Transform it holds works, so fall back to the undowncast call.
def _read_itk_transform(path: Path) -> sitk.Transform:
    try:
        return sitk.ReadTransform(str(path))
    except (KeyError, TypeError):
        return sitk.Transform(sitk._SimpleITK.ReadTransform(str(path)))


def _nth_transform(composite: sitk.CompositeTransform, index: int) -> sitk.Transform:
    try:
        return composite.GetNthTransform(index)
    except (KeyError, TypeError):
        return sitk.Transform(sitk._SimpleITK.CompositeTransform_GetNthTransform(composite, index))


def _itk_reason(message: str, ext: str) -> str:
    """ITK's error as a short sentence (its messages carry source paths and type registries)."""
    import re

    created = re.search(r'Could not create an instance of "([^"]+)"', message)
    if created:
        return f"ITK has no transform type {created.group(1)}"
    if "Tags must be delimited" in message or "Could not create Transform IO" in message or "Unable to open" in message:
        return f"not an ITK transform file ({ext})"
    if "fixed parameters" in message.lower():
        return "its FixedParameters have too few values for its transform type"
    if "is not of type" in message:
        return "it holds an ITK transform type that SimpleITK cannot convert"
    if "ImageIO" in message or "Unable to determine" in message:
        return "not an image file SimpleITK can read"
    lines = [line for line in message.strip().splitlines() if "ERROR" in line]
    last = (lines[-1] if lines else message.strip().splitlines()[-1] if message.strip() else "unreadable")
    return re.sub(r"^.*?ERROR:\s*(\w+\(0x[0-9a-f]+\):\s*)?", "", last).strip() or "unreadable"


# ---------------------------------------------------------------------- transform lists (antsApplyTransforms)
def parse_transform_spec(text: str) -> tuple[str, bool]:
    """Split an antsApplyTransforms ``-t`` argument into ``(path, invert)``.

    ``"file"`` -> ``(file, False)``; ``"[file,1]"`` -> ``(file, True)``; ``"[file,0]"`` ->
    ``(file, False)`` (spaces around the comma allowed).

    Raises
    ------
    UsageError
        For a bracketed argument that is not ``[file,0]`` or ``[file,1]``.
    """
    from ..errors import UsageError

    text = text.strip()
    if not text.startswith("["):
        return text, False
    inner = text[1:-1] if text.endswith("]") else None
    parts = None if inner is None else [part.strip() for part in inner.rsplit(",", 1)]
    if parts is None or len(parts) != 2 or not parts[0] or parts[1] not in ("0", "1"):
        raise UsageError(f"transform {text!r}: expected FILE or [FILE,1] (inverted) or [FILE,0], as antsApplyTransforms takes them")
    return parts[0], parts[1] == "1"


def check_invertible(transform: SpatialTransform, path: "str | os.PathLike") -> None:
    """Refuse (InputError naming ``path``) a transform whose linear part is singular or not
    finite: it maps the whole reference grid onto a plane, line or point of the moving image,
    i.e. a constant output, and has no inverse."""
    from .base import LinearTransform

    for part in (m for m in transform.modules() if isinstance(m, LinearTransform)):
        matrix = part.affine_matrix().detach().to(torch.float64)
        finite = bool(torch.isfinite(matrix).all())
        if not finite or float(torch.linalg.cond(matrix[:, :-1, :-1]).max()) > 1e12:
            raise InputError(
                f"transform file {path} holds a {'singular' if finite else 'non-finite'} matrix "
                f"{matrix[0, :-1, :-1].tolist()}: it would map the whole reference grid onto "
                "a plane, line or point of the image (a constant output); check the file"
            )


def compose_ants_list(
    paths: "list[str | os.PathLike]",
    invert: "list[bool] | None" = None,
    ndim: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> SpatialTransform:
    """The transform an antsApplyTransforms ``-t`` list stands for (reference -> image points, mm).

    Parameters
    ----------
    paths : list of path
        Transform files in the order given to antsApplyTransforms (``-t paths[0] -t paths[1]
        ...``), e.g. ``ants.registration``'s ``fwdtransforms`` ``[1Warp.nii.gz,
        0GenericAffine.mat]`` or ``invtransforms``.
    invert : list of bool, optional
        Per file, use its inverse (``[file,1]``, ``whichtoinvert``); linear files invert
        exactly, displacement fields numerically (:meth:`DisplacementField.inverse`).
    ndim : int, optional
        Expected dimension of every file.
    dtype : torch.dtype
        Dtype of the transforms read.

    Returns
    -------
    SpatialTransform
        ``T(x) = t_n(...t_1(t_0(x)))``: the first listed acts first on reference points, the
        last carries them into the image's space. As a :class:`Composite` (ITK order) that is
        the list reversed. antsApplyTransforms' "the last transform is applied first" speaks of
        the image being moved, which is the same thing.
    """
    invert = [False] * len(paths) if invert is None else list(invert)
    if len(invert) != len(paths):
        raise ValueError(f"{len(paths)} transforms but {len(invert)} invert flags")
    if not paths:
        raise ValueError("no transform given")
    transforms = []
    for path, flag in zip(paths, invert):
        transform = read_transform(path, ndim=ndim, dtype=dtype)
        check_invertible(transform, path)
        transforms.append(transform.inverse() if flag else transform)
    return transforms[0] if len(transforms) == 1 else Composite(transforms[::-1])


# ---------------------------------------------------------------------- a run's inverse files
def inverse_writers(
    transform: SpatialTransform,
    fixed_grid: Grid,
    moving_grid: Grid,
    linear_format: str = "tfm",
) -> list[tuple[str, Callable[[Path], Path]]]:
    """The files of a registration's inverse (moving -> fixed), as ``(name, write(path))`` pairs.

    Linear: ``inverse.<linear_format>`` (``tfm`` or ``mat``), exact. Deformable:
    ``inverse.h5`` (the ITK composite ``[field^-1 on the fixed grid, linear^-1]``) and
    ``inverse_displacement.nii.gz`` (float32, on the moving grid: ``T^-1(y) - y`` in mm for
    every moving voxel ``y``), the field inverted numerically (:meth:`DisplacementField.inverse`)
    once, by the first of the two writers that runs (``write_run`` may run them on two
    threads). Resampling a fixed-space image (e.g. atlas labels) through them carries it onto
    the moving image's grid.
    """
    if transform.is_linear:
        linear = transform.inverse()
        return [(f"inverse.{linear_format}", lambda path: write_transform(linear, path))]
    inverse = _computed_once(transform.inverse)  # in the first writer that needs it (a writer thread)
    return [
        ("inverse.h5", lambda path: write_transform(inverse(), path, reference=fixed_grid)),
        ("inverse_displacement.nii.gz", lambda path: write_transform(inverse(), path, reference=moving_grid)),
    ]


def _computed_once(make: Callable[[], SpatialTransform]) -> Callable[[], SpatialTransform]:
    """``make()`` on the first call, the same object on later ones, from any thread."""
    lock, kept = threading.Lock(), []

    def get() -> SpatialTransform:
        with lock:
            if not kept:
                kept.append(make())
            return kept[0]

    return get


def write_inverse(
    transform: SpatialTransform,
    folder: str | os.PathLike,
    fixed_grid: Grid,
    moving_grid: Grid,
    linear_format: str = "tfm",
) -> list[Path]:
    """Write the inverse (moving -> fixed) of a registration's transform into ``folder``
    (the files of :func:`inverse_writers`) and return their paths."""
    folder = Path(folder)
    return [write(folder / name) for name, write in inverse_writers(transform, fixed_grid, moving_grid, linear_format)]
