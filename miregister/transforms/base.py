"""The contract every spatial transform follows.

A transform maps points of the *fixed* image's physical space (mm, LPS) to points of the
*moving* image's physical space (the ITK convention): ``warped(x) = moving(T(x))`` on the
fixed grid. Transforms are ``nn.Module``s whose parameters gradient descent can move, batched
over ``B`` independent pairs.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..grid import Grid, apply_affine

__all__ = ["SpatialTransform", "LinearTransform"]


class SpatialTransform(nn.Module):
    """Base class: ``forward(points)`` maps fixed-space points to moving-space points.

    Attributes
    ----------
    ndim : int
        Number of spatial dimensions D (2 or 3).
    batch_size : int
        Number B of independent transforms held (one per image pair).
    """

    ndim: int
    batch_size: int

    def forward(self, points: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Map points ``(B, ..., D)`` in fixed physical space (mm) to moving space (mm)."""
        raise NotImplementedError

    @property
    def is_linear(self) -> bool:
        """True for transforms of the form ``T(x) = A x + t``."""
        return False

    def displacement_field(self, grid: Grid, dtype: torch.dtype = torch.float32) -> Tensor:
        """Displacement ``T(x) - x`` in mm at every voxel of ``grid``: shape ``(B, *grid.shape, D)``."""
        device = next((p.device for p in self.parameters()), None)
        if device is None:
            device = next((b.device for b in self.buffers()), torch.device("cpu"))
        points = grid.points(dtype=dtype, device=device).unsqueeze(0).expand(self.batch_size, *grid.shape, grid.ndim)
        return self(points) - points

    def inverse(self) -> "SpatialTransform":
        """The inverse mapping (moving mm -> fixed mm), detached.

        Here, for a non-linear transform defined on a grid (``self.grid``, e.g. a B-spline):
        the inverse displacement on that grid, found numerically
        (:func:`~miregister.transforms.displacement.invert_displacement`, evaluating the
        transform itself between voxel centres). Linear
        transforms, displacement fields, composites and SVFs override this.
        """
        grid = getattr(self, "grid", None)
        if grid is None:
            raise NotImplementedError(f"{type(self).__name__} has no inverse: it is neither linear nor defined on a grid")
        from .displacement import DisplacementField, invert_displacement  # displacement.py imports this module

        dtype = next((p.dtype for p in self.parameters()), torch.float32)
        with torch.no_grad():
            field = self.displacement_field(grid, dtype=dtype)
            return DisplacementField(grid, invert_displacement(field, grid, transform=self))


class LinearTransform(SpatialTransform):
    """A transform ``T(x) = A x + t``; subclasses implement :meth:`affine_matrix`."""

    @property
    def is_linear(self) -> bool:
        return True

    def affine_matrix(self) -> Tensor:
        """Homogeneous matrix ``(B, D+1, D+1)`` mapping fixed mm to moving mm."""
        raise NotImplementedError  # pragma: no cover - abstract

    def forward(self, points: Tensor) -> Tensor:
        """Map points ``(B, ..., D)`` (mm, fixed space) to moving space (mm)."""
        return apply_affine(self.affine_matrix(), points)

    def inverse(self) -> "LinearTransform":
        """The inverse mapping (moving mm -> fixed mm) as an ``Affine`` (exact, detached)."""
        from .linear import Affine  # linear.py imports this module

        matrix = self.affine_matrix().detach()
        return Affine.from_matrix(torch.linalg.inv(matrix.double()), dtype=matrix.dtype).to(matrix.device)
