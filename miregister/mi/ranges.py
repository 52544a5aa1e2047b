"""Per-batch-element value ranges (min, max) that place the histogram bins.

The range is computed on the input's device without host synchronisation and is
differentiable (through min/max or the interpolated quantiles), so an estimator whose bins
follow the data is still an exactly differentiable function of the samples.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["compute_range", "PercentileShiftRange"]


def _weighted_quantiles(x: Tensor, weights: Optional[Tensor], q: float) -> Tensor:
    """Quantiles ``q`` and ``1 - q`` of each row of ``x`` (B, N) over samples with weight > 0.

    Linear interpolation between order statistics, as ``torch.quantile`` (its "linear"
    method); returns (B, 2).
    """
    inf = torch.finfo(x.dtype).max
    if weights is None:
        n = torch.full((x.shape[0], 1), x.shape[1], device=x.device, dtype=x.dtype)
        xs = x.sort(dim=1).values
    else:
        valid = weights > 0
        n = valid.sum(dim=1, keepdim=True).to(x.dtype)
        # Excluded samples are pushed past the end of the sorted rows.
        xs = torch.where(valid, x, torch.full_like(x, inf)).sort(dim=1).values
    pos = torch.cat([q * (n - 1), (1 - q) * (n - 1)], dim=1)  # (B, 2)
    low = pos.floor().clamp(min=0)
    frac = pos - low
    low_i = low.long()
    high_i = torch.minimum(low_i + 1, (n - 1).clamp(min=0).long())
    x_low = xs.gather(1, low_i)
    x_high = xs.gather(1, high_i)
    return x_low + frac * (x_high - x_low)


def compute_range(
    x: Tensor,
    weights: Optional[Tensor] = None,
    *,
    percentile: float = 0.0,
    gain: float = 0.0,
) -> Tensor:
    """Range (min, max) of each row of ``x`` over its included samples.

    Parameters
    ----------
    x : Tensor
        Samples, shape (B, N).
    weights : Tensor, optional
        Sample weights (B, N); samples with weight 0 are ignored.
    percentile : float
        In [0, 0.5): the range runs from the ``percentile`` to the ``1 - percentile`` quantile
        (a fraction, not per cent: 0.001 is the 0.1% quantile). 0 gives min and max (O(N));
        above 0 the rows are sorted (O(N log N)).
    gain : float
        In [0, 1]: widen the range to ``(lo - gain*|lo|, hi + gain*|hi|)`` (the seed's rule).

    Returns
    -------
    Tensor
        (B, 2): column 0 the lower, column 1 the upper bound, in the units of ``x``.

    Raises
    ------
    ValueError
        If ``percentile`` or ``gain`` is out of bounds.
    """
    if not 0.0 <= percentile < 0.5:
        raise ValueError(f"percentile must be in [0, 0.5), got {percentile}")
    if not 0.0 <= gain <= 1.0:
        raise ValueError(f"gain must be in [0, 1], got {gain}")
    if percentile > 0:
        bounds = _weighted_quantiles(x, weights, percentile)
    elif weights is None:
        # Gathering at argmin/argmax keeps the backward to one scatter of 2 values per row
        # (amin/amax's backward compares every sample with the extremum).
        with torch.no_grad():
            index = torch.stack([x.argmin(dim=1), x.argmax(dim=1)], dim=1)
        bounds = x.gather(1, index)
    else:
        valid = weights > 0
        inf = torch.finfo(x.dtype).max
        lo = torch.where(valid, x, torch.full_like(x, inf)).amin(dim=1)
        hi = torch.where(valid, x, torch.full_like(x, -inf)).amax(dim=1)
        bounds = torch.stack([lo, hi], dim=1)
    if gain > 0:
        lo, hi = bounds.unbind(dim=1)
        bounds = torch.stack([lo - gain * lo.abs(), hi + gain * hi.abs()], dim=1)
    return bounds


class PercentileShiftRange:
    """The seed's range rule: quantiles ``percentile`` and ``1 - percentile``, widened by ``gain``.

    Unlike the seed, the range is computed per batch element (row), over included samples only.

    Parameters
    ----------
    percentile : float
        In [0, 0.5), a fraction.
    gain : float
        In [0, 1].
    """

    def __init__(self, percentile: float = 0.0, gain: float = 0.0) -> None:
        if not 0.0 <= percentile < 0.5:
            raise ValueError(f"percentile must be in [0, 0.5), got {percentile}")
        if not 0.0 <= gain <= 1.0:
            raise ValueError(f"gain must be in [0, 1], got {gain}")
        self.percentile = float(percentile)
        self.gain = float(gain)

    def computeRange(self, x: Tensor, weights: Optional[Tensor] = None) -> Tensor:  # noqa: N802 (seed name)
        """(B, 2) range of the rows of ``x`` (B, N)."""
        return compute_range(x, weights, percentile=self.percentile, gain=self.gain)
