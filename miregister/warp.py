"""Resampling images through spatial transforms, in physical space.

Conventions
-----------
* A transform maps points of the *fixed* image's physical space (mm, LPS) to the *moving*
  image's space, so ``warped(x) = moving(T(x))`` for every voxel centre ``x`` of the fixed grid.
* Image tensors are ``(B, C, *spatial)``; a batch of 1 (image or transform) is broadcast
  against the other.
* Values are interpolated by :mod:`miregister.interpolation` (the project's one sampling
  routine; its docstring gives the inside rule, ``margin`` and the modes). :func:`warp`
  defaults to ``margin=0`` (the hull of the voxel centres), :func:`resample` uses
  SimpleITK's ``margin=0.5``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from .cubic import bspline_prefilter
from .grid import Grid, apply_affine
from .image import Image
from .interpolation import INSIDE_TOLERANCE, Mode, check_mode, physical_to_normalized, sample, sample_normalized

if TYPE_CHECKING:
    from .transforms.base import SpatialTransform

# ``sample``, ``bspline_prefilter`` and ``INSIDE_TOLERANCE`` stay importable from here (public API
# since the first release); they live in :mod:`miregister.interpolation`.
__all__ = ["sample", "warp", "resample", "bspline_prefilter", "INSIDE_TOLERANCE"]


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


#: Fixed voxels per slab of a dense (non-linear) warp without gradients: slabs of the output
#: grid bound the points, displacement and coordinates to ~50 MB (float32) whatever the grid.
DENSE_SLAB_VOXELS = 1 << 20


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
    made by ``F.affine_grid``: no point tensor is built in mm. A non-linear transform is
    evaluated on the fixed grid slab by slab (:data:`DENSE_SLAB_VOXELS` voxels each) when no
    gradient is needed, whole otherwise.
    """
    check_mode(mode)
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
    elif fixed_grid.numel > DENSE_SLAB_VOXELS and fixed_grid.size[-1] > 1 and not _needs_grad(transform):
        # Dense transforms without gradients, slab by slab: the points, the displacement and the
        # sampling coordinates of a 1 mm brain would otherwise take ~1 GB at once.
        parts = [warp(moving, moving_grid, transform, fixed_grid.slab(lo, hi), mode, padding_value, True, margin)
                 for lo, hi in fixed_grid.slabs(DENSE_SLAB_VOXELS)]
        values, inside = torch.cat([v for v, _ in parts], dim=2), torch.cat([i for _, i in parts], dim=1)
        return (values, inside) if return_inside else values
    else:
        # Dense evaluation: transforms with a grid fast path (B-spline, SVF, fields) use it.
        points = fixed_grid.points(dtype=work_dtype, device=device).unsqueeze(0)
        mapped = points + transform.displacement_field(fixed_grid, dtype=work_dtype).to(device)
        coords = apply_affine(physical_to_normalized(moving_grid), mapped)
    values, inside = sample_normalized(moving, moving_grid, coords, mode, padding_value, margin)
    return (values, inside) if return_inside else values


def _needs_grad(transform: "SpatialTransform") -> bool:
    return torch.is_grad_enabled() and any(p.requires_grad for p in transform.parameters())


def resample(
    image: Image,
    transform: "SpatialTransform | None" = None,
    reference: Grid | Image | None = None,
    mode: Mode = "linear",
    default_value: float = 0.0,
    return_inside: bool = False,
) -> Image | tuple[Image, Tensor]:
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
    return_inside : bool
        Also return the boolean ``reference.shape`` mask of the voxels mapped inside ``image``
        (the rule below), which the warp finds anyway.

    Returns
    -------
    Image or (Image, Tensor)
        ``(C, *reference.shape)`` on the reference grid [and the inside mask]. Uses SimpleITK's
        inside rule (half a voxel beyond the outer voxel centres, border-clamped), so results
        match ``sitk.Resample(image, reference, transform, interpolator, default_value)``.
    """
    grid = image.grid if reference is None else (reference.grid if isinstance(reference, Image) else reference)
    if transform is not None and transform.batch_size != 1:
        raise ValueError(f"resample works on one image pair; the transform holds {transform.batch_size} (use warp)")
    with torch.no_grad():
        values, inside = warp(image.data.unsqueeze(0), image.grid, transform, grid, mode=mode, padding_value=default_value,
                              margin=0.5, return_inside=True)
    out = Image(values[0], grid)
    return (out, inside[0]) if return_inside else out
