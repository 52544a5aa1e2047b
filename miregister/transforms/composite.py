"""Composition of transforms in ITK ``CompositeTransform`` order.

``Composite([t0, t1, ..., tn])`` is ``T(x) = t0(t1(...tn(x)))``: the **last** transform in the
list is applied **first** to a fixed-space point. This is the order of ITK's
``CompositeTransform`` (transforms are kept in a stack; the one added last acts first) and
hence of ANTs/SimpleITK composite ``.h5`` files, so a list read from such a file can be used
as is. Typical use: ``Composite([affine, deformable])`` -- the deformable transform acts in the
fixed space and the affine then carries the points to the moving space.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .base import SpatialTransform

__all__ = ["Composite"]


class Composite(SpatialTransform):
    """Chain of fixed -> moving transforms, ``T(x) = t0(t1(...tn(x)))`` (ITK order, last acts first).

    Parameters
    ----------
    transforms : sequence of SpatialTransform
        All of the same dimension; batch sizes equal or 1 (a batch of 1 is broadcast).

    Notes
    -----
    Parameters of all members are parameters of the composite (an ``nn.ModuleList``); freeze
    a stage with ``requires_grad_(False)`` on that member.
    """

    def __init__(self, transforms: Sequence[SpatialTransform]) -> None:
        super().__init__()
        transforms = list(transforms)
        if not transforms:
            raise ValueError("a composite needs at least one transform")
        ndims = {t.ndim for t in transforms}
        if len(ndims) != 1:
            raise ValueError(f"all transforms of a composite must have the same dimension, got {sorted(ndims)}")
        batches = {t.batch_size for t in transforms} - {1}
        if len(batches) > 1:
            raise ValueError(f"batch sizes of a composite must be equal or 1, got {sorted(batches)}")
        self.transforms = nn.ModuleList(transforms)
        self.ndim = ndims.pop()
        self.batch_size = batches.pop() if batches else 1

    def __len__(self) -> int:
        return len(self.transforms)

    def __getitem__(self, index: int) -> SpatialTransform:
        return self.transforms[index]

    @property
    def is_linear(self) -> bool:
        """True when every member is linear."""
        return all(t.is_linear for t in self.transforms)

    def forward(self, points: Tensor) -> Tensor:
        """Map points ``(B, ..., D)`` (fixed, mm) to moving space (mm), last member first."""
        for t in reversed(self.transforms):
            if t.batch_size == 1 and points.shape[0] > 1:
                # a shared (B = 1) stage is one function for every pair: fold the batch into the points
                points = t(points.reshape(1, -1, self.ndim)).reshape(points.shape)
            else:
                if points.shape[0] == 1 and t.batch_size > 1:
                    points = points.expand(t.batch_size, *points.shape[1:])
                points = t(points)
        return points

    def displacement_field(self, grid, dtype: torch.dtype = torch.float32) -> Tensor:
        """Displacement ``T(x) - x`` (mm) at every voxel of ``grid``: ``(B, *grid.shape, D)``.

        The innermost member (the one acting first, usually the deformable stage) is evaluated
        with its own dense fast path on ``grid``; the outer members then map the points.
        """
        field = self.transforms[-1].displacement_field(grid, dtype=dtype)
        points = grid.points(dtype=field.dtype, device=field.device).unsqueeze(0)
        mapped = points + field
        if len(self.transforms) > 1:
            mapped = Composite(list(self.transforms)[:-1])(mapped)
        return mapped - points

    def inverse(self) -> "Composite":
        """The inverse mapping (moving mm -> fixed mm): the members' inverses in reverse order,
        ``T^-1 = tn^-1 o ... o t0^-1`` (detached; see each member's ``inverse``)."""
        return Composite([t.inverse() for t in reversed(self.transforms)])

    def affine_matrix(self) -> Tensor:
        """Homogeneous ``(B, D+1, D+1)`` product ``M0 @ M1 @ ... @ Mn`` (only when all are linear)."""
        if not self.is_linear:
            raise TypeError("affine_matrix() is only defined for a composite of linear transforms")
        matrices = [t.affine_matrix() for t in self.transforms]
        dtype = matrices[0].dtype
        for m in matrices[1:]:
            dtype = torch.promote_types(dtype, m.dtype)
        out = matrices[0].to(dtype)
        for m in matrices[1:]:
            out = out @ m.to(dtype)  # broadcasts a batch of 1
        return out.expand(self.batch_size, *out.shape[1:]) if out.shape[0] == 1 else out
