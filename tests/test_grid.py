"""Grid coordinate maps against SimpleITK, grid_sample consistency, and validation."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation

from miregister.grid import Grid, apply_affine


def _random_grid(ndim: int, seed: int) -> Grid:
    """Anisotropic, oblique (random rotation, sometimes a reflection), non-zero origin."""
    rng = np.random.default_rng(seed)
    size = tuple(int(n) for n in rng.integers(3, 9, size=ndim))
    spacing = tuple(rng.uniform(0.3, 4.0, size=ndim))
    origin = tuple(rng.uniform(-100, 100, size=ndim))
    if ndim == 3:
        rotation = Rotation.random(random_state=seed).as_matrix()
    else:
        angle = rng.uniform(-np.pi, np.pi)
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    if seed % 2:
        rotation[:, 0] *= -1  # left-handed directions occur in real files
    return Grid(size, spacing, origin, tuple(rotation.ravel()))


def _sitk_image(grid: Grid) -> sitk.Image:
    image = sitk.Image(list(grid.size), sitk.sitkFloat32)
    grid.copy_to_sitk(image)
    return image


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_index_physical_maps_match_simpleitk(ndim, seed):
    grid = _random_grid(ndim, seed)
    reference = _sitk_image(grid)
    rng = np.random.default_rng(100 + seed)
    index = rng.uniform(-2, 10, size=(20, ndim))
    expected = np.array([reference.TransformContinuousIndexToPhysicalPoint(tuple(i)) for i in index])
    np.testing.assert_allclose(grid.index_to_physical_np(index), expected, rtol=0, atol=1e-10)
    as_torch = grid.index_to_physical(torch.from_numpy(index)).numpy()
    np.testing.assert_allclose(as_torch, expected, rtol=0, atol=1e-10)

    points = rng.uniform(-150, 150, size=(20, ndim))
    expected = np.array([reference.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in points])
    np.testing.assert_allclose(grid.physical_to_index_np(points), expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(grid.physical_to_index(torch.from_numpy(points)).numpy(), expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("ndim", [2, 3])
def test_points_are_voxel_centres_in_tensor_order(ndim):
    grid = _random_grid(ndim, 7)
    reference = _sitk_image(grid)
    points = grid.points(dtype=torch.float64)
    assert points.shape == (*grid.shape, ndim)
    for flat in [0, 5, grid.numel - 1]:
        tensor_index = np.unravel_index(flat, grid.shape)  # ([z,] y, x)
        itk_index = tuple(int(i) for i in reversed(tensor_index))
        expected = reference.TransformIndexToPhysicalPoint(itk_index)
        np.testing.assert_allclose(points[tensor_index].numpy(), expected, atol=1e-10)
    np.testing.assert_allclose(grid.center(), reference.TransformContinuousIndexToPhysicalPoint(
        tuple((np.array(grid.size) - 1) / 2.0)), atol=1e-10)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_grid_sample_at_voxel_centres_returns_voxel_values(ndim, dtype, atol):
    grid = _random_grid(ndim, 11)
    data = torch.randn(1, 2, *grid.shape, dtype=dtype, generator=torch.Generator().manual_seed(0))
    coords = grid.physical_to_normalized(grid.points(dtype=torch.float64)).to(dtype)
    sampled = F.grid_sample(data, coords.unsqueeze(0), mode="bilinear", align_corners=True)
    torch.testing.assert_close(sampled, data, rtol=0, atol=atol)
    first_last = torch.tensor([[0.0] * ndim, [s - 1.0 for s in grid.size]], dtype=torch.float64)
    corners = grid.physical_to_normalized(grid.index_to_physical(first_last))
    torch.testing.assert_close(corners, torch.tensor([[-1.0] * ndim, [1.0] * ndim], dtype=torch.float64))


def test_normalized_and_physical_maps_are_inverse():
    grid = _random_grid(3, 3)
    m = grid.normalized_to_physical_matrix() @ grid.physical_to_normalized_matrix()
    torch.testing.assert_close(m, torch.eye(4, dtype=torch.float64))
    points = torch.randn(5, 3, dtype=torch.float64) * 50
    torch.testing.assert_close(grid.normalized_to_physical(grid.physical_to_normalized(points)), points)


def test_single_voxel_axis_samples_that_voxel():
    grid = Grid((4, 1), (1.0, 2.0), (3.0, -1.0))
    data = torch.arange(4.0, dtype=torch.float64).view(1, 1, 1, 4)
    coords = grid.physical_to_normalized(grid.points(dtype=torch.float64))
    torch.testing.assert_close(F.grid_sample(data, coords[None], align_corners=True), data)


def test_apply_affine_batched():
    matrices = torch.eye(3, dtype=torch.float64).repeat(2, 1, 1)
    matrices[1, :2, 2] = torch.tensor([1.0, -2.0])
    points = torch.zeros(2, 4, 5, 2, dtype=torch.float64)
    out = apply_affine(matrices, points)
    assert out.shape == points.shape
    torch.testing.assert_close(out[1, 3, 4], torch.tensor([1.0, -2.0], dtype=torch.float64))
    torch.testing.assert_close(out[0], points[0])


def test_defaults_and_sitk_round_trip():
    grid = Grid((4, 5, 6))
    assert grid.spacing == (1.0,) * 3 and grid.origin == (0.0,) * 3
    assert grid.direction == tuple(np.eye(3).ravel())
    assert grid.shape == (6, 5, 4) and grid.numel == 120
    oblique = _random_grid(3, 5)
    assert Grid.from_sitk(_sitk_image(oblique)) == oblique
    with pytest.raises(ValueError, match="does not match grid size"):
        Grid((3, 3, 3)).copy_to_sitk(_sitk_image(oblique))


def test_with_spacing_keeps_the_centre_and_direction():
    grid = _random_grid(3, 2)
    coarse = grid.with_spacing([s * 2.5 for s in grid.spacing])
    np.testing.assert_allclose(coarse.center(), grid.center(), atol=1e-9)
    assert coarse.direction == grid.direction
    np.testing.assert_allclose(coarse.extent(), grid.extent(), atol=max(coarse.spacing))  # half a new voxel per side


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(size=(4,)), "2 or 3 spatial dimensions"),
        (dict(size=(4, 4, 4, 4)), "2 or 3 spatial dimensions"),
        (dict(size=(4, 0)), "size must be >= 1"),
        (dict(size=(4, 4), spacing=(1.0, 0.0)), "strictly positive"),
        (dict(size=(4, 4), spacing=(1.0, -2.0)), "strictly positive"),
        (dict(size=(4, 4), spacing=(1.0, float("nan"))), "strictly positive"),
        (dict(size=(4, 4), spacing=(1.0, 1.0, 1.0)), "do not match"),
        (dict(size=(4, 4), origin=(0.0,)), "do not match"),
        (dict(size=(4, 4), origin=(0.0, float("inf"))), "origin must be finite"),
        (dict(size=(4, 4), direction=(1.0, 0.0, 0.0)), "do not match"),
        (dict(size=(4, 4), direction=(1.0, 2.0, 0.5, 1.0)), "singular"),
        (dict(size=(4, 4, 4), direction=(1, 0, 0, 0, 1, 0, 1, 0, 0)), "singular"),
        (dict(size=(4, 4), spacing=2.0), "sequence of numbers"),
    ],
)
def test_grid_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Grid(**kwargs)
