"""The validation's memory-bounded steps give what the whole-grid computations give."""
import numpy as np
import torch

from miregister.grid import Grid
from miregister.image import Image
from miregister.registration import validation
from miregister.registration.initialization import center_of_mass
from miregister.transforms import Affine, BSpline, Composite
from miregister.warp import warp

FIXED = Grid((21, 17, 13), (1.5, 1.0, 2.0), (2.0, -3.0, 1.0), tuple(np.diag([-1.0, -1.0, 1.0]).ravel()))
MOVING = Grid((19, 18, 15), (1.4, 1.1, 1.9), (1.0, -2.0, 0.0), tuple(np.diag([-1.0, -1.0, 1.0]).ravel()))


def _moving() -> Image:
    rng = np.random.default_rng(4)
    return Image(torch.from_numpy(rng.random(MOVING.shape).astype(np.float32))[None], MOVING)


def _transforms():
    affine = Affine(3)
    with torch.no_grad():
        affine.matrix.copy_(torch.tensor([[[1.05, 0.1, 0.0], [-0.08, 0.97, 0.05], [0.0, 0.02, 1.1]]]))
        affine.translation.copy_(torch.tensor([[2.5, -1.5, 3.0]]))
    spline = BSpline(FIXED, 8.0)
    with torch.no_grad():
        spline.coefficients.copy_(2.0 * torch.randn(spline.coefficients.shape, generator=torch.Generator().manual_seed(3)))
    return [None, affine, Composite([affine, spline])]


def test_inside_mask_in_slabs_equals_the_whole_grid_warps(monkeypatch):
    moving, fixed = _moving(), Image(torch.zeros(1, *FIXED.shape), FIXED)
    for transform in _transforms():
        whole, whole_inside = warp(moving.batch(), MOVING, transform, FIXED, return_inside=True, margin=validation.INSIDE_MARGIN)
        assert whole_inside[0].any() and not whole_inside[0].all()
        values, inside = validation.on_fixed_grid(moving, fixed, transform)
        assert torch.equal(values, whole[0, 0]) and torch.equal(inside, whole_inside[0])  # values: one whole warp
        for slab in (1, 17 * 21 * 2, 10**9):  # one plane, two planes, all
            monkeypatch.setattr(validation, "WARP_SLAB_VOXELS", slab)
            none, inside = validation.on_fixed_grid(moving, fixed, transform, values=False)
            assert none is None and torch.equal(inside, whole_inside[0])


def test_center_of_mass_from_marginals_is_the_weighted_mean_position():
    rng = np.random.default_rng(5)
    data = rng.random(FIXED.shape) ** 3
    image = Image(torch.from_numpy(data)[None].float(), FIXED)
    mask = rng.random(FIXED.shape) < 0.6
    # numpy reference: weights above the 2nd percentile, the weighted mean of the voxel centres (mm)
    flat = torch.from_numpy(data.astype(np.float32).astype(np.float64)).reshape(-1)
    low = float(torch.quantile(flat[:: max(1, flat.numel() // 200_000)], 0.02))
    points = FIXED.points(torch.float64).numpy()
    for m in (None, mask):
        weights = np.clip(data.astype(np.float32).astype(np.float64) - low, 0, None) * (1 if m is None else m)
        expected = (points * weights[..., None]).reshape(-1, 3).sum(0) / weights.sum()
        given = None if m is None else torch.from_numpy(m)
        np.testing.assert_allclose(center_of_mass(image, given), expected, rtol=0, atol=1e-9)


def test_foreground_smoothing_in_slabs_equals_the_whole_image_filter(monkeypatch):
    from miregister.pyramid import gaussian_smooth
    from miregister.registration import foreground

    rng = np.random.default_rng(6)
    for grid, sigma in ((FIXED, 1.0), (FIXED, 2.5), (Grid((40, 30), (0.7, 1.3)), 0.7)):
        image = Image(torch.from_numpy(rng.random(grid.shape).astype(np.float32))[None], grid)
        whole = gaussian_smooth(image.data[None].double(), sigma, grid)[0, 0].numpy()
        for slab in (1, 300, 10**9):
            monkeypatch.setattr(foreground, "SLAB_VOXELS", slab)
            np.testing.assert_allclose(foreground._smoothed(image, sigma), whole, rtol=1e-13, atol=1e-15)


def test_qc_joint_histogram_in_chunks_counts_as_numpy(monkeypatch):
    from miregister.registration import qc

    rng = np.random.default_rng(7)
    a = rng.normal(size=(30, 40)).astype(np.float32)
    b = (a**2 + rng.normal(size=a.shape)).astype(np.float32)
    b[0, 0] = b.max()  # a value on the last edge (counted in the last bin)
    for x, y in ((a, b), (a, np.full_like(a, 3.0))):  # and a constant image (edges +-0.5)
        expected = np.log1p(np.histogram2d(x.ravel(), y.ravel(), bins=64)[0].T)
        monkeypatch.setattr(qc, "HISTOGRAM_CHUNK", 77)
        np.testing.assert_array_equal(qc._joint_histogram(x, y), expected)
