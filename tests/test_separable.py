"""One-axis filtering (both code paths) against scipy.ndimage.correlate1d."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from miregister import separable
from miregister.separable import filter_axis, filter_matrix, fold_indices

SCIPY_MODE = {"replicate": "nearest", "mirror": "mirror"}


@pytest.mark.parametrize("boundary", ["replicate", "mirror"])
@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("matmul", [True, False])
def test_filter_axis_matches_scipy(boundary, axis, matmul, monkeypatch):
    if not matmul:  # force the convolution path
        monkeypatch.setattr(separable, "MATMUL_TAPS_RATIO", 0)
    rng = np.random.default_rng(axis)
    data = rng.standard_normal((7, 11, 5))
    kernel = rng.standard_normal(9)  # asymmetric on purpose: tap order matters; longer than two axes
    got = filter_axis(torch.from_numpy(data), torch.from_numpy(kernel), axis, boundary).numpy()
    want = ndimage.correlate1d(data, kernel, axis=axis, mode=SCIPY_MODE[boundary])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_fold_indices_and_matrix_rows():
    k = torch.arange(-4, 9)
    assert fold_indices(k, 5, "mirror").tolist() == [4, 3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1, 0]
    assert fold_indices(k, 5, "replicate").tolist() == [0, 0, 0, 0, 0, 1, 2, 3, 4, 4, 4, 4, 4]
    assert fold_indices(k, 1, "mirror").eq(0).all()
    m = filter_matrix(torch.tensor([0.25, 0.5, 0.25], dtype=torch.float64), 4, "replicate")
    np.testing.assert_allclose(m.sum(1).numpy(), 1.0)  # a normalised kernel keeps constants
    with pytest.raises(ValueError, match="boundary"):
        fold_indices(k, 5, "wrap")


def test_filter_axis_is_differentiable():
    data = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    kernel = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: filter_axis(x, kernel, 1, "mirror"), (data,))
