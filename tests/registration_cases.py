"""Small registration problems with known answers, built from the shipped sample data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

DATA = Path(__file__).resolve().parents[1] / "data"


def read(name: str) -> sitk.Image:
    return sitk.ReadImage(str(DATA / name), sitk.sitkFloat32)


def affine_about(linear: np.ndarray, translation, center) -> sitk.AffineTransform:
    """ITK affine ``T(x) = L (x - c) + c + t`` (fixed -> moving)."""
    d = linear.shape[0]
    t = sitk.AffineTransform(d)
    t.SetMatrix(np.asarray(linear, dtype=float).ravel().tolist())
    t.SetCenter([float(v) for v in center])
    t.SetTranslation([float(v) for v in translation])
    return t


def rotation_2d(degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def moved(source: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """The moving image such that ``moving(T(x)) = source(x)``, on the source grid."""
    return sitk.Resample(source, source, transform.GetInverse(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def physical_points(image: sitk.Image, mask: np.ndarray) -> np.ndarray:
    """Physical coordinates (mm) of the voxels where ``mask`` (array order) is true."""
    index = np.argwhere(mask)[:, ::-1].astype(float)
    direction = np.asarray(image.GetDirection()).reshape(image.GetDimension(), -1)
    return index * np.asarray(image.GetSpacing()) @ direction.T + np.asarray(image.GetOrigin())


def slice_case(degrees: float = 10.0, translation=(6.0, -4.0), scale=(1.04, 0.97), modality: str = "t2like"):
    """2D T1 slice (fixed) and a moved slice (moving) with the true transform and brain points."""
    fixed = read("mni152_t1_slice.nii.gz")
    source = read(f"mni152_{modality}_slice.nii.gz")
    center = np.asarray(fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in fixed.GetSize()]))
    truth = affine_about(rotation_2d(degrees) @ np.diag(scale), translation, center)
    moving = moved(source, truth)
    brain = sitk.GetArrayFromImage(fixed) > 30
    return fixed, moving, truth, physical_points(fixed, brain)


def mapping_error(transform_points, truth: sitk.Transform, points: np.ndarray) -> float:
    """Mean distance (mm) between the found mapping (callable on (N, D) arrays) and the truth."""
    true = np.array([truth.TransformPoint(p.tolist()) for p in points])
    return float(np.linalg.norm(transform_points(points) - true, axis=1).mean())


# ------------------------------------------------------------------------------ realistic, 4 mm
def read_4mm(name: str, mask: bool = False) -> sitk.Image:
    """A 2 mm sample volume averaged over 2 x 2 x 2 blocks (4 mm, 49 x 58 x 47); masks: > 0.5."""
    image = sitk.BinShrink(read(name), [2, 2, 2])
    return sitk.Cast(image > 0.5, sitk.sitkUInt8) if mask else image


def rotation_3d(axis, degrees: float) -> np.ndarray:
    """3x3 rotation by ``degrees`` about ``axis`` (Rodrigues)."""
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = np.deg2rad(degrees)
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)


def rigid_matrix(axis, degrees: float, translation, center) -> np.ndarray:
    """Homogeneous 4x4 of ``T(x) = R (x - c) + c + t``."""
    m = np.eye(4)
    r = rotation_3d(axis, degrees)
    m[:3, :3] = r
    m[:3, 3] = np.asarray(center) + np.asarray(translation, dtype=float) - r @ np.asarray(center)
    return m


def sitk_affine(matrix: np.ndarray) -> sitk.AffineTransform:
    t = sitk.AffineTransform(3)
    t.SetMatrix(matrix[:3, :3].ravel().tolist())
    t.SetTranslation(matrix[:3, 3].tolist())
    return t


def perturb_header(image: sitk.Image, matrix: np.ndarray) -> sitk.Image:
    """``image`` with its header moved by the rigid ``matrix``: the voxel at ``q`` now sits at
    ``Q(q)``, so a mapping ``T`` onto the old image becomes ``Q o T``."""
    out = sitk.Image(image)
    out.SetDirection((matrix[:3, :3] @ np.asarray(image.GetDirection()).reshape(3, 3)).ravel().tolist())
    out.SetOrigin((matrix[:3, :3] @ np.asarray(image.GetOrigin()) + matrix[:3, 3]).tolist())
    return out


def inside(image: sitk.Image, points: np.ndarray) -> np.ndarray:
    """Which physical ``points`` (N, 3) fall inside ``image``'s voxel box."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    index = (points - np.asarray(image.GetOrigin())) @ direction / np.asarray(image.GetSpacing())
    return np.all((index >= -0.5) & (index <= np.asarray(image.GetSize()) - 0.5), axis=1)


def apply_matrix(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def brain_4mm():
    """(fixed T1, T2-like, mask, brain points (N, 3) mm, brain centre) at 4 mm."""
    t1, t2, mask = read_4mm("mni152_t1_2mm.nii.gz"), read_4mm("mni152_t2like_2mm.nii.gz"), read_4mm("mni152_brainmask_2mm.nii.gz", True)
    points = physical_points(mask, sitk.GetArrayViewFromImage(mask) > 0)
    return t1, t2, mask, points, points.mean(axis=0)


def slab_case_4mm(slices: int = 10, thickness: float = 4.4, tilt: float = 35.0, offset: float = -30.0):
    """A skull-stripped T2-like slab (moving) of ``slices`` oblique slices (4 mm in-plane,
    ``thickness`` mm, tilted ``tilt`` deg, centred ``offset`` mm along its normal from the brain
    centre) under a known rigid motion (10 deg, 12 mm), against the whole 4 mm T1 (fixed).

    Returns (fixed, moving, truth 4x4 fixed->moving, fixed brain points mapping into the slab)."""
    t1, t2, mask, points, c = brain_4mm()
    truth = rigid_matrix((1.0, -0.6, 0.8), 10.0, (7.0, -6.0, 7.5), c)
    direction = rotation_3d((1.0, 0.35, 0.0), tilt) @ np.asarray(t1.GetDirection()).reshape(3, 3)
    spacing = np.array([4.0, 4.0, thickness])
    size = np.array([56, 56, slices])
    grid = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(direction.ravel().tolist())
    grid.SetOrigin((c + direction[:, 2] * offset - direction @ ((size - 1) * spacing / 2)).tolist())
    stripped = sitk.Mask(t2, mask)
    moving = sitk.Resample(stripped, grid, sitk_affine(np.linalg.inv(truth)), sitk.sitkBSpline, 0.0, sitk.sitkFloat32)
    keep = inside(moving, apply_matrix(truth, points))
    return t1, moving, truth, points[keep]


def bias_case_4mm(ratio: float = 1.35):
    """The 4 mm T2-like image under a known rigid+scaling motion, resampled linearly and
    multiplied by a smooth bias field (exp of a linear ramp plus a quadratic, max/min ``ratio``).

    Returns (fixed, moving, truth 4x4, fixed brain points)."""
    t1, t2, mask, points, c = brain_4mm()
    truth = rigid_matrix((0.3, 1.0, -0.5), 9.0, (-6.0, 5.0, 4.0), c)
    truth[:3, :3] = truth[:3, :3] @ np.diag([1.04, 0.97, 1.02])
    truth[:3, 3] = c + np.array([-6.0, 5.0, 4.0]) - truth[:3, :3] @ c
    moving = sitk.Resample(t2, t2, sitk_affine(np.linalg.inv(truth)), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    grid = physical_points(moving, np.ones(sitk.GetArrayViewFromImage(moving).shape, dtype=bool))
    q = (grid - grid.mean(axis=0)) / np.abs(grid - grid.mean(axis=0)).max()
    g = q @ np.array([0.8, -0.5, 0.6]) + 0.7 * q[:, 2] ** 2 - 0.4 * q[:, 0] * q[:, 1]
    g = (g - g.min()) / (g.max() - g.min())
    field = np.exp(np.log(ratio) * (g - 0.5)).reshape(sitk.GetArrayViewFromImage(moving).shape)
    biased = sitk.GetImageFromArray((sitk.GetArrayFromImage(moving) * field).astype(np.float32))
    biased.CopyInformation(moving)
    return t1, biased, truth, points


def header_rotation_case_4mm(degrees: float, axis=(1.0, 0.0, 0.0)):
    """The 4 mm T2-like image rotated by ``degrees`` about ``axis`` through the brain centre in its
    header (voxels untouched), plus a 5 mm shift. Returns (fixed, moving, truth 4x4, brain points)."""
    t1, t2, mask, points, c = brain_4mm()
    truth = rigid_matrix(axis, degrees, 5.0 * np.ones(3) / np.sqrt(3), c)
    return t1, perturb_header(t2, truth), truth, points
