"""Deterministic registration test cases with a known fixed->moving mapping.

Every case is built from the sample MNI152 brain in ``data/`` (2 mm, 98 x 116 x 94) and a
known transform ``T`` that maps FIXED physical points (mm, ITK/LPS) to MOVING physical points,
the convention of ITK and of :mod:`miregister`. The moving image is made so that

    moving(T(x)) = source(x)

i.e. ``moving = source o T^-1``, resampled on the source's grid (``sitk.Resample``, cubic
B-spline by default, with the
inverse of ``T``). A registration that recovers ``T`` exactly has zero error under
:func:`mapping_error`, the mean Euclidean distance (mm) between the found and the true mapping
over the fixed image's brain voxels.

Cases
-----
- :func:`make_affine_case`: a known affine (rotation ~14 deg about an oblique axis,
  translation ~11 mm, anisotropic scaling ~5 %) around the brain centre; mono (T1 -> T1) or
  multi-modal (T1 -> synthetic T2), optionally with the fixed image on an oblique,
  anisotropic grid (1.8 x 1.8 x 3.0 mm, rotated 12 deg, non-zero origin).
- :func:`make_deformable_case`: a known smooth warp ``T(x) = x + u(x)`` (seeded random field
  smoothed by a 16 mm Gaussian, mean |u| = 3.8 mm over the brain, det J > 0 everywhere);
  the moving image is resampled through the numerically inverted field, whose accuracy is
  recorded in ``case.info``.
- :func:`make_capture_case`: a large rigid misalignment (up to 45 deg, 40 mm) plus the
  known scaling, on a padded moving grid, for capture-range tests.

Realistic cases (issue 15), closer to what a user brings than one brain resampled against itself
(there is no real EPI or whole-head scan in ``data/``, so they are SYNTHESISED from the template;
each builder says how):

- :func:`make_slab_case`: a partial field of view, an EPI-like slab: 24 oblique slices of the
  skull-stripped T2-like image, 2 x 2 x 3 mm, each slice the average of 3 thin ones (a box slice
  profile), with noise, under a known rigid motion.
- :func:`make_skullstrip_case`: a skull-stripped T2-like moving image against a "whole-head" T1:
  the template T1 is itself skull-stripped, so a synthetic head (dark skull and bright scalp
  shells around the brain mask) is added to the fixed image.
- :func:`make_bias_case`: the multimodal affine case with a smooth multiplicative bias field
  (a quadratic in space, exp-mapped, max/min 1.35 over the moving field of view).
- :func:`make_header_rotation_case`: the T2-like image rotated by 45, 90 or 180 degrees in its
  HEADER (direction and origin; voxels untouched, so the truth is exact, no resampling).
- :func:`perturb_header`: a known rigid change of an image's header, for consistency tests.

All randomness comes from ``numpy.random.default_rng(seed)``: same seed, same case.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

DATA = Path(__file__).resolve().parents[1] / "data"

__all__ = [
    "Case",
    "load_source",
    "brain_center",
    "grid_points",
    "mask_points",
    "rotation_about_axis",
    "affine_about_center",
    "known_affine",
    "matrix_to_sitk",
    "make_affine_case",
    "make_deformable_case",
    "make_capture_case",
    "upsample_case",
    "oblique_grid",
    "mapping_error",
    "jacobian_determinant",
    "rigid_about_center",
    "perturb_header",
    "make_slab_case",
    "make_skullstrip_case",
    "make_bias_case",
    "make_header_rotation_case",
    "inside_image",
]


@dataclass
class Case:
    """A registration problem with its known answer.

    Attributes
    ----------
    name : str
        Short label, e.g. ``"affine-mono"``.
    fixed, moving : SimpleITK.Image
        Float32 images; ``moving(T(x)) = source(x)`` for the true ``T``.
    fixed_mask : SimpleITK.Image
        Brain mask (uint8) on the fixed grid.
    points : ndarray (N, 3)
        Physical coordinates (mm, LPS) of the fixed brain voxels, where errors are measured.
    true_points : ndarray (N, 3)
        ``T(points)``: where the true mapping sends them in moving space (mm).
    matrix : ndarray (4, 4) or None
        The true homogeneous fixed->moving matrix for linear cases.
    displacement : SimpleITK.Image or None
        For deformable cases, ``u`` as a 3-vector float64 image on the fixed grid
        (``T(x) = x + u(x)``), usable by ``sitk.DisplacementFieldTransform`` and writable as
        an ANTs/ITK warp field.
    info : dict
        Facts about the case (rotation, translation, |u| statistics, inverse accuracy).
    """

    name: str
    fixed: sitk.Image
    moving: sitk.Image
    fixed_mask: sitk.Image
    points: np.ndarray
    true_points: np.ndarray
    matrix: np.ndarray | None = None
    displacement: sitk.Image | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def true_transform(self) -> sitk.Transform:
        """The true fixed->moving mapping as a SimpleITK transform."""
        if self.matrix is not None:
            return matrix_to_sitk(self.matrix)
        return sitk.DisplacementFieldTransform(sitk.Image(self.displacement))


# ------------------------------------------------------------------------------ data
@lru_cache(maxsize=None)
def _read(name: str) -> sitk.Image:
    return sitk.ReadImage(str(DATA / name))


def load_source(kind: str) -> sitk.Image:
    """The sample volume ``kind`` in {"t1", "t2like", "t2inv", "mask"}: float32 (mask: uint8).

    ``t2inv`` is a second synthetic T2 contrast, unlike ``t2like`` (a mixture of tissue maps with
    its own bias field and noise): a decreasing function of the T1 itself inside the brain mask,
    ``255 * (1.1 - T1 / 255) ** 1.5``, plus seeded Gaussian noise (sigma 3), 0 outside.
    """
    if kind == "t2inv":
        return _t2inv()
    files = {"t1": "mni152_t1_2mm.nii.gz", "t2like": "mni152_t2like_2mm.nii.gz", "mask": "mni152_brainmask_2mm.nii.gz"}
    image = _read(files[kind])
    return sitk.Cast(image, sitk.sitkUInt8 if kind == "mask" else sitk.sitkFloat32)


@lru_cache(maxsize=None)
def _t2inv() -> sitk.Image:
    t1 = sitk.GetArrayFromImage(_read("mni152_t1_2mm.nii.gz")).astype(np.float64)
    inside = sitk.GetArrayFromImage(_read("mni152_brainmask_2mm.nii.gz")) > 0
    values = np.where(inside, 255.0 * np.clip(1.1 - t1 / 255.0, 0, None) ** 1.5, 0.0)
    values += 3.0 * np.random.default_rng(2).standard_normal(values.shape)
    out = sitk.GetImageFromArray(np.clip(values, 0, None).astype(np.float32))
    out.CopyInformation(_read("mni152_t1_2mm.nii.gz"))
    return out


def grid_points(image: sitk.Image) -> np.ndarray:
    """Physical coordinates (mm) of every voxel, shape ``(nz, ny, nx, 3)`` (numpy array order)."""
    size = image.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in size[::-1]), indexing="ij")
    index = np.stack((i, j, k), axis=-1)
    spacing = np.asarray(image.GetSpacing())
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    return (index * spacing) @ direction.T + np.asarray(image.GetOrigin())


def mask_points(mask: sitk.Image) -> np.ndarray:
    """Physical coordinates (mm) of the non-zero voxels of ``mask``, shape ``(N, 3)``."""
    inside = sitk.GetArrayViewFromImage(mask) > 0
    return grid_points(mask)[inside]


def brain_center() -> np.ndarray:
    """Centroid (mm) of the sample brain mask."""
    return mask_points(load_source("mask")).mean(axis=0)


# ------------------------------------------------------------------------------ transforms
def rotation_about_axis(axis: np.ndarray, degrees: float) -> np.ndarray:
    """3x3 rotation by ``degrees`` about ``axis`` (Rodrigues)."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    theta = np.deg2rad(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * (k @ k)


def affine_about_center(linear: np.ndarray, translation: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Homogeneous 4x4 of ``T(x) = L (x - c) + c + t``."""
    m = np.eye(4)
    m[:3, :3] = linear
    m[:3, 3] = center + translation - linear @ center
    return m


def known_affine(seed: int = 0, degrees: float = 14.0, shift_mm: float = 11.0, center: np.ndarray | None = None) -> np.ndarray:
    """A fixed->moving affine with a known size: rotation, translation, anisotropic scaling.

    ``T(x) = R S (x - c) + c + t`` with ``R`` a rotation by ``degrees`` about an oblique,
    seeded axis, ``S`` = diag of scalings around 5 % (a permutation, seeded, of
    1.05, 0.96, 1.03), ``t`` of length ``shift_mm`` in a seeded direction and ``c`` the brain
    centre.

    Returns
    -------
    ndarray (4, 4)
        Homogeneous matrix mapping fixed mm to moving mm.
    """
    rng = np.random.default_rng(seed)
    axis = rng.normal(size=3)
    axis = np.sign(axis) * (0.5 + np.abs(axis))  # keep every component well away from zero: oblique
    scales = rng.permutation(np.array([1.05, 0.96, 1.03]))
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    c = brain_center() if center is None else np.asarray(center, dtype=np.float64)
    return affine_about_center(rotation_about_axis(axis, degrees) @ np.diag(scales), shift_mm * direction, c)


def matrix_to_sitk(matrix: np.ndarray) -> sitk.AffineTransform:
    """A 4x4 homogeneous matrix as a ``sitk.AffineTransform`` (centre 0)."""
    t = sitk.AffineTransform(3)
    t.SetMatrix(np.asarray(matrix)[:3, :3].ravel().tolist())
    t.SetTranslation(np.asarray(matrix)[:3, 3].tolist())
    return t


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:3, :3].T + matrix[:3, 3]


# ------------------------------------------------------------------------------ grids
def oblique_grid(reference: sitk.Image, spacing=(1.8, 1.8, 3.0), degrees: float = 12.0, axis=(1.0, 0.6, 0.3)) -> sitk.Image:
    """An empty oblique, anisotropic grid covering the field of view of ``reference``.

    The direction is ``reference``'s direction rotated by ``degrees`` about ``axis``; the
    size is chosen so that the reference's whole box fits; the grid is centred on the
    reference's centre, which gives it a non-zero, non-round origin.
    """
    direction = rotation_about_axis(np.asarray(axis), degrees) @ np.asarray(reference.GetDirection()).reshape(3, 3)
    size0 = np.asarray(reference.GetSize())
    corners = np.array([[i, j, k] for i in (0, size0[0] - 1) for j in (0, size0[1] - 1) for k in (0, size0[2] - 1)], dtype=float)
    phys = np.array([reference.TransformContinuousIndexToPhysicalPoint(c.tolist()) for c in corners])
    center = phys.mean(axis=0)
    local = (phys - center) @ direction  # coordinates along the new axes
    extent = local.max(axis=0) - local.min(axis=0)
    spacing = np.asarray(spacing, dtype=float)
    size = np.ceil(extent / spacing).astype(int) + 1
    origin = center - direction @ ((size - 1) * spacing / 2)
    out = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    out.SetSpacing(spacing.tolist())
    out.SetDirection(direction.ravel().tolist())
    out.SetOrigin(origin.tolist())
    return out


def _padded(reference: sitk.Image, pad_voxels: int) -> sitk.Image:
    """``reference``'s grid grown by ``pad_voxels`` on every side."""
    out = sitk.Image([s + 2 * pad_voxels for s in reference.GetSize()], sitk.sitkFloat32)
    out.SetSpacing(reference.GetSpacing())
    out.SetDirection(reference.GetDirection())
    out.SetOrigin(reference.TransformContinuousIndexToPhysicalPoint([-pad_voxels] * 3))
    return out


# Interpolators that make the cases. Cubic B-spline is the default: linear resampling blurs by an
# amount that varies with the sub-voxel position, a texture of the test data, not of anatomy, that
# biased every method's optimum (ours by ~0.15 mm; see benchmarks/RESULTS.md, which reports both).
CASE_INTERPOLATORS = {"bspline": sitk.sitkBSpline, "linear": sitk.sitkLinear}


def _resample(
    image: sitk.Image, reference: sitk.Image, transform: sitk.Transform, nearest: bool = False, interpolation: str = "bspline"
) -> sitk.Image:
    interp = sitk.sitkNearestNeighbor if nearest else CASE_INTERPOLATORS[interpolation]
    return sitk.Resample(image, reference, transform, interp, 0.0, image.GetPixelID())


# ------------------------------------------------------------------------------ cases
def make_affine_case(modality: str = "mono", oblique: bool = False, seed: int = 0, interpolation: str = "bspline") -> Case:
    """Affine case: fixed = T1 (optionally on an oblique anisotropic grid), moving = T1 or
    T2-like through the known affine of :func:`known_affine`.

    Parameters
    ----------
    modality : {"mono", "multi", "multi-t2inv"}
        Moving image from the T1 (mono), the synthetic T2-like image (multi) or the second
        synthetic T2 contrast ``t2inv`` of :func:`load_source`.
    oblique : bool
        Resample the fixed T1 onto :func:`oblique_grid` (1.8 x 1.8 x 3.0 mm, rotated 12 deg).
    seed : int
        Seed of :func:`known_affine`.
    interpolation : {"bspline", "linear"}
        SimpleITK interpolator that makes the moving (and oblique fixed) image.
    """
    matrix = known_affine(seed)
    t1, mask = load_source("t1"), load_source("mask")
    source = t1 if modality == "mono" else load_source("t2inv" if modality == "multi-t2inv" else "t2like")
    inverse = matrix_to_sitk(np.linalg.inv(matrix))
    moving = _resample(source, source, inverse, interpolation=interpolation)
    if oblique:
        grid = oblique_grid(t1)
        fixed = _resample(t1, grid, sitk.Transform(3, sitk.sitkIdentity), interpolation=interpolation)
        fixed_mask = _resample(mask, grid, sitk.Transform(3, sitk.sitkIdentity), nearest=True)
    else:
        fixed, fixed_mask = t1, mask
    points = mask_points(fixed_mask)
    name = f"affine-{modality}" + ("-oblique" if oblique else "")
    linear = matrix[:3, :3]
    u, s, vt = np.linalg.svd(linear)
    rot = u @ vt
    info = {
        "rotation_deg": float(np.rad2deg(np.arccos(np.clip((np.trace(rot) - 1) / 2, -1, 1)))),
        "singular_values": s.tolist(),
        "mean_displacement_mm": float(np.linalg.norm(_apply(matrix, points) - points, axis=1).mean()),
        "fixed_spacing": fixed.GetSpacing(),
        "fixed_size": fixed.GetSize(),
        "interpolation": interpolation,
    }
    return Case(name, fixed, moving, fixed_mask, points, _apply(matrix, points), matrix=matrix, info=info)


def make_capture_case(
    degrees: float, axis, shift_mm: float, seed: int = 0, pad_voxels: int = 16, interpolation: str = "bspline"
) -> Case:
    """Capture-range case (mono T1): rotation ``degrees`` about ``axis``, translation
    ``shift_mm`` in a seeded diagonal-ish direction, and the known anisotropic scaling, all
    about the brain centre; the moving grid is padded by ``pad_voxels`` so the brain stays in
    the field of view."""
    rng = np.random.default_rng(seed)
    direction = np.sign(rng.normal(size=3)) * (1 + 0.3 * rng.random(3))
    direction /= np.linalg.norm(direction)
    scales = np.array([1.05, 0.96, 1.03])
    c = brain_center()
    linear = rotation_about_axis(np.asarray(axis, dtype=float), degrees) @ np.diag(scales)
    matrix = affine_about_center(linear, shift_mm * direction, c)
    t1, mask = load_source("t1"), load_source("mask")
    moving = _resample(t1, _padded(t1, pad_voxels), matrix_to_sitk(np.linalg.inv(matrix)), interpolation=interpolation)
    points = mask_points(mask)
    info = {"rotation_deg": degrees, "axis": list(map(float, axis)), "shift_mm": shift_mm}
    return Case(f"capture-{degrees:g}deg-{shift_mm:g}mm", t1, moving, mask, points, _apply(matrix, points), matrix=matrix, info=info)


def _smooth_field(shape: tuple[int, ...], spacing: np.ndarray, sigma_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Three independent white-noise volumes smoothed by a Gaussian of ``sigma_mm``: (nz, ny, nx, 3)."""
    sigma_vox = sigma_mm / spacing[::-1]  # numpy axis order z, y, x
    comps = [ndimage.gaussian_filter(rng.standard_normal(shape), sigma_vox, mode="reflect") for _ in range(3)]
    return np.stack(comps, axis=-1)


def jacobian_determinant(mapped: np.ndarray, image: sitk.Image) -> np.ndarray:
    """det of dT/dx from the mapped points ``T(x)`` on ``image``'s grid, shape (nz, ny, nx, 3).

    Central differences along the index axes give ``dT/di``; ``dx/di = D diag(spacing)``, so
    ``dT/dx = dT/di (D diag(s))^-1``.
    """
    d_index = np.stack([np.gradient(mapped, axis=a) for a in (2, 1, 0)], axis=-1)  # (..., 3 comps, 3 index axes i, j, k)
    dx_di = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    jac = d_index @ np.linalg.inv(dx_di)
    return np.linalg.det(jac)


def make_deformable_case(
    modality: str = "mono", seed: int = 0, mean_mm: float = 3.8, sigma_mm: float = 16.0, interpolation: str = "bspline"
) -> Case:
    """Deformable case: ``T(x) = x + u(x)``, a smooth seeded random field with mean |u| =
    ``mean_mm`` over the brain; moving = source resampled through the inverted field.

    The field lives on the source (= fixed) grid; its inverse is computed with
    ``sitk.InvertDisplacementField`` and its accuracy (``|T^-1(T(x)) - x|`` at brain voxels)
    is stored in ``info``.
    """
    t1, mask = load_source("t1"), load_source("mask")
    source = t1 if modality == "mono" else load_source("t2like")
    rng = np.random.default_rng(seed)
    spacing = np.asarray(t1.GetSpacing())
    shape = t1.GetSize()[::-1]
    u = _smooth_field(shape, spacing, sigma_mm, rng)
    inside = sitk.GetArrayViewFromImage(mask) > 0
    u *= mean_mm / np.linalg.norm(u[inside], axis=-1).mean()

    field_img = sitk.GetImageFromArray(u.astype(np.float64), isVector=True)
    field_img.CopyInformation(t1)
    inverse_img = sitk.InvertDisplacementField(
        field_img, maximumNumberOfIterations=100, maxErrorToleranceThreshold=0.01,
        meanErrorToleranceThreshold=0.0001, enforceBoundaryCondition=False,
    )
    inverse_tx = sitk.DisplacementFieldTransform(sitk.Image(inverse_img))
    moving = _resample(source, source, inverse_tx, interpolation=interpolation)

    points_all = grid_points(t1)
    mapped = points_all + u
    det = jacobian_determinant(mapped, t1)
    points = points_all[inside]
    true_points = mapped[inside]
    back = np.array([inverse_tx.TransformPoint(p) for p in true_points.tolist()])
    inverse_error = np.linalg.norm(back - points, axis=1)
    info = {
        "mean_displacement_mm": float(np.linalg.norm(u[inside], axis=-1).mean()),
        "max_displacement_mm": float(np.linalg.norm(u[inside], axis=-1).max()),
        "smoothing_sigma_mm": sigma_mm,
        "det_jacobian_min": float(det.min()),
        "det_jacobian_max": float(det.max()),
        "inverse_error_mean_mm": float(inverse_error.mean()),
        "inverse_error_max_mm": float(inverse_error.max()),
    }
    if det.min() <= 0:
        raise RuntimeError(f"the synthetic warp folds (min det J = {det.min():.3f}); lower mean_mm or raise sigma_mm")
    return Case(f"deformable-{modality}", t1, moving, mask, points, true_points, displacement=field_img, info=info)


def upsample_case(case: Case, resolution_mm: float) -> Case:
    """The same problem on finer fixed and moving grids (same field of view and directions).

    Both images are resampled (cubic B-spline; the mask nearest-neighbour) onto grids whose
    voxel centres include the old ones, plus one new voxel on each side: 2 mm 98 x 116 x 94 ->
    1 mm 197 x 233 x 189, the size of the MNI152 1 mm template. The known mapping is unchanged:
    linear cases keep their matrix; deformable ones evaluate their 2 mm field (linear
    interpolation of a 16 mm-smooth field) at the new brain voxels. For timing full-resolution
    registration (e.g. on a GPU); the content is no sharper than the 2 mm source.
    """

    def finer(image: sitk.Image, nearest: bool = False) -> sitk.Image:
        factor = np.asarray(image.GetSpacing()) / resolution_mm
        size = [int(round((n - 1) * f)) + 3 for n, f in zip(image.GetSize(), factor)]  # one new voxel each side
        reference = sitk.Image(size, image.GetPixelID())
        reference.SetSpacing([float(resolution_mm)] * 3)
        reference.SetOrigin(image.TransformContinuousIndexToPhysicalPoint([-1.0 / f for f in factor]))
        reference.SetDirection(image.GetDirection())
        return _resample(image, reference, sitk.Transform(3, sitk.sitkIdentity), nearest=nearest)

    fixed, moving, mask = finer(case.fixed), finer(case.moving), finer(case.fixed_mask, nearest=True)
    points = mask_points(mask)
    if case.matrix is not None:
        true_points = _apply(case.matrix, points)
        displacement = None
    else:
        field = sitk.TransformToDisplacementField(
            case.true_transform(), sitk.sitkVectorFloat64, mask.GetSize(), mask.GetOrigin(), mask.GetSpacing(), mask.GetDirection()
        )
        true_points = points + sitk.GetArrayFromImage(field)[sitk.GetArrayViewFromImage(mask) > 0]
        displacement = field
    info = dict(case.info, resolution_mm=resolution_mm, fixed_size=fixed.GetSize())
    return Case(f"{case.name}-{resolution_mm:g}mm", fixed, moving, mask, points, true_points,
                matrix=case.matrix, displacement=displacement, info=info)


# ------------------------------------------------------------------------------ realistic cases
def rigid_about_center(axis, degrees: float, translation, center: np.ndarray) -> np.ndarray:
    """Homogeneous 4x4 of the rigid ``T(x) = R (x - c) + c + t``."""
    return affine_about_center(rotation_about_axis(np.asarray(axis, dtype=float), degrees), np.asarray(translation, dtype=float), center)


def perturb_header(image: sitk.Image, matrix: np.ndarray) -> sitk.Image:
    """``image`` with its header moved by the rigid ``matrix`` (4x4): voxel data untouched.

    A voxel that sat at physical point ``q`` now sits at ``Q(q) = R q + t``; so if ``T`` mapped
    fixed points onto the old image, ``Q o T`` maps them onto the new one.
    """
    m = np.asarray(matrix, dtype=np.float64)
    out = sitk.Image(image)
    direction = m[:3, :3] @ np.asarray(image.GetDirection()).reshape(3, 3)
    out.SetDirection(direction.ravel().tolist())
    out.SetOrigin(_apply(m, np.asarray(image.GetOrigin())[None])[0].tolist())
    return out


def inside_image(image: sitk.Image, points: np.ndarray, margin_vox: float = 0.0) -> np.ndarray:
    """Boolean (N,): which physical ``points`` (mm) fall inside ``image``'s voxel box."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    index = (np.asarray(points) - np.asarray(image.GetOrigin())) @ direction / np.asarray(image.GetSpacing())
    upper = np.asarray(image.GetSize()) - 1
    return np.all((index >= -0.5 + margin_vox) & (index <= upper + 0.5 - margin_vox), axis=1)


def _slab_grid(center: np.ndarray, direction: np.ndarray, spacing, size) -> sitk.Image:
    out = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    out.SetSpacing([float(s) for s in spacing])
    out.SetDirection(np.asarray(direction, dtype=float).ravel().tolist())
    out.SetOrigin((center - direction @ ((np.asarray(size) - 1) * np.asarray(spacing) / 2)).tolist())
    return out


def _known_rigid(seed: int, degrees: float, shift_mm: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    axis = rng.normal(size=3)
    axis = np.sign(axis) * (0.5 + np.abs(axis))
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    return rigid_about_center(axis, degrees, shift_mm * direction, brain_center())


def _case_from_matrix(name: str, fixed: sitk.Image, moving: sitk.Image, mask: sitk.Image, matrix: np.ndarray,
                      info: dict[str, Any], overlap_only: bool = False) -> Case:
    """A linear case; with ``overlap_only`` the error points are the fixed brain voxels whose true
    image lies inside the moving field of view (the part a partial scan can constrain)."""
    points = mask_points(mask)
    true_points = _apply(matrix, points)
    if overlap_only:
        keep = inside_image(moving, true_points)
        points, true_points = points[keep], true_points[keep]
        info = dict(info, overlap_brain_voxels=int(keep.sum()), brain_voxels=int(keep.size))
    info = dict(info, mean_displacement_mm=float(np.linalg.norm(true_points - points, axis=1).mean()))
    return Case(name, fixed, moving, mask, points, true_points, matrix=matrix, info=info)


def make_slab_case(
    seed: int = 0, slices: int = 20, spacing=(2.0, 2.0, 2.2), tilt_deg: float = 35.0, offset_mm: float = -30.0,
    degrees: float = 10.0, shift_mm: float = 12.0, noise: float = 0.02, interpolation: str = "bspline",
) -> Case:
    """A partial field of view: an EPI-like slab of the skull-stripped T2-like image (moving)
    against the whole T1 (fixed).

    SYNTHESISED (no real EPI here): the brain is moved by a known rigid ``T`` (``degrees`` about a
    seeded oblique axis, ``shift_mm``), skull-stripped with the brain mask and sampled on an
    oblique slab: ``slices`` slices of ``spacing`` mm (in-plane 2 mm, 110 x 110), the slice plane
    tilted by ``tilt_deg`` about an oblique in-plane axis, its centre ``offset_mm`` along the slice normal from the
    brain centre (the default, -30 mm, puts it low in the brain: its centre of mass is far from
    the brain's). Each slice is the mean of 3 thin slices across its thickness (a box slice profile),
    and Gaussian noise of ``noise`` x the brain's 99th percentile is added (seeded). Errors and
    consistency are measured over the fixed brain voxels that map into the slab.
    """
    matrix = _known_rigid(seed, degrees, shift_mm)
    source, mask = load_source("t2like"), load_source("mask")
    stripped = sitk.Mask(source, mask)
    c = brain_center()
    direction = rotation_about_axis(np.array([1.0, 0.35, 0.0]), tilt_deg) @ np.asarray(source.GetDirection()).reshape(3, 3)
    spacing = np.asarray(spacing, dtype=float)
    center = c + direction[:, 2] * offset_mm
    thin = spacing * np.array([1.0, 1.0, 1.0 / 3.0])
    fine = _slab_grid(center, direction, thin, (110, 110, 3 * slices))
    inverse = matrix_to_sitk(np.linalg.inv(matrix))
    values = sitk.GetArrayFromImage(_resample(stripped, fine, inverse, interpolation=interpolation)).astype(np.float64)
    values = values.reshape(slices, 3, *values.shape[1:]).mean(axis=1)
    rng = np.random.default_rng(seed + 100)
    scale = float(np.percentile(sitk.GetArrayViewFromImage(source)[sitk.GetArrayViewFromImage(mask) > 0], 99))
    values = np.clip(values + noise * scale * rng.standard_normal(values.shape), 0, None)
    moving = sitk.GetImageFromArray(values.astype(np.float32))
    moving.CopyInformation(_slab_grid(center, direction, spacing, (110, 110, slices)))
    info = {"slices": slices, "spacing": spacing.tolist(), "tilt_deg": tilt_deg, "rotation_deg": degrees,
            "shift_mm": shift_mm, "interpolation": interpolation}
    return _case_from_matrix(f"slab-{slices}x{spacing[2]:g}mm", load_source("t1"), moving, mask, matrix, info, overlap_only=True)


def synthetic_head(t1: sitk.Image, mask: sitk.Image) -> sitk.Image:
    """``t1`` with a synthetic head around the brain: a dark skull shell (3-9 mm outside the
    mask, intensity 15) and a bright scalp shell (9-15 mm, intensity 140, ~ fat on T1); the
    2-3 mm gap next to the brain keeps the template's own CSF/dura voxels."""
    inside = sitk.GetArrayFromImage(mask) > 0
    distance = ndimage.distance_transform_edt(~inside, sampling=np.asarray(t1.GetSpacing())[::-1])
    head = sitk.GetArrayFromImage(t1).astype(np.float32)
    skull = (distance > 3) & (distance <= 9)
    scalp = (distance > 9) & (distance <= 15)
    head[skull] = np.maximum(head[skull], 15.0)
    head[scalp] = 140.0
    out = sitk.GetImageFromArray(head)
    out.CopyInformation(t1)
    return out


def make_skullstrip_case(seed: int = 0, degrees: float = 10.0, shift_mm: float = 9.0, interpolation: str = "linear") -> Case:
    """A skull-stripped moving image (T2-like x brain mask) against a whole-head fixed T1.

    SYNTHESISED: the sample T1 is already skull-stripped, so the fixed image is
    :func:`synthetic_head` (dark skull and bright scalp shells added around the brain). The
    moving image is the masked T2-like image under a known rigid motion (seeded axis), on a grid
    padded by 10 voxels, resampled with ``interpolation``.
    """
    matrix = _known_rigid(seed + 1, degrees, shift_mm)
    t1, source, mask = load_source("t1"), load_source("t2like"), load_source("mask")
    stripped = sitk.Mask(source, mask)
    moving = _resample(stripped, _padded(source, 10), matrix_to_sitk(np.linalg.inv(matrix)), interpolation=interpolation)
    info = {"rotation_deg": degrees, "shift_mm": shift_mm, "interpolation": interpolation, "fixed": "T1 + synthetic head"}
    return _case_from_matrix("skullstrip-t2-to-head", synthetic_head(t1, mask), moving, mask, matrix, info)


def bias_field(image: sitk.Image, ratio: float = 1.35, seed: int = 0) -> np.ndarray:
    """A smooth multiplicative field on ``image``'s grid (numpy order), ``exp`` of a seeded
    quadratic in the physical coordinates, scaled so that max / min over the grid = ``ratio``."""
    rng = np.random.default_rng(seed)
    p = grid_points(image)
    q = (p - p.reshape(-1, 3).mean(axis=0)) / np.abs(p.reshape(-1, 3) - p.reshape(-1, 3).mean(axis=0)).max()
    a = rng.normal(size=3)
    b = rng.normal(size=(3, 3))
    g = q @ a + 0.5 * np.einsum("...i,ij,...j->...", q, b + b.T, q) / 2
    g = (g - g.min()) / (g.max() - g.min())
    return np.exp(np.log(ratio) * (g - 0.5))


def make_bias_case(seed: int = 0, ratio: float = 1.35, interpolation: str = "linear") -> Case:
    """The multimodal affine case (:func:`make_affine_case`) with a smooth multiplicative bias
    field on the moving image (:func:`bias_field`, max/min ``ratio`` over its field of view)."""
    case = make_affine_case("multi", seed=seed, interpolation=interpolation)
    values = sitk.GetArrayFromImage(case.moving) * bias_field(case.moving, ratio, seed + 7)
    moving = sitk.GetImageFromArray(values.astype(np.float32))
    moving.CopyInformation(case.moving)
    info = dict(case.info, bias_ratio=ratio)
    return Case(f"bias{round(100 * (ratio - 1))}-multi", case.fixed, moving, case.fixed_mask, case.points, case.true_points,
                matrix=case.matrix, info=info)


def make_header_rotation_case(degrees: float, axis=(1.0, 0.0, 0.0), shift_mm: float = 5.0, modality: str = "multi") -> Case:
    """The T2-like (``multi``) or T1 (``mono``) image rotated by ``degrees`` about ``axis`` through
    the brain centre IN ITS HEADER (direction and origin; plus ``shift_mm`` along (1, 1, 1)/sqrt 3),
    voxels untouched: the truth is exact, ``T(x) = R (x - c) + c + t``."""
    c = brain_center()
    matrix = rigid_about_center(axis, degrees, shift_mm * np.ones(3) / np.sqrt(3), c)
    source = load_source("t2like" if modality == "multi" else "t1")
    moving = perturb_header(source, matrix)
    info = {"rotation_deg": degrees, "axis": list(map(float, axis)), "shift_mm": shift_mm}
    return _case_from_matrix(f"header-{degrees:g}deg-{modality}", load_source("t1"), moving, load_source("mask"), matrix, info)


# ------------------------------------------------------------------------------ metric
def mapping_error(found_points: np.ndarray, true_points: np.ndarray) -> dict[str, float]:
    """Distance (mm) between a found and the true mapping at the same fixed points.

    Returns
    -------
    dict
        ``mean`` (the headline number), ``median``, ``p95`` and ``max``, in mm.
    """
    d = np.linalg.norm(np.asarray(found_points, dtype=np.float64) - np.asarray(true_points, dtype=np.float64), axis=-1)
    return {"mean": float(d.mean()), "median": float(np.median(d)), "p95": float(np.percentile(d, 95)), "max": float(d.max())}
