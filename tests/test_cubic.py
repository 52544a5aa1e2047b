"""Cubic B-spline sampler: values against scipy, gradients against finite differences."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from miregister.cubic import bspline_prefilter, bspline_sample


@pytest.mark.parametrize("shape", [(13, 17), (7, 9, 11)])
def test_values_match_scipy_map_coordinates(shape):
    rng = np.random.default_rng(0)
    image = rng.normal(size=shape)
    d = len(shape)
    index = rng.uniform(-1.0, 1.0, size=(500, d)) * 0.5 + rng.uniform(0, 1, size=(500, d)) * (np.array(shape[::-1]) - 1)
    coefficients = bspline_prefilter(torch.as_tensor(image)[None, None])
    ours = bspline_sample(coefficients, torch.as_tensor(index)[None])[0, 0].numpy()
    # scipy wants array-order (z, y, x) coordinates; ours are x-first
    theirs = ndimage.map_coordinates(image, index[:, ::-1].T, order=3, mode="mirror")
    np.testing.assert_allclose(ours, theirs, atol=1e-10)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6, 9])
def test_mirror_taps_at_the_edges_match_scipy_for_every_size(size):
    """Points over the whole exact range [-1, size] of each axis, on small axes where the
    taps reach past both edges (sizes < 5 fold by the general rule, larger ones by the
    single reflection)."""
    rng = np.random.default_rng(size)
    shape = (size, 6)
    image = rng.normal(size=shape)
    index = np.stack([rng.uniform(-1, 6, 400), rng.uniform(-1, size, 400)], axis=1)  # x-first
    coefficients = bspline_prefilter(torch.as_tensor(image)[None, None])
    ours = bspline_sample(coefficients, torch.as_tensor(index)[None])[0, 0].numpy()
    theirs = ndimage.map_coordinates(image, index[:, ::-1].T, order=3, mode="mirror")
    np.testing.assert_allclose(ours, theirs, atol=1e-10)


@pytest.mark.parametrize("shape", [(6, 8), (5, 6, 7)])
def test_gradients_match_finite_differences(shape):
    torch.manual_seed(0)
    d = len(shape)
    coefficients = torch.randn(2, 2, *shape, dtype=torch.float64, requires_grad=True)
    upper = torch.tensor(shape[::-1], dtype=torch.float64)
    index = (torch.rand(2, 40, d, dtype=torch.float64) * (upper + 1) - 1).requires_grad_(True)
    assert torch.autograd.gradcheck(bspline_sample, (coefficients, index))


def test_chunked_evaluation_matches_single_pass(monkeypatch):
    import miregister.cubic as cubic

    torch.manual_seed(1)
    coefficients = torch.randn(1, 1, 9, 10, 11, dtype=torch.float64)
    index = (torch.rand(1, 1000, 3, dtype=torch.float64) * 9).requires_grad_(True)
    whole = bspline_sample(coefficients, index)
    (g_whole,) = torch.autograd.grad(whole.sum(), index)
    monkeypatch.setattr(cubic, "_chunk", lambda device: 64)
    parts = bspline_sample(coefficients, index)
    (g_parts,) = torch.autograd.grad(parts.sum(), index)
    torch.testing.assert_close(parts, whole)
    torch.testing.assert_close(g_parts, g_whole)
