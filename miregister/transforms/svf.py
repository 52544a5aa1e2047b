"""Stationary velocity field (SVF) transform: a diffeomorphism ``phi = exp(v)``.

``v`` is a velocity field in mm on the fixed image grid (or a coarser grid over the same
region). The transform is the time-1 flow of ``dx/dt = v(x)``, computed by scaling and squaring
(Arsigny et al., MICCAI 2006; Ashburner, NeuroImage 38, 2007): ``phi_0 = id + v / 2**steps``,
then ``steps`` self-compositions ``phi <- phi o phi``. It maps fixed-space points (mm) to
moving-space points (mm); its inverse is ``exp(-v)``.

Fields are sampled by linear interpolation in physical space (through ``grid_sample`` with
``align_corners=True``); beyond the grid a displacement takes the value of the nearest
border voxel ("border" padding), so the flow stays defined everywhere.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..grid import Grid
from ..pyramid import gaussian_smooth
from .base import SpatialTransform

__all__ = ["SVF", "sample_field", "integrate_velocity"]


def sample_field(field: Tensor, grid: Grid, points: Tensor) -> Tensor:
    """Linearly interpolate a vector field at physical points.

    Parameters
    ----------
    field : Tensor
        ``(B, C, *grid.shape)`` values on ``grid`` (channel-first).
    grid : Grid
        Where the field's voxels lie (mm).
    points : Tensor
        ``(B, ..., D)`` physical points in mm (a batch of 1 is broadcast to B).

    Returns
    -------
    Tensor
        ``(B, ..., C)``; outside the grid the nearest border value.
    """
    batch = max(field.shape[0], points.shape[0])
    lead = points.shape[1:-1]
    flat = grid.physical_to_normalized(points.reshape(points.shape[0], -1, grid.ndim)).expand(batch, -1, -1)
    spatial_ones = (1,) * (grid.ndim - 1)
    sampled = F.grid_sample(
        field.expand(batch, *field.shape[1:]).to(points.dtype),
        flat.reshape(batch, flat.shape[1], *spatial_ones, grid.ndim),
        mode="bilinear",
        padding_mode="border",
        align_corners=True,
    )
    return sampled.reshape(batch, field.shape[1], -1).transpose(1, 2).reshape(batch, *lead, field.shape[1])


def integrate_velocity(velocity: Tensor, grid: Grid, steps: int) -> Tensor:
    """Exponential of a stationary velocity field by scaling and squaring.

    Parameters
    ----------
    velocity : Tensor
        ``(B, D, *grid.shape)`` velocity in mm (channel-first, components ``(x, y[, z])``).
    grid : Grid
        The field's grid.
    steps : int
        Number of squarings; the field is first scaled by ``2**-steps``.

    Returns
    -------
    Tensor
        Displacement ``exp(v)(x) - x`` in mm, ``(B, D, *grid.shape)`` (channel-first).
    """
    ndim = grid.ndim
    linear = grid.physical_to_normalized_matrix()[:ndim, :ndim].to(velocity.dtype).to(velocity.device)
    identity = grid.physical_to_normalized(grid.points(velocity.dtype, velocity.device))  # (*shape, D)
    displacement = velocity / (2.0**steps)
    for _ in range(steps):
        # u <- u + u o (id + u): composition in physical space, looked up in normalised coords
        channels_last = torch.movedim(displacement, 1, -1)
        where = identity + channels_last @ linear.T
        displacement = displacement + F.grid_sample(
            displacement, where, mode="bilinear", padding_mode="border", align_corners=True
        )
    return displacement


class SVF(SpatialTransform):
    """Stationary velocity field transform ``T = exp(v)`` (fixed mm -> moving mm), diffeomorphic.

    Parameters
    ----------
    grid : Grid
        Fixed image grid on which the flow is integrated.
    batch_size : int, optional
        Number B of independent transforms.
    steps : int, optional
        Scaling-and-squaring steps (the velocity is divided by ``2**steps``).
    control_spacing : float or sequence of float, optional
        If given, ``v`` lives on the coarser grid ``grid.with_spacing(control_spacing)`` (mm)
        and is linearly interpolated onto ``grid`` before integration: fewer parameters, a
        smoother flow.
    smoothing : float or sequence of float, optional
        Gaussian sigma in mm applied to ``v`` on its own grid before integration (a
        "diffusion-like" regulariser acting on the parametrisation). 0 (default) disables it.
    dtype : torch.dtype, optional
        Dtype of the velocity.

    Attributes
    ----------
    velocity : nn.Parameter
        ``(B, D, *velocity_grid.shape)`` in mm (components ``(x, y[, z])``); zeros = identity.
    velocity_grid : Grid
        Where the velocity's voxels lie.

    Notes
    -----
    Nothing is cached: every call integrates the flow again, so gradients always reach
    :attr:`velocity`. Beyond ``grid`` the displacement of the nearest border voxel applies.
    To save it as an ITK transform, sample it: ``DisplacementField.from_transform(svf, grid)``.
    """

    def __init__(
        self,
        grid: Grid,
        batch_size: int = 1,
        steps: int = 7,
        control_spacing: float | Sequence[float] | None = None,
        smoothing: float | Sequence[float] = 0.0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        self.grid = grid
        self.ndim = grid.ndim
        self.batch_size = int(batch_size)
        self.steps = int(steps)
        self.control_spacing = control_spacing
        self.smoothing = smoothing
        if control_spacing is None:
            self.velocity_grid = grid
        else:
            scalar = np.ndim(control_spacing) == 0
            spacing = (float(control_spacing),) * grid.ndim if scalar else tuple(float(s) for s in control_spacing)
            self.velocity_grid = grid.with_spacing(spacing)
        self.velocity = nn.Parameter(torch.zeros(batch_size, grid.ndim, *self.velocity_grid.shape, dtype=dtype))

    def extra_repr(self) -> str:
        return (
            f"ndim={self.ndim}, batch_size={self.batch_size}, steps={self.steps}, "
            f"velocity_size={self.velocity_grid.size}, smoothing={self.smoothing}"
        )

    def dense_velocity(self) -> Tensor:
        """Velocity on :attr:`grid`, after smoothing: ``(B, D, *grid.shape)`` in mm."""
        velocity = self.velocity
        if float(np.max(self.smoothing)) > 0:
            velocity = gaussian_smooth(velocity, self.smoothing, self.velocity_grid, truncate=3.0)
        if self.velocity_grid is not self.grid and not self.velocity_grid.same_as(self.grid):
            points = self.grid.points(velocity.dtype, velocity.device)[None]
            velocity = torch.movedim(sample_field(velocity, self.velocity_grid, points), -1, 1)
        return velocity

    def _integrated(self) -> Tensor:
        """Displacement of ``exp(v)`` on :attr:`grid`, channel-first ``(B, D, *grid.shape)``."""
        return integrate_velocity(self.dense_velocity(), self.grid, self.steps)

    def forward(self, points: Tensor) -> Tensor:
        """Map points ``(B, ..., D)`` in fixed space (mm) to moving space (mm)."""
        displacement = self._integrated()
        return points + sample_field(displacement, self.grid, points)

    def displacement_field(self, grid: Grid, dtype: torch.dtype = torch.float32) -> Tensor:
        """Displacement ``T(x) - x`` in mm on ``grid``: ``(B, *grid.shape, D)``.

        Direct (no resampling) when ``grid`` is the transform's own grid.
        """
        if grid.same_as(self.grid):
            return torch.movedim(self._integrated(), 1, -1).to(dtype)
        points = grid.points(dtype, self.velocity.device)[None]
        return self(points) - points

    def inverse(self) -> "SVF":
        """The inverse transform ``exp(-v)``: a new SVF with velocity ``-v`` (detached copy)."""
        out = SVF(self.grid, self.batch_size, self.steps, self.control_spacing, self.smoothing, self.velocity.dtype)
        out.velocity_grid = self.velocity_grid
        with torch.no_grad():
            out.velocity.copy_(-self.velocity)
        return out.to(self.velocity.device)
