"""Exact, finite gradients of the soft-binned and KDE estimators (float64 gradcheck)."""
from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

from miregister import mi


def _pair(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, n, generator=g, dtype=torch.float64)
    y = 0.6 * x + 0.8 * torch.randn(2, n, generator=g, dtype=torch.float64)
    return x.requires_grad_(), y.requires_grad_()


@pytest.mark.parametrize("kernel", ["bspline", "gaussian"])
def test_gradcheck_data_driven_ranges(kernel):
    x, y = _pair()
    assert gradcheck(lambda a, b: mi.soft_mutual_information(a, b, bins=6, kernel=kernel), (x, y))


def test_gradcheck_percentile_range():
    x, y = _pair(seed=1)
    assert gradcheck(lambda a, b: mi.soft_mutual_information(a, b, bins=5, percentile=0.05, gain=0.1), (x, y))


def test_gradcheck_fixed_ranges_with_empty_cells_and_outliers():
    # 12 x 12 bins for 30 clustered samples: most cells are empty; some samples lie outside
    # the fixed range (clamped).
    x, y = _pair(n=30, seed=2)
    rx, ry = torch.tensor([-1.5, 4.0]), torch.tensor([-2.0, 5.0])
    hist = mi.soft_joint_histogram(x.detach(), y.detach(), bins=12, x_range=rx, y_range=ry)
    assert (hist == 0).float().mean() > 0.3
    assert gradcheck(lambda a, b: mi.soft_mutual_information(a, b, bins=12, x_range=rx, y_range=ry), (x, y))


def test_gradcheck_constant_regions():
    x, y = _pair(n=40, seed=3)
    with torch.no_grad():
        x[:, :15] = 0.25  # a flat region: many identical samples
        y[:, :10] = -0.5
    assert gradcheck(lambda a, b: mi.soft_mutual_information(a, b, bins=7), (x, y))


def test_gradcheck_masked_and_soft_weights():
    x, y = _pair(n=36, seed=4)
    g = torch.Generator().manual_seed(5)
    mask = torch.rand(2, 36, generator=g) < 0.6
    assert gradcheck(lambda a, b: mi.soft_mutual_information(a, b, bins=6, mask=mask), (x, y))
    w = torch.rand(2, 36, generator=g, dtype=torch.float64).requires_grad_()
    assert gradcheck(lambda a, b, c: mi.soft_mutual_information(a, b, bins=6, weights=c), (x, y, w))


@pytest.mark.parametrize("normalization", ["sum", "joint", "max", "sqrt", "min", "studholme"])
def test_gradcheck_normalizations(normalization):
    x, y = _pair(n=30, seed=6)
    assert gradcheck(lambda a, b: mi.soft_mutual_information(a, b, bins=5, normalization=normalization), (x, y))


def test_gradient_finite_for_degenerate_inputs():
    # Constant x, samples exactly on bin centres and edges, duplicated values.
    x = torch.zeros(1, 50, dtype=torch.float64, requires_grad=True)
    y = torch.linspace(0, 1, 50, dtype=torch.float64).requires_grad_()
    y2 = y.detach().unsqueeze(0).repeat(1, 1).requires_grad_()
    value = mi.soft_mutual_information(x, y2, bins=8)
    value.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(y2.grad).all()
    assert float(value.detach()) == pytest.approx(0.0, abs=1e-12)


def test_seed_soft_module_backward_is_finite_float32():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 1, 32, 32, generator=g).requires_grad_()
    y = (x.detach() + 0.3 * torch.randn(1, 1, 32, 32, generator=g)).requires_grad_()
    mi.BinsCountMutualInformation(20, rangeOpts=dict(percentile=0.001, gain=0)).forward(x, y).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_kde_gradcheck_and_finite():
    x, y = _pair(n=12, seed=8)
    assert gradcheck(lambda a, b: mi.kde_mutual_information(a, b, bins=8), (x, y))
    x2, y2 = _pair(n=400, seed=9)
    mi.kde_mutual_information(x2.float(), y2.float()).sum().backward()
    assert torch.isfinite(x2.grad).all() and torch.isfinite(y2.grad).all()
