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
        (..., S) kernel weights, summing to 1 over the last axis.
    derivatives : Tensor
        (..., S) derivatives of the weights with respect to ``t`` (per bin).
    offsets : tuple of int
        The S tap offsets relative to ``base``.
    """

    base: Tensor
    weights: Tensor
    derivatives: Tensor
    offsets: tuple[int, ...]


def bspline_taps(t: Tensor) -> Taps:
    """Cubic B-spline weights at bins ``floor(t) - 1 ... floor(t) + 2``."""
    base = t.floor()
    f = t - base
    g = 1 - f
    f2 = f * f
    f3 = f2 * f
    weights = torch.stack(
        [g * g * g / 6, (3 * f3 - 6 * f2 + 4) / 6, (-3 * f3 + 3 * f2 + 3 * f + 1) / 6, f3 / 6], dim=-1
    )
    derivatives = torch.stack([-0.5 * g * g, 1.5 * f2 - 2 * f, -1.5 * f2 + f + 0.5, 0.5 * f2], dim=-1)
    return Taps(base.long(), weights, derivatives, (-1, 0, 1, 2))


def gaussian_taps(t: Tensor, sd: float = GAUSSIAN_SD) -> Taps:
    """Truncated, renormalised Gaussian weights at bins ``floor(t) - 2 ... floor(t) + 3``."""
    base = t.floor()
    f = t - base
    offsets = (-2, -1, 0, 1, 2, 3)
    u = f.unsqueeze(-1) - torch.tensor(offsets, dtype=t.dtype, device=t.device)  # t - bin
    g = torch.exp(-0.5 * (u / sd) ** 2)
    dg = -u / (sd * sd) * g
    total = g.sum(dim=-1, keepdim=True)
    dtotal = dg.sum(dim=-1, keepdim=True)
    weights = g / total
    derivatives = (dg - weights * dtotal) / total  # quotient rule
    return Taps(base.long(), weights, derivatives, offsets)


KERNELS: dict[str, Callable[[Tensor], Taps]] = {"bspline": bspline_taps, "gaussian": gaussian_taps}


def kernel_taps(t: Tensor, kernel: str) -> Taps:
    """Tap weights of the named kernel (``"bspline"`` or ``"gaussian"``) at coordinates ``t``."""
    try:
        return KERNELS[kernel](t)
    except KeyError:
        raise ValueError(f"kernel must be one of {tuple(KERNELS)}, got {kernel!r}") from None
