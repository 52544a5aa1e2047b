"""Joint histograms: soft (Parzen) against a dense reference, discrete against numpy."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from miregister.mi import histogram as H
from miregister.mi.kernels import kernel_taps


def _dense_parzen(tx, ty, bins, weights, kernel):
    """Reference: (B, N, bins) dense kernel matrices with clamped taps, then W_x^T W_y."""
    kx, ky = (kernel, kernel) if isinstance(kernel, str) else kernel

    def dense(t, name):
        taps = kernel_taps(t, name)
        idx = (taps.base.unsqueeze(-1) + torch.tensor(taps.offsets)).clamp(0, bins - 1)
        out = torch.zeros(*t.shape, bins, dtype=t.dtype)
        return out.scatter_add(-1, idx, taps.weights.movedim(0, -1))

    wx, wy = dense(tx, kx), dense(ty, ky)
    if weights is not None:
        wx = wx * weights.unsqueeze(-1)
    return torch.einsum("bni,bnj->bij", wx, wy)


@pytest.mark.parametrize("kernel", ["bspline", "gaussian", "box", ("box", "bspline"), ("gaussian", "box")])
def test_parzen_matches_dense_reference(kernel):
    g = torch.Generator().manual_seed(0)
    bins = 7
    tx = torch.rand(3, 200, generator=g, dtype=torch.float64) * bins - 0.5
    ty = torch.rand(3, 200, generator=g, dtype=torch.float64) * bins - 0.5
    w = torch.rand(3, 200, generator=g, dtype=torch.float64)
    got = H.parzen_joint_histogram(tx, ty, bins, weights=w, kernel=kernel)
    torch.testing.assert_close(got, _dense_parzen(tx, ty, bins, w, kernel), rtol=0, atol=1e-12)
    torch.testing.assert_close(got.sum(dim=(1, 2)), w.sum(dim=1))  # each sample has unit mass


def test_box_kernel_is_the_discrete_histogram():
    # Including values exactly on bin edges and at both ends of the range (the last bin is closed).
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(size=(2, 400)), np.tile(np.linspace(-3.0, 3.0, 13), (2, 1))], axis=1)
    y = 0.5 * x + rng.normal(size=x.shape)
    w = rng.random(x.shape)
    x, y, w = (torch.from_numpy(a) for a in (x, y, w))
    rx = torch.tensor([-3.0, 3.0], dtype=torch.float64)  # 12 bins of width 0.5: the linspace hits every edge
    soft = H.soft_joint_histogram(x, y, bins=12, weights=w, kernel="box", x_range=rx)
    hard = H.discrete_joint_histogram(x, y, bins=12, weights=w, x_range=rx)
    torch.testing.assert_close(soft, hard, rtol=0, atol=1e-12)


def test_box_axis_in_a_mixed_kernel_gets_no_gradient_and_the_other_is_exact():
    g = torch.Generator().manual_seed(4)
    tx = (torch.rand(2, 300, generator=g, dtype=torch.float64) * 9 - 0.5).requires_grad_()
    ty = (torch.rand(2, 300, generator=g, dtype=torch.float64) * 9 - 0.5).requires_grad_()
    w = torch.rand(2, 300, generator=g, dtype=torch.float64).requires_grad_()
    target = torch.rand(2, 9, 9, generator=g, dtype=torch.float64)

    def loss(a, b, c):
        return (H.parzen_joint_histogram(a, b, 9, weights=c, kernel=("box", "bspline")) * target).sum()

    loss(tx, ty, w).backward()
    assert torch.count_nonzero(tx.grad) == 0
    # y and the weights: exact gradients (x held fixed, away from the box's jumps almost surely).
    assert torch.autograd.gradcheck(lambda b, c: loss(tx.detach(), b, c), (ty.detach().requires_grad_(), w.detach().requires_grad_()))


def test_parzen_chunking_is_invisible(monkeypatch):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 1000, generator=g, dtype=torch.float64), torch.randn(2, 1000, generator=g, dtype=torch.float64)
    kernels = ("bspline", ("box", "gaussian"))
    full = [H.soft_joint_histogram(x, y, bins=9, kernel=k) for k in kernels]
    monkeypatch.setattr(H, "_CHUNK", 97)
    for k, want in zip(kernels, full):
        torch.testing.assert_close(H.soft_joint_histogram(x, y, bins=9, kernel=k), want, rtol=0, atol=1e-12)


def test_soft_histogram_orientation_and_clamping():
    # x in the first bins, y in the last: mass sits at [x_bin, y_bin] = [low, high].
    x = torch.tensor([[0.0, 0.1, 0.2, 10.0]], dtype=torch.float64)
    y = torch.tensor([[10.0, 9.9, 9.8, 0.0]], dtype=torch.float64)
    h = H.soft_joint_histogram(x, y, bins=8)
    assert h[0, :2, -2:].sum() > 2.5
    # A fixed range narrower than the data: outside values clamp onto the edge bins, mass is kept.
    h = H.soft_joint_histogram(x * 10, y, bins=8, x_range=torch.tensor([0.0, 1.0]), y_range=torch.tensor([0.0, 10.0]))
    assert torch.isfinite(h).all() and abs(float(h.sum()) - 4) < 1e-12


def test_discrete_histogram_matches_numpy_histogram2d():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 500))
    y = 0.7 * x + rng.normal(size=(3, 500))
    w = rng.random((3, 500))
    got = H.discrete_joint_histogram(torch.from_numpy(x), torch.from_numpy(y), bins=11, weights=torch.from_numpy(w))
    for b in range(3):
        ref, _, _ = np.histogram2d(x[b], y[b], bins=11, weights=w[b])
        np.testing.assert_allclose(got[b].numpy(), ref, atol=1e-12)


def test_discrete_histogram_counts_edge_values_once():
    # Integers 0..8 with 8 bins on [0, 8]: every value but the last sits on a left edge.
    v = torch.arange(9, dtype=torch.float64).repeat(3).unsqueeze(0)
    got = H.discrete_joint_histogram(v, v, bins=8)
    ref, _, _ = np.histogram2d(v[0].numpy(), v[0].numpy(), bins=8)
    np.testing.assert_array_equal(got[0].numpy(), ref)
    assert float(got.sum()) == v.numel()
