"""Kernel density (KDE) estimate of mutual information on a grid.

The joint density of (x, y) is estimated with a bivariate Gaussian kernel, evaluated on a
``bins x bins`` grid, and MI is the plug-in value of the gridded density (Moon, Rajagopalan &
Lall 1995, "Estimation of mutual information using kernel density estimators", Phys. Rev. E
52(3)). In nats, positive; a loss is its negative.

Bandwidth rule (default)
------------------------
Scott's rule with the full sample covariance, as ``scipy.stats.gaussian_kde``: the kernel
covariance is ``H = n^(-1/3) * Sigma`` (``n^(-2/(d+4))`` with d = 2; Silverman's rule is the same
in 2-D), n being the effective sample count. A kernel shaped like the data does not
decorrelate it, so on Gaussian data the smoothing bias of MI vanishes: the KDE is accurate on
the seed's Gaussian experiment at every correlation, where an axis-aligned kernel loses
several per cent at r = 0.99. User bandwidths, per axis and per batch element, give an
axis-aligned kernel instead.

Computation
-----------
Samples are first spread on the grid with the cubic B-spline Parzen window (O(N), exactly
differentiable; it adds a variance of 1/3 grid cell^2 per axis, negligible at the default 256
cells), then convolved with the sampled Gaussian kernel by FFT. The grid covers the data range
(or ``x_range``/``y_range``) extended by ``extend`` kernel standard deviations on each side.
The kernel support (5 sd, the widest of the batch) is sized on the host (one synchronisation per call).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .bins import effective_sample_size
from .entropy import Entropies, entropies_from_joint, normalize_mutual_information
from .histogram import bin_coordinates, parzen_joint_histogram, resolve_range
from .validation import check_bins, prepare_inputs

__all__ = ["scott_bandwidth", "kde_joint_density", "kde_entropies", "kde_mutual_information"]

BandwidthArg = Union[None, float, Sequence[float], Tensor]


def _weighted_covariance(x: Tensor, y: Tensor, weights: Optional[Tensor]) -> Tensor:
    """(B, 2, 2) sample covariance of (x, y) per row (weights as frequency weights)."""
    w = torch.ones_like(x) if weights is None else weights
    total = w.sum(dim=1, keepdim=True)
    z = torch.stack([x, y], dim=-1)  # (B, N, 2)
    mean = (w.unsqueeze(-1) * z).sum(dim=1, keepdim=True) / total.unsqueeze(-1)
    d = (z - mean) * w.unsqueeze(-1).sqrt()
    return d.transpose(1, 2) @ d / total.unsqueeze(-1)


def scott_bandwidth(x: Tensor, y: Tensor, weights: Optional[Tensor] = None) -> Tensor:
    """Scott's rule kernel covariance ``n^(-1/3) * Sigma`` (2-D), shape (B, 2, 2), data units^2."""
    n = effective_sample_size(x, weights)
    return _weighted_covariance(x, y, weights) * n.pow(-1.0 / 3.0).view(-1, 1, 1)


def _user_bandwidth(bandwidths: BandwidthArg, x: Tensor) -> Tensor:
    """Kernel covariance (B, 2, 2) from user standard deviations (hx, hy) or a (B, 2, 2) matrix."""
    h = torch.as_tensor(bandwidths, dtype=x.dtype, device=x.device)
    batch = x.shape[0]
    if h.dim() == 3:
        if h.shape[1:] != (2, 2) or h.shape[0] not in (1, batch):
            raise ValueError(f"a bandwidth matrix must have shape (B, 2, 2), got {tuple(h.shape)}")
        return h.expand(batch, 2, 2)
    if h.dim() == 0:
        h = h.repeat(2)
    if h.dim() == 1:
        h = h.unsqueeze(0)
    if h.dim() != 2 or h.shape[-1] != 2 or h.shape[0] not in (1, batch):
        raise ValueError(
            "bandwidths must be a positive number, a pair (hx, hy), a (B, 2) tensor of "
            f"per-axis standard deviations or a (B, 2, 2) covariance, got shape {tuple(h.shape)}"
        )
    if not bool(torch.isfinite(h).all()) or bool((h <= 0).any()):
        raise ValueError("bandwidths must be finite and strictly positive")
    return torch.diag_embed(h.expand(batch, 2) ** 2)


def _grid_kernel(cov: Tensor, wx: Tensor, wy: Tensor, radius: tuple[int, int]) -> Tensor:
    """Gaussian kernel of covariance ``cov`` (B, 2, 2) sampled at grid offsets, summing to 1."""
    rx, ry = radius
    i = torch.arange(-rx, rx + 1, device=cov.device, dtype=cov.dtype)
    j = torch.arange(-ry, ry + 1, device=cov.device, dtype=cov.dtype)
    dx = i.view(1, -1, 1) * wx.view(-1, 1, 1)  # (B, 2rx+1, 1), data units
    dy = j.view(1, 1, -1) * wy.view(-1, 1, 1)
    a, b, c = cov[:, 0, 0].view(-1, 1, 1), cov[:, 0, 1].view(-1, 1, 1), cov[:, 1, 1].view(-1, 1, 1)
    det = (a * c - b * b).clamp_min(torch.finfo(cov.dtype).tiny)
    quad = (c * dx * dx - 2 * b * dx * dy + a * dy * dy) / det
    k = torch.exp(-0.5 * quad)
    return k / k.sum(dim=(1, 2), keepdim=True)


def _fft_convolve(hist: Tensor, kernel: Tensor) -> Tensor:
    """'Same'-size linear convolution of (B, G, G) with odd-sized (B, kx, ky) kernels by FFT."""
    g1, g2 = hist.shape[1:]
    kx, ky = kernel.shape[1:]
    size = (g1 + kx - 1, g2 + ky - 1)
    full = torch.fft.irfft2(torch.fft.rfft2(hist, s=size) * torch.fft.rfft2(kernel, s=size), s=size)
    rx, ry = kx // 2, ky // 2
    return full[:, rx : rx + g1, ry : ry + g2]


def kde_joint_density(
    x: Tensor,
    y: Tensor,
    *,
    bins: int = 256,
    bandwidths: BandwidthArg = None,
    weights: Optional[Tensor] = None,
    x_range: Optional[Tensor] = None,
    y_range: Optional[Tensor] = None,
    percentile: float = 0.0,
    gain: float = 0.0,
    extend: float = 3.0,
) -> Tensor:
    """Gaussian KDE of the joint density on a grid, as probabilities per cell.

    Parameters
    ----------
    x, y : Tensor
        (B, N) samples (already validated, in the computation dtype).
    bins : int
        Grid points per axis.
    bandwidths : None, float, pair, (B, 2) or (B, 2, 2) tensor
        None: Scott's full-covariance rule. Otherwise per-axis kernel standard deviations in
        data units (a number for both axes, a pair, or one pair per batch element), or kernel
        covariance matrices.
    weights : Tensor, optional
        (B, N) sample weights; 0 excludes a sample.
    x_range, y_range, percentile, gain
        Data range the grid covers before extension (see :func:`~miregister.mi.ranges.compute_range`).
    extend : float
        Extend the grid by this many kernel standard deviations beyond the range on each side.

    Returns
    -------
    Tensor
        (B, bins, bins) non-negative cell probabilities summing to 1, ``[b, x_cell, y_cell]``.
    """
    bins = check_bins(bins)
    cov = scott_bandwidth(x, y, weights) if bandwidths is None else _user_bandwidth(bandwidths, x)
    sd = torch.stack([cov[:, 0, 0], cov[:, 1, 1]], dim=1).clamp_min(0).sqrt()  # (B, 2)
    rx = resolve_range(x, weights, x_range, percentile, gain)
    ry = resolve_range(y, weights, y_range, percentile, gain)
    pad = extend * sd
    rx = torch.stack([rx[:, 0] - pad[:, 0], rx[:, 1] + pad[:, 0]], dim=1)
    ry = torch.stack([ry[:, 0] - pad[:, 1], ry[:, 1] + pad[:, 1]], dim=1)
    tiny = torch.finfo(x.dtype).tiny
    wx = ((rx[:, 1] - rx[:, 0]) / bins).clamp_min(tiny)
    wy = ((ry[:, 1] - ry[:, 0]) / bins).clamp_min(tiny)
    hist = parzen_joint_histogram(bin_coordinates(x, rx, bins), bin_coordinates(y, ry, bins), bins, weights=weights)
    with torch.no_grad():  # kernel support in cells: 5 sd, at least 1, at most the grid
        cells = (5 * sd / torch.stack([wx, wy], dim=1)).amax(dim=0).ceil().clamp(1, bins).tolist()
    kernel = _grid_kernel(cov, wx, wy, (int(cells[0]), int(cells[1])))
    density = _fft_convolve(hist, kernel).clamp_min(0)  # FFT round-off can dip below 0
    return density / density.sum(dim=(1, 2), keepdim=True).clamp_min(tiny)


def kde_entropies(
    x: Tensor,
    y: Tensor,
    *,
    bins: int = 256,
    bandwidths: BandwidthArg = None,
    weights: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    x_range: Optional[Tensor] = None,
    y_range: Optional[Tensor] = None,
    percentile: float = 0.0,
    gain: float = 0.0,
    extend: float = 3.0,
    validate: bool = True,
) -> Entropies:
    """Plug-in entropies (nats) of the gridded KDE: (hx, hy, hxy), each (B,)."""
    x, y, weights, x_range, y_range = prepare_inputs(
        x, y, weights=weights, mask=mask, x_range=x_range, y_range=y_range, validate=validate
    )
    p = kde_joint_density(
        x, y, bins=bins, bandwidths=bandwidths, weights=weights, x_range=x_range, y_range=y_range,
        percentile=percentile, gain=gain, extend=extend,
    )
    return entropies_from_joint(p)


def kde_mutual_information(
    x: Tensor,
    y: Tensor,
    *,
    bins: int = 256,
    bandwidths: BandwidthArg = None,
    weights: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    normalization: str = "none",
    x_range: Optional[Tensor] = None,
    y_range: Optional[Tensor] = None,
    percentile: float = 0.0,
    gain: float = 0.0,
    extend: float = 3.0,
    validate: bool = True,
) -> Tensor:
    """Kernel-density estimate of mutual information (see the module notes), differentiable.

    Parameters
    ----------
    x, y : Tensor
        (B, N) samples.
    bins : int
        Grid points per axis (default 256).
    bandwidths : None, float, pair, (B, 2) or (B, 2, 2) tensor
        None (default): Scott's full-covariance rule ``H = n^(-1/3) Sigma``. Otherwise per-axis
        kernel standard deviations in data units, per batch element if (B, 2), or covariances.
    weights, mask : Tensor, optional
        (B, N) sample weights / boolean mask; excluded samples are not counted.
    normalization : str
        As in :func:`~miregister.mi.bins.soft_mutual_information`.
    x_range, y_range, percentile, gain, extend
        Grid placement, see :func:`kde_joint_density`.
    validate : bool
        Check values (NaN/inf, empty masks).

    Returns
    -------
    Tensor
        (B,) MI in nats (or the normalised value); its gradient is finite.
    """
    h = kde_entropies(
        x, y, bins=bins, bandwidths=bandwidths, weights=weights, mask=mask, x_range=x_range,
        y_range=y_range, percentile=percentile, gain=gain, extend=extend, validate=validate,
    )
    return normalize_mutual_information(h, normalization)


