"""Parzen-window kernels in bin units: tap weights and their derivatives.

A sample at continuous bin coordinate ``t`` (bin ``j`` is centred on ``t = j``) contributes
to the bins ``floor(t) + offsets`` with weights ``kernel(t - bin)``. Each kernel returns the
weights of its few taps and their derivatives with respect to ``t``, so the Parzen histogram
costs O(N * taps) and its gradient is analytic.

Kernels
-------
``"bspline"``
    Cubic B-spline (4 taps, support 4 bins, variance 1/3 bin^2), C2 and a partition of unity:
    the kernel of Mattes et al. (2003), "PET-CT image registration in the chest using
    free-form deformations", IEEE TMI 22(1).
``"gaussian"``
    Gaussian with standard deviation 0.5 bin, truncated to 6 taps (+-3 bins = 6 sd, where it
    is 1.5e-8 of its peak) and renormalised per sample so each sample has unit mass.
``"box"``
    The zero-order B-spline: each sample counts whole in the bin that contains it (the
    discrete histogram's binning). Piecewise constant, so its derivative is zero: use it only
    on an axis that is not optimised, as Mattes et al. do for the fixed image (one tap instead
    of four, and no Parzen blur added to an axis whose values never move).

A histogram may use a different kernel per axis: ``kernel=("box", "bspline")`` is the Mattes
pairing (fixed image on x, moving image on y), see :func:`axis_kernels`.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "Taps", "KERNELS", "KernelArg", "axis_kernels", "kernel_taps", "bspline_taps", "gaussian_taps", "box_taps",
    "GAUSSIAN_SD",
]

#: Standard deviation of the Gaussian Parzen kernel, in bins.
GAUSSIAN_SD = 0.5


class Taps(NamedTuple):
    """Weights of one kernel at the taps ``floor(t) + offsets``.

    Attributes
    ----------
    base : Tensor
        The anchor bin as int64, shape (...): ``floor(t)`` (``floor(t + 1/2)`` for the box).
    weights : Tensor
        (S, ...) kernel weights, summing to 1 over the first axis (tap-major, so that sums
        over taps add contiguous vectors).
    derivatives : Tensor
        (S, ...) derivatives of the weights with respect to ``t`` (per bin).
    offsets : tuple of int
        The S tap offsets relative to ``base``.
    """

    base: Tensor
    weights: Tensor
    derivatives: Tensor
    offsets: tuple[int, ...]


#: Cubic B-spline tap weights as polynomials in the fractional part f: rows are the taps
#: floor(t) - 1 ... floor(t) + 2, columns the coefficients of 1, f, f^2, f^3.
_BSPLINE = (
    (1 / 6, -1 / 2, 1 / 2, -1 / 6),  # (1 - f)^3 / 6
    (2 / 3, 0.0, -1.0, 1 / 2),  # (3 f^3 - 6 f^2 + 4) / 6
    (1 / 6, 1 / 2, 1 / 2, -1 / 2),  # (-3 f^3 + 3 f^2 + 3 f + 1) / 6
    (0.0, 0.0, 0.0, 1 / 6),  # f^3 / 6
)
#: Their derivatives with respect to f, on 1, f, f^2.
_BSPLINE_D = tuple((c[1], 2 * c[2], 3 * c[3]) for c in _BSPLINE)


@lru_cache(maxsize=None)
def _constant(values: tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A small constant tensor, created once per dtype and device.

    Creating it from Python data on every call would copy host -> device each time (a
    synchronisation, and illegal while capturing a CUDA graph).
    """
    return torch.tensor(values, dtype=dtype, device=device)


def bspline_taps(t: Tensor) -> Taps:
    """Cubic B-spline weights at bins ``floor(t) - 1 ... floor(t) + 2``.

    Evaluated as two small matrix products with the powers of the fractional part (a few
    passes over the data instead of ~20 elementwise operations).
    """
    base = t.floor()
    f = (t - base).reshape(1, -1)
    f2 = f * f
    powers = torch.cat([torch.ones_like(f), f, f2, f2 * f])  # (4, n)
    coef = _constant(_BSPLINE, t.dtype, t.device)
    dcoef = _constant(_BSPLINE_D, t.dtype, t.device)
    shape = (4,) + tuple(t.shape)
    weights = (coef @ powers).view(shape)
    derivatives = (dcoef @ powers[:3]).view(shape)
    return Taps(base.long(), weights, derivatives, (-1, 0, 1, 2))


def gaussian_taps(t: Tensor, sd: float = GAUSSIAN_SD) -> Taps:
    """Truncated, renormalised Gaussian weights at bins ``floor(t) - 2 ... floor(t) + 3``."""
    base = t.floor()
    f = t - base
    offsets = (-2, -1, 0, 1, 2, 3)
    shape = (len(offsets),) + (1,) * t.dim()
    u = f - _constant(tuple(float(o) for o in offsets), t.dtype, t.device).view(shape)  # t - bin: (S, ...)
    g = torch.exp(-0.5 * (u / sd) ** 2)
    dg = -u / (sd * sd) * g
    total = g.sum(dim=0)
    weights = g / total
    derivatives = (dg - weights * dg.sum(dim=0)) / total  # quotient rule
    return Taps(base.long(), weights, derivatives, offsets)


def box_taps(t: Tensor) -> Taps:
    """Zero-order B-spline: weight 1 at the bin containing ``t``, ``floor(t + 1/2)``.

    Bin ``j`` holds ``t`` in ``[j - 1/2, j + 1/2)``, as the discrete histogram's bins; the
    top of the range (``t = bins - 1/2``) falls one past the last bin and is folded back onto
    it by the histogram, so the last bin is closed. The derivative is zero.
    """
    base = (t + 0.5).floor()
    weights = torch.ones_like(t).unsqueeze(0)
    return Taps(base.long(), weights, torch.zeros_like(weights), (0,))


KERNELS: dict[str, Callable[[Tensor], Taps]] = {"bspline": bspline_taps, "gaussian": gaussian_taps, "box": box_taps}

#: A kernel name for both axes, or an ``(x_kernel, y_kernel)`` pair.
KernelArg = str | tuple[str, str]


def axis_kernels(kernel: KernelArg) -> tuple[str, str]:
    """The (x, y) kernel names of a kernel argument, checked against :data:`KERNELS`.

    Raises
    ------
    ValueError
        On an unknown name or a sequence that is not a pair.
    """
    pair = (kernel, kernel) if isinstance(kernel, str) else tuple(kernel)
    if len(pair) != 2 or any(not isinstance(k, str) or k not in KERNELS for k in pair):
        raise ValueError(f"kernel must be one of {tuple(KERNELS)} or an (x, y) pair of them, got {kernel!r}")
    return pair  # type: ignore[return-value]


def kernel_taps(t: Tensor, kernel: str) -> Taps:
    """Tap weights of the named kernel (one of :data:`KERNELS`) at coordinates ``t``."""
    try:
        return KERNELS[kernel](t)
    except KeyError:
        raise ValueError(f"kernel must be one of {tuple(KERNELS)}, got {kernel!r}") from None
