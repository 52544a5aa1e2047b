"""Histogram MI estimators against numpy/scikit-learn references and closed forms."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import mutual_info_score

from miregister import mi


def _gaussian_pair(r, n, batch=1, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, n, 2, generator=g, dtype=dtype)
    return z[..., 0], r * z[..., 0] + math.sqrt(1 - r * r) * z[..., 1]


def _np_entropies(counts):
    p = counts / counts.sum()
    px, py = p.sum(1), p.sum(0)

    def h(q):
        q = q[q > 0]
        return -(q * np.log(q)).sum()

    return h(px), h(py), h(p.ravel())


def _numpy_mi(x, y, bins, weights=None):
    counts, _, _ = np.histogram2d(x, y, bins=bins, weights=weights)
    hx, hy, hxy = _np_entropies(counts)
    return hx + hy - hxy


def test_discrete_matches_sklearn_and_histogram2d():
    x, y = _gaussian_pair(0.6, 3000, batch=3, seed=1)
    got = mi.discrete_mutual_information(x, y, bins=16)
    for b in range(3):
        xb, yb = x[b].numpy(), y[b].numpy()
        # sklearn on the same binning (numpy's edges, last bin closed).
        ex = np.histogram_bin_edges(xb, bins=16)
        ey = np.histogram_bin_edges(yb, bins=16)
        lx = np.clip(np.searchsorted(ex, xb, side="right") - 1, 0, 15)
        ly = np.clip(np.searchsorted(ey, yb, side="right") - 1, 0, 15)
        assert abs(float(got[b]) - mutual_info_score(lx, ly)) < 1e-6
        assert abs(float(got[b]) - _numpy_mi(xb, yb, 16)) < 1e-6


def test_discrete_weights_and_explicit_ranges_match_numpy():
    x, y = _gaussian_pair(0.3, 2000, seed=2)
    w = torch.rand(1, 2000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    rx, ry = torch.tensor([-5.0, 5.0]), torch.tensor([-6.0, 4.0])
    got = mi.discrete_mutual_information(x, y, bins=10, weights=w, x_range=rx, y_range=ry)
    counts, _, _ = np.histogram2d(x[0].numpy(), y[0].numpy(), bins=10, range=[[-5, 5], [-6, 4]], weights=w[0].numpy())
    hx, hy, hxy = _np_entropies(counts)
    assert abs(float(got[0]) - (hx + hy - hxy)) < 1e-9


def test_miller_madow_correction():
    x, y = _gaussian_pair(0.5, 800, seed=4)
    plain = mi.discrete_mutual_information(x, y, bins=12)
    corrected = mi.discrete_mutual_information(x, y, bins=12, bias_correction="miller-madow")
    counts, _, _ = np.histogram2d(x[0].numpy(), y[0].numpy(), bins=12)
    mx, my, mxy = (counts.sum(1) > 0).sum(), (counts.sum(0) > 0).sum(), (counts > 0).sum()
    expected = float(plain[0]) + ((mx - 1) + (my - 1) - (mxy - 1)) / (2 * 800)
    assert abs(float(corrected[0]) - expected) < 1e-12


@pytest.mark.parametrize("normalization", ["none", "sum", "joint", "max", "sqrt", "min", "studholme"])
def test_normalizations_closed_form(normalization):
    x, y = _gaussian_pair(0.8, 1500, seed=5)
    got = float(mi.discrete_mutual_information(x, y, bins=14, normalization=normalization)[0])
    counts, _, _ = np.histogram2d(x[0].numpy(), y[0].numpy(), bins=14)
    hx, hy, hxy = _np_entropies(counts)
    i = hx + hy - hxy
    expected = {
        "none": i, "sum": 2 * i / (hx + hy), "joint": i / hxy, "max": i / max(hx, hy),
        "sqrt": i / math.sqrt(hx * hy), "min": i / min(hx, hy), "studholme": (hx + hy) / hxy,
    }[normalization]
    assert abs(got - expected) < 1e-9
    # The soft estimator's normalisations follow its own entropies.
    h = mi.joint_entropies(x, y, bins=14)
    soft = float(mi.soft_mutual_information(x, y, bins=14, normalization=normalization)[0])
    assert math.isfinite(soft)
    if normalization == "studholme":
        assert abs(soft - float((h.hx + h.hy) / h.hxy)) < 1e-12
        assert abs(soft - float(mi.normalized_mutual_information(x, y, bins=14)[0])) < 1e-12


def test_constant_input_normalizations_are_zero_not_nan():
    x = torch.ones(1, 100, dtype=torch.float64)
    y = torch.randn(1, 100, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    for normalization in mi.NORMALIZATIONS:
        v = mi.soft_mutual_information(x, y, bins=8, normalization=normalization)
        assert torch.isfinite(v).all()
        assert float(v) == pytest.approx(1.0 if normalization == "studholme" else 0.0, abs=1e-12)


def test_soft_is_shift_and_scale_invariant():
    x, y = _gaussian_pair(0.7, 2000, batch=2, seed=7)
    ref = mi.soft_mutual_information(x, y, bins=24)
    torch.testing.assert_close(mi.soft_mutual_information(3.5 * x - 40, 0.01 * y + 2, bins=24), ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(mi.soft_mutual_information(-2 * x, y, bins=24), ref, rtol=1e-9, atol=1e-9)


def test_masked_samples_are_excluded_not_zero():
    x, y = _gaussian_pair(0.8, 3000, seed=8)
    keep = torch.rand(1, 3000, generator=torch.Generator().manual_seed(9)) < 0.4
    # Excluded samples get extreme values: they must not move the bins nor count.
    xm = torch.where(keep, x, torch.full_like(x, 1e6))
    ym = torch.where(keep, y, torch.zeros_like(y))
    xs, ys = x[keep].unsqueeze(0), y[keep].unsqueeze(0)
    for fn in (mi.soft_mutual_information, mi.discrete_mutual_information):
        torch.testing.assert_close(fn(xm, ym, bins=16, mask=keep), fn(xs, ys, bins=16), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(fn(xm, ym, bins=16, weights=keep.double()), fn(xs, ys, bins=16), rtol=1e-10, atol=1e-10)


def test_float32_matches_float64_and_half_is_accepted():
    x, y = _gaussian_pair(0.6, 4000, seed=10)
    ref = mi.soft_mutual_information(x, y)
    torch.testing.assert_close(mi.soft_mutual_information(x.float(), y.float()).double(), ref, rtol=1e-4, atol=1e-5)
    half = mi.soft_mutual_information(x.half(), y.half())
    assert half.dtype == torch.float32 and abs(float(half[0] - ref[0])) < 0.01


def test_auto_bins_rule():
    x, y = _gaussian_pair(0.9, 4900, seed=11)
    rho = float(torch.corrcoef(torch.stack([x[0], y[0]]))[0, 1])
    expected = round(math.sqrt(1 + math.sqrt(1 + 24 * 4900 / (1 - rho**2))) / math.sqrt(2))
    assert mi.auto_bins(x, y) == [expected]


@pytest.mark.parametrize("r", [0.5, 0.9, 0.99])
def test_auto_bins_accuracy_on_gaussians(r):
    # Documented accuracy settings (bins="auto"): within 10% of -1/2 log(1 - r^2) at N = 4900.
    truth = -0.5 * math.log(1 - r * r)
    x, y = _gaussian_pair(r, 4900, batch=4, seed=12)
    for fn in (mi.soft_mutual_information, mi.discrete_mutual_information):
        est = float(fn(x, y, bins="auto").mean())
        assert abs(est - truth) < 0.1 * truth, (fn.__name__, est, truth)


def test_auto_bins_per_batch_element():
    x1, y1 = _gaussian_pair(0.0, 2000, seed=13)
    x2, y2 = _gaussian_pair(0.99, 2000, seed=14)
    both = mi.discrete_mutual_information(torch.cat([x1, x2]), torch.cat([y1, y2]), bins="auto")
    assert float(both[0]) == pytest.approx(float(mi.discrete_mutual_information(x1, y1, bins="auto")[0]), abs=1e-12)
    assert float(both[1]) == pytest.approx(float(mi.discrete_mutual_information(x2, y2, bins="auto")[0]), abs=1e-12)


@pytest.mark.parametrize("shape", [(2, 3, 50), (2, 3, 8, 9), (1, 2, 5, 6, 7)])
def test_seed_modules_accept_1d_2d_3d(shape):
    g = torch.Generator().manual_seed(15)
    x = torch.randn(*shape, generator=g)
    y = x + 0.3 * torch.randn(*shape, generator=g)
    for module in (
        mi.BinsCountMutualInformation(8),
        mi.BinsCountMutualInformation(8, mode="discrete"),
        mi.KdeMutualInformation(16),
        mi.KnnMutualInformation(3),
    ):
        out = module(x, y)
        assert out.shape == shape[:2] and torch.isfinite(out).all() and (out > 0).all()
    # Channel (b, c) is the sample set x[b, c].
    b, c = shape[0] - 1, shape[1] - 1
    ref = mi.soft_mutual_information(x[b, c].reshape(1, -1), y[b, c].reshape(1, -1), bins=8)
    assert float(mi.BinsCountMutualInformation(8)(x, y)[b, c]) == pytest.approx(float(ref[0]), abs=1e-6)


def test_seed_module_mask_and_entropies():
    g = torch.Generator().manual_seed(16)
    x = torch.randn(1, 2, 20, 20, generator=g, dtype=torch.float64)
    y = x + 0.5 * torch.randn(1, 2, 20, 20, generator=g, dtype=torch.float64)
    mask = torch.zeros(1, 1, 20, 20, dtype=torch.bool)
    mask[..., :10, :] = True
    module = mi.BinsCountMutualInformation(10, mode="discrete")
    out = module(x, y, mask)
    ref = mi.discrete_mutual_information(x[0, 1, :10].reshape(1, -1), y[0, 1, :10].reshape(1, -1), bins=10)
    assert float(out[0, 1]) == pytest.approx(float(ref[0]), abs=1e-12)
    h = module.entropies(x, y)
    assert h.hx.shape == (1, 2)
    torch.testing.assert_close(module(x, y), (h.hx + h.hy - h.hxy).clamp(min=0))
    pxy = module.computePxy(x.reshape(2, -1), y.reshape(2, -1))
    assert pxy.shape == (2, 10, 10) and torch.allclose(pxy.sum(dim=(1, 2)), torch.ones(2, dtype=torch.float64))
