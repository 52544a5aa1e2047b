"""Initial alignment: centres of geometry or of intensity mass.

Returns the centre of rotation (in fixed space) and the translation that maps it onto the
corresponding centre of the moving image, as SimpleITK's ``CenteredTransformInitializer`` does
with ``GEOMETRY`` or ``MOMENTS``.
"""
from __future__ import annotations

import numpy as np
import torch

from ..image import Image

__all__ = ["center_of_mass", "initial_centers"]


def center_of_mass(image: Image, mask: torch.Tensor | None = None) -> np.ndarray:
    """Intensity-weighted centre (mm) of the first channel of ``image``, shape ``(D,)``.

    Intensities are shifted so that the 2nd percentile is zero and clipped below, so that
    background noise and negative values (CT) do not pull the centre; falls back to the grid
    centre when no weight is left.
    """
    data = image.data[0].detach().to(torch.float64).cpu()
    low = torch.quantile(data.reshape(-1)[:: max(1, data.numel() // 200_000)], 0.02)
    weights = torch.clamp(data - low, min=0.0)
    if mask is not None:
        weights = weights * (mask.detach().cpu().to(torch.float64) > 0)
    total = float(weights.sum())
    if total <= 0.0:
        return image.grid.center()
    # sum_v w(v) i_axis(v) from the weights' marginal along each axis (no (*shape, D) index array)
    d = image.ndim
    mean_index = torch.stack([
        (weights.sum(dim=tuple(a for a in range(d) if a != d - 1 - axis)) * torch.arange(data.shape[d - 1 - axis], dtype=torch.float64)).sum()
        for axis in range(d)  # x-first index axis `axis` is array dimension d - 1 - axis
    ]) / total
    return image.grid.index_to_physical_np(mean_index.numpy())


def initial_centers(
    fixed: Image,
    moving: Image,
    method: str,
    fixed_mask: torch.Tensor | None = None,
    moving_mask: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Centre of rotation (fixed space, mm) and initial translation (mm) for a linear transform.

    Parameters
    ----------
    method : {"moments", "geometry", "none"}
        ``"moments"`` matches centres of intensity mass, ``"geometry"`` the grids' centres,
        ``"none"`` keeps the identity (centre of rotation at the fixed grid's centre).

    Returns
    -------
    center, translation : ndarray
        Each of shape ``(D,)``; the initial transform is ``T(x) = x + translation`` and
        later rotations and scalings act about ``center``.
    """
    if method == "moments":
        c_fixed = center_of_mass(fixed, fixed_mask)
        c_moving = center_of_mass(moving, moving_mask)
    elif method == "geometry":
        c_fixed, c_moving = fixed.grid.center(), moving.grid.center()
    elif method == "none":
        c_fixed = fixed.grid.center()
        c_moving = c_fixed
    else:
        raise ValueError(f"unknown initialization {method!r}; choose 'moments', 'geometry' or 'none'")
    return c_fixed, c_moving - c_fixed
