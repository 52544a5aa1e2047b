"""Regularisers in physical units: closed forms on oblique anisotropic grids, ITK's Jacobian."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch
from scipy.spatial.transform import Rotation

from miregister.grid import Grid
from miregister.regularizers import (
    bending_energy,
    diffusion,
    jacobian_determinant,
    jacobian_matrix,
    jacobian_statistics,
)

ROTATION = Rotation.from_euler("xyz", [25, -15, 40], degrees=True).as_matrix()
GRID_3D = Grid((14, 11, 9), (1.3, 0.7, 2.2), (4.0, -6.0, 3.0), ROTATION.ravel())
GRID_2D = Grid((17, 13), (0.6, 1.9), (1.0, 2.0), Rotation.from_euler("z", 35, degrees=True).as_matrix()[:2, :2].ravel())


def field_from(grid: Grid, function) -> torch.Tensor:
    """``(1, *shape, D)`` displacement ``function(x)`` at the voxel centres (mm)."""
    return function(grid.points(torch.float64))[None]


def test_linear_field_closed_forms():
    rng = np.random.default_rng(0)
    for grid in (GRID_3D, GRID_2D):
        m = torch.from_numpy(rng.normal(scale=0.2, size=(grid.ndim, grid.ndim)))
        u = field_from(grid, lambda x: x @ m.T + 1.5)
        det = jacobian_determinant(u, grid)
        assert det.shape == (1, *grid.shape)
        expected = torch.linalg.det(torch.eye(grid.ndim, dtype=torch.float64) + m)
        torch.testing.assert_close(det, torch.full_like(det, expected.item()), atol=1e-10, rtol=0)
        torch.testing.assert_close(jacobian_matrix(u, grid)[0].reshape(-1, grid.ndim, grid.ndim)[7], torch.eye(grid.ndim, dtype=torch.float64) + m)
        torch.testing.assert_close(diffusion(u, grid), m.square().sum()[None], atol=1e-10, rtol=0)
        assert bending_energy(u, grid).abs().max() < 1e-18


def test_quadratic_field_bending_and_diffusion():
    a, b, c = 0.03, -0.02, 0.05
    x0 = torch.from_numpy(GRID_3D.center())

    def quadratic(p: torch.Tensor) -> torch.Tensor:
        x, y, z = (p - x0).unbind(-1)
        return torch.stack([a * x**2 + b * x * y, c * z**2, torch.zeros_like(x)], dim=-1)

    u = field_from(GRID_3D, quadratic)
    # u_x: d2/dx2 = 2a, d2/dxdy = d2/dydx = b; u_y: d2/dz2 = 2c
    expected_bending = 4 * a**2 + 2 * b**2 + 4 * c**2
    torch.testing.assert_close(bending_energy(u, GRID_3D), torch.tensor([expected_bending], dtype=torch.float64))
    x, y, z = (GRID_3D.points(torch.float64) - x0).unbind(-1)
    gradient_squared = (2 * a * x + b * y) ** 2 + (b * x) ** 2 + (2 * c * z) ** 2
    torch.testing.assert_close(diffusion(u, GRID_3D), gradient_squared.mean()[None])


def test_bending_energy_2d_mixed_term():
    u = field_from(GRID_2D, lambda p: torch.stack([0.1 * p[..., 0] * p[..., 1], torch.zeros_like(p[..., 0])], dim=-1))
    torch.testing.assert_close(bending_energy(u, GRID_2D), torch.tensor([2 * 0.1**2], dtype=torch.float64))


def test_jacobian_matches_itk_filter_on_a_smooth_field():
    # ITK's filter scales index derivatives by 1/spacing and ignores direction: identity direction
    grid = Grid((24, 20, 16), (1.2, 0.8, 1.6), (3.0, -2.0, 5.0))
    x, y, z = grid.points(torch.float64).unbind(-1)
    u = torch.stack(
        [3.0 * torch.sin(y / 6.0) * torch.cos(z / 9.0), 2.5 * torch.cos(x / 5.0), 2.0 * torch.sin((x + z) / 4.0)], dim=-1
    )[None]
    image = sitk.GetImageFromArray(u[0].numpy(), isVector=True)
    grid.copy_to_sitk(image)
    expected = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(image, True))
    actual = jacobian_determinant(u, grid)[0].numpy()
    core = (slice(1, -1),) * 3  # both use central differences inside; borders differ by design
    np.testing.assert_allclose(actual[core], expected[core], atol=1e-5)
    assert expected.min() < 0.8 and expected.max() > 1.2


def test_statistics_folding_and_mask():
    grid = Grid((30, 20), (1.0, 1.0))
    x = grid.points(torch.float64)[..., 0]
    # u_x = -2 * 10 * sin(x / 10) / 2 ...: dT_x/dx = 1 - 2 cos(x / 10) folds where cos > 1/2
    u = torch.stack([-20.0 * torch.sin(x / 10.0), torch.zeros_like(x)], dim=-1)[None].expand(2, -1, -1, -1).clone()
    u[1] = 0.0
    stats = jacobian_statistics(u, grid)
    det = 1.0 - 2.0 * torch.cos(x / 10.0)
    assert set(stats) >= {"min", "max", "mean", "std", "folded_fraction", "folded_count", "log_std"}
    assert stats["folded_fraction"].shape == (2,)
    torch.testing.assert_close(stats["folded_fraction"][0], (det <= 0).double().mean(), atol=0.04, rtol=0)
    assert stats["folded_fraction"][1] == 0 and stats["min"][1] == 1 and stats["log_std"][1] == 0
    mask = x > 20.0  # cos(x/10) < 1/2 for 10.5 < x < 52: no folding there
    masked = jacobian_statistics(u, grid, mask=mask)
    assert masked["folded_fraction"][0] == 0 and masked["min"][0] > 0


def test_regularizers_are_differentiable():
    grid = GRID_3D
    u = (0.5 * torch.randn(2, *grid.shape, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))).requires_grad_(True)
    (bending_energy(u, grid).sum() + diffusion(u, grid).sum() + jacobian_determinant(u, grid).mean()).backward()
    assert torch.isfinite(u.grad).all() and u.grad.abs().sum() > 0
