"""The one Jacobian-determinant routine (regularizers.transform_jacobian): in slabs, the same
values as the whole-grid float64 computation and as numpy.gradient's closed form; its callers
(validation, QC picture, --jacobian image) share one computation per run."""
import numpy as np
import pytest
import torch

from miregister import regularizers
from miregister.grid import Grid
from miregister.regularizers import jacobian_determinant, jacobian_statistics, transform_jacobian
from miregister.transforms import Affine, BSpline, Composite, DisplacementField
from miregister.transforms.displacement import jacobian_determinant_image

OBLIQUE = Grid((19, 23, 17), (1.3, 0.9, 2.1), (4.0, -7.0, 2.5),
               tuple(np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0].ravel()))


def _folding_bspline(grid: Grid, seed: int = 1, amplitude: float = 6.0) -> BSpline:
    spline = BSpline(grid, 6.0, dtype=torch.float64)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        spline.coefficients.copy_(amplitude * torch.randn(spline.coefficients.shape, generator=g, dtype=torch.float64))
    return spline


@pytest.mark.parametrize("grid", [OBLIQUE, Grid((31, 26), (0.8, 1.7), (1.0, 2.0))], ids=["3d-oblique", "2d"])
@pytest.mark.parametrize("slab_voxels", [1, 700, 10**9], ids=["one-plane", "some-planes", "whole"])
def test_slabs_give_the_whole_grid_float64_determinant_and_statistics(grid, slab_voxels):
    spline = _folding_bspline(grid)
    with torch.no_grad():
        field = spline.displacement_field(grid, dtype=torch.float64)
    expected = jacobian_determinant(field, grid)  # the whole field at once, float64
    mask = torch.from_numpy(np.random.default_rng(2).random(grid.shape) < 0.7)
    det, stats = transform_jacobian(spline, grid, mask=mask, keep=True, slab_voxels=slab_voxels)
    regularizers._LAST.clear()
    np.testing.assert_allclose(det.numpy(), expected.numpy(), rtol=1e-6, atol=1e-6)  # float32 storage
    inside = expected[0][mask]
    assert int((inside <= 0).sum()) > 10, "the test field must fold"
    assert stats["folded_count"][0] == int((inside <= 0).sum())
    assert stats["min"][0] == pytest.approx(float(inside.min()), rel=1e-12)
    assert stats["max"][0] == pytest.approx(float(inside.max()), rel=1e-12)
    assert stats["mean"][0] == pytest.approx(float(inside.mean()), rel=1e-10)
    assert stats["std"][0] == pytest.approx(float(inside.std(unbiased=False)), rel=1e-10)
    positive = inside[inside > 0]
    assert stats["log_std"][0] == pytest.approx(float(positive.log().std(unbiased=False)), rel=1e-10)


def test_dense_statistics_match_numpy_gradient_closed_form():
    # u sampled on an axis-aligned anisotropic grid; numpy.gradient (second-order, one-sided at
    # the ends) in mm gives du/dx independently of torch; det(I + du/dx) by numpy
    grid = Grid((22, 18, 15), (1.5, 0.7, 2.0), (3.0, -1.0, 0.5))
    x, y, z = grid.points(torch.float64).unbind(-1)
    u = torch.stack([4.0 * torch.sin(y / 2.0) * torch.cos(z / 3.0), 3.0 * torch.cos(x / 1.5), 5.0 * torch.sin((x + z) / 2.5)], -1)
    array = u.numpy()  # (Z, Y, X, 3)
    spacing_zyx = grid.spacing[::-1]
    jac = np.empty((*grid.shape, 3, 3))
    for j, axis in enumerate((2, 1, 0)):  # d/dx, d/dy, d/dz = array axes 2, 1, 0
        jac[..., :, j] = np.gradient(array, spacing_zyx[axis], axis=axis, edge_order=2)
    expected = np.linalg.det(jac + np.eye(3))
    assert (expected <= 0).sum() > 10
    stats = jacobian_statistics(u[None], grid)
    assert stats["folded_count"][0] == int((expected <= 0).sum())
    assert stats["min"][0] == pytest.approx(expected.min(), rel=1e-9)
    assert stats["mean"][0] == pytest.approx(expected.mean(), rel=1e-9)
    # the same through a transform, in slabs of two planes
    det, slab_stats = transform_jacobian(DisplacementField(grid, u[None].clone()), grid, keep=True, slab_voxels=2 * 18 * 22)
    regularizers._LAST.clear()
    np.testing.assert_allclose(det[0].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert slab_stats["folded_count"][0] == stats["folded_count"][0]
    assert slab_stats["min"][0] == pytest.approx(expected.min(), rel=1e-9)


def test_composite_image_is_affine_det_times_deformable_det():
    grid = OBLIQUE
    affine = Affine(3, dtype=torch.float64)
    with torch.no_grad():
        affine.matrix.copy_(torch.tensor([[[1.1, 0.05, 0.0], [0.02, 0.95, 0.1], [0.0, -0.03, 1.2]]], dtype=torch.float64))
        affine.translation.fill_(3.0)
    composite = Composite([affine, _folding_bspline(grid, amplitude=1.0)])
    with torch.no_grad():  # the finite differences of the whole composite's field (the former way)
        expected = jacobian_determinant(composite.displacement_field(grid, dtype=torch.float64), grid)[0]
    image = jacobian_determinant_image(composite, grid)
    regularizers._LAST.clear()
    assert image.data.dtype == torch.float32 and image.data.shape == (1, *grid.shape)
    np.testing.assert_allclose(image.data[0].numpy(), expected.numpy(), rtol=1e-6, atol=1e-6)
    linear = jacobian_determinant_image(affine, grid)
    np.testing.assert_allclose(linear.data.numpy(), np.linalg.det(affine.matrix[0].detach().numpy()), rtol=1e-6)


def test_the_determinant_is_computed_once_and_again_after_a_change(monkeypatch):
    grid = Grid((12, 10, 9), (2.0, 2.0, 2.0))
    spline = _folding_bspline(grid, amplitude=0.5)
    calls = []
    original = BSpline.displacement_field
    monkeypatch.setattr(BSpline, "displacement_field", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    first = transform_jacobian(spline, grid)  # as the validation does
    n = len(calls)
    assert n >= 1
    again = transform_jacobian(spline, grid, statistics=False)  # QC picture, --jacobian image
    assert len(calls) == n and again.determinant is first.determinant and again.statistics is None
    with torch.no_grad():
        spline.coefficients.mul_(2.0)  # an updated transform is evaluated anew
    changed = transform_jacobian(spline, grid)
    assert len(calls) > n and not torch.equal(changed.determinant, first.determinant)
    assert transform_jacobian(spline, grid.with_spacing((1.5, 1.5, 1.5))).determinant.shape[1:] != first.determinant.shape[1:]
    regularizers._LAST.clear()


def test_the_remembered_determinant_goes_with_its_transform():
    import gc

    grid = Grid((8, 7, 6), (2.0, 2.0, 2.0))
    spline = _folding_bspline(grid, amplitude=0.5)
    transform_jacobian(spline, grid, statistics=False)
    assert regularizers._LAST.get("determinant") is not None
    del spline
    gc.collect()
    assert not regularizers._LAST

