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
