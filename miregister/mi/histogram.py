"""Joint histograms of two sample sets: soft (Parzen window) and discrete.

Both return weighted counts of shape (B, bins, bins), indexed ``[b, x_bin, y_bin]``
(``numpy.histogram2d``'s convention), whose sum per batch element is the total sample weight.

Bins
----
Bin ``j`` of a range ``(lo, hi)`` covers ``[lo + j*w, lo + (j+1)*w)`` with ``w = (hi - lo) / bins``
and is centred on ``lo + (j + 1/2) * w``; the last bin is closed. Samples outside the range are
clamped onto it (they count in the edge bins), so a fixed range never drops samples.

Memory and cost
---------------
The soft histogram never builds an (N, bins, bins) or (N, bins) tensor: each sample touches
Sx x Sy bins (S = 4 taps per axis for the cubic B-spline, 1 for the box), scattered in chunks
of samples, and its backward pass recomputes the taps and gathers the Sx x Sy gradient
entries. Memory beyond the inputs is O(chunk * Sx * Sy) for temporaries plus O(N) saved for
backward (the bin coordinates).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .kernels import KernelArg, axis_kernels, kernel_taps
from .ranges import compute_range

__all__ = [
    "bin_coordinates",
    "parzen_joint_histogram",
    "soft_joint_histogram",
    "discrete_joint_histogram",
    "resolve_range",
]

#: Samples per chunk in the Parzen scatter/gather (bounds temporaries to ~ 16 * chunk elements).
_CHUNK = 1 << 16


def resolve_range(
    x: Tensor,
    weights: Optional[Tensor],
    value_range: Optional[Tensor],
    percentile: float = 0.0,
    gain: float = 0.0,
) -> Tensor:
    """The (B, 2) range to bin ``x`` with: ``value_range`` if given, else computed from ``x``."""
    if value_range is not None:
        return value_range.to(x.dtype).expand(x.shape[0], 2)
    return compute_range(x, weights, percentile=percentile, gain=gain)


def bin_coordinates(x: Tensor, value_range: Tensor, bins: int) -> Tensor:
    """Continuous bin coordinate of each sample: bin ``j`` is centred on ``t = j``.

    Parameters
    ----------
    x : Tensor
        Samples (B, N).
    value_range : Tensor
        (B, 2) ranges ``(lo, hi)``.
    bins : int
        Number of bins.

    Returns
    -------
    Tensor
        (B, N) coordinates ``(x - lo) / w - 1/2`` clamped to ``[-1/2, bins - 1/2]``. A row whose
        range is empty (constant data) gets a unit bin width, so all its samples share a bin.
    """
    lo, hi = value_range[:, :1], value_range[:, 1:]
    span = hi - lo
    span = torch.where(span > 0, span, torch.ones_like(span))
    t = (x - lo) * (bins / span) - 0.5
    return t.clamp(-0.5, bins - 0.5)


class _AxisTaps(NamedTuple):
    start: Tensor  # (B, n) int64, first tap's index in the padded histogram, in [0, bins]
    weights: Tensor  # (S, B, n)
    derivatives: Tensor  # (S, B, n)


def _axis_taps(t: Tensor, kernel: str, bins: int) -> tuple[_AxisTaps, int]:
    """Tap weights of one axis and the shift from padded to true bin indices.

    ``t`` lies in ``[-1/2, bins - 1/2]`` so ``floor(t)`` is in ``[-1, bins - 1]``; shifting the
    first tap by ``1 - min(offsets)`` puts it in ``[0, bins]``, and all taps in a padded axis of
    ``bins + S`` cells. The clamp matters for NaN coordinates (unvalidated input), which must
    give a NaN result rather than an out-of-bounds index, and for the box kernel at the very
    top of the range, whose one tap lands past the last bin and is clamped onto it.
    """
    taps = kernel_taps(t, kernel)
    shift = 1 - taps.offsets[0]
    start = (taps.base + (taps.offsets[0] + shift)).clamp_(0, bins)
    return _AxisTaps(start, taps.weights, taps.derivatives), shift


def _fold_map(bins: int, taps: int, shift: int, device: torch.device) -> Tensor:
    """Padded cell -> true bin: taps beyond the edges fold onto the edge bins."""
    return (torch.arange(bins + taps, device=device) - shift).clamp_(0, bins - 1)


def _cell_index(sx: Tensor, sy: Tensor, bins: int) -> Tensor:
    """Flat index of each sample's S x S block start, over all batch elements: (B * n,)."""
    cells = (bins + 1) * (bins + 1)
    offset = torch.arange(sx.shape[0], device=sx.device).unsqueeze(1) * cells
    return (offset + sx * (bins + 1) + sy).reshape(-1)


class _ParzenJointHistogram(torch.autograd.Function):
    """Parzen joint histogram of bin coordinates with an analytic, memory-light backward.

    Each sample has one Sx x Sy block of kernel products (Sx, Sy the taps of the x and y
    kernels), starting at cell ``(sx, sy)`` of the padded histogram. The forward pass
    accumulates the blocks in a table ``(Sx*Sy, B*(bins+1)^2)`` indexed by block start (one
    ``scatter_add_`` whose index is shared by the Sx*Sy rows), then sums the table into the
    padded histogram with Sx*Sy shifted slices and folds the padding onto the edge bins. The
    backward pass builds the same table from the incoming gradient and reads every sample's
    block with one ``index_select``. Work is chunked over samples so that temporaries stay in
    cache and memory stays O(chunk * Sx * Sy).
    """

    @staticmethod
    def forward(ctx, tx: Tensor, ty: Tensor, w: Optional[Tensor], bins: int, kx: str, ky: str) -> Tensor:  # type: ignore[override]
        batch, n = tx.shape
        table = None
        sx = sy = shift_x = shift_y = 0
        for start in range(0, n, _CHUNK):
            sl = slice(start, start + _CHUNK)
            ax, shift_x = _axis_taps(tx[:, sl], kx, bins)
            ay, shift_y = _axis_taps(ty[:, sl], ky, bins)
            sx, sy = ax.weights.shape[0], ay.weights.shape[0]
            if table is None:
                table = torch.zeros(sx * sy, batch * (bins + 1) ** 2, dtype=tx.dtype, device=tx.device)
            wx = ax.weights if w is None else ax.weights * w[:, sl]
            vals = (wx.unsqueeze(1) * ay.weights.unsqueeze(0)).reshape(sx * sy, -1)
            index = _cell_index(ax.start, ay.start, bins)
            table.scatter_add_(1, index.expand(sx * sy, -1), vals)
        assert table is not None
        # padded[:, a + i, b + j] = sum over (a, b) of table[(a, b), (batch, i, j)]: one col2im
        # (``fold``) instead of Sx*Sy slice additions, the same sums in the same (a, b) order.
        columns = table.view(sx * sy, batch, (bins + 1) ** 2).transpose(0, 1)
        padded = F.fold(columns, (bins + sx, bins + sy), (sx, sy))[:, 0]
        fold_x = _fold_map(bins, sx, shift_x, tx.device)
        fold_y = _fold_map(bins, sy, shift_y, tx.device)
        hist = torch.zeros(batch, bins, bins + sy, dtype=tx.dtype, device=tx.device).index_add_(1, fold_x, padded)
        hist = torch.zeros(batch, bins, bins, dtype=tx.dtype, device=tx.device).index_add_(2, fold_y, hist)
        ctx.save_for_backward(tx, ty, w)
        ctx.bins, ctx.kernels = bins, (kx, ky)
        return hist

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_hist: Tensor):  # type: ignore[override]
        tx, ty, w = ctx.saved_tensors
        bins, (kx, ky) = ctx.bins, ctx.kernels
        need_t = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        need_w = w is not None and ctx.needs_input_grad[2]
        gtx = torch.zeros_like(tx) if need_t else None
        gty = torch.zeros_like(ty) if need_t else None
        gw = torch.zeros_like(w) if need_w else None
        blocks = None
        for start in range(0, tx.shape[1], _CHUNK):
            sl = slice(start, start + _CHUNK)
            ax, shift_x = _axis_taps(tx[:, sl], kx, bins)
            ay, shift_y = _axis_taps(ty[:, sl], ky, bins)
            sx, sy = ax.weights.shape[0], ay.weights.shape[0]
            if blocks is None:
                # blocks[a, b, (batch, i, j)] = gradient at padded cell (i + a, j + b).
                fold_x = _fold_map(bins, sx, shift_x, tx.device)
                fold_y = _fold_map(bins, sy, shift_y, tx.device)
                padded = grad_hist.to(tx.dtype)[:, fold_x][:, :, fold_y]
                blocks = F.unfold(padded[:, None], (sx, sy)).transpose(0, 1).reshape(sx * sy, -1)  # im2col
            index = _cell_index(ax.start, ay.start, bins)
            g = blocks.index_select(1, index).view(sx, sy, *ax.start.shape)  # (Sx, Sy, B, n)
            gy = (g * ay.weights.unsqueeze(0)).sum(1)  # contracted over the y taps: (Sx, B, n)
            if need_t:
                gx = (g * ax.weights.unsqueeze(1)).sum(0)  # contracted over the x taps: (Sy, B, n)
                dx = (gy * ax.derivatives).sum(0)
                dy = (gx * ay.derivatives).sum(0)
                if w is not None:
                    dx = dx * w[:, sl]
                    dy = dy * w[:, sl]
                gtx[:, sl] = dx
                gty[:, sl] = dy
            if need_w:
                gw[:, sl] = (gy * ax.weights).sum(0)
        return gtx, gty, gw, None, None, None


def parzen_joint_histogram(
    tx: Tensor, ty: Tensor, bins: int, *, weights: Optional[Tensor] = None, kernel: KernelArg = "bspline"
) -> Tensor:
    """Parzen joint histogram from bin coordinates (see :func:`bin_coordinates`).

    Parameters
    ----------
    tx, ty : Tensor
        (B, N) bin coordinates in ``[-1/2, bins - 1/2]``.
    bins : int
        Bins per axis.
    weights : Tensor, optional
        (B, N) non-negative sample weights (differentiable).
    kernel : str or (str, str)
        ``"bspline"`` (default), ``"gaussian"`` or ``"box"`` for both axes, or an
        ``(x_kernel, y_kernel)`` pair, see :mod:`miregister.mi.kernels`.

    Returns
    -------
    Tensor
        (B, bins, bins) weighted soft counts, ``[b, x_bin, y_bin]``; kernel taps beyond the
        edge bins are folded onto them, so each sample contributes exactly its weight.
    """
    kx, ky = axis_kernels(kernel)
    return _ParzenJointHistogram.apply(tx, ty, weights, bins, kx, ky)


def soft_joint_histogram(
    x: Tensor,
    y: Tensor,
    *,
    bins: int,
    weights: Optional[Tensor] = None,
    kernel: KernelArg = "bspline",
    x_range: Optional[Tensor] = None,
    y_range: Optional[Tensor] = None,
    percentile: float = 0.0,
    gain: float = 0.0,
) -> Tensor:
    """Parzen-window joint histogram of samples (B, N), differentiable in x, y and weights.

    Ranges default to each row's (min, max) over its included samples (or the
    ``percentile``/``gain`` rule); they are then differentiable functions of the samples too,
    which makes the histogram invariant to shifting and (positively) scaling the inputs.

    Returns
    -------
    Tensor
        (B, bins, bins) weighted soft counts, ``[b, x_bin, y_bin]``.
    """
    rx = resolve_range(x, weights, x_range, percentile, gain)
    ry = resolve_range(y, weights, y_range, percentile, gain)
    return parzen_joint_histogram(
        bin_coordinates(x, rx, bins), bin_coordinates(y, ry, bins), bins, weights=weights, kernel=kernel
    )


def _discrete_bin(x: Tensor, value_range: Tensor, bins: int) -> Tensor:
    """Bin index of each sample: ``searchsorted`` on the edges, so each sample lands in one bin.

    Edges are ``linspace(lo, hi, bins + 1)``; bin ``j`` is ``[e_j, e_{j+1})`` and the last bin
    also holds ``hi``. Values outside the range are clamped into the edge bins.
    """
    lo, hi = value_range[:, :1], value_range[:, 1:]
    steps = torch.arange(bins + 1, device=x.device, dtype=x.dtype) / bins
    edges = (lo + (hi - lo) * steps).contiguous()  # (B, bins + 1)
    edges[:, -1:] = hi  # exact last edge, as numpy.linspace
    idx = torch.searchsorted(edges, x.contiguous(), right=True) - 1
    return idx.clamp_(0, bins - 1)


def discrete_joint_histogram(
    x: Tensor,
    y: Tensor,
    *,
    bins: int,
    weights: Optional[Tensor] = None,
    x_range: Optional[Tensor] = None,
    y_range: Optional[Tensor] = None,
    percentile: float = 0.0,
    gain: float = 0.0,
) -> Tensor:
    """Discrete (hard-binned) joint histogram: each included sample is counted exactly once.

    Not differentiable (its gradient is zero almost everywhere); use
    :func:`soft_joint_histogram` to optimise.

    Returns
    -------
    Tensor
        (B, bins, bins) weighted counts, ``[b, x_bin, y_bin]``, in x's floating dtype.
    """
    with torch.no_grad():
        rx = resolve_range(x, weights, x_range, percentile, gain)
        ry = resolve_range(y, weights, y_range, percentile, gain)
        flat = _discrete_bin(x, rx, bins) * bins + _discrete_bin(y, ry, bins)
        vals = torch.ones_like(x) if weights is None else weights.to(x.dtype)
        hist = torch.zeros(x.shape[0], bins * bins, dtype=x.dtype, device=x.device)
        hist.scatter_add_(1, flat, vals)
    return hist.view(x.shape[0], bins, bins)
