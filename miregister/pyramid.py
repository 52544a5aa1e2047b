"""Gaussian smoothing and multi-resolution pyramids defined in physical units (mm).

Everything here is a differentiable torch operation that runs unchanged on CPU and CUDA.

* :func:`gaussian_smooth` -- separable Gaussian whose sigma is given in mm, per index axis
  ``sigma_voxels = sigma_mm / spacing``; boundaries are replicated (zero-flux Neumann, as ITK).
* :func:`shrink` -- resample onto a coarser grid covering the same physical region, with the
  anisotropy-aware spacing rule ``new_spacing[k] = max(spacing[k], factor[k] * min(spacing))``.
* :func:`pyramid` -- smoothed and shrunk levels, coarse to fine, with default sigmas of half
  the level's spacing (the rule elastix uses: sigma = 0.5 * shrink factor voxels).

Axis order: sigmas, factors and spacings are given in ITK order ``(x, y[, z])``; tensors are
``(B, C, [Z,] Y, X)`` (or ``(C, [Z,] Y, X)`` inside an :class:`~miregister.image.Image`).
"""
from __future__ import annotations

import math
from typing import Sequence, Union, overload

import numpy as np
import torch
from torch import Tensor

from .grid import Grid
from .interpolation import resample_grid
from .image import Image
from .separable import filter_axis

__all__ = ["gaussian_kernel1d", "gaussian_smooth", "shrink", "shrunk_spacing", "pyramid", "default_sigma_mm"]

FloatOrSeq = Union[float, Sequence[float]]

#: Sigmas below this many voxels are treated as "no smoothing" along that axis: the sampled
#: kernel is then a delta to within float32 precision (its neighbour weight is < 1e-27).
MIN_SIGMA_VOXELS = 0.1


def _per_axis(value: FloatOrSeq, ndim: int, name: str) -> tuple[float, ...]:
    """Broadcast a scalar to ``ndim`` floats, or check a sequence has ``ndim`` of them."""
    if isinstance(value, (int, float, np.floating, np.integer)):
        return (float(value),) * ndim
    values = tuple(float(v) for v in value)
    if len(values) != ndim:
        raise ValueError(f"{name} must be a number or {ndim} numbers (x, y[, z]), got {value!r}")
    return values


def gaussian_kernel1d(sigma: float, truncate: float = 4.0, dtype: torch.dtype = torch.float32,
                      device: torch.device | str | None = None) -> Tensor:
    """Sampled, normalised 1D Gaussian with ``sigma`` in voxels, radius ``round(truncate * sigma)``.

    The same kernel as ``scipy.ndimage.gaussian_filter``: ``exp(-i^2 / (2 sigma^2))`` for
    integer ``i`` in ``[-r, r]``, divided by its sum. Shape ``(2r + 1,)``.
    """
    radius = int(truncate * sigma + 0.5)  # scipy's rule
    i = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    kernel = torch.exp(-0.5 * (i / sigma) ** 2)
    return (kernel / kernel.sum()).to(dtype)


@overload
def gaussian_smooth(image: Image, sigma_mm: FloatOrSeq, grid: None = None, truncate: float = 4.0) -> Image: ...
@overload
def gaussian_smooth(image: Tensor, sigma_mm: FloatOrSeq, grid: Grid, truncate: float = 4.0) -> Tensor: ...


def gaussian_smooth(image, sigma_mm, grid=None, truncate=4.0):
    """Smooth with a Gaussian whose standard deviation is given in millimetres.

    Parameters
    ----------
    image : Image or Tensor
        An Image (data ``(C, *shape)``), or a tensor ``(B, C, *shape)`` together with ``grid``.
    sigma_mm : float or sequence of float
        Standard deviation in mm, one value or one per index axis in ITK order ``(x, y[, z])``.
        Along axis ``k`` the kernel has ``sigma_mm[k] / spacing[k]`` voxels; axes where that
        is below :data:`MIN_SIGMA_VOXELS` are left alone.
    grid : Grid, optional
        The grid of a tensor input (only its spacing is used). Not allowed with an Image.
    truncate : float
        Kernel radius in sigmas (default 4, as scipy).

    Returns
    -------
    Image or Tensor
        Same type, shape, dtype and device as the input. Integer input is smoothed as float32.

    Notes
    -----
    Separable filtering (:func:`~miregister.separable.filter_axis`) with a sampled, normalised
    Gaussian (:func:`gaussian_kernel1d`); the borders are replicated, i.e. zero-flux Neumann
    conditions like ITK's ``ZeroFluxNeumannBoundaryCondition``. The result equals
    ``scipy.ndimage.gaussian_filter(x, sigma_voxels, mode="nearest", truncate=truncate)`` and
    approximates ``sitk.SmoothingRecursiveGaussian(x, sigma_mm)``. Differentiable.
    """
    if isinstance(image, Image):
        if grid is not None:
            raise ValueError("pass grid only with a tensor; an Image carries its own grid")
        return image.with_data(gaussian_smooth(image.data.unsqueeze(0), sigma_mm, image.grid, truncate)[0])
    if grid is None:
        raise ValueError("gaussian_smooth on a tensor needs its grid (for the spacing in mm)")
    data = image
    if data.dim() != grid.ndim + 2:
        raise ValueError(f"expected a (B, C, *spatial) tensor with {grid.ndim} spatial axes, got {tuple(data.shape)}")
    sigma = _per_axis(sigma_mm, grid.ndim, "sigma_mm")
    if any(s < 0 or not math.isfinite(s) for s in sigma):
        raise ValueError(f"sigma_mm must be finite and >= 0, got {sigma}")
    if not data.is_floating_point():
        data = data.to(torch.float32)
    out = data
    for k, (s_mm, spacing) in enumerate(zip(sigma, grid.spacing)):
        s_vox = s_mm / spacing
        if s_vox < MIN_SIGMA_VOXELS:
            continue
        kernel = gaussian_kernel1d(s_vox, truncate, dtype=out.dtype, device=out.device)
        out = filter_axis(out, kernel, axis=out.dim() - 1 - k, boundary="replicate")  # ITK axis k is tensor axis -1-k
    return out


# ---------------------------------------------------------------------------------- shrinking
def shrunk_spacing(spacing: Sequence[float], factor: FloatOrSeq) -> tuple[float, ...]:
    """Spacing (mm) of a level shrunk by ``factor``, anisotropy aware.

    ``new_spacing[k] = max(spacing[k], factor[k] * min(spacing))``: the finest axes are
    coarsened by ``factor`` and an axis that is already coarser than that is kept, so the
    levels tend to isotropic voxels. A 1 x 1 x 4 mm image at factor 4 becomes 4 x 4 x 4 mm
    (not 4 x 4 x 16), at factor 2 it becomes 2 x 2 x 4 mm.
    """
    spacing = tuple(float(s) for s in spacing)
    factors = _per_axis(factor, len(spacing), "factor")
    if any(f < 1 or not math.isfinite(f) for f in factors):
        raise ValueError(f"shrink factors must be finite and >= 1, got {factors}")
    finest = min(spacing)
    return tuple(max(s, f * finest) for s, f in zip(spacing, factors))


def shrink(image: Image, factor: FloatOrSeq | None = None, spacing: Sequence[float] | None = None,
           sigma_mm: FloatOrSeq | None = None, mode: str = "bilinear") -> Image:
    """Resample an image onto a coarser grid covering the same physical region.

    Parameters
    ----------
    image : Image
        The image to shrink.
    factor : float or sequence of float, optional
        Shrink factor (>= 1), one or one per axis ``(x, y[, z])``; the new spacing follows
        :func:`shrunk_spacing`. Give exactly one of ``factor`` and ``spacing``.
    spacing : sequence of float, optional
        The new spacing in mm, ITK order (any values; finer than now upsamples).
    sigma_mm : float or sequence of float, optional
        Smooth with :func:`gaussian_smooth` first (anti-aliasing). By default no smoothing:
        :func:`pyramid` smooths, or the caller does.
    mode : {"bilinear", "nearest", "bicubic"}
        Interpolation of ``torch.nn.functional.grid_sample`` ("bilinear" is trilinear in 3D).

    Returns
    -------
    Image
        On ``image.grid.with_spacing(new_spacing)``: same direction and geometric centre,
        ``size = round(old_size * old_spacing / new_spacing)`` (at least 1), so the physical
        extent matches to within half a new voxel on each side. Values are interpolated at
        the new voxel centres, replicating the border where a centre falls just outside the old
        voxel centres. When the spacing does not change the image is returned (smoothed only).
    """
    if (factor is None) == (spacing is None):
        raise ValueError("give exactly one of factor and spacing")
    grid = image.grid
    if factor is not None:
        new_spacing = shrunk_spacing(grid.spacing, factor)
    else:
        new_spacing = _per_axis(spacing, grid.ndim, "spacing")
    if sigma_mm is not None:
        image = gaussian_smooth(image, sigma_mm)
    if np.allclose(new_spacing, grid.spacing, rtol=1e-12, atol=0.0):
        return image
    new_grid = grid.with_spacing(new_spacing)
    data = resample_grid(image.batch(), grid, new_grid, mode=mode)[0]
    return Image(data, new_grid)


# ---------------------------------------------------------------------------------- pyramid
def default_sigma_mm(spacing: Sequence[float], level_spacing: Sequence[float]) -> tuple[float, ...]:
    """Default smoothing (mm) for a level: half the level's spacing along axes that were shrunk.

    ``sigma[k] = 0.5 * level_spacing[k]`` where ``level_spacing[k] > spacing[k]`` and 0 where
    the axis keeps its spacing (so the full-resolution level is not smoothed). In voxels of the
    original image this is ``0.5 * shrink factor``, the rule elastix uses by default.
    """
    return tuple(0.5 * t if t > s * (1 + 1e-9) else 0.0 for s, t in zip(spacing, level_spacing))


def pyramid(image: Image, shrink_factors: Sequence[FloatOrSeq] = (4, 2, 1),
            smoothing_sigmas_mm: Sequence[FloatOrSeq] | None = None, mode: str = "bilinear") -> list[Image]:
    """Multi-resolution levels of ``image``, coarse to fine.

    Parameters
    ----------
    image : Image
        Full-resolution image.
    shrink_factors : sequence
        One factor per level (a number or one per axis ``(x, y[, z])``), coarse first. Level
        spacings follow :func:`shrunk_spacing` (anisotropy aware).
    smoothing_sigmas_mm : sequence, optional
        Gaussian sigma in mm per level (a number or one per axis; 0 = none), as SimpleITK's
        ``SetSmoothingSigmasPerLevel`` with ``SmoothingSigmasAreSpecifiedInPhysicalUnits``.
        By default :func:`default_sigma_mm`: half the level's spacing along shrunk axes.
    mode : str
        Interpolation used to shrink (see :func:`shrink`).

    Returns
    -------
    list of Image
        One image per level. Each level is computed from the full-resolution image (smooth,
        then sample), not from the previous level.
    """
    factors = list(shrink_factors)
    if not factors:
        raise ValueError("shrink_factors must hold at least one level")
    if smoothing_sigmas_mm is not None and len(smoothing_sigmas_mm) != len(factors):
        raise ValueError(
            f"{len(smoothing_sigmas_mm)} smoothing sigmas for {len(factors)} shrink factors; give one per level"
        )
    levels = []
    for i, factor in enumerate(factors):
        spacing = shrunk_spacing(image.grid.spacing, factor)
        sigma = default_sigma_mm(image.grid.spacing, spacing) if smoothing_sigmas_mm is None else smoothing_sigmas_mm[i]
        sigma = _per_axis(sigma, image.ndim, "smoothing sigma")
        smoothed = gaussian_smooth(image, sigma) if any(s > 0 for s in sigma) else image
        levels.append(shrink(smoothed, spacing=spacing, mode=mode))
    return levels
