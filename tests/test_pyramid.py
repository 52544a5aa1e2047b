"""Gaussian smoothing and shrinking in physical units, against scipy/SimpleITK and closed forms."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import SimpleITK as sitk
import torch
from scipy.spatial.transform import Rotation

from miregister.grid import Grid
from miregister.image import Image
from miregister.pyramid import (
    MIN_SIGMA_VOXELS,
    default_sigma_mm,
    gaussian_smooth,
    pyramid,
    shrink,
    shrunk_spacing,
)

SPACING = (0.7, 1.3, 2.5)  # x, y, z in mm
DIRECTION = tuple(Rotation.from_euler("xyz", [15, -25, 40], degrees=True).as_matrix().ravel())


def _noise(shape, seed=0, smooth=0.0):
    array = np.random.default_rng(seed).normal(size=shape)
    return ndi.gaussian_filter(array, smooth) if smooth else array


def _voxel_sigmas(sigma_mm, spacing):
    """scipy's per-tensor-axis sigmas ([z,] y, x), zero where the module skips the axis."""
    sigma = [s / h for s, h in zip(sigma_mm, spacing)]
    return [v if v >= MIN_SIGMA_VOXELS else 0.0 for v in reversed(sigma)]


@pytest.mark.parametrize("sigma_mm", [2.0, (1.0, 3.0, 0.2), (0.5, 0.0, 6.0), 15.0])
def test_smoothing_equals_scipy_with_sigma_in_voxels(sigma_mm):
    array = _noise((9, 14, 17))
    image = Image.from_numpy(array, SPACING, direction=DIRECTION, dtype=torch.float64)
    out = gaussian_smooth(image, sigma_mm)
    assert out.grid is image.grid and out.dtype == torch.float64
    sigma = (sigma_mm,) * 3 if np.isscalar(sigma_mm) else sigma_mm
    expected = ndi.gaussian_filter(array, _voxel_sigmas(sigma, SPACING), mode="nearest", truncate=4.0)
    np.testing.assert_allclose(out.to_numpy()[0], expected, rtol=0, atol=1e-12)


def test_smoothing_2d_batched_tensor_with_grid():
    grid = Grid((23, 11), (0.4, 1.6))
    data = torch.from_numpy(_noise((2, 3, 11, 23), seed=1))
    out = gaussian_smooth(data, (1.2, 2.0), grid=grid, truncate=3.0)
    expected = ndi.gaussian_filter(data.numpy(), (0, 0, 2.0 / 1.6, 1.2 / 0.4), mode="nearest", truncate=3.0)
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-12)


def test_smoothing_matches_simpleitk_recursive_gaussian():
    # A smooth anisotropic field: the sampled and the recursive (Deriche) Gaussian then agree.
    array = _noise((24, 32, 40), seed=2, smooth=3.0).astype(np.float32)
    image = Image.from_numpy(array, SPACING, origin=(5.0, -3.0, 12.0), direction=DIRECTION)
    out = gaussian_smooth(image, 3.0).to_numpy()[0]
    reference = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(image.to_sitk(), 3.0))
    scale = np.abs(array).max()
    assert np.abs(out - reference).max() < 1e-2 * scale
    assert np.abs(out - reference)[4:-4, 4:-4, 4:-4].max() < 4e-3 * scale


def test_smoothing_keeps_constants_and_is_differentiable():
    grid = Grid((8, 9, 5), SPACING)
    constant = torch.full((1, 1, *grid.shape), 3.0, dtype=torch.float64)
    torch.testing.assert_close(gaussian_smooth(constant, 4.0, grid=grid), constant)
    small = Grid((4, 3, 2), SPACING)
    data = torch.from_numpy(_noise((1, 1, 2, 3, 4), seed=3)).requires_grad_(True)
    torch.autograd.gradcheck(lambda x: gaussian_smooth(x, 1.5, grid=small), (data,), eps=1e-6, atol=1e-6)


def test_smoothing_argument_errors():
    image = Image(torch.zeros(1, 4, 5), Grid((5, 4)))
    with pytest.raises(ValueError, match="sigma_mm"):
        gaussian_smooth(image, (1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match=">= 0"):
        gaussian_smooth(image, -1.0)
    with pytest.raises(ValueError, match="needs its grid"):
        gaussian_smooth(image.batch(), 1.0)


def test_anisotropic_shrink_rule():
    assert shrunk_spacing((1.0, 1.0, 4.0), 4) == (4.0, 4.0, 4.0)
    assert shrunk_spacing((1.0, 1.0, 4.0), 2) == (2.0, 2.0, 4.0)
    assert shrunk_spacing((1.0, 1.0, 4.0), 1) == (1.0, 1.0, 4.0)
    assert shrunk_spacing((0.5, 2.0), (4, 1)) == (2.0, 2.0)
    with pytest.raises(ValueError, match=">= 1"):
        shrunk_spacing((1.0, 1.0), 0.5)
    image = Image(torch.zeros(1, 10, 64, 64), Grid((64, 64, 10), (1.0, 1.0, 4.0)))
    assert shrink(image, 4).grid.spacing == (4.0, 4.0, 4.0)
    assert shrink(image, 4).grid.size == (16, 16, 10)


@pytest.mark.parametrize("factor", [2, 3, 4, (2.5, 1.0, 3.0)])
def test_shrunk_grid_covers_the_same_region(factor):
    grid = Grid((31, 20, 13), SPACING, (-40.0, 12.5, 3.0), DIRECTION)
    image = Image(torch.zeros(1, *grid.shape), grid)
    small = shrink(image, factor).grid
    np.testing.assert_allclose(small.center(), grid.center(), atol=1e-9)
    assert small.direction == grid.direction
    assert np.all(np.abs(small.extent() - grid.extent()) <= np.asarray(small.spacing) + 1e-9)


def _ramp(grid: Grid, dtype=torch.float64) -> tuple[Image, np.ndarray, float]:
    """Image whose value is a linear function ``a . x + b`` of the physical position (mm)."""
    a = np.array([0.3, -1.1, 0.7][: grid.ndim])
    b = 4.0
    values = grid.points(dtype=torch.float64) @ torch.from_numpy(a) + b
    return Image(values.unsqueeze(0).to(dtype), grid), a, b


@pytest.mark.parametrize("ndim", [2, 3])
def test_shrunk_ramp_stays_the_same_function_of_position(ndim):
    direction = DIRECTION if ndim == 3 else (0.6, -0.8, 0.8, 0.6)
    grid = Grid((40, 33, 17)[:ndim], SPACING[:ndim], (-20.0, 8.0, 1.5)[:ndim], direction)
    image, a, b = _ramp(grid)
    small = shrink(image, 3)
    expected = small.grid.points(dtype=torch.float64).numpy() @ a + b
    # centres within the old voxel-centre hull are interpolated exactly; the rim may be clamped
    inside = grid.contains_index(grid.physical_to_index(small.grid.points(dtype=torch.float64)), tolerance=1e-9)
    assert inside.float().mean() > 0.8
    np.testing.assert_allclose(small.to_numpy()[0][inside.numpy()], expected[inside.numpy()], rtol=0, atol=1e-9)


def test_shrink_to_target_spacing_and_identity():
    image, a, b = _ramp(Grid((30, 30), (1.0, 1.0), (2.0, 3.0)))
    coarse = shrink(image, spacing=(2.0, 5.0))
    assert coarse.grid.spacing == (2.0, 5.0) and coarse.grid.size == (15, 6)
    np.testing.assert_allclose(coarse.to_numpy()[0], coarse.grid.points(dtype=torch.float64).numpy() @ a + b, atol=1e-9)
    assert shrink(image, 1) is image
    with pytest.raises(ValueError, match="exactly one"):
        shrink(image)


def test_pyramid_levels_spacing_and_smoothing():
    grid = Grid((48, 40, 12), (1.0, 1.0, 4.0), (0.0, 0.0, 0.0), DIRECTION)
    image, a, b = _ramp(grid)
    levels = pyramid(image, shrink_factors=(4, 2, 1))
    assert [lv.grid.spacing for lv in levels] == [(4.0, 4.0, 4.0), (2.0, 2.0, 4.0), (1.0, 1.0, 4.0)]
    assert levels[-1] is image  # full resolution, no smoothing
    assert default_sigma_mm(grid.spacing, (2.0, 2.0, 4.0)) == (1.0, 1.0, 0.0)
    # Gaussian smoothing leaves a linear function unchanged away from the borders.
    for level in levels[:2]:
        expected = level.grid.points(dtype=torch.float64).numpy() @ a + b
        np.testing.assert_allclose(level.to_numpy()[0][1:-1, 3:-3, 3:-3], expected[1:-1, 3:-3, 3:-3], atol=1e-9)


def test_pyramid_smooths_as_asked():
    array = _noise((12, 30, 34), seed=4)
    image = Image.from_numpy(array, (1.0, 1.0, 2.0), dtype=torch.float64)
    coarse, fine = pyramid(image, shrink_factors=(2, 1), smoothing_sigmas_mm=(2.0, (1.0, 1.0, 0.0)))
    assert fine.grid == image.grid
    expected = ndi.gaussian_filter(array, (0.0, 1.0, 1.0), mode="nearest")
    np.testing.assert_allclose(fine.to_numpy()[0], expected, atol=1e-12)
    smoothed = ndi.gaussian_filter(array, (1.0, 2.0, 2.0), mode="nearest")
    assert coarse.grid.size == (17, 15, 12)
    # at factor 2 with even sizes each new centre is halfway between old ones: a 2x2 mean
    np.testing.assert_allclose(
        coarse.to_numpy()[0], smoothed.reshape(12, 15, 2, 17, 2).mean(axis=(2, 4)), atol=1e-12
    )
    with pytest.raises(ValueError, match="one per level"):
        pyramid(image, shrink_factors=(2, 1), smoothing_sigmas_mm=(1.0,))
