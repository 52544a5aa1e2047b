"""Sampling and resampling: parity with SimpleITK and scipy, inside masks, labels, gradients."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation

from miregister import Grid, Image
from miregister.transforms import Affine, Composite, DisplacementField, Rigid, SpatialTransform
from miregister.transforms.io import to_sitk
from miregister.warp import bspline_prefilter, resample, sample, warp


def oblique_grid(rng: np.random.Generator, size: tuple[int, ...], center: np.ndarray | None = None) -> Grid:
    """Anisotropic spacing, non-zero origin, a rotated (non-identity) direction; optionally centred."""
    d = len(size)
    if d == 2:
        angle = rng.uniform(0.2, 0.6)
        direction = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    else:
        direction = Rotation.from_rotvec(rng.normal(size=3) * 0.4).as_matrix()
    spacing = rng.uniform(0.6, 1.8, size=d)
    origin = rng.normal(size=d) * 10.0
    grid = Grid(size, tuple(spacing), tuple(origin), tuple(np.ravel(direction)))
    if center is not None:  # overlap another grid: move the geometric centre there
        grid = Grid(size, grid.spacing, tuple(origin + np.asarray(center) - grid.center()), grid.direction)
    return grid


def smooth_image(rng: np.random.Generator, grid: Grid, dtype=torch.float64) -> Image:
    """A random image smooth enough for interpolation error to stay small, plus a little noise."""
    noise = ndimage.gaussian_filter(rng.normal(size=grid.shape), 1.5) * 10.0
    return Image(torch.tensor(noise, dtype=dtype)[None], grid)


def random_affine(rng: np.random.Generator, grid: Grid, dtype=torch.float64) -> Affine:
    d = grid.ndim
    t = Rigid(d, center=grid.center(), dtype=dtype)
    with torch.no_grad():
        t.rotation.copy_(torch.tensor(rng.normal(size=t.rotation.shape) * 0.25))
        t.translation.copy_(torch.tensor(rng.normal(size=(1, d)) * 2.0))
    a = Affine.from_transform(t)
    with torch.no_grad():
        a.matrix.add_(torch.tensor(rng.normal(size=(1, d, d)) * 0.05))
    return a


class Opaque(SpatialTransform):
    """Wraps a transform but hides its linearity, to force the point-wise path of warp()."""

    def __init__(self, inner: SpatialTransform) -> None:
        super().__init__()
        self.inner, self.ndim, self.batch_size = inner, inner.ndim, inner.batch_size

    def forward(self, points):
        return self.inner(points)


SIZES = {2: ((23, 19), (17, 21)), 3: ((13, 11, 9), (10, 12, 8))}


# ---------------------------------------------------------------------- SimpleITK parity
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("mode,interpolator", [("linear", sitk.sitkLinear), ("nearest", sitk.sitkNearestNeighbor)])
def test_resample_matches_sitk_resample(ndim, mode, interpolator):
    rng = np.random.default_rng(ndim)
    moving_size, fixed_size = SIZES[ndim]
    moving = smooth_image(rng, oblique_grid(rng, moving_size))
    fixed_grid = oblique_grid(rng, fixed_size, center=moving.grid.center())
    transform = random_affine(rng, moving.grid)

    ours = resample(moving, transform, fixed_grid, mode=mode, default_value=-7.0).data[0].numpy()
    reference = Image(torch.zeros(1, *fixed_grid.shape), fixed_grid).to_sitk()
    expected = sitk.GetArrayFromImage(sitk.Resample(moving.to_sitk(), reference, to_sitk(transform), interpolator, -7.0))
    assert (expected != -7.0).mean() > 0.2  # the test must cover a good part of the image
    np.testing.assert_allclose(ours, expected, atol=1e-6)  # boundary included: same inside rule as ITK


@pytest.mark.parametrize("ndim", [2, 3])
def test_fast_linear_path_equals_pointwise_path(ndim):
    rng = np.random.default_rng(30 + ndim)
    moving_size, fixed_size = SIZES[ndim]
    moving = smooth_image(rng, oblique_grid(rng, moving_size), dtype=torch.float32)
    fixed_grid = oblique_grid(rng, fixed_size, center=moving.grid.center())
    transform = random_affine(rng, moving.grid, dtype=torch.float32)
    fast, inside_fast = warp(moving.batch(), moving.grid, transform, fixed_grid, return_inside=True)
    slow, inside_slow = warp(moving.batch(), moving.grid, Opaque(transform), fixed_grid, return_inside=True)
    assert fast.shape == (1, 1, *fixed_grid.shape) and inside_fast.shape == (1, *fixed_grid.shape)
    assert (inside_fast != inside_slow).float().mean() < 1e-3  # only float32 ties at the hull
    both = inside_fast & inside_slow
    np.testing.assert_allclose(fast[:, 0][both].detach().numpy(), slow[:, 0][both].detach().numpy(), atol=1e-4)
    assert bool((fast[:, 0][~inside_fast] == 0).all())


def test_identity_warp_reproduces_image_and_marks_all_inside():
    rng = np.random.default_rng(2)
    image = smooth_image(rng, oblique_grid(rng, (9, 8, 7)), dtype=torch.float32)
    for mode in ("linear", "nearest", "bspline"):
        out, inside = warp(image.batch(), image.grid, None, image.grid, mode=mode, return_inside=True)
        np.testing.assert_allclose(out[0].numpy(), image.data.numpy(), atol=1e-4)
        assert bool(inside.all())


def test_sample_matches_map_coordinates_and_reports_inside():
    rng = np.random.default_rng(3)
    grid = oblique_grid(rng, (12, 10, 9))
    image = rng.normal(size=grid.shape)
    index = rng.uniform(-1.5, np.array(grid.size) + 0.5, size=(500, 3))
    points = torch.tensor(grid.index_to_physical_np(index))[None]
    moving = torch.tensor(image)[None, None]
    values, inside = sample(moving, grid, points, padding_value=np.nan)
    expected_inside = ((index >= 0) & (index <= np.array(grid.size) - 1)).all(1)
    np.testing.assert_array_equal(inside[0].numpy(), expected_inside)
    expected = ndimage.map_coordinates(image, index[expected_inside, ::-1].T, order=1)
    np.testing.assert_allclose(values[0, 0, expected_inside].numpy(), expected, atol=1e-12)
    assert np.isnan(values[0, 0, ~expected_inside].numpy()).all()
    # bspline: scipy's cubic spline with mirror boundaries, everywhere inside
    values3, _ = sample(moving, grid, points, mode="bspline")
    expected3 = ndimage.map_coordinates(image, index[expected_inside, ::-1].T, order=3, mode="mirror")
    np.testing.assert_allclose(values3[0, 0, expected_inside].numpy(), expected3, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sample_at_indices_matches_map_coordinates_and_sample(dtype):
    """The metric's axis-first sampler: scipy's linear and mirror cubic spline values inside, the
    same inside rule (and margin) as sample(), a batch of index sets, and gradients with respect
    to the indices equal to sample()'s (mapped through the grid's index -> mm matrix)."""
    from miregister.interpolation import sample_at_indices

    rng = np.random.default_rng(8)
    grid = oblique_grid(rng, (12, 10, 9))
    image = rng.normal(size=grid.shape)
    index = rng.uniform(-1.5, np.array(grid.size) + 0.5, size=(2, 400, 3))
    moving = torch.tensor(image, dtype=dtype)[None, None]
    axis_first = torch.tensor(index, dtype=dtype).transpose(1, 2)  # (B, D, N)
    tolerance = 1e-10 if dtype == torch.float64 else 2e-4
    for margin in (0.0, 0.5):
        expected_inside = ((index >= -margin) & (index <= np.array(grid.size) - 1 + margin)).all(-1)
        for mode, order in (("linear", 1), ("bspline", 3)):
            source = bspline_prefilter(moving) if mode == "bspline" else moving
            values, inside = sample_at_indices(source, grid, axis_first, mode=mode, padding_value=-7.0,
                                               margin=margin, prefiltered=mode == "bspline")
            assert values.shape == (2, 1, 400) and inside.shape == (2, 400)
            np.testing.assert_array_equal(inside.numpy(), expected_inside)
            for b in range(2):
                where = expected_inside[b]
                clipped = np.clip(index[b, where], 0, np.array(grid.size) - 1)  # the margin's values are border-clamped
                reference = ndimage.map_coordinates(image, (clipped if mode == "linear" else index[b, where])[:, ::-1].T,
                                                    order=order, mode="mirror")
                np.testing.assert_allclose(values[b, 0, where].numpy(), reference, atol=tolerance)
                assert (values[b, 0, ~where] == -7.0).all()
    # gradients: d value / d index through the index -> mm map equal sample()'s d value / d point
    points = torch.tensor(grid.index_to_physical_np(index[0]), dtype=torch.float64)[None].requires_grad_(True)
    by_points, _ = sample(torch.tensor(image)[None, None], grid, points, mode="bspline")
    (grad_points,) = torch.autograd.grad(by_points.sum(), points)
    at = torch.tensor(index[0], dtype=torch.float64).T[None].requires_grad_(True)
    by_index, _ = sample_at_indices(bspline_prefilter(torch.tensor(image)[None, None]), grid, at, mode="bspline", prefiltered=True)
    (grad_index,) = torch.autograd.grad(by_index.sum(), at)
    to_physical = torch.tensor(grid.index_to_physical_matrix()[:3, :3].numpy())  # d point / d index
    np.testing.assert_allclose((grad_points[0] @ to_physical).numpy(), grad_index[0].T.numpy(), atol=1e-9)


def test_sample_shapes_margin_and_batch_broadcast():
    rng = np.random.default_rng(4)
    grid = oblique_grid(rng, (8, 7))
    moving = torch.tensor(rng.normal(size=(1, 2, *grid.shape)))
    points = torch.tensor(rng.normal(size=(3, 5, 4, 2)) * 4 + grid.center())
    values, inside = sample(moving, grid, points)
    assert values.shape == (3, 2, 5, 4) and inside.shape == (3, 5, 4) and inside.dtype == torch.bool
    half_out = torch.tensor(grid.index_to_physical_np([[-0.4, 3.0], [7.4, 2.0], [-0.6, 3.0]]))[None]
    assert sample(moving, grid, half_out)[1].tolist() == [[False, False, False]]
    assert sample(moving, grid, half_out, margin=0.5)[1].tolist() == [[True, True, False]]
    with pytest.raises(ValueError, match="mode"):
        sample(moving, grid, points, mode="cubic")
    with pytest.raises(ValueError, match="does not match"):
        sample(moving[..., :3], grid, points)


@pytest.mark.parametrize("ndim", [2, 3])
def test_bspline_prefilter_matches_scipy_and_sitk(ndim):
    rng = np.random.default_rng(5 + ndim)
    size = (11, 9) if ndim == 2 else (9, 8, 7)
    image = rng.normal(size=tuple(reversed(size)))
    coefficients = bspline_prefilter(torch.tensor(image)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(coefficients, ndimage.spline_filter(image, order=3, mode="mirror"), atol=1e-12)
    # sitk.sitkBSpline (ITK's BSplineInterpolateImageFunction, mirror boundaries as well)
    moving = Image(torch.tensor(image)[None], oblique_grid(rng, size))
    transform = random_affine(rng, moving.grid)
    ours = resample(moving, transform, mode="bspline").data[0].numpy()
    expected = sitk.GetArrayFromImage(sitk.Resample(moving.to_sitk(), moving.to_sitk(), to_sitk(transform), sitk.sitkBSpline, 0.0))
    np.testing.assert_allclose(ours, expected, atol=1e-6)


# ---------------------------------------------------------------------- labels
def test_nearest_keeps_integer_labels_and_matches_sitk():
    rng = np.random.default_rng(6)
    grid = oblique_grid(rng, (14, 12, 10))
    labels = rng.integers(0, 5, size=grid.shape).astype(np.int16) * 100
    image = Image(torch.from_numpy(labels)[None], grid)
    transform = random_affine(rng, grid)
    out = resample(image, transform, mode="nearest")
    assert out.data.dtype == torch.int16
    assert set(np.unique(out.data.numpy())) <= set(np.unique(labels))
    expected = sitk.GetArrayFromImage(sitk.Resample(image.to_sitk(), image.to_sitk(), to_sitk(transform), sitk.sitkNearestNeighbor, 0))
    np.testing.assert_array_equal(out.data[0].numpy(), expected)
    # float label maps stay exact integers too
    out_float = resample(image.to(torch.float32), transform, mode="nearest").data
    np.testing.assert_array_equal(out_float.numpy(), out.data.numpy().astype(np.float32))


# ---------------------------------------------------------------------- batches and odd grids
def test_warp_batch_of_transforms_on_one_image():
    rng = np.random.default_rng(7)
    moving = smooth_image(rng, oblique_grid(rng, (12, 10)))
    transforms = [random_affine(rng, moving.grid) for _ in range(3)]
    batched = Affine.from_matrix(torch.cat([t.affine_matrix().detach() for t in transforms]), dtype=torch.float64)
    out = warp(moving.batch(), moving.grid, batched, moving.grid)
    assert out.shape == (3, 1, *moving.grid.shape)
    for i, t in enumerate(transforms):
        single = warp(moving.batch(), moving.grid, t, moving.grid)
        np.testing.assert_allclose(out[i].detach().numpy(), single[0].detach().numpy(), atol=1e-12)


def test_unit_size_axis_and_dimension_checks():
    rng = np.random.default_rng(8)
    grid = Grid((7, 6, 1), (1.0, 1.2, 3.0), (1.0, 2.0, 3.0))
    image = smooth_image(rng, grid)
    out, inside = warp(image.batch(), grid, Affine(3, dtype=torch.float64), grid, return_inside=True)
    np.testing.assert_allclose(out[0].detach().numpy(), image.data.numpy(), atol=1e-12)
    assert bool(inside.all())
    with pytest.raises(ValueError, match="2D"):
        warp(image.batch(), grid, Affine(2), grid)
    with pytest.raises(ValueError, match="one image pair"):
        resample(image, Affine(3, batch_size=2))


def test_displacement_field_warp_matches_sitk():
    rng = np.random.default_rng(9)
    grid = oblique_grid(rng, (11, 9, 8))
    moving = smooth_image(rng, grid)
    field = torch.tensor(ndimage.gaussian_filter(rng.normal(size=(*grid.shape, 3)), (1, 1, 1, 0)) * 6.0)
    transform = Composite([random_affine(rng, grid), DisplacementField(grid, field)])
    ours = resample(moving, transform).data[0].numpy()
    expected = sitk.GetArrayFromImage(sitk.Resample(moving.to_sitk(), moving.to_sitk(), to_sitk(transform, reference=grid), sitk.sitkLinear, 0.0))
    np.testing.assert_allclose(ours, expected, atol=1e-6)


# ---------------------------------------------------------------------- gradients
class WarpModule(torch.nn.Module):
    """``warp`` as a module, so ``functional_call`` can swap the transform's parameters for gradcheck."""

    def __init__(self, moving: Image, transform: SpatialTransform, fixed_grid: Grid, mode: str) -> None:
        super().__init__()
        self.moving, self.transform, self.fixed_grid, self.mode = moving, transform, fixed_grid, mode

    def forward(self):
        return warp(self.moving.batch(), self.moving.grid, self.transform, self.fixed_grid, mode=self.mode)


@pytest.mark.parametrize("wrap", [False, True], ids=["fast-affine-path", "pointwise-path"])
def test_gradients_flow_to_transform_parameters_through_warp(wrap):
    rng = np.random.default_rng(10)
    moving = smooth_image(rng, oblique_grid(rng, (6, 5, 4)))
    fixed_grid = oblique_grid(rng, (3, 3, 2), center=moving.grid.center())
    rigid = Rigid(3, center=moving.grid.center(), dtype=torch.float64)
    with torch.no_grad():
        rigid.rotation.copy_(torch.tensor(rng.normal(size=(1, 3)) * 0.2))
    transform = Opaque(rigid) if wrap else Affine.from_transform(rigid)
    module = WarpModule(moving, transform, fixed_grid, "bspline")  # C2 interpolation: clean finite differences
    weights = torch.tensor(rng.normal(size=(1, 1, *fixed_grid.shape)))
    names = [n for n, _ in module.named_parameters()]
    inputs = tuple(p.detach().clone().requires_grad_() for _, p in module.named_parameters())

    def loss(*values):
        return (weights * torch.func.functional_call(module, dict(zip(names, values)), ())).sum()

    assert torch.autograd.gradcheck(loss, inputs, fast_mode=True)  # random projections: same check, fewer passes
    # gradients reach the real parameters through a plain backward pass too
    loss_value = (weights * module()).sum()
    loss_value.backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in module.parameters())


@pytest.mark.parametrize("mode", ["linear", "bspline"])
def test_sample_is_differentiable_in_points(mode):
    rng = np.random.default_rng(11)
    grid = oblique_grid(rng, (6, 5, 4))
    moving = torch.tensor(rng.normal(size=(1, 2, *grid.shape)))
    index = rng.uniform(0.2, np.array(grid.size) - 1.2, size=(5, 3))  # inside, off the voxel planes
    points = torch.tensor(grid.index_to_physical_np(index))[None].requires_grad_()
    prefiltered = mode == "bspline"
    if prefiltered:  # the prefilter does not depend on the points: compute it once
        moving = bspline_prefilter(moving)
    assert torch.autograd.gradcheck(lambda p: sample(moving, grid, p, mode=mode, prefiltered=prefiltered)[0], (points,))
