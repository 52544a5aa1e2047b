"""Stationary velocity fields: closed-form flows, an ODE reference, inverse consistency."""
from __future__ import annotations

import numpy as np
import scipy.linalg
import torch
from scipy.integrate import solve_ivp

from miregister.grid import Grid
from miregister.transforms import SVF


def oblique_grid() -> Grid:
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    return Grid((60, 50), (1.5, 2.0), (10.0, -20.0), (c, -s, s, c))


def set_velocity(transform: SVF, function) -> None:
    """Fill the velocity with ``function(points (..., D) mm) -> (..., D) mm`` on its grid."""
    points = transform.velocity_grid.points(torch.float64)
    with torch.no_grad():
        transform.velocity.copy_(torch.movedim(function(points), -1, 0)[None])


def interior(grid: Grid, radius: float) -> torch.Tensor:
    points = grid.points(torch.float64)
    return (points - torch.from_numpy(grid.center())).norm(dim=-1) < radius


def test_zero_velocity_is_identity():
    grid = oblique_grid()
    transform = SVF(grid)
    points = grid.points()[None]
    torch.testing.assert_close(transform(points), points)
    assert transform.displacement_field(grid).abs().max() == 0


def test_constant_velocity_is_a_translation():
    grid = oblique_grid()
    transform = SVF(grid, steps=5, dtype=torch.float64)
    shift = torch.tensor([3.5, -2.25], dtype=torch.float64)
    set_velocity(transform, lambda p: shift.expand_as(p))
    points = torch.randn(1, 100, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 30
    torch.testing.assert_close(transform(points), points + shift, atol=1e-10, rtol=0)


def test_linear_velocity_gives_matrix_exponential():
    grid = oblique_grid()
    transform = SVF(grid, steps=8, dtype=torch.float64)
    a = np.array([[0.05, -0.3], [0.3, 0.02]])  # rotation by ~17 degrees with a little growth
    centre = torch.from_numpy(grid.center())
    set_velocity(transform, lambda p: (p - centre) @ torch.from_numpy(a).T)
    points = grid.points(torch.float64)
    expected = (points - centre) @ torch.from_numpy(scipy.linalg.expm(a)).T + centre - points
    with torch.no_grad():
        actual = transform.displacement_field(grid, torch.float64)[0]
    inside = interior(grid, 25.0)
    assert expected[inside].abs().max() > 5.0
    assert (actual - expected)[inside].abs().max() < 0.02  # mm, linear interpolation of a linear field


def test_matches_ode_integration_of_a_smooth_field():
    grid = Grid((48, 40), (1.0, 1.25), (-20.0, -25.0))

    def velocity(p: np.ndarray) -> np.ndarray:
        x, y = p[..., 0], p[..., 1]
        return np.stack([4.0 * np.sin(y / 9.0), 3.0 * np.cos(x / 7.0)], axis=-1)

    transform = SVF(grid, steps=7, dtype=torch.float64)
    set_velocity(transform, lambda p: torch.from_numpy(velocity(p.numpy())))
    rng = np.random.default_rng(1)
    starts = grid.center() + rng.uniform(-8, 8, size=(20, 2))
    expected = np.array(
        [solve_ivp(lambda t, x: velocity(x), (0.0, 1.0), s, rtol=1e-10, atol=1e-10).y[:, -1] for s in starts]
    )
    with torch.no_grad():
        actual = transform(torch.from_numpy(starts)[None])[0].numpy()
    assert np.abs(expected - starts).max() > 2.0
    np.testing.assert_allclose(actual, expected, atol=0.03)  # discretisation of v on a 1 mm grid


def test_inverse_composes_to_identity():
    grid = oblique_grid()
    transform = SVF(grid, steps=7, control_spacing=8.0, smoothing=6.0, dtype=torch.float64)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        transform.velocity.copy_(4.0 * torch.randn(transform.velocity.shape, generator=generator, dtype=torch.float64))
    inverse = transform.inverse()
    assert inverse.velocity_grid.same_as(transform.velocity_grid)
    points = grid.points(torch.float64)[None]
    with torch.no_grad():
        displacement = transform(points) - points
        round_trip = transform(inverse(points))
        other_way = inverse(transform(points))
    inside = interior(grid, 25.0)[None]
    largest = displacement[inside].norm(dim=-1).max()
    assert largest > 2.0
    for composed in (round_trip, other_way):
        # the residual is the linear interpolation of two sampled fields (1.5-2 mm voxels)
        error = (composed - points)[inside].norm(dim=-1)
        assert error.max() < 0.05 * largest and error.mean() < 0.01 * largest


def test_coarse_velocity_gradients_and_other_grids():
    grid = Grid((32, 28, 20), (1.0, 1.0, 1.5))
    transform = SVF(grid, steps=4, control_spacing=(4.0, 4.0, 6.0), batch_size=2)
    assert transform.velocity.shape == (2, 3, 5, 7, 8)
    with torch.no_grad():
        transform.velocity.normal_(generator=torch.Generator().manual_seed(3))
    field = transform.displacement_field(grid)
    assert field.shape == (2, 20, 28, 32, 3)
    field.square().sum().backward()
    assert transform.velocity.grad.abs().sum() > 0
    coarse = Grid((8, 7, 5), (4.0, 4.0, 6.0), (2.0, 2.0, 2.0))
    points = coarse.points()[None].expand(2, 5, 7, 8, 3)
    with torch.no_grad():
        torch.testing.assert_close(transform.displacement_field(coarse), transform(points) - points)
