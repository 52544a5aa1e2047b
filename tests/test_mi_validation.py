"""Bad input raises a clear ValueError from every estimator."""
from __future__ import annotations

import math

import pytest
import torch

from miregister import mi

X = torch.randn(2, 50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
Y = X + 0.1

FUNCTIONS = [
    mi.soft_mutual_information,
    mi.discrete_mutual_information,
    mi.kde_mutual_information,
    mi.knn_mutual_information,
]


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_shape_mismatch_and_rank(fn):
    with pytest.raises(ValueError, match="same shape"):
        fn(X, Y[:, :40])
    with pytest.raises(ValueError, match="shape"):
        fn(X[0], Y[0])


@pytest.mark.parametrize("fn", FUNCTIONS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values(fn, bad):
    x = X.clone()
    x[1, 7] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        fn(x, Y)


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_empty_mask_and_negative_weights(fn):
    mask = torch.ones(2, 50, dtype=torch.bool)
    mask[1] = False
    with pytest.raises(ValueError, match="empty mask"):
        fn(X, Y, mask=mask)
    weights = torch.ones(2, 50, dtype=torch.float64)
    weights[0, 3] = -1
    with pytest.raises(ValueError, match="non-negative"):
        fn(X, Y, weights=weights)
    with pytest.raises(ValueError, match="do not match"):
        fn(X, Y, weights=torch.ones(3, 50))


def test_bins_normalization_kernel_range():
    for bins in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="bins"):
            mi.soft_mutual_information(X, Y, bins=bins)
        with pytest.raises(ValueError, match="bins"):
            mi.discrete_mutual_information(X, Y, bins=bins)
    with pytest.raises(ValueError, match="normalization"):
        mi.soft_mutual_information(X, Y, normalization="mean")
    for kernel in ("triangle", ("box",), ("box", "bspline", "box"), ("box", 3)):
        with pytest.raises(ValueError, match="kernel"):
            mi.soft_mutual_information(X, Y, kernel=kernel)
    with pytest.raises(ValueError, match="x_range"):
        mi.soft_mutual_information(X, Y, x_range=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="y_range"):
        mi.soft_mutual_information(X, Y, y_range=torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="percentile"):
        mi.soft_mutual_information(X, Y, percentile=0.7)
    with pytest.raises(ValueError, match="bias_correction"):
        mi.discrete_mutual_information(X, Y, bias_correction="jackknife")


def test_knn_needs_more_samples_than_neighbours():
    with pytest.raises(ValueError, match="more than k"):
        mi.knn_mutual_information(X[:, :3], Y[:, :3], k=3)
    mask = torch.zeros(2, 50, dtype=torch.bool)
    mask[:, :2] = True
    with pytest.raises(ValueError, match="more than k"):
        mi.knn_mutual_information(X, Y, k=3, mask=mask)
    with pytest.raises(ValueError, match="k"):
        mi.knn_mutual_information(X, Y, k=0)


def test_kde_bandwidths():
    for bad in (0.0, -1.0, (0.1, -0.2), torch.ones(2, 3)):
        with pytest.raises(ValueError, match="andwidth"):
            mi.kde_mutual_information(X, Y, bandwidths=bad)


def test_seed_api_arguments():
    for bins in (1, 0, -3, 2.0):
        with pytest.raises(ValueError, match="nBins"):
            mi.BinsCountMutualInformation(nBins=bins)
        with pytest.raises(ValueError, match="nBins"):
            mi.KdeMutualInformation(nBins=bins)
    with pytest.raises(ValueError, match="mode"):
        mi.BinsCountMutualInformation(8, mode="hard")
    with pytest.raises(ValueError, match="rangeOpts"):
        mi.BinsCountMutualInformation(8, rangeOpts={"percentile": 0.1})
    with pytest.raises(ValueError, match="Bandwidths"):
        mi.KdeMutualInformation(8, bandwidths=(1.0, 0.0))
    with pytest.raises(ValueError, match="nNeighbours"):
        mi.KnnMutualInformation(0)
    module = mi.BinsCountMutualInformation(8)
    with pytest.raises(ValueError, match="same shape"):
        module(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
    with pytest.raises(ValueError, match="spatial"):
        module(torch.zeros(4, 4), torch.zeros(4, 4))
    with pytest.raises(ValueError, match="less than|more than k"):
        mi.KnnMutualInformation(5)(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))


def test_value_checks_can_be_skipped():
    x = X.clone()
    x[0, 0] = math.nan
    out = mi.soft_mutual_information(x, Y, validate=False)  # no check, no crash: NaN propagates
    assert out.shape == (2,) and torch.isnan(out[0]) and torch.isfinite(out[1])
