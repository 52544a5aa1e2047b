"""Histogram (binning) estimators of mutual information: soft (Parzen window) and discrete.

MI is in nats and positive; a loss is its negative. Inputs are sample sets ``x``, ``y`` of
shape (B, N): B independent pairs of N samples each.

Accuracy
--------
The plug-in estimate from a histogram is biased two ways: coarse bins lose information
(negative bias, largest at strong dependence), and a finite sample spread over many cells
looks dependent (positive bias about (Kx - 1)(Ky - 1) / (2N)). Two options address this; both
read the data on the host (a synchronisation) and both are off by default, because the
default (32 bins, no correction) is the fast, fixed, differentiable setting that registration
optimises:

- ``bins="auto"`` picks the bin count per batch element with the joint-histogram rule of
  Hacine-Gharbi & Ravier (2018), "A binning formula of bi-histogram for joint entropy
  estimation using mean square error minimization", Pattern Recognition Letters 101:21-28:
  ``K = round(sqrt(1 + sqrt(1 + 24 N / (1 - rho^2))) / sqrt(2))``, rho the sample correlation.
  The soft estimator's kernel also smooths the histogram (the cubic B-spline adds a variance
  of 1/3 bin^2 per axis, against 1/12 for hard bins), so its rule uses
  :data:`SOFT_AUTO_FACTOR` times as many bins. This is the setting that keeps both estimators
  within 10% of the truth on the Gaussian benchmark for N >= 4900 (benchmarks/RESULTS.md).
- ``bias_correction="miller-madow"`` (discrete estimator only) adds ``(m - 1) / (2n)`` to each
  entropy. A Parzen histogram has every touched cell non-empty, so there it over-corrects and
  the soft estimator does not offer it.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from .entropy import BIAS_CORRECTIONS, Entropies, entropies_from_joint, normalize_mutual_information
from .histogram import discrete_joint_histogram, soft_joint_histogram
from .kernels import KernelArg
from .validation import check_bins, check_normalization, prepare_inputs

__all__ = [
    "BinsArg",
    "SOFT_AUTO_FACTOR",
    "MAX_AUTO_BINS",
    "auto_bins",
    "effective_sample_size",
    "soft_mutual_information",
    "discrete_mutual_information",
    "joint_entropies",
    "normalized_mutual_information",
]

BinsArg = Union[int, str]

#: Multiplier of the ``"auto"`` bin count for the soft (Parzen) estimator.
SOFT_AUTO_FACTOR = 2.0
#: Upper limit of the ``"auto"`` bin count (rho -> 1 would ask for unbounded bins).
MAX_AUTO_BINS = 256


def effective_sample_size(x: Tensor, weights: Optional[Tensor]) -> Tensor:
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` per row (N without weights): (B,)."""
    if weights is None:
        return torch.full((x.shape[0],), float(x.shape[1]), dtype=x.dtype, device=x.device)
    return weights.sum(dim=1) ** 2 / (weights * weights).sum(dim=1).clamp_min(torch.finfo(weights.dtype).tiny)


def _weighted_correlation(x: Tensor, y: Tensor, weights: Optional[Tensor]) -> Tensor:
    """Pearson correlation per row, computed in float64: (B,)."""
    x, y = x.double(), y.double()
    w = torch.ones_like(x) if weights is None else weights.double()
    w = w / w.sum(dim=1, keepdim=True)
    dx = x - (w * x).sum(dim=1, keepdim=True)
    dy = y - (w * y).sum(dim=1, keepdim=True)
    cov = (w * dx * dy).sum(dim=1)
    var = (w * dx * dx).sum(dim=1) * (w * dy * dy).sum(dim=1)
    return torch.where(var > 0, cov / var.clamp_min(1e-300).sqrt(), torch.zeros_like(cov))


def auto_bins(
    x: Tensor, y: Tensor, weights: Optional[Tensor] = None, *, factor: float = 1.0, max_bins: int = MAX_AUTO_BINS
) -> list[int]:
    """Bin count per batch element from the Hacine-Gharbi & Ravier (2018) joint rule.

    ``K = round(factor * sqrt(1 + sqrt(1 + 24 n / (1 - rho^2))) / sqrt(2))``, clipped to
    ``[2, max_bins]``, with n the effective sample count and rho the sample correlation.
    Reads the data on the host (synchronises).

    Returns
    -------
    list of int
        B bin counts.
    """
    with torch.no_grad():
        n = effective_sample_size(x, weights).double()
        rho2 = _weighted_correlation(x, y, weights).pow(2).clamp(max=1 - 1e-12)
        k = factor * torch.sqrt(1 + torch.sqrt(1 + 24 * n / (1 - rho2))) / math.sqrt(2)
    return [int(min(max(round(v), 2), max_bins)) for v in k.tolist()]


def _per_bins(
    bins: BinsArg,
    x: Tensor,
    y: Tensor,
    weights: Optional[Tensor],
    factor: float,
    estimate: Callable[[int, Tensor], Tensor],
) -> Tensor:
    """Run ``estimate(bins, rows)`` once for a fixed bin count, or once per distinct auto count."""
    if bins != "auto":
        return estimate(check_bins(bins), torch.arange(x.shape[0], device=x.device))
    counts = auto_bins(x, y, weights, factor=factor)
    out: Optional[Tensor] = None
    for k in sorted(set(counts)):
        rows = torch.tensor([i for i, c in enumerate(counts) if c == k], device=x.device)
        value = estimate(k, rows)
        out = value.new_zeros(x.shape[0]) if out is None else out
        out = out.index_copy(0, rows, value)
    assert out is not None
    return out


def _prepare(x, y, weights, mask, x_range, y_range, normalization, bias_correction, validate):
    """Argument checks of the histogram estimators; see :func:`~.validation.prepare_inputs`."""
    check_normalization(normalization)
    if bias_correction not in BIAS_CORRECTIONS:
        raise ValueError(f"bias_correction must be one of {BIAS_CORRECTIONS}, got {bias_correction!r}")
    return prepare_inputs(x, y, weights=weights, mask=mask, x_range=x_range, y_range=y_range, validate=validate)


def _rows(t: Optional[Tensor], rows: Tensor, full: int) -> Optional[Tensor]:
    """Select batch rows unless all are selected (keeps the fast path copy-free)."""
    if t is None or rows.numel() == full:
        return t
    return t.index_select(0, rows)


def _soft_entropies(x, y, weights, bins, kernel, x_range, y_range, percentile, gain) -> Entropies:
    joint = soft_joint_histogram(
        x, y, bins=bins, weights=weights, kernel=kernel, x_range=x_range, y_range=y_range,
        percentile=percentile, gain=gain,
    )
    return entropies_from_joint(joint)


def _discrete_entropies(x, y, weights, bins, x_range, y_range, percentile, gain, bias_correction) -> Entropies:
    joint = discrete_joint_histogram(
        x, y, bins=bins, weights=weights, x_range=x_range, y_range=y_range, percentile=percentile, gain=gain
    )
    n = effective_sample_size(x, weights) if bias_correction != "none" else None
    return entropies_from_joint(joint, bias_correction=bias_correction, n_effective=n)


def soft_mutual_information(
    x: Tensor,
    y: Tensor,
    *,
    bins: BinsArg = "auto",
    weights: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    kernel: KernelArg = "bspline",
    x_range: Optional[Tensor] = None,
    y_range: Optional[Tensor] = None,
    normalization: str = "none",
    percentile: float = 0.0,
    gain: float = 0.0,
    validate: bool = True,
) -> Tensor:
    """Parzen-window (soft-binned) mutual information, exactly differentiable.

    Each sample spreads unit mass (times its weight) over the bins with a smooth kernel (cubic
    B-spline by default), so the estimate is a C2 function of the samples, of the weights and
    of the ranges; its gradient is analytic and finite, including at empty cells.

    Parameters
    ----------
    x, y : Tensor
        Samples, shape (B, N), any floating dtype (half precision is computed in float32) and
        device.
    bins : int or "auto"
        Bins per axis (>= 2), or ``"auto"`` (the default) for the data-driven rule (see the
        module notes; synchronises with the host, so pass an int inside an optimisation loop,
        as the registration does). "auto" is what meets the 10% accuracy target on the
        Gaussian benchmark (benchmarks/RESULTS.md); a fixed 32 is off by -25% at r = 0.99.
    weights : Tensor, optional
        (B, N) or (N,) non-negative sample weights (a soft mask; differentiable); 0 excludes a
        sample. The histogram is the weighted sum, so an excluded sample is not counted as a 0.
    mask : Tensor, optional
        (B, N) or (N,) boolean mask, multiplied into ``weights``.
    kernel : {"bspline", "gaussian", "box"} or (str, str)
        Parzen kernel in bin units for both axes, or an ``(x_kernel, y_kernel)`` pair (see
        :mod:`miregister.mi.kernels`). ``("box", "bspline")`` bins ``x`` hard and ``y`` soft:
        the Mattes pairing for a fixed ``x`` (its gradient with respect to ``x`` is zero).
    x_range, y_range : Tensor, optional
        (B, 2) or (2,) ``(min, max)`` placing the bins (e.g. the full image's range, so bins do
        not move between iterations). Values outside are clamped onto the edge bins. Default:
        each row's min and max over its included samples (or the ``percentile``/``gain`` rule),
        which makes the estimate invariant to shifting and scaling the inputs.
    normalization : str
        ``"none"`` (MI in nats) or one of the normalisations of
        :func:`~miregister.mi.entropy.normalize_mutual_information`.
    percentile, gain : float
        Range rule when no explicit range is given, see :func:`~miregister.mi.ranges.compute_range`.
    validate : bool
        Check values (NaN/inf, empty masks). Shape checks always run; value checks are skipped
        under ``torch.compile`` and CUDA-graph capture. With ``validate=False`` and an int
        ``bins`` the computation never synchronises with the host.

    Returns
    -------
    Tensor
        (B,) MI in nats (or the normalised value), in the computation dtype. A loss is its
        negative.

    Raises
    ------
    ValueError
        On mismatched shapes, NaN/inf values, bins < 2, negative weights or an empty mask.

    Examples
    --------
    >>> import torch
    >>> from miregister.mi import soft_mutual_information
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(1, 10000, generator=g)
    >>> y = x + 0.5 * torch.randn(1, 10000, generator=g)
    >>> mi = soft_mutual_information(x, y, bins=32)  # ground truth 0.5 * log(5) = 0.80
    """
    x, y, weights, x_range, y_range = _prepare(
        x, y, weights, mask, x_range, y_range, normalization, "none", validate
    )

    def estimate(k: int, rows: Tensor) -> Tensor:
        b = x.shape[0]
        h = _soft_entropies(
            _rows(x, rows, b), _rows(y, rows, b), _rows(weights, rows, b), k, kernel,
            _rows(x_range, rows, b), _rows(y_range, rows, b), percentile, gain,
        )
        return normalize_mutual_information(h, normalization)

    return _per_bins(bins, x, y, weights, SOFT_AUTO_FACTOR, estimate)


def discrete_mutual_information(
    x: Tensor,
    y: Tensor,
    *,
    bins: BinsArg = "auto",
    weights: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    x_range: Optional[Tensor] = None,
    y_range: Optional[Tensor] = None,
    normalization: str = "none",
    percentile: float = 0.0,
    gain: float = 0.0,
    bias_correction: str = "none",
    validate: bool = True,
) -> Tensor:
    """Mutual information from a discrete (hard-binned) joint histogram.

    Each included sample is counted exactly once, in the bin ``[e_j, e_{j+1})`` of the edges
    ``linspace(lo, hi, bins + 1)`` (the last bin is closed), exactly as
    ``numpy.histogram2d(x, y, bins, range=...)``; out-of-range values are clamped onto the edge
    bins. Not differentiable (use :func:`soft_mutual_information` to optimise).

    Parameters are those of :func:`soft_mutual_information` (``weights`` may be any
    non-negative numbers: weighted counts), plus

    bias_correction : {"none", "miller-madow"}
        Miller-Madow correction of each entropy, ``(m - 1) / (2 n)`` with m the non-empty cells
        and n the (Kish effective) sample count. Off by default.

    Returns
    -------
    Tensor
        (B,) MI in nats (or the normalised value).
    """
    x, y, weights, x_range, y_range = _prepare(
        x, y, weights, mask, x_range, y_range, normalization, bias_correction, validate
    )

    def estimate(k: int, rows: Tensor) -> Tensor:
        b = x.shape[0]
        h = _discrete_entropies(
            _rows(x, rows, b), _rows(y, rows, b), _rows(weights, rows, b), k,
            _rows(x_range, rows, b), _rows(y_range, rows, b), percentile, gain, bias_correction,
        )
        return normalize_mutual_information(h, normalization)

    return _per_bins(bins, x, y, weights, 1.0, estimate)


def joint_entropies(
    x: Tensor,
    y: Tensor,
    *,
    estimator: str = "soft",
    bins: int = 32,
    weights: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    kernel: KernelArg = "bspline",
    x_range: Optional[Tensor] = None,
    y_range: Optional[Tensor] = None,
    percentile: float = 0.0,
    gain: float = 0.0,
    bias_correction: str = "none",
    validate: bool = True,
) -> Entropies:
    """Plug-in entropies H(X), H(Y), H(X, Y) (nats) of the soft or discrete joint histogram.

    Parameters
    ----------
    estimator : {"soft", "discrete"}
        Which histogram; other parameters as in :func:`soft_mutual_information` (``bins`` must
        be an int here).

    Returns
    -------
    Entropies
        Named tuple (hx, hy, hxy) of (B,) tensors; ``.mutual_information`` is their MI.
    """
    x, y, weights, x_range, y_range = _prepare(
        x, y, weights, mask, x_range, y_range, "none", bias_correction, validate
    )
    bins = check_bins(bins)
    if estimator == "soft":
        if bias_correction != "none":
            raise ValueError("the Miller-Madow correction applies to discrete counts only")
        return _soft_entropies(x, y, weights, bins, kernel, x_range, y_range, percentile, gain)
    if estimator == "discrete":
        return _discrete_entropies(x, y, weights, bins, x_range, y_range, percentile, gain, bias_correction)
    raise ValueError(f"estimator must be 'soft' or 'discrete', got {estimator!r}")


def normalized_mutual_information(
    x: Tensor,
    y: Tensor,
    *,
    estimator: str = "soft",
    bins: BinsArg = 32,
    **kwargs,
) -> Tensor:
    """Studholme's normalised MI, (H(X) + H(Y)) / H(X, Y), in [1, 2]: (B,).

    Studholme, Hill & Hawkes (1999), "An overlap invariant entropy measure of 3D medical image
    alignment", Pattern Recognition 32(1). ``estimator`` is ``"soft"`` (differentiable) or
    ``"discrete"``; other keyword arguments as in :func:`soft_mutual_information`.
    """
    if estimator == "soft":
        return soft_mutual_information(x, y, bins=bins, normalization="studholme", **kwargs)
    if estimator == "discrete":
        return discrete_mutual_information(x, y, bins=bins, normalization="studholme", **kwargs)
    raise ValueError(f"estimator must be 'soft' or 'discrete', got {estimator!r}")
