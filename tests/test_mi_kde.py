"""Kernel-density MI: bandwidth rule, per-batch bandwidths, Gaussian ground truth."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from miregister import mi


def _pair(r, n, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, n, 2, generator=g, dtype=torch.float64)
    return z[..., 0], r * z[..., 0] + math.sqrt(1 - r * r) * z[..., 1]


def test_scott_bandwidth_is_scaled_covariance():
    x, y = _pair(0.6, 1000, seed=1)
    cov = np.cov(np.stack([x[0].numpy(), y[0].numpy()]), bias=True)
    np.testing.assert_allclose(mi.scott_bandwidth(x, y)[0].numpy(), cov * 1000 ** (-1 / 3), rtol=1e-10)


@pytest.mark.parametrize("r", [0.5, 0.9, 0.99])
def test_gaussian_ground_truth(r):
    truth = -0.5 * math.log(1 - r * r)
    x, y = _pair(r, 4900, batch=2, seed=2)
    est = float(mi.kde_mutual_information(x, y).mean())
    assert abs(est - truth) < 0.05 * truth


def test_user_bandwidths_per_batch_element():
    x, y = _pair(0.7, 600, batch=2, seed=3)
    bw = torch.tensor([[0.2, 0.3], [0.5, 0.1]], dtype=torch.float64)
    both = mi.kde_mutual_information(x, y, bins=64, bandwidths=bw)
    for b in range(2):
        one = mi.kde_mutual_information(x[b : b + 1], y[b : b + 1], bins=64, bandwidths=bw[b].tolist())
        # Equal up to the kernel truncation (5 sd of the widest kernel in the batch).
        assert float(both[b]) == pytest.approx(float(one[0]), abs=1e-5)
    # A very wide kernel forgets the dependence.
    assert float(mi.kde_mutual_information(x, y, bins=64, bandwidths=50.0).max()) < 1e-3


def test_joint_density_is_a_distribution_and_mask_works():
    x, y = _pair(0.5, 800, seed=4)
    p = mi.kde_joint_density(x, y, bins=32)
    assert p.shape == (1, 32, 32) and (p >= 0).all() and float(p.sum()) == pytest.approx(1.0, abs=1e-12)
    keep = torch.arange(800).unsqueeze(0) % 3 == 0
    got = mi.kde_mutual_information(torch.where(keep, x, torch.full_like(x, 99.0)), y, mask=keep)
    ref = mi.kde_mutual_information(x[keep].unsqueeze(0), y[keep].unsqueeze(0))
    assert float(got[0]) == pytest.approx(float(ref[0]), abs=1e-10)


def test_seed_module_bandwidth_argument():
    x, y = _pair(0.5, 400, seed=5)
    module = mi.KdeMutualInformation(32, bandwidths=(0.3, 0.3))
    ref = mi.kde_mutual_information(x, y, bins=32, bandwidths=0.3)
    assert float(module(x.reshape(1, 1, 20, 20), y.reshape(1, 1, 20, 20))[0, 0]) == pytest.approx(float(ref[0]), abs=1e-10)
