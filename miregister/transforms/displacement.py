"""Dense displacement fields: ``T(x) = x + u(x)`` sampled on a grid (ITK's DisplacementFieldTransform).

The field stores, at each voxel centre ``x`` of its grid (in the *fixed* image's space), the
displacement ``u(x) = T(x) - x`` in mm along the physical axes (LPS), so that ``T`` maps fixed
points to moving points, exactly as an ITK displacement-field image does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..grid import Grid
from ..interpolation import sample
from .base import SpatialTransform

__all__ = ["DisplacementField", "invert_displacement", "jacobian_determinant_image"]


class DisplacementField(SpatialTransform):
    """A fixed -> moving transform given by a displacement field on a grid.

    Parameters
    ----------
    grid : Grid
        Where the displacements are given (fixed physical space, mm).
    field : Tensor
        ``(B, *grid.shape, D)`` (or ``(*grid.shape, D)`` for B = 1) displacements in mm, last
        axis ``(x, y[, z])`` physical.
    requires_grad : bool
        Make the field an optimisable ``nn.Parameter`` (default: a buffer).

    Notes
    -----
    Between voxel centres ``u`` is interpolated linearly. Following ITK's
    ``DisplacementFieldTransform``, points up to half a voxel beyond the outermost voxel
    centres take the border displacement and points further out get **zero** displacement
    (``T(x) = x``).
    """

    def __init__(self, grid: Grid, field: Tensor, requires_grad: bool = False) -> None:
        super().__init__()
        field = torch.as_tensor(field)
        if not field.is_floating_point():
            field = field.to(torch.float32)
        if field.dim() == grid.ndim + 1:
            field = field.unsqueeze(0)
        if field.dim() != grid.ndim + 2 or tuple(field.shape[1:]) != (*grid.shape, grid.ndim):
            raise ValueError(f"field of shape {tuple(field.shape)} does not match (B, *{grid.shape}, {grid.ndim})")
        self.grid = grid
        self.ndim = grid.ndim
        self.batch_size = int(field.shape[0])
        if requires_grad:
            self.field = nn.Parameter(field)
        else:
            self.register_buffer("field", field)

    @classmethod
    def from_transform(cls, transform: SpatialTransform, grid: Grid, dtype: torch.dtype = torch.float32) -> "DisplacementField":
        """Sample any transform's displacement ``T(x) - x`` on ``grid`` (detached)."""
        with torch.no_grad():
            return cls(grid, transform.displacement_field(grid, dtype=dtype))

    def forward(self, points: Tensor) -> Tensor:
        """Map points ``(B, ..., D)`` in fixed space (mm) to moving space (mm): ``x + u(x)``."""
        channels = self.field.movedim(-1, 1).to(points.dtype)  # (B, D, *shape)
        u, _ = sample(channels, self.grid, points, mode="linear", padding_value=0.0, margin=0.5)
        return points + u.movedim(1, -1)

    def inverse(self, iterations: int = 50, tolerance: float = 1e-3) -> "DisplacementField":
        """The inverse mapping (moving mm -> fixed mm) as a displacement field on the same grid.

        Solved numerically (:func:`invert_displacement`), as ITK's
        ``InvertDisplacementFieldImageFilter`` and ANTs' inverse warps are: exact at the voxel
        centres up to ``tolerance`` where the field is invertible (Jacobian determinant well
        above 0), approximate where it folds. Detached.
        """
        with torch.no_grad():
            return DisplacementField(self.grid, invert_displacement(self.field, self.grid, iterations, tolerance))

    def displacement_field(self, grid: Grid, dtype: torch.dtype = torch.float32) -> Tensor:
        """Displacement ``(B, *grid.shape, D)`` in mm on ``grid``: the stored values where ``grid``
        is this field's grid or one of its slabs (:meth:`Grid.slab`, as the file writers ask
        for it), interpolated otherwise."""
        planes = self.grid.slab_range(grid)
        if planes is not None:
            return self.field[:, planes[0]:planes[1]].to(dtype)
        return super().displacement_field(grid, dtype)

    def extra_repr(self) -> str:
        return f"ndim={self.ndim}, batch_size={self.batch_size}, size={self.grid.size}"


#: Voxels per slab of :func:`invert_displacement` (its work is ~150 bytes a voxel of a slab).
INVERSE_SLAB_VOXELS = 1 << 18


@torch.no_grad()
def invert_displacement(
    field: Tensor,
    grid: Grid,
    iterations: int = 50,
    tolerance: float = 1e-3,
    transform: SpatialTransform | None = None,
    polish: int = 2,
) -> Tensor:
    """Displacement ``v`` of the inverse of ``T(x) = x + u(x)`` on the same grid.

    Parameters
    ----------
    field : Tensor
        ``u``, ``(B, *grid.shape, D)`` in mm (fixed -> moving).
    grid : Grid
        Where ``u`` is given; ``v`` is given on the same voxels (they stand for moving-space
        points ``y`` now).
    iterations : int
        Most fixed-point iterations.
    tolerance : float
        Stop when ``|y + v(y) + u(y + v(y)) - y|`` is below ``tolerance`` times the smallest
        spacing at every voxel (mm / mm).
    transform : SpatialTransform, optional
        ``T`` itself when it is known between voxel centres (e.g. a B-spline): after the
        iterations on the linearly interpolated ``field``, ``polish`` more evaluate ``T``
        exactly, which halves the error of ``T^-1(T(x))`` on coarse grids.
    polish : int
        Iterations with ``transform`` (only when it is given).

    Returns
    -------
    Tensor
        ``v`` ``(B, *grid.shape, D)`` in mm with ``T(y + v(y)) = y``, so ``T^-1(y) = y + v(y)``.

    Notes
    -----
    The fixed-point iteration ``v <- -u(y + v)`` from ``v = -u`` (Chen et al. 2008, the scheme
    of ITK's ``InvertDisplacementFieldImageFilter``), ``u`` linear between voxel centres, run on
    slabs of :data:`INVERSE_SLAB_VOXELS` voxels; each voxel stops once its residual is below
    the tolerance. It
    converges where the mapping is a contraction's perturbation (``|grad u| < 1``), i.e.
    wherever ``T`` is well invertible; where ``T`` folds there is no inverse and ``v`` is a
    compromise. Outside the grid ``T`` is the identity, so is ``T^-1``.
    """
    d = grid.ndim
    dtype, device = field.dtype, field.device
    # The iteration runs in grid_sample's normalised coordinates (align_corners=True), where a
    # voxel's position is fixed and only its offset changes: one grid_sample and two adds per
    # iteration, no mm <-> index maps of every point (an (N, D) @ (D, D) product per step cost
    # more than the lookup itself).
    to_normalized = grid.physical_to_normalized_matrix()[:d, :d]  # mm offsets -> normalised offsets
    to_mm = torch.linalg.inv(to_normalized).to(dtype=dtype, device=device)
    batch = field.shape[0]
    flat = field.detach().reshape(batch, -1, d).transpose(1, 2)  # (B, D, N) mm, a view
    channels = (to_normalized.to(dtype=dtype, device=device) @ flat).reshape(batch, d, *grid.shape)
    half = grid.normalized_to_index_matrix().diagonal()[:d]  # index -> normalised: i / half - 1
    limit = tolerance * min(grid.spacing)
    out = torch.empty_like(field)
    # Voxel by voxel the iteration is independent of the others, so it runs slab by slab (planes
    # along the slowest axis), which bounds the memory of a 1 mm field's temporaries.
    lookup_shape = (batch, -1, *(1,) * (d - 1), d)  # grid_sample's points layout for a list of points
    for lo, hi in grid.slabs(INVERSE_SLAB_VOXELS):
        shape = (hi - lo, *grid.shape[1:])
        index = grid.slab(lo, hi).indices(dtype=torch.float64)  # (*shape, D), x first, the slab's own
        index[..., d - 1] += lo  # the whole grid's index along the slab axis
        base = (index / half - 1.0).to(dtype=dtype, device=device).reshape(1, -1, d)  # (1, N, D) normalised
        w = -channels[:, :, lo:hi].reshape(batch, d, -1)  # (B, D, N) normalised offsets; v = -u to start
        # A voxel whose residual is below the limit has converged and is left out of the later
        # lookups: after three iterations a few % of a B-spline's voxels still move.
        at: Tensor | None = None  # the voxels still iterated; None: all of them
        for _ in range(iterations):
            moving = w if at is None else w[:, :, at]
            points = (base if at is None else base[:, at]) + moving.transpose(1, 2)
            # u continued by its border values: with T's zero displacement outside, rim voxels whose
            # y + v leaves the grid would flip between two values for ever
            u = F.grid_sample(channels, points.reshape(lookup_shape), mode="bilinear", padding_mode="border",
                              align_corners=True).reshape(batch, d, -1)
            residual = to_mm @ (moving + u)  # (B, D, n) mm, zero at the solution
            if at is None:
                w = -u
            else:
                w[:, :, at] = -u
            # the squared length as a sum over contiguous rows: norm(dim=1) reduces across a
            # stride of n and cost twice the lookup
            still = (sum(residual[:, k].square() for k in range(d)) >= limit * limit).any(0)
            at = still.nonzero().squeeze(1) if at is None else at[still]
            if not at.numel():
                break
        v = (to_mm @ w).transpose(1, 2).contiguous()  # (B, N, D) mm
        if transform is not None:
            v = _polish(transform, grid.slab(lo, hi), v, polish, limit)
        out[:, lo:hi] = v.reshape(batch, *shape, d)
    return out


def _polish(transform: SpatialTransform, grid: Grid, v: Tensor, steps: int, limit: float) -> Tensor:
    """More fixed-point steps ``v <- v - (T(y + v) - y)`` with ``T`` itself, from near the solution.

    ``v`` ``(B, N, D)`` mm at the voxels of ``grid``. A voxel whose last step moved it less than
    ``limit`` mm has converged (the next step would be smaller still, by the contraction) and
    is left out of the later steps: ``T`` between voxel centres is the costly part.
    """
    points = grid.points(dtype=v.dtype, device=v.device).reshape(1, -1, grid.ndim)
    at: Tensor | None = None  # indices of the voxels still moving; None: all of them
    for _ in range(steps):
        if at is None:
            step = transform(points + v) - points
            v = v - step
            at = (step.square().sum(-1).amax(0) > limit * limit).nonzero().squeeze(1)
        elif at.numel():
            step = transform(points[:, at] + v[:, at]) - points[:, at]
            v[:, at] -= step
            at = at[step.square().sum(-1).amax(0) > limit * limit]
    return v


@torch.no_grad()
def jacobian_determinant_image(transform: SpatialTransform, grid: Grid, index: int = 0):
    """The Jacobian determinant of a fixed -> moving transform at every voxel of ``grid``.

    Parameters
    ----------
    transform : SpatialTransform
        Any transform (a linear one gives ``det(A)`` everywhere).
    grid : Grid
        Normally the fixed image's grid.
    index : int
        Which pair of a batched transform.

    Returns
    -------
    Image
        One channel, float32, on ``grid``: ``det(dT/dx)``, dimensionless: > 1 where a fixed
        voxel's volume maps onto more moving volume, < 1 onto less, <= 0 where the mapping folds.
        Computed by :func:`miregister.regularizers.transform_jacobian` (second-order finite
        differences in physical mm, in slabs): for a composite whose members acting after the
        deformable one are linear (``Composite([affine, bspline])``), the deformable member's
        determinant (the one a run's validation computed) times ``det(A)`` of the linear ones,
        which is what the finite differences of the whole composite give.
    """
    from ..image import Image
    from ..regularizers import transform_jacobian

    members = list(getattr(transform, "transforms", [transform]))
    pick = index if transform.batch_size > 1 else 0
    if all(member.is_linear for member in members):
        factor = _linear_determinant(members)[pick]
        return Image(torch.full((1, *grid.shape), float(factor), dtype=torch.float32), grid)
    inner, outer = members[-1], members[:-1]
    if inner.is_linear or not all(member.is_linear for member in outer):
        inner, outer = transform, []
    det = transform_jacobian(inner, grid, statistics=False).determinant
    det = det[index if det.shape[0] > 1 else 0]
    if outer:
        det = (det.double() * _linear_determinant(outer)[pick].cpu()).to(torch.float32)
    return Image(det[None], grid)


def _linear_determinant(members: list[SpatialTransform]) -> Tensor:
    """``det`` of the linear part of linear transforms applied one after another: ``(B,)`` float64."""
    det = torch.ones(1, dtype=torch.float64)
    for member in members:
        matrix = member.affine_matrix().to(torch.float64).cpu()
        d = matrix.shape[-1] - 1
        det = det * torch.linalg.det(matrix[:, :d, :d])
    return det
