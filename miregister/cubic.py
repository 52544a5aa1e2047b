"""Cubic B-spline interpolation of images: the prefilter and a fused sampler.

``bspline_prefilter`` turns voxel values into B-spline coefficients (so that interpolation passes
through the voxel values); ``bspline_sample`` evaluates the spline at continuous indices. The
sampler is a custom autograd function: one gather of the 4^D taps per point, the value and its
index gradient computed together, so that the metric of a registration (hundreds of thousands
of points, hundreds of evaluations) pays a few tensor passes instead of a 64-node graph.
Mirror boundaries throughout, as ``scipy.ndimage`` (``mode="mirror"``) and ``sitk.sitkBSpline``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .separable import filter_axis, fold_indices

__all__ = ["bspline_prefilter", "bspline_sample", "cubic_bspline_weights"]

_POLE = math.sqrt(3.0) - 2.0
# Truncation of the prefilter's impulse response: |pole|^k falls below the dtype's precision
# (|pole|^14 ~ 1e-8 for float32, |pole|^24 ~ 2e-14 for float64).
_HALF_WIDTH = {torch.float16: 8, torch.bfloat16: 6, torch.float32: 14, torch.float64: 24}


def _chunk(device: torch.device) -> int:
    """Points per pass.

    On the CPU, 16k points keep each (4^D, P) temporary under glibc's 32 MB mmap threshold:
    larger ones are fresh mappings whose pages fault in on every call (an 80k-point 3D metric
    evaluation, fwd + bwd: 73 ms with 256k-point passes, 53 ms with 16k; a whole 2 mm affine
    registration ~5 % faster). CUDA's caching allocator has no such cost and prefers few large
    launches (256k points, ~67 MB of taps).
    """
    return 1 << 14 if device.type == "cpu" else 1 << 18


def bspline_prefilter(image: Tensor) -> Tensor:
    """Cubic B-spline interpolation coefficients of ``image`` ``(B, C, *spatial)``.

    Applies, along every spatial axis, the inverse of the sampled cubic B-spline
    ``[1, 4, 1] / 6`` with mirror boundary conditions (as ``scipy.ndimage.spline_filter(order=3,
    mode="mirror")``), so that cubic B-spline interpolation of the result passes through the
    voxel values. Implemented as a separable convolution with the two-sided impulse response
    ``sqrt(3) * z^|k|``, ``z = sqrt(3) - 2`` (Unser 1999, IEEE Signal Proc. Mag. 16(6)), truncated
    where ``|z|^k`` falls below the dtype's precision (:func:`~miregister.separable.filter_axis`). Differentiable; same dtype and device.
    """
    if not image.is_floating_point():
        image = image.to(torch.float64)
    half_width = _HALF_WIDTH.get(image.dtype, 24)
    k = torch.arange(-half_width, half_width + 1, dtype=torch.float64)
    kernel = (math.sqrt(3.0) * _POLE ** k.abs()).to(dtype=image.dtype, device=image.device)
    out = image
    for dim in range(2, image.dim()):
        out = filter_axis(out, kernel, dim, boundary="mirror")
    return out


def cubic_bspline_weights(t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Uniform cubic B-spline weights of the 4 control points around a cell.

    Parameters
    ----------
    t : Tensor
        Fractional position in the cell, ``c - floor(c)`` in ``[0, 1]`` (any shape).

    Returns
    -------
    tuple of Tensor
        Weights of the control points at ``floor(c) - 1, floor(c), floor(c) + 1, floor(c) + 2``;
        they sum to 1.
    """
    t2 = t * t
    t3 = t2 * t
    w0 = (1.0 - t) ** 3 / 6.0
    w1 = (3.0 * t3 - 6.0 * t2 + 4.0) / 6.0
    w2 = (-3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0) / 6.0
    w3 = t3 / 6.0
    return w0, w1, w2, w3


def _weights(t: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`cubic_bspline_weights` of ``t`` ``(B, D, P)`` stacked tap-major ``(B, D, 4, P)``,
    and their derivatives in ``t``.

    The same polynomials, written in the factored form the sampler was tuned with: calling
    :func:`cubic_bspline_weights` instead changes float32 results by an ulp, which is enough to
    move the coarse-level optimum of the 2D slice registration (a known fragility, see the
    registration issue's notes), so the arithmetic is kept as it is.
    """
    t2 = t * t
    s = 1.0 - t
    w = torch.stack((s * s * s, 3.0 * t2 * t - 6.0 * t2 + 4.0, -3.0 * t2 * t + 3.0 * t2 + 3.0 * t + 1.0, t2 * t), -2) / 6.0
    dw = torch.stack((-0.5 * s * s, 1.5 * t2 - 2.0 * t, -1.5 * t2 + t + 0.5, 0.5 * t2), -2)
    return w, dw


def _taps(position: Tensor, shape: tuple[int, ...], batch: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """Flat tap indices ``(B, 4^D, P)`` into the volume, weights and weight derivatives ``(B, D, 4, P)``
    of the continuous indices ``position`` ``(B, D, P)`` (axis first, x first).

    Everything is tap-major (points last), so that the contraction adds contiguous vectors.
    Taps beyond the image are mirrored back into it (as ``scipy.ndimage`` ``mode="mirror"``).
    Tap order is row-major over ``(z, y, x)`` taps, i.e. the last tap axis is x (index axis 0).
    """
    base = torch.floor(position)
    w, dw = _weights(position - base)
    return _tap_indices(base, shape, batch), w, dw


def _tap_indices(base: Tensor, shape: tuple[int, ...], batch: int = 1) -> Tensor:
    """Flat tap indices ``(B, 4^D, P)`` of the points whose ``floor`` indices are ``base`` ``(B, D, P)``.

    A point whose taps all lie inside the image (``floor`` index in ``[1, size - 3]`` on every
    axis: all but ~0.1-1 % of a registration's samples) needs no mirroring: its taps are its base
    voxel's flat index plus a fixed offset per tap, one addition of ``(B, 4^D, P)``. The other
    points get the per-axis mirrored taps (:func:`_mirrored_tap_indices`). Same indices either way.
    The dtype is int32 when ``batch`` volumes of this shape fit its range (half the memory
    traffic of int64, and ``index_select`` takes it), else int64.
    """
    d = base.shape[1]
    dtype = torch.int32 if batch * math.prod(shape) < 2**31 else torch.int64
    sizes = torch.tensor([shape[d - 1 - axis] for axis in range(d)], dtype=base.dtype, device=base.device)
    inside = ((base >= 1) & (base <= (sizes - 3)[:, None])).all(dim=1)  # (B, P); NaN is not inside
    # Points far outside would overflow the integer cast; they are mirrored below anyway.
    index = torch.where(inside[:, None], base, torch.zeros((), dtype=base.dtype, device=base.device)).to(dtype)
    flat = index[:, 0]  # x has stride 1
    for axis in range(1, d):
        flat = flat + index[:, axis] * math.prod(shape[d - axis:])
    lin = flat[:, None] + _tap_offsets(tuple(shape), base.device).to(dtype)[None, :, None]
    if not bool(inside.all()):
        b, p = (~inside).nonzero(as_tuple=True)
        lin[b, :, p] = _mirrored_tap_indices(base[b, :, p].T[None], shape)[0].T.to(dtype)
    return lin


def _gather(flat: Tensor, lin: Tensor) -> Tensor:
    """Values of ``flat`` ``(B, C, N)`` at the flat indices ``lin`` ``(B, T, P)``: ``(B, C, T, P)``.

    One ``index_select`` over the batch's volumes laid end to end: on the CPU it is ~3x faster
    than ``torch.gather`` with an expanded index (80k points x 64 taps: 14 vs 47 ms).
    """
    b, c, n = flat.shape
    if b > 1:
        lin = lin + (torch.arange(b, dtype=lin.dtype, device=lin.device) * n)[:, None, None]
    index = lin.reshape(-1)
    if c == 1:
        return flat.reshape(-1).index_select(0, index).reshape(b, 1, *lin.shape[1:])
    channels = [flat[:, k].reshape(-1).index_select(0, index) for k in range(c)]
    return torch.stack(channels, 0).reshape(c, b, *lin.shape[1:]).transpose(0, 1)


def _mirrored_tap_indices(base: Tensor, shape: tuple[int, ...]) -> Tensor:
    """:func:`_tap_indices` for any points: taps beyond the image mirrored per axis."""
    d = base.shape[1]
    offsets = torch.arange(-1, 3, device=base.device)[:, None]
    lin = None
    for axis in range(d - 1, -1, -1):  # z (the slowest tap axis) first
        size = shape[d - 1 - axis]
        stride = math.prod(shape[d - axis:])
        taps = fold_indices(base[:, axis, None].long() + offsets, size, "mirror") * stride  # (B, 4, P)
        lin = taps if lin is None else (lin[:, :, None] + taps[:, None]).flatten(1, 2)
    return lin


_TAP_OFFSETS: dict[tuple[tuple[int, ...], torch.device], Tensor] = {}


def _tap_offsets(shape: tuple[int, ...], device: torch.device) -> Tensor:
    """Flat offsets ``(4^D,)`` of the taps from their base voxel, in :func:`_taps`' order."""
    key = (shape, device)
    if key not in _TAP_OFFSETS:
        d = len(shape)
        lin = torch.zeros(1, dtype=torch.int64)
        for axis in range(d - 1, -1, -1):  # z (the slowest tap axis) first
            step = torch.arange(-1, 3, dtype=torch.int64) * math.prod(shape[d - axis:])
            lin = (lin[:, None] + step[None, :]).flatten()
        _TAP_OFFSETS.clear()  # one image at a time is the common case; keep the cache tiny
        _TAP_OFFSETS[key] = lin.to(device)
    return _TAP_OFFSETS[key]


def _dot(taps: Tensor, factor: Tensor) -> Tensor:
    """``sum_k taps[..., k, :] * factor[:, None, None, k, :]``: ``(B, C, R, 4, P)`` against
    ``(B, 4, P)`` gives ``(B, C, R, P)``, by four passes over contiguous vectors."""
    factor = factor[:, None, None]
    out = taps[..., 0, :] * factor[..., 0, :]
    for k in range(1, 4):
        out = out.addcmul_(taps[..., k, :], factor[..., k, :])
    return out


def _contract(taps: Tensor, w: Tensor, dw: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Sum the taps ``(B, C, 4^D, P)`` against the per-axis weights ``(B, D, 4, P)``.

    Returns the value ``(B, C, P)`` and, when ``dw`` is given, the index gradient
    ``(B, C, D, P)``. Axes are contracted one at a time, x first (the fastest tap axis); the
    value and the D first derivatives are carried along (not the 2^D mixed variants), each
    reusing the partial sums of the axes before it.
    """
    b, c, _, p = taps.shape
    d = w.shape[1]
    value = taps
    partials: list[Tensor] = []  # derivative along each axis contracted so far
    for axis in range(d):
        value = value.reshape(b, c, -1, 4, p)  # (..., remaining taps, this axis' 4 taps, points)
        partials = [_dot(g.reshape(b, c, -1, 4, p), w[:, axis]) for g in partials]
        if dw is not None:
            partials.append(_dot(value, dw[:, axis]))
        value = _dot(value, w[:, axis])
    if dw is None:
        return value[:, :, 0], None
    return value[:, :, 0], torch.cat(partials, 2)


class _BSplineSample(torch.autograd.Function):
    """Cubic B-spline values ``(B, C, P)`` at axis-first continuous indices ``(B, D, P)``."""

    @staticmethod
    def forward(ctx, coefficients: Tensor, position: Tensor) -> Tensor:  # noqa: D102 (autograd protocol)
        b, c = coefficients.shape[:2]
        shape = tuple(coefficients.shape[2:])
        flat = coefficients.reshape(b, c, -1)
        count = position.shape[2]
        want_gradient = ctx.needs_input_grad[1]
        values = coefficients.new_empty(b, c, count)
        gradients = coefficients.new_empty(b, c, len(shape), count) if want_gradient else None
        chunk = _chunk(position.device)
        for start in range(0, count, chunk):
            part = slice(start, start + chunk)
            lin, w, dw = _taps(position[:, :, part], shape, b)
            value, gradient = _contract(_gather(flat, lin), w, dw if want_gradient else None)
            values[:, :, part] = value
            if gradients is not None:
                gradients[..., part] = gradient
        if gradients is not None:
            ctx.save_for_backward(gradients)
        ctx.shape, ctx.position = shape, (position if ctx.needs_input_grad[0] else None)
        return values

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102 (autograd protocol)
        grad_coefficients = grad_position = None
        if ctx.needs_input_grad[1]:
            (spatial_grads,) = ctx.saved_tensors  # (B, C, D, P)
            grad_position = (grad.unsqueeze(2) * spatial_grads).sum(1)
        if ctx.needs_input_grad[0]:
            position, shape = ctx.position, ctx.shape
            b, c = grad.shape[:2]
            lin, w, _ = _taps(position, shape, b)
            d = len(shape)
            weight = w[:, d - 1]  # outer product of per-axis weights in (z, y, x) tap order, (B, 4^D, P)
            for axis in range(d - 2, -1, -1):
                weight = (weight[:, :, None] * w[:, axis, None]).flatten(1, 2)
            contrib = (grad.unsqueeze(2) * weight.unsqueeze(1)).reshape(b, c, -1)
            flat = torch.zeros(b, c, math.prod(shape), dtype=grad.dtype, device=grad.device)
            flat.scatter_add_(2, lin.long().reshape(b, 1, -1).expand(b, c, -1), contrib)
            grad_coefficients = flat.reshape((b, c) + shape)
        return grad_coefficients, grad_position


def bspline_sample(coefficients: Tensor, index: Tensor, axis_first: bool = False) -> Tensor:
    """Evaluate cubic B-spline coefficients ``(B, C, *spatial)`` at continuous indices.

    ``index`` is ``(B, P, D)``, or ``(B, D, P)`` with ``axis_first=True`` (the sampler's own
    layout: a registration's metric maps its points axis first, because a ``(P, D) @ (D, D)``
    product is ~20x slower on the CPU than ``(D, D) @ (D, P)``). Indices are x first (``(i, j[,
    k])``, voxel units). Taps beyond the image use mirror-extended coefficients (exact for points
    with index in ``[-1, size]``; values further out are mirror images and must be masked by the
    caller). Returns ``(B, C, P)`` in the coefficients' dtype, differentiable in ``index``
    (analytic spline derivative) and in ``coefficients``.
    """
    index = index.to(coefficients.dtype)
    return _BSplineSample.apply(coefficients, index if axis_first else index.transpose(1, 2))
