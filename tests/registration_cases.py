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
