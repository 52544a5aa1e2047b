"""Resampling images through spatial transforms, in physical space.

Conventions
-----------
* A transform maps points of the *fixed* image's physical space (mm, LPS) to the *moving*
  image's space, so ``warped(x) = moving(T(x))`` for every voxel centre ``x`` of the fixed grid.
* Image tensors are ``(B, C, *spatial)`` (``spatial = ([Z,] Y, X)``), point tensors
  ``(B, ..., D)`` with the last axis ``(x, y[, z])`` in mm. The batch holds independent pairs;
  a batch of 1 (image or transform) is broadcast against the other.
* Interpolation uses ``torch.nn.functional.grid_sample`` with ``align_corners=True`` after one
  affine map mm -> normalised coordinates built from the moving :class:`~miregister.grid.Grid`
  (spacing, origin and direction included).
* A point is *inside* the moving image when its continuous index lies within
  ``[-m, size - 1 + m]`` along every axis, ``m = max(margin, 1e-3)`` (the 1e-3 voxel slack
  absorbs round-off of points on the outermost voxel centres).
  ``margin=0`` (default of :func:`sample` and :func:`warp`) is the hull of the voxel centres,
  where interpolation needs no made-up values. ``margin=0.5`` is ITK/SimpleITK's rule (used by
  :func:`resample`): points up to half a voxel beyond the outer centres take the border value.
  Outside points get ``padding_value``.

Modes
-----
``"linear"``: (bi/tri)linear. ``"nearest"``: nearest voxel; integer images keep their dtype and
values (label maps). ``"bspline"``: cubic B-spline interpolation of the image after the exact
B-spline interpolation prefilter (as ``scipy.ndimage.map_coordinates(order=3, mode="mirror")``
and ``sitk.sitkBSpline``), computed here with mirror boundaries.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .cubic import bspline_prefilter, bspline_sample
from .grid import Grid, apply_affine
from .image import Image

if TYPE_CHECKING:  # transforms import this module (displacement fields sample with it)
    from .transforms.base import SpatialTransform

__all__ = ["sample", "warp", "resample", "bspline_prefilter", "INSIDE_TOLERANCE"]

Mode = Literal["linear", "nearest", "bspline"]

#: Slack (in voxels) when deciding whether a point is inside: absorbs float32 round-off of
#: points that lie exactly on the outermost voxel centres.
INSIDE_TOLERANCE = 1e-3



# ---------------------------------------------------------------------- helpers
def _check_mode(mode: str) -> None:
    if mode not in ("linear", "nearest", "bspline"):
        raise ValueError(f"mode must be 'linear', 'nearest' or 'bspline', got {mode!r}")


@functools.lru_cache(maxsize=64)
def _physical_to_normalized(grid: Grid) -> Tensor:
    """Cached float64 mm -> normalised matrix of ``grid`` (Grid is frozen and hashable); read-only."""
    return grid.physical_to_normalized_matrix()


def _normalized_bounds(grid: Grid, margin: float, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-axis ``(lo, hi)`` limits, in normalised coordinates, of the inside region.

    Uses the same index <-> normalised map as :meth:`Grid.normalized_to_index_matrix`
    (``index = (n + 1) * half`` with ``half = max(size - 1, 1) / 2``).
    """
    slack = max(margin, INSIDE_TOLERANCE)  # a positive margin is an exact rule (ITK's), no extra slack
    half = torch.tensor([max(s - 1, 1) / 2.0 for s in grid.size], dtype=torch.float64)
    size = torch.tensor(grid.size, dtype=torch.float64)
    lo = -slack / half - 1.0
    hi = (size - 1.0 + slack) / half - 1.0
    return lo.to(dtype=dtype, device=device), hi.to(dtype=dtype, device=device)


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


def _sample_normalized(
    moving: Tensor,
    moving_grid: Grid,
    coords: Tensor,
    mode: str,
    padding_value: float,
    margin: float,
    prefiltered: bool = False,
) -> tuple[Tensor, Tensor]:
    """Sample ``moving`` at normalised coordinates ``coords`` ``(B, ..., D)``; see :func:`sample`."""
    _check_mode(mode)
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
        to_index = moving_grid.normalized_to_index_matrix()
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
    matrix = _physical_to_normalized(moving_grid)
    work_dtype = points.dtype if points.is_floating_point() else torch.float32
    coords = apply_affine(matrix, points.to(work_dtype))  # one fused affine: mm -> [-1, 1]
    return _sample_normalized(moving, moving_grid, coords, mode, padding_value, margin, prefiltered)


def _affine_grid_to_physical(grid: Grid) -> Tensor:
    """Homogeneous float64 map from ``F.affine_grid`` coordinates (align_corners=True) to mm.

    ``affine_grid`` puts a size-1 axis at coordinate 0 (not -1), so that axis maps to index 0
    (:func:`warp` avoids ``affine_grid`` for such grids anyway, as it warns about them).
    """
    d = grid.ndim
    m = torch.eye(d + 1, dtype=torch.float64)
    for k, s in enumerate(grid.size):
        if s > 1:
            m[k, k] = m[k, d] = (s - 1) / 2.0
        else:
            m[k, k], m[k, d] = 1.0, 0.0
    return grid.index_to_physical_matrix() @ m


def warp(
    moving: Tensor,
    moving_grid: Grid,
    transform: "SpatialTransform | None",
    fixed_grid: Grid,
    mode: Mode = "linear",
    padding_value: float = 0.0,
    return_inside: bool = False,
    margin: float = 0.0,
) -> Tensor | tuple[Tensor, Tensor]:
    """Resample a moving image batch onto the fixed grid: ``warped(x) = moving(T(x))``.

    Parameters
    ----------
    moving : Tensor
        ``(B, C, *moving_grid.shape)``.
    moving_grid, fixed_grid : Grid
        Geometries (mm) of the moving image and of the output.
    transform : SpatialTransform or None
        Fixed -> moving map (batch ``B`` or 1); ``None`` is the identity.
    mode, padding_value, margin
        As in :func:`sample`.
    return_inside : bool
        Also return the ``(B, *fixed_grid.shape)`` mask of fixed voxels mapped inside ``moving``.

    Returns
    -------
    Tensor or (Tensor, Tensor)
        ``(B, C, *fixed_grid.shape)`` warped image [and the inside mask]. Differentiable with
        respect to the transform's parameters.

    Notes
    -----
    For a linear transform (``transform.is_linear``) the fixed-grid -> mm map, the transform
    and the mm -> moving-normalised map are folded into one affine and the sampling grid is
    made by ``F.affine_grid``: no point tensor is built in mm.
    """
    _check_mode(mode)
    if fixed_grid.ndim != moving_grid.ndim:
        raise ValueError(f"fixed grid is {fixed_grid.ndim}D but moving grid is {moving_grid.ndim}D")
    if transform is not None and getattr(transform, "ndim", fixed_grid.ndim) != fixed_grid.ndim:
        raise ValueError(f"transform is {transform.ndim}D but the grids are {fixed_grid.ndim}D")
    d = fixed_grid.ndim
    work_dtype = moving.dtype if moving.is_floating_point() else torch.float64
    device = moving.device
    if transform is None or transform.is_linear:
        if transform is None:
            theta = torch.eye(d + 1, dtype=torch.float64, device=device).unsqueeze(0)
        else:
            theta = transform.affine_matrix().to(device=device)
            theta = theta.to(torch.promote_types(theta.dtype, torch.float64))
        to_normalized = moving_grid.physical_to_normalized_matrix().to(theta.dtype).to(device)
        from_output = _affine_grid_to_physical(fixed_grid).to(theta.dtype).to(device)
        if 1 in fixed_grid.size:  # affine_grid warns on (and special-cases) unit-size axes
            points = fixed_grid.points(dtype=torch.float64, device=device)
            coords = apply_affine(to_normalized @ theta, points.unsqueeze(0).expand(theta.shape[0], *points.shape))
            coords = coords.to(work_dtype)
        else:
            theta = to_normalized @ theta @ from_output  # (B, D+1, D+1), folded in float64 then cast
            coords = F.affine_grid(theta[:, :d, :].to(work_dtype), [theta.shape[0], 1, *fixed_grid.shape], align_corners=True)
    else:
        # Dense evaluation: transforms with a grid fast path (B-spline, SVF, fields) use it.
        points = fixed_grid.points(dtype=work_dtype, device=device).unsqueeze(0)
        mapped = points + transform.displacement_field(fixed_grid, dtype=work_dtype).to(device)
        coords = apply_affine(_physical_to_normalized(moving_grid), mapped)
    values, inside = _sample_normalized(moving, moving_grid, coords, mode, padding_value, margin)
    return (values, inside) if return_inside else values


def resample(
    image: Image,
    transform: "SpatialTransform | None" = None,
    reference: Grid | Image | None = None,
    mode: Mode = "linear",
    default_value: float = 0.0,
) -> Image:
    """Resample ``image`` onto ``reference`` through ``transform`` (like ``sitk.Resample``).

    Parameters
    ----------
    image : Image
        The moving image ``(C, *shape)``.
    transform : SpatialTransform, optional
        Fixed (reference) -> moving map with ``batch_size == 1``; identity when omitted.
    reference : Grid or Image, optional
        Output geometry; defaults to ``image.grid``.
    mode : {"linear", "nearest", "bspline"}
        Interpolation; use ``"nearest"`` for label maps (integer dtypes are kept).
    default_value : float
        Value of output voxels mapped outside ``image``.

    Returns
    -------
    Image
        ``(C, *reference.shape)`` on the reference grid. Uses SimpleITK's inside rule (half a
        voxel beyond the outer voxel centres, border-clamped), so results match
        ``sitk.Resample(image, reference, transform, interpolator, default_value)``.
    """
    grid = image.grid if reference is None else (reference.grid if isinstance(reference, Image) else reference)
    if transform is not None and transform.batch_size != 1:
        raise ValueError(f"resample works on one image pair; the transform holds {transform.batch_size} (use warp)")
    with torch.no_grad():
        values = warp(image.data.unsqueeze(0), image.grid, transform, grid, mode=mode, padding_value=default_value, margin=0.5)
    return Image(values[0], grid)
