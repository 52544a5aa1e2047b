"""Filtering one axis of an image with a 1D kernel: the building block of separable filters.

Used by :func:`miregister.pyramid.gaussian_smooth` (replicated borders, as ITK's zero-flux
Neumann condition) and :func:`miregister.cubic.bspline_prefilter` (mirror borders, as
``scipy.ndimage`` ``mode="mirror"``). An axis of image size is filtered by one matrix product
with the banded ``(n, n)`` filter matrix, border handling folded in: on 2 CPU cores this is
about 6x faster than ``conv3d`` for a 197 x 233 x 189 volume, although most of its
multiplications are by zero, because BLAS runs near peak and convolution does not. Axes much
longer than the kernel fall back to a convolution over an index-padded copy. Both paths give
the same values up to float rounding, are differentiable, and run on CPU and CUDA.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["filter_axis", "filter_matrix", "fold_indices"]

Boundary = Literal["replicate", "mirror"]

#: Axes up to this many times the kernel length use the matrix product; longer ones convolve.
MATMUL_TAPS_RATIO = 64


def fold_indices(k: Tensor, n: int, boundary: Boundary) -> Tensor:
    """Integer indices ``k`` (any range) folded into ``[0, n)``.

    ``"replicate"`` clamps to the edge voxel; ``"mirror"`` reflects about the edge voxel
    without repeating it (``-1 -> 1``, ``n -> n - 2``), with period ``2n - 2``.
    """
    if boundary == "replicate":
        return k.clamp(0, n - 1)
    if boundary != "mirror":
        raise ValueError(f"boundary must be 'replicate' or 'mirror', got {boundary!r}")
    if n == 1:
        return torch.zeros_like(k)
    period = 2 * n - 2
    k = torch.remainder(k, period)
    return torch.where(k >= n, period - k, k)


def filter_matrix(kernel: Tensor, n: int, boundary: Boundary) -> Tensor:
    """``(n, n)`` matrix ``M`` of the centred 1D filter: ``(M x)[i] = sum_t kernel[t] x[fold(i + t - r)]``.

    ``kernel`` has odd length ``2r + 1``; taps that fall outside ``[0, n)`` are folded by
    :func:`fold_indices` and accumulated, so ``M`` carries the border condition.
    """
    r = (kernel.numel() - 1) // 2
    offsets = torch.arange(-r, r + 1, device=kernel.device)
    rows = torch.arange(n, device=kernel.device)[:, None].expand(n, kernel.numel())
    cols = fold_indices(rows + offsets[None, :], n, boundary)
    matrix = torch.zeros(n, n, dtype=kernel.dtype, device=kernel.device)
    return matrix.index_put_((rows, cols), kernel.expand(n, -1), accumulate=True)


def filter_axis(data: Tensor, kernel: Tensor, axis: int, boundary: Boundary) -> Tensor:
    """Filter ``data`` along tensor axis ``axis`` with the centred, odd-length 1D ``kernel``.

    Parameters
    ----------
    data : Tensor
        Any shape; floating point, same dtype and device as ``kernel``.
    kernel : Tensor
        ``(2r + 1,)`` filter taps, centred (correlation order; symmetric kernels do not care).
    axis : int
        The tensor axis to filter (negative counts from the end).
    boundary : {"replicate", "mirror"}
        How values beyond the edges are defined (see :func:`fold_indices`).

    Returns
    -------
    Tensor
        Same shape, dtype and device as ``data``.
    """
    axis = axis % data.dim()
    n = data.shape[axis]
    if n <= MATMUL_TAPS_RATIO * kernel.numel():
        product = torch.tensordot(data, filter_matrix(kernel, n, boundary).T, dims=([axis], [0]))
        return torch.movedim(product, -1, axis)
    r = (kernel.numel() - 1) // 2
    moved = data.movedim(axis, -1)
    padded = moved.index_select(-1, fold_indices(torch.arange(-r, n + r, device=data.device), n, boundary))
    filtered = F.conv1d(padded.reshape(-1, 1, n + 2 * r), kernel.view(1, 1, -1))
    return filtered.reshape(moved.shape).movedim(-1, axis)
