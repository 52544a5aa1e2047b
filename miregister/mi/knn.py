"""k-nearest-neighbour mutual information: the Kraskov-Stoegbauer-Grassberger estimator 1.

Kraskov, Stoegbauer & Grassberger (2004), "Estimating mutual information", Phys. Rev. E 69,
066138, estimator (8):

    I = psi(k) + psi(n) - < psi(n_x + 1) + psi(n_y + 1) >

where ``eps_i`` is the max-norm distance from sample i to its k-th nearest neighbour in the
joint space (i excluded), and ``n_x(i)`` (``n_y(i)``) counts the samples j != i with
``|x_j - x_i| < eps_i`` (``|y_j - y_i| < eps_i``). In nats; not clamped, so it may be slightly
negative for independent data (the seed modules clamp at 0).

Exactness and ties
------------------
Nothing is approximated: ``eps`` comes from an exact k-NN query and the counts use the same
floating-point distance ``|x_j - x_i|`` (computed in float64) with a strict inequality, found
by binary search on the sorted marginals. Ties are therefore handled deterministically by
that rule: a sample exactly at distance ``eps_i`` is not counted; if ``eps_i = 0`` (k + 1 or
more identical samples) the counts are 0 and ``psi(1)`` is used. No N x N matrix is built.
With heavily tied data (integer intensities) the estimate is biased by the ties; pass
``jitter`` (a fraction of each variable's standard deviation) to add seeded uniform noise.

Backends
--------
``"scipy"``: ``scipy.spatial.cKDTree`` (max-norm, all cores; :mod:`miregister.neighbours`,
which a command-line run delegates to its helper process) and NumPy marginal counts on the
CPU, the result moved back to the input's device. ``"torch"``: exact chunked brute-force
search and marginal counts on the input's device (O(N^2) work, O(chunk * N) memory; meant for
CUDA). ``"auto"`` picks scipy for CPU tensors and torch otherwise.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ..neighbours import kth_neighbour_distance
from .validation import check_pair, check_weights

__all__ = [
    "knn_mutual_information",
    "ksg_neighbour_radius",
    "strict_marginal_counts",
    "strict_marginal_counts_numpy",
]

#: Elements of the (chunk, N) distance block in the torch backend.
_BLOCK = 1 << 24


def _radius_torch(points: Tensor, k: int) -> Tensor:
    n = points.shape[0]
    chunk = max(1, _BLOCK // n)
    out = torch.empty(n, dtype=points.dtype, device=points.device)
    for start in range(0, n, chunk):
        q = points[start : start + chunk]
        d = (q.unsqueeze(1) - points.unsqueeze(0)).abs().amax(dim=-1)  # (chunk, n) max-norm
        out[start : start + chunk] = d.kthvalue(k + 1, dim=1).values
    return out


def ksg_neighbour_radius(x: Tensor, y: Tensor, k: int, backend: str = "auto") -> Tensor:
    """Max-norm distance from each sample to its k-th nearest neighbour in (x, y), self excluded.

    Parameters
    ----------
    x, y : Tensor
        (N,) float64 samples.
    k : int
        Neighbour order.
    backend : {"auto", "scipy", "torch"}
        See the module notes.

    Returns
    -------
    Tensor
        (N,) float64 radii on ``x``'s device.
    """
    if backend == "auto":
        backend = "scipy" if x.device.type == "cpu" else "torch"
    if backend == "scipy":
        pts = torch.stack([x, y], dim=1).cpu().numpy()
        return torch.from_numpy(kth_neighbour_distance(pts, k)).to(x.device)
    if backend == "torch":
        return _radius_torch(torch.stack([x, y], dim=1), k)
    raise ValueError(f"backend must be 'auto', 'scipy' or 'torch', got {backend!r}")


def strict_marginal_counts(v: Tensor, eps: Tensor, steps: int = 3) -> Tensor:
    """For each i, the number of j != i with ``fl(|v_j - v_i|) < eps_i`` (float64, exact).

    The set is a contiguous run of the sorted values. Its ends are first located with
    ``searchsorted`` at ``v_i -+ eps_i`` and then moved, a whole run of tied values at a time,
    until the floating-point predicate holds exactly (rounding in ``v_i + eps_i`` can misplace
    an end by a value or two, so ``steps`` moves per end are plenty). Queries are issued in
    sorted order, which keeps the binary searches cache-friendly.

    Parameters
    ----------
    v : Tensor
        (N,) float64 values.
    eps : Tensor
        (N,) non-negative float64 radii.
    steps : int
        Correction moves per end.

    Returns
    -------
    Tensor
        (N,) int64 counts, in the order of ``v``.
    """
    vs, order = v.sort()
    e = eps[order]
    n = vs.numel()
    # hi: length of the prefix {j : fl(v_j - v_i) < eps_i} (a prefix: monotone in v_j).
    hi = torch.searchsorted(vs, vs + e, right=False)
    # lo: length of the prefix {j : fl(v_i - v_j) >= eps_i}.
    lo = torch.searchsorted(vs, vs - e, right=True)
    for _ in range(steps):
        changed = False
        prev = vs[(hi - 1).clamp(min=0)]
        bad = ((hi > 0) & (prev - vs >= e)).nonzero().squeeze(1)
        if bad.numel():
            hi[bad] = torch.searchsorted(vs, prev[bad], right=False)
            changed = True
        nxt = vs[hi.clamp(max=n - 1)]
        bad = ((hi < n) & (nxt - vs < e)).nonzero().squeeze(1)
        if bad.numel():
            hi[bad] = torch.searchsorted(vs, nxt[bad], right=True)
            changed = True
        prev = vs[(lo - 1).clamp(min=0)]
        bad = ((lo > 0) & (vs - prev < e)).nonzero().squeeze(1)
        if bad.numel():
            lo[bad] = torch.searchsorted(vs, prev[bad], right=False)
            changed = True
        nxt = vs[lo.clamp(max=n - 1)]
        bad = ((lo < n) & (vs - nxt >= e)).nonzero().squeeze(1)
        if bad.numel():
            lo[bad] = torch.searchsorted(vs, nxt[bad], right=True)
            changed = True
        if not changed:
            break
    inside = (hi - lo).clamp(min=0)  # includes i itself whenever eps_i > 0
    counts = torch.empty_like(inside)
    counts[order] = inside - (e > 0).long()
    return counts


def strict_marginal_counts_numpy(v: np.ndarray, eps: np.ndarray, steps: int = 3) -> np.ndarray:
    """NumPy twin of :func:`strict_marginal_counts` (same rule, same result).

    The CPU path runs in NumPy because its single-threaded kernels stay fast on a busy
    machine, where PyTorch's multi-threaded ones can stall waiting for a descheduled thread.
    """
    order = np.argsort(v, kind="stable")
    vs = v[order]
    e = eps[order]
    n = vs.size
    hi = np.searchsorted(vs, vs + e, side="left")
    lo = np.searchsorted(vs, vs - e, side="right")
    for _ in range(steps):
        changed = False
        prev = vs[np.maximum(hi - 1, 0)]
        bad = np.flatnonzero((hi > 0) & (prev - vs >= e))
        if bad.size:
            hi[bad] = np.searchsorted(vs, prev[bad], side="left")
            changed = True
        nxt = vs[np.minimum(hi, n - 1)]
        bad = np.flatnonzero((hi < n) & (nxt - vs < e))
        if bad.size:
            hi[bad] = np.searchsorted(vs, nxt[bad], side="right")
            changed = True
        prev = vs[np.maximum(lo - 1, 0)]
        bad = np.flatnonzero((lo > 0) & (vs - prev < e))
        if bad.size:
            lo[bad] = np.searchsorted(vs, prev[bad], side="left")
            changed = True
        nxt = vs[np.minimum(lo, n - 1)]
        bad = np.flatnonzero((lo < n) & (vs - nxt >= e))
        if bad.size:
            lo[bad] = np.searchsorted(vs, nxt[bad], side="right")
            changed = True
        if not changed:
            break
    counts = np.empty(n, dtype=np.int64)
    counts[order] = np.maximum(hi - lo, 0) - (e > 0)
    return counts


def _ksg_row(x: Tensor, y: Tensor, k: int, backend: str) -> Tensor:
    """KSG-1 of one sample set (float64 (n,) tensors): a 0-d float64 tensor on x's device."""
    n = x.numel()
    if backend == "auto":
        backend = "scipy" if x.device.type == "cpu" else "torch"
    eps = ksg_neighbour_radius(x, y, k, backend)
    if backend == "scipy":
        xn, yn, en = x.cpu().numpy(), y.cpu().numpy(), eps.cpu().numpy()
        nx = torch.from_numpy(strict_marginal_counts_numpy(xn, en))
        ny = torch.from_numpy(strict_marginal_counts_numpy(yn, en))
    else:
        nx = strict_marginal_counts(x, eps)
        ny = strict_marginal_counts(y, eps)
    # torch's digamma rather than scipy.special's: same values to float64 rounding, and no
    # scipy import in a process that delegates the neighbour search (miregister.neighbours)
    digamma = torch.special.digamma
    const = float(digamma(torch.tensor(float(k), dtype=torch.float64)) + digamma(torch.tensor(float(n), dtype=torch.float64)))
    value = const - (digamma((nx + 1).double()).mean() + digamma((ny + 1).double()).mean())
    return value.to(x.device)


def knn_mutual_information(
    x: Tensor,
    y: Tensor,
    *,
    k: int = 3,
    weights: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    backend: str = "auto",
    jitter: float = 0.0,
    seed: int = 0,
    validate: bool = True,
) -> Tensor:
    """KSG estimator 1 of mutual information (nats), exact, per batch element.

    Parameters
    ----------
    x, y : Tensor
        (B, N) samples on any device (computed in float64).
    k : int
        Number of neighbours (>= 1); each included sample set needs more than k samples.
    weights, mask : Tensor, optional
        (B, N) or (N,): samples with weight/mask > 0 are included, the others excluded (KSG
        has no fractional weights).
    backend : {"auto", "scipy", "torch"}
        Neighbour search, see the module notes.
    jitter : float
        If > 0, add uniform noise of ``jitter`` times each variable's standard deviation (seeded
        with ``seed``) to break ties.
    seed : int
        Seed of the jitter.
    validate : bool
        Check values (NaN/inf).

    Returns
    -------
    Tensor
        (B,) MI in nats, float64, on the input's device. Not differentiable.

    Raises
    ------
    ValueError
        On mismatched shapes, NaN/inf, k < 1, an empty mask or no more than k included samples.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (the number of neighbours) must be an integer >= 1, got {k!r}")
    check_pair(x, y, validate=validate)
    x, y = x.detach().double(), y.detach().double()
    w = check_weights(weights, x, validate=validate)
    m = check_weights(mask, x, validate=validate)
    keep = None
    for t in (w, m):
        if t is not None:
            keep = (t > 0) if keep is None else keep & (t > 0)
    gen = torch.Generator().manual_seed(seed) if jitter > 0 else None
    out = []
    for b in range(x.shape[0]):
        xb, yb = x[b], y[b]
        if keep is not None:
            xb, yb = xb[keep[b]], yb[keep[b]]
        if xb.numel() <= k:
            raise ValueError(
                f"batch element {b} has {xb.numel()} included samples; KSG with k = {k} needs more than k"
            )
        if gen is not None:
            noise = (torch.rand(2, xb.numel(), generator=gen, dtype=torch.float64) - 0.5).to(xb.device)
            xb = xb + jitter * xb.std() * noise[0]
            yb = yb + jitter * yb.std() * noise[1]
        out.append(_ksg_row(xb, yb, k, backend))
    return torch.stack(out)
