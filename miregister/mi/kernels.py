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
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable, NamedTuple

import torch
from torch import Tensor

__all__ = ["Taps", "KERNELS", "kernel_taps", "bspline_taps", "gaussian_taps", "GAUSSIAN_SD"]

#: Standard deviation of the Gaussian Parzen kernel, in bins.
GAUSSIAN_SD = 0.5


class Taps(NamedTuple):
    """Weights of one kernel at the taps ``floor(t) + offsets``.

    Attributes
    ----------
    base : Tensor
        ``floor(t)`` as int64, shape (...).
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


KERNELS: dict[str, Callable[[Tensor], Taps]] = {"bspline": bspline_taps, "gaussian": gaussian_taps}


def kernel_taps(t: Tensor, kernel: str) -> Taps:
    """Tap weights of the named kernel (``"bspline"`` or ``"gaussian"``) at coordinates ``t``."""
    try:
        return KERNELS[kernel](t)
    except KeyError:
        raise ValueError(f"kernel must be one of {tuple(KERNELS)}, got {kernel!r}") from None
