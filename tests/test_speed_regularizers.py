"""Bending energy after skipping zero weights: against a numpy reference (full Hessian, every
(p, q) pair), on axis-aligned and oblique grids."""
import numpy as np
import pytest
import torch

from miregister import Grid
from miregister.regularizers import bending_energy


def _reference(u: np.ndarray, grid: Grid) -> float:
    """mean over voxels of sum_i sum_pq (d^2 u_i / dx_p dx_q)^2, by np.gradient and A^-1."""
    d = grid.ndim
    matrix = np.asarray(grid.direction, float).reshape(d, d) @ np.diag(grid.spacing)
    ainv = np.linalg.inv(matrix)  # row k: physical -> index axis k
    axis_of = lambda k: d - 1 - k  # ITK index axis k is array axis d - 1 - k  # noqa: E731
    first = [np.gradient(u, axis=axis_of(k), edge_order=2) for k in range(d)]
    h_index = np.stack([np.stack([np.gradient(first[k], axis=axis_of(l), edge_order=2) for l in range(d)], -1)
                        for k in range(d)], -2)  # (..., D comp, k, l)
    h_phys = np.einsum("kp,...kl,lq->...pq", ainv, h_index, ainv)
    return float((h_phys ** 2).sum(axis=(-1, -2, -3)).mean())


@pytest.mark.parametrize("direction", [
    np.eye(3), np.diag([-1.0, -1.0, 1.0]),
    np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float),
    np.array([[0.9, -0.3, 0.3], [0.35, 0.93, -0.1], [-0.25, 0.2, 0.95]]),
])
def test_bending_energy_matches_numpy_full_hessian(direction):
    q, _ = np.linalg.qr(direction)
    q = q * np.where(np.diag(q) < 0, -1.0, 1.0)  # an orthonormal matrix near the given one
    grid = Grid(size=(12, 11, 10), spacing=(6.0, 5.0, 4.0), direction=q.ravel().tolist())
    u = np.random.default_rng(3).normal(0, 1, (*grid.shape, 3))
    got = float(bending_energy(torch.from_numpy(u)[None], grid)[0])
    assert got == pytest.approx(_reference(u, grid), rel=1e-10)


@pytest.mark.parametrize("ndim, batch", [(3, 1), (3, 2), (2, 1)])
def test_bspline_bending_energy_without_the_field_matches_numpy(ndim, batch):
    """The separable path (coefficients contracted with per-axis sampling and difference matrices)
    against the numpy reference on the spline's field sampled on the same oblique grid, values
    and, against the field path, gradients with respect to the coefficients."""
    from test_bspline import oblique_grid_2d, oblique_grid_3d, random_bspline

    from miregister.regularizers import bspline_bending_energy

    grid = oblique_grid_3d() if ndim == 3 else oblique_grid_2d()
    penalty = grid.with_spacing([2.0 * s for s in grid.spacing])  # the lattice's direction: axis-aligned with it
    transform = random_bspline(grid, 6.0, seed=4, scale=1.5, batch=batch)
    got = bspline_bending_energy(transform, penalty, dtype=torch.float64)
    assert got.shape == (batch,)
    field = transform.displacement_field(penalty, dtype=torch.float64).detach().numpy()
    for b in range(batch):
        assert float(got[b].detach()) == pytest.approx(_reference(field[b], penalty), rel=1e-9)
    (grad_separable,) = torch.autograd.grad(got.sum(), transform.coefficients)
    via_field = bending_energy(transform.displacement_field(penalty, dtype=torch.float64), penalty)
    (grad_field,) = torch.autograd.grad(via_field.sum(), transform.coefficients)
    torch.testing.assert_close(grad_separable, grad_field, rtol=1e-9, atol=1e-15)


def test_bspline_bending_energy_falls_back_off_the_lattice_axes():
    """A grid rotated against the lattice is not separable: the field path gives the value."""
    from test_bspline import oblique_grid_3d, random_bspline

    from miregister.regularizers import bspline_bending_energy

    grid = oblique_grid_3d()
    transform = random_bspline(grid, 6.0, seed=5, scale=1.0)
    turned = Grid(size=(14, 12, 10), spacing=(2.5, 2.0, 4.0), origin=grid.origin, direction=np.eye(3).ravel().tolist())
    assert transform.axis_matrices(turned) is None
    got = float(bspline_bending_energy(transform, turned, dtype=torch.float64)[0].detach())
    field = transform.displacement_field(turned, dtype=torch.float64).detach().numpy()[0]
    assert got == pytest.approx(_reference(field, turned), rel=1e-9)
