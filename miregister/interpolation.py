"""Interpolation of image values at points: the one routine that warps, transforms and the
pyramid sample images with.

Conventions
-----------
* Image tensors are ``(B, C, *spatial)`` (``spatial = ([Z,] Y, X)``), point tensors
  ``(B, ..., D)`` with the last axis ``(x, y[, z])`` in mm (physical space, ITK/LPS).
  The batch holds independent pairs; a batch of 1 (image or points) is broadcast against the other.
* Values come from ``torch.nn.functional.grid_sample`` with ``align_corners=True`` after one
  affine map mm -> normalised coordinates built from the image's :class:`~miregister.grid.Grid`
  (spacing, origin and direction included), or from the cubic B-spline sampler of
  :mod:`miregister.cubic`. ``grid_sample`` is used rather than scipy because it runs on the GPU
  and is differentiable with respect to the points.
* A point is *inside* the image when its continuous index lies within
  ``[-m, size - 1 + m]`` along every axis, ``m = max(margin, 1e-3)`` (the 1e-3 voxel slack
  absorbs round-off of points on the outermost voxel centres).
  ``margin=0`` (default) is the hull of the voxel centres, where interpolation needs no
  made-up values. ``margin=0.5`` is ITK/SimpleITK's rule: points up to half a voxel beyond the
  outer centres take the border value. Outside points get ``padding_value``.

Modes
-----
``"linear"``: (bi/tri)linear. ``"nearest"``: nearest voxel; integer images keep their dtype and
values (label maps). ``"bspline"``: cubic B-spline interpolation of the image after the exact
B-spline interpolation prefilter (as ``scipy.ndimage.map_coordinates(order=3, mode="mirror")``
and ``sitk.sitkBSpline``), computed here with mirror boundaries.
"""
from __future__ import annotations

import functools
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .cubic import bspline_prefilter, bspline_sample
from .grid import Grid, apply_affine

__all__ = [
    "sample", "sample_normalized", "sample_at_indices", "resample_grid", "check_mode", "physical_to_normalized",
    "physical_to_index", "INSIDE_TOLERANCE", "Mode",
]

Mode = Literal["linear", "nearest", "bspline"]

#: Slack (in voxels) when deciding whether a point is inside: absorbs float32 round-off of
#: points that lie exactly on the outermost voxel centres.
INSIDE_TOLERANCE = 1e-3


# ---------------------------------------------------------------------- helpers
def check_mode(mode: str) -> None:
    if mode not in ("linear", "nearest", "bspline"):
        raise ValueError(f"mode must be 'linear', 'nearest' or 'bspline', got {mode!r}")


@functools.lru_cache(maxsize=64)
def physical_to_normalized(grid: Grid) -> Tensor:
    """Cached float64 mm -> normalised matrix of ``grid`` (Grid is frozen and hashable); read-only."""
    return grid.physical_to_normalized_matrix()


@functools.lru_cache(maxsize=64)
def physical_to_index(grid: Grid) -> Tensor:
    """Cached float64 mm -> continuous index matrix of ``grid``; read-only."""
    return grid.physical_to_index_matrix()


@functools.lru_cache(maxsize=64)
def _normalized_to_index(grid: Grid) -> Tensor:
    """Cached float64 normalised -> index matrix of ``grid``; read-only."""
    return grid.normalized_to_index_matrix()


@functools.lru_cache(maxsize=64)  # a registration asks for the same bounds at every evaluation
def _normalized_bounds(grid: Grid, margin: float, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-axis ``(lo, hi)`` limits, in normalised coordinates, of the inside region.

    Uses the same index <-> normalised map as :meth:`Grid.normalized_to_index_matrix`
    (``index = (n + 1) * half`` with ``half = max(size - 1, 1) / 2``). Cached: read-only.
    """
    slack = max(margin, INSIDE_TOLERANCE)  # a positive margin is an exact rule (ITK's), no extra slack
    half = torch.tensor([max(s - 1, 1) / 2.0 for s in grid.size], dtype=torch.float64)
    size = torch.tensor(grid.size, dtype=torch.float64)
    lo = -slack / half - 1.0
    hi = (size - 1.0 + slack) / half - 1.0
    return lo.to(dtype=dtype, device=device), hi.to(dtype=dtype, device=device)


@functools.lru_cache(maxsize=64)
def _index_bounds(grid: Grid, margin: float, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-axis ``(lo, hi)`` limits ``(D, 1)``, in continuous indices (x first), of the inside
    region: ``[-m, size - 1 + m]``, ``m = max(margin, INSIDE_TOLERANCE)``. Cached: read-only."""
    slack = max(margin, INSIDE_TOLERANCE)
    size = torch.tensor(grid.size, dtype=torch.float64)
    lo = torch.full_like(size, -slack)
    return lo.to(dtype=dtype, device=device)[:, None], (size - 1.0 + slack).to(dtype=dtype, device=device)[:, None]


def _broadcast_batch(moving: Tensor, coords: Tensor) -> tuple[Tensor, Tensor]:
    """Broadcast a batch of 1 in the image or in the coordinates against the other."""
    bm, bc = moving.shape[0], coords.shape[0]
    if bm == bc:
        return moving, coords
    if bm == 1:
        return moving.expand(bc, *moving.shape[1:]), coords
    if bc == 1:
        return moving, coords.expand(bm, *coords.shape[1:])
    raise ValueError(f"batch sizes of image ({bm}) and points/transform ({bc}) differ and neither is 1")


def sample_normalized(
    moving: Tensor,
    moving_grid: Grid,
    coords: Tensor,
    mode: str,
    padding_value: float,
    margin: float,
    prefiltered: bool = False,
) -> tuple[Tensor, Tensor]:
    """Sample ``moving`` at normalised coordinates ``coords`` ``(B, ..., D)``; see :func:`sample`."""
    check_mode(mode)
    d = moving_grid.ndim
    if moving.dim() != d + 2 or tuple(moving.shape[2:]) != moving_grid.shape:
        raise ValueError(f"moving image of shape {tuple(moving.shape)} does not match (B, C, *{moving_grid.shape})")
    if coords.shape[-1] != d:
        raise ValueError(f"points must have {d} coordinates in the last axis, got shape {tuple(coords.shape)}")
    in_dtype = moving.dtype
    if not moving.is_floating_point():  # label maps: float64 holds integers exactly
        moving = moving.to(torch.float64)
    coords = coords.to(moving.dtype)
    moving, coords = _broadcast_batch(moving, coords)
    b, c = moving.shape[:2]
    out_shape = coords.shape[1:-1]

    lo, hi = _normalized_bounds(moving_grid, margin, coords.dtype, coords.device)
    inside = ((coords >= lo) & (coords <= hi)).all(dim=-1)

    if mode == "bspline":
        coefficients = moving if prefiltered else bspline_prefilter(moving)
        to_index = _normalized_to_index(moving_grid)
        index = apply_affine(to_index, coords.reshape(b, -1, d))
        values = bspline_sample(coefficients, index)
    else:
        # grid_sample wants (B, *out_spatial, D) with len(out_spatial) == D; flatten to a line.
        sample_grid = coords if coords.dim() == d + 2 else coords.reshape(b, -1, *([1] * (d - 1)), d)
        values = F.grid_sample(
            moving,
            sample_grid,
            mode="bilinear" if mode == "linear" else "nearest",
            padding_mode="border",  # values beyond the hull are masked below; border keeps gradients finite
            align_corners=True,
        )
    values = values.reshape(b, c, *out_shape)
    values = torch.where(inside.unsqueeze(1), values, torch.as_tensor(padding_value, dtype=values.dtype, device=values.device))
    if not in_dtype.is_floating_point:  # labels stay labels; interpolated integers become float32
        values = values.round().to(in_dtype) if mode == "nearest" else values.to(torch.float32)
    return values, inside


def sample_at_indices(
    moving: Tensor,
    moving_grid: Grid,
    index: Tensor,
    mode: Mode = "linear",
    padding_value: float = 0.0,
    margin: float = 0.0,
    prefiltered: bool = False,
) -> tuple[Tensor, Tensor]:
    """Sample a float image at continuous indices of its grid, given axis first.

    The layout of a registration's metric: its points are mapped as ``(D, D) @ (D, N)``
    products, ~20x faster on the CPU than ``(N, D) @ (D, D)``, and the cubic sampler works
    axis first.

    Parameters
    ----------
    moving : Tensor
        ``(B, C, *moving_grid.shape)`` float image (or its B-spline coefficients, ``prefiltered``).
    moving_grid : Grid
        Geometry of ``moving``.
    index : Tensor
        ``(B, D, N)`` continuous indices, x first (voxel units; 0 is the first voxel centre).
    mode, padding_value, margin, prefiltered
        As :func:`sample` (``"nearest"`` is not offered here).

    Returns
    -------
    values : Tensor
        ``(B, C, N)``, differentiable with respect to ``index`` (and ``moving``).
    inside : Tensor
        ``(B, N)`` bool, True where the index lies inside the image (module notes).
    """
    if mode not in ("linear", "bspline"):
        raise ValueError(f"mode must be 'linear' or 'bspline' here, got {mode!r}")
    d = moving_grid.ndim
    if moving.dim() != d + 2 or tuple(moving.shape[2:]) != moving_grid.shape or not moving.is_floating_point():
        raise ValueError(f"moving image of shape {tuple(moving.shape)} must be a float (B, C, *{moving_grid.shape})")
    if index.dim() != 3 or index.shape[1] != d:
        raise ValueError(f"indices must have shape (B, {d}, N), got {tuple(index.shape)}")
    moving, index = _broadcast_batch(moving, index.to(moving.dtype))
    b, c = moving.shape[:2]
    lo, hi = _index_bounds(moving_grid, margin, index.dtype, index.device)
    inside = ((index >= lo) & (index <= hi)).all(dim=1)
    if mode == "bspline":
        values = bspline_sample(moving if prefiltered else bspline_prefilter(moving), index, axis_first=True)
    else:
        half = _normalized_to_index(moving_grid).diagonal()[:d].to(dtype=index.dtype, device=index.device)
        coords = (index / half[:, None] - 1.0).transpose(1, 2)  # grid_sample's [-1, 1], (B, N, D)
        values = F.grid_sample(
            moving, coords.reshape(b, -1, *([1] * (d - 1)), d), mode="bilinear", padding_mode="border", align_corners=True,
        ).reshape(b, c, -1)
    padding = torch.as_tensor(padding_value, dtype=values.dtype, device=values.device)
    return torch.where(inside.unsqueeze(1), values, padding), inside


# ---------------------------------------------------------------------- public API
def sample(
    moving: Tensor,
    moving_grid: Grid,
    points: Tensor,
    mode: Mode = "linear",
    padding_value: float = 0.0,
    margin: float = 0.0,
    prefiltered: bool = False,
) -> tuple[Tensor, Tensor]:
    """Sample moving-image intensities at physical points.

    Parameters
    ----------
    moving : Tensor
        ``(B, C, *moving_grid.shape)`` image values (any dtype; integers only make sense with
        ``mode="nearest"``, which then keeps them).
    moving_grid : Grid
        Geometry of ``moving`` (spacing, origin, direction; mm).
    points : Tensor
        ``(B, ..., D)`` physical points in the moving image's space (mm), e.g. ``T(x)`` for fixed
        points ``x``. A batch of 1 broadcasts against the image batch and vice versa.
    mode : {"linear", "nearest", "bspline"}
        Interpolation.
    padding_value : float
        Value returned for points outside the moving image.
    margin : float
        Extra voxels beyond the outermost voxel centres still counted as inside (values there
        are border-clamped); 0 = voxel-centre hull, 0.5 = SimpleITK's rule.
    prefiltered : bool
        For ``"bspline"`` only: ``moving`` already holds :func:`bspline_prefilter` coefficients
        (saves the prefilter when sampling the same image repeatedly).

    Returns
    -------
    values : Tensor
        ``(B, C, ...)`` sampled intensities: integer images keep their dtype with ``"nearest"``
        and become float32 otherwise; float images keep their dtype.
        Differentiable with respect to ``points`` (and ``moving``).
    inside : Tensor
        ``(B, ...)`` bool, True where the point fell inside the moving image.
    """
    matrix = physical_to_normalized(moving_grid)
    work_dtype = points.dtype if points.is_floating_point() else torch.float32
    coords = apply_affine(matrix, points.to(work_dtype))  # one fused affine: mm -> [-1, 1]
    return sample_normalized(moving, moving_grid, coords, mode, padding_value, margin, prefiltered)


def resample_grid(data: Tensor, src: Grid, dst: Grid, mode: str = "bilinear",
                      padding_mode: str = "border") -> Tensor:
    """Sample ``data`` ``(B, C, *src.shape)`` at the voxel centres of ``dst``: ``(B, C, *dst.shape)``.

    Both grids live in the same physical space (no transform). The index -> normalised map is
    composed in float64 so that only the final coordinates are rounded to the data dtype.
    """
    if not data.is_floating_point():
        data = data.to(torch.float32)
    matrix = src.physical_to_normalized_matrix() @ dst.index_to_physical_matrix()
    coords = apply_affine(matrix, dst.indices(dtype=torch.float64, device=data.device))
    coords = coords.to(data.dtype).unsqueeze(0).expand(data.shape[0], *coords.shape)
    return F.grid_sample(data, coords, mode=mode, padding_mode=padding_mode, align_corners=True)
