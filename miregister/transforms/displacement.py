"""Dense displacement fields: ``T(x) = x + u(x)`` sampled on a grid (ITK's DisplacementFieldTransform).

The field stores, at each voxel centre ``x`` of its grid (in the *fixed* image's space), the
displacement ``u(x) = T(x) - x`` in mm along the physical axes (LPS), so that ``T`` maps fixed
points to moving points, exactly as an ITK displacement-field image does.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..grid import Grid
from ..warp import sample
from .base import SpatialTransform

__all__ = ["DisplacementField"]


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

    def displacement_field(self, grid: Grid, dtype: torch.dtype = torch.float32) -> Tensor:
        """Displacement ``(B, *grid.shape, D)`` in mm on ``grid``; the stored field if the grids agree."""
        if grid.same_as(self.grid):
            return self.field.to(dtype)
        return super().displacement_field(grid, dtype)

    def extra_repr(self) -> str:
        return f"ndim={self.ndim}, batch_size={self.batch_size}, size={self.grid.size}"
