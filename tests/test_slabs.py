"""Slab-wise processing (bounded memory) gives what the whole-grid computation gives.

Slabs of a grid (``Grid.slab``) against the closed-form voxel centres; the dense warp through a
non-linear transform and the displacement-field file, both computed slab by slab, against the
whole-grid computation and against SimpleITK's resampling of the same B-spline.
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from miregister import warp as warp_module
from miregister.grid import Grid
from miregister.image import Image
from miregister.transforms import io as transform_io
from miregister.transforms import BSpline
from miregister.warp import resample, warp
from test_bspline import oblique_grid_3d, random_bspline


def test_slabs_are_the_planes_of_the_grid():
    grid = oblique_grid_3d()
    points = grid.points(dtype=torch.float64)  # (Z, Y, X, 3)
    ranges = grid.slabs(3 * grid.size[0] * grid.size[1] + 1)
    assert ranges[0][0] == 0 and ranges[-1][1] == grid.size[2]
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    for lo, hi in ranges:
        slab = grid.slab(lo, hi)
        assert slab.size == (*grid.size[:2], hi - lo)
        torch.testing.assert_close(slab.points(dtype=torch.float64), points[lo:hi], rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="not within"):
        grid.slab(5, grid.size[2] + 1)


def test_slab_range_finds_exactly_the_slabs_of_the_grid():
    grid = oblique_grid_3d()
    planes = grid.size[-1]
    assert grid.slab_range(grid) == (0, planes)
    for lo, hi in [(0, 1), (3, 11), (planes - 2, planes)]:
        assert grid.slab_range(grid.slab(lo, hi)) == (lo, hi)
    half = grid.slab(3, 11)
    shifted = Grid(half.size, half.spacing, tuple(half.index_to_physical_np(np.array([0.0, 0.0, 0.5]))), half.direction)
    sideways = Grid(half.size, half.spacing, tuple(half.index_to_physical_np(np.array([1.0, 0.0, 0.0]))), half.direction)
    finer = Grid(half.size, tuple(np.asarray(half.spacing) * 0.5), half.origin, half.direction)
    narrower = Grid((half.size[0] - 1, *half.size[1:]), half.spacing, half.origin, half.direction)
    beyond = Grid(half.size, half.spacing, tuple(grid.index_to_physical_np(np.array([0.0, 0.0, planes - 2.0]))), half.direction)
    assert [grid.slab_range(g) for g in (shifted, sideways, finer, narrower, beyond)] == [None] * 5


def test_displacement_field_on_its_own_slabs_is_the_stored_field():
    from miregister.transforms import DisplacementField
    from miregister.transforms.base import SpatialTransform

    grid = oblique_grid_3d()
    field = DisplacementField(grid, torch.randn(1, *grid.shape, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4)))
    for lo, hi in [(0, grid.size[-1]), (2, 9)]:
        sub = grid.slab(lo, hi)
        stored = field.displacement_field(sub, dtype=torch.float64)
        assert torch.equal(stored, field.field[:, lo:hi])
        interpolated = SpatialTransform.displacement_field(field, sub, dtype=torch.float64)  # T(x) - x at the points
        torch.testing.assert_close(stored, interpolated, atol=1e-9, rtol=0)


@pytest.mark.parametrize("mode", ["linear", "bspline"])
def test_dense_warp_in_slabs_is_the_whole_grid_warp(monkeypatch, mode):
    grid = oblique_grid_3d()
    transform = random_bspline(grid, 12.0, seed=3, scale=3.0).to(torch.float32)
    moving_grid = Grid((26, 22, 18), (1.3, 1.1, 2.2), (3.0, -5.0, 8.0), grid.direction)
    moving = torch.rand((1, 1, *moving_grid.shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        monkeypatch.setattr(warp_module, "DENSE_SLAB_VOXELS", 10**9)
        whole, whole_inside = warp(moving, moving_grid, transform, grid, mode=mode, return_inside=True)
        monkeypatch.setattr(warp_module, "DENSE_SLAB_VOXELS", 2000)  # 4 planes a slab
        slabs, slabs_inside = warp(moving, moving_grid, transform, grid, mode=mode, return_inside=True)
    assert torch.equal(slabs_inside, whole_inside)
    torch.testing.assert_close(slabs, whole, rtol=0, atol=1e-5)


def test_dense_resample_in_slabs_matches_simpleitk(monkeypatch):
    grid = oblique_grid_3d()
    transform = random_bspline(grid, 12.0, seed=4, scale=3.0)
    rng = np.random.default_rng(1)
    moving = Image(torch.from_numpy(rng.random(grid.shape)).to(torch.float64)[None], grid)
    monkeypatch.setattr(warp_module, "DENSE_SLAB_VOXELS", 1500)
    ours = resample(moving, transform, grid).data[0].numpy()
    reference = sitk.Resample(moving.to_sitk(), moving.to_sitk(), transform.to_sitk(batch_index=0), sitk.sitkLinear, 0.0)
    np.testing.assert_allclose(ours, sitk.GetArrayFromImage(reference), atol=1e-6)


def test_dense_warp_keeps_gradients_on_the_whole_grid_path(monkeypatch):
    grid = Grid((12, 10, 8), (2.0, 2.0, 2.0))
    transform = BSpline(grid, 8.0)
    moving = torch.rand((1, 1, *grid.shape), generator=torch.Generator().manual_seed(2))
    monkeypatch.setattr(warp_module, "DENSE_SLAB_VOXELS", 100)
    warp(moving, grid, transform, grid).sum().backward()
    assert transform.coefficients.grad is not None and torch.isfinite(transform.coefficients.grad).all()


def test_displacement_field_file_written_in_slabs_is_the_field(monkeypatch, tmp_path):
    grid = oblique_grid_3d()
    transform = random_bspline(grid, 12.0, seed=5, scale=3.0)
    monkeypatch.setattr(transform_io, "FIELD_SLAB_VOXELS", 1700)
    path = transform_io.write_transform(transform, tmp_path / "field.nii.gz", reference=grid)
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    expected = transform.displacement_field(grid, dtype=torch.float64)[0].detach().numpy()
    np.testing.assert_allclose(written, expected.astype(np.float32), rtol=0, atol=1e-6)


def test_inverse_displacement_in_slabs_inverts_the_transform(monkeypatch):
    from miregister.transforms import displacement

    grid = oblique_grid_3d()
    transform = random_bspline(grid, 12.0, seed=6, scale=0.5)  # invertible everywhere (no folds)
    field = transform.displacement_field(grid, dtype=torch.float64).detach()
    whole = displacement.invert_displacement(field, grid, transform=transform)
    monkeypatch.setattr(displacement, "INVERSE_SLAB_VOXELS", 1700)  # 3 planes a slab
    slabs = displacement.invert_displacement(field, grid, transform=transform)
    limit = 1e-3 * min(grid.spacing)  # the iteration's stopping tolerance
    assert float((slabs - whole).norm(dim=-1).max()) < limit
    points = grid.points(dtype=torch.float64)[None]
    with torch.no_grad():
        back = transform(points + slabs)  # T(T^-1(y)) = y
    assert float((back - points).norm(dim=-1).max()) < limit
