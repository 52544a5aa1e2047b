"""Cubic B-spline FFD: parity with SimpleITK's BSplineTransform, dense fast path, refinement."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy.spatial.transform import Rotation

from miregister.grid import Grid
from miregister.transforms import BSpline
from miregister.transforms.bspline import bspline_lattice

ROTATION = Rotation.from_euler("xyz", [20, -10, 35], degrees=True).as_matrix()


def oblique_grid_3d() -> Grid:
    return Grid((30, 25, 20), (1.2, 0.9, 2.0), (5.0, -3.0, 10.0), ROTATION.ravel())


def oblique_grid_2d() -> Grid:
    c, s = np.cos(0.4), np.sin(0.4)
    return Grid((40, 30), (0.8, 1.5), (-7.0, 4.0), (c, -s, s, c))


def random_bspline(grid: Grid, spacing, seed: int = 0, scale: float = 2.0, batch: int = 1) -> BSpline:
    transform = BSpline(grid, spacing, batch_size=batch, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        transform.coefficients.copy_(scale * torch.randn(transform.coefficients.shape, generator=generator, dtype=torch.float64))
    return transform


def random_points(grid: Grid, n: int, seed: int, spread: float) -> np.ndarray:
    """Points around the grid, ``spread`` times its half-diagonal: some fall outside the domain."""
    rng = np.random.default_rng(seed)
    radius = spread * np.linalg.norm(grid.extent()) / 2
    return grid.center() + rng.uniform(-radius, radius, size=(n, grid.ndim))


@pytest.mark.parametrize("make_grid, spacing", [(oblique_grid_3d, (8.0, 10.0, 12.0)), (oblique_grid_2d, 7.0)])
def test_matches_sitk_bspline_transform(make_grid, spacing):
    grid = make_grid()
    transform = random_bspline(grid, spacing)
    reference = transform.to_sitk()
    assert isinstance(reference, sitk.BSplineTransform)
    assert list(reference.GetTransformDomainMeshSize()) == list(transform.mesh_size)
    points = random_points(grid, 1500, seed=1, spread=1.0)
    expected = np.array([reference.TransformPoint(p.tolist()) for p in points])
    moved = np.abs(expected - points).max(axis=1) > 0
    assert 0.2 < moved.mean() < 1.0  # both inside and outside the domain are exercised
    with torch.no_grad():
        actual = transform(torch.from_numpy(points)[None])[0].numpy()
    np.testing.assert_allclose(actual, expected, atol=1e-10)


def test_domain_covers_voxel_corners_and_layout():
    grid = Grid((50, 40, 30), (1.0, 1.0, 2.0))
    lattice = bspline_lattice(grid, 10.0)
    assert lattice.size == (5 + 3, 4 + 3, 6 + 3)  # exact multiples gain no extra cell
    transform = BSpline(grid, 10.0)
    itk = transform.to_sitk()
    domain_origin = np.asarray(itk.GetTransformDomainOrigin())
    np.testing.assert_allclose(domain_origin, grid.index_to_physical_np(np.full(3, -0.5)), atol=1e-9)
    np.testing.assert_allclose(itk.GetTransformDomainPhysicalDimensions(), grid.extent(), atol=1e-9)


def test_identity_at_zero_and_zero_displacement_outside():
    grid = oblique_grid_3d()
    transform = BSpline(grid, 10.0)
    points = torch.from_numpy(random_points(grid, 200, seed=2, spread=1.5)).float()[None]
    torch.testing.assert_close(transform(points), points)
    shifted = random_bspline(grid, 10.0)
    far = torch.from_numpy(grid.center() + np.array([[500.0, 0.0, 0.0], [0.0, -400.0, 10.0]]))[None]
    torch.testing.assert_close(shifted(far), far)


def test_dense_field_matches_pointwise_and_fallback():
    grid = oblique_grid_3d()
    transform = random_bspline(grid, (8.0, 10.0, 12.0), batch=2)
    # an aligned grid with other spacing and origin (separable path) ...
    aligned = Grid((17, 23, 9), (2.1, 1.3, 3.7), tuple(grid.center()), grid.direction)
    # ... and a differently oriented one (pointwise fallback)
    tilted = Grid((11, 9, 7), (2.0, 2.0, 2.0), tuple(grid.center() - 5), np.eye(3).ravel())
    for query in (grid, aligned, tilted):
        points = query.points(torch.float64)[None].expand(2, *query.shape, 3)
        with torch.no_grad():
            expected = transform(points) - points
            actual = transform.displacement_field(query, dtype=torch.float64)
        assert actual.shape == (2, *query.shape, 3)
        torch.testing.assert_close(actual, expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize("make_grid, spacing", [(oblique_grid_2d, 6.0), (oblique_grid_3d, (8.0, 10.0, 12.0))])
def test_gradients_of_dense_and_pointwise_paths_agree(make_grid, spacing):
    grid = make_grid()
    transform = random_bspline(grid, spacing)
    weights = torch.randn(1, *grid.shape, grid.ndim, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    points = grid.points(torch.float64)[None]
    (transform(points) * weights).sum().backward()
    pointwise = transform.coefficients.grad.clone()
    transform.coefficients.grad = None
    (transform.displacement_field(grid, torch.float64) * weights).sum().backward()
    torch.testing.assert_close(transform.coefficients.grad, pointwise, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("grid", [Grid((9, 7), (1.5, 2.0)), Grid((9, 7, 8), (1.5, 2.0, 1.8), (3.0, -2.0, 1.0), ROTATION.ravel())])
def test_gradcheck_wrt_coefficients_and_points(grid):
    transform = random_bspline(grid, 5.0, scale=1.0)
    points = torch.from_numpy(random_points(grid, 12, seed=4, spread=0.7))[None].requires_grad_(True)

    def through_module(coefficients, pts):
        return torch.func.functional_call(transform, {"coefficients": coefficients}, (pts,))

    coefficients = transform.coefficients.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(through_module, (coefficients, points))


def test_float32_points_keep_float32_precision():
    """float32 evaluation at scattered points (the 3D mosaic of 2D lookups) against float64:
    within a few ulps of the mm coordinates (points up to ~60 mm from the origin)."""
    grid = Grid((60, 70, 50), (2.0, 2.0, 2.2), (-60.0, -70.0, -50.0), ROTATION.ravel())
    transform = random_bspline(grid, 12.0, scale=4.0)
    points = torch.from_numpy(random_points(grid, 20000, seed=5, spread=0.9))[None]
    with torch.no_grad():
        expected = transform(points)
        actual = transform.float()(points.float())
    assert (expected - points).abs().amax() > 1.0  # the points do move
    assert (actual.double() - expected).abs().amax() < 5e-5


def test_refine_is_exact_and_upsample_least_squares():
    grid = oblique_grid_3d()
    coarse = random_bspline(grid, (8.0, 10.0, 12.0))
    with torch.no_grad():
        reference = coarse.displacement_field(grid, torch.float64)
        fine = coarse.refine()
        assert fine.control_spacing == (4.0, 5.0, 6.0)
        assert fine.mesh_size == tuple(2 * m for m in coarse.mesh_size)
        torch.testing.assert_close(fine.displacement_field(grid, torch.float64), reference, atol=1e-10, rtol=0)
        # the coarse space lies inside the refined one: least squares recovers it exactly
        back = fine.upsample((8.0, 10.0, 12.0))
        torch.testing.assert_close(back.coefficients, coarse.coefficients, atol=1e-8, rtol=0)
        # an unrelated spacing: close, not exact
        other = coarse.upsample(5.0)
        error = (other.displacement_field(grid, torch.float64) - reference).abs().max()
        assert error < 0.05 * reference.abs().max()
    assert fine.coefficients.requires_grad and fine.coefficients.grad_fn is None


def test_upsample_half_spacing_whole_cells_is_exact():
    grid = Grid((40, 30), (1.0, 1.0), (3.0, 2.0))
    coarse = random_bspline(grid, 10.0)
    with torch.no_grad():
        fine = coarse.upsample(5.0)
        torch.testing.assert_close(
            fine.displacement_field(grid, torch.float64), coarse.displacement_field(grid, torch.float64), atol=1e-9, rtol=0
        )


def test_sitk_round_trip_and_file(tmp_path):
    grid = oblique_grid_3d()
    transform = random_bspline(grid, 9.0)
    path = str(tmp_path / "bspline.tfm")
    sitk.WriteTransform(transform.to_sitk(), path)
    loaded = BSpline.from_sitk(sitk.ReadTransform(path), grid=grid, dtype=torch.float64)
    assert loaded.lattice.same_as(transform.lattice)
    torch.testing.assert_close(loaded.coefficients, transform.coefficients, atol=1e-12, rtol=0)


def test_batch_elements_are_independent():
    grid = oblique_grid_2d()
    transform = random_bspline(grid, 6.0, batch=3)
    points = torch.from_numpy(random_points(grid, 50, seed=5, spread=0.8))[None]
    with torch.no_grad():
        together = transform(points)
        for b in range(3):
            single = BSpline.from_lattice(transform.lattice, transform.coefficients[b : b + 1], grid)
            torch.testing.assert_close(together[b : b + 1], single(points))


def test_voxel_displacement_matches_whole_grid_field():
    """The per-voxel evaluation used by B-spline stages equals the whole-grid field at those voxels, values and gradients."""
    from miregister.grid import Grid
    from miregister.transforms import BSpline as _BSpline

    grid = Grid((30, 26, 22), (2.0, 2.0, 2.5), (-30.0, -20.0, -10.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    spline = _BSpline(grid, 10.0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        spline.coefficients.copy_(torch.randn(spline.coefficients.shape, generator=generator) * 2.0)
    indices = torch.randperm(grid.numel, generator=generator)[:3000].sort().values
    weights = torch.randn(1, 3, 3000, generator=generator)
    spline.coefficients.requires_grad_(True)
    ours = spline.voxel_displacement(grid, indices)()
    (ours * weights).sum().backward()
    grad_ours, spline.coefficients.grad = spline.coefficients.grad.clone(), None
    reference = spline.displacement_field(grid).reshape(1, -1, 3)[:, indices].transpose(1, 2)
    (reference * weights).sum().backward()
    assert torch.allclose(ours, reference, atol=1e-5)
    assert torch.allclose(grad_ours, spline.coefficients.grad, atol=1e-5)
