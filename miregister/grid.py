"""Sampling grids in physical space (ITK/LPS, millimetres) and the maps between coordinates.

Conventions
-----------
* A :class:`Grid` describes where the voxels of an image lie in physical space, exactly as
  SimpleITK does: ``size``, ``spacing`` (mm), ``origin`` (mm, centre of voxel 0) and
  ``direction`` (row-major ``D x D`` matrix whose *columns* are the image axes).
* ``size``, ``spacing``, ``origin`` and index vectors are in ITK order ``(x, y[, z])``.
  Tensors store voxels in the reverse order, ``(C, [Z,] Y, X)``, as ``sitk.GetArrayFromImage``
  does, so ``Grid.shape == tuple(reversed(size))``.
* Point tensors have shape ``(..., D)`` with the last axis in ``(x, y[, z])`` order, in mm.
  This is also the order ``torch.nn.functional.grid_sample`` expects.
* Normalised ("grid_sample") coordinates use ``align_corners=True``: -1 and +1 are the centres
  of the first and last voxel along each axis.

Three coordinate systems are linked by affine maps returned as homogeneous ``(D+1, D+1)``
float64 tensors: continuous index, physical (mm), normalised [-1, 1].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["Grid", "apply_affine"]


def _as_float_tuple(values: Sequence[float], name: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in values)
    except TypeError as error:  # a scalar or None
        raise ValueError(f"{name} must be a sequence of numbers, got {values!r}") from error


def _given(values: Sequence[float] | None) -> bool:
    """False for None or an empty sequence (use the default); True otherwise, scalars included."""
    if values is None:
        return False
    try:
        return len(values) > 0
    except TypeError:  # a scalar: let _as_float_tuple reject it with a clear message
        return True


@dataclass(frozen=True)
class Grid:
    """A regular voxel grid placed in physical space (ITK conventions, mm, LPS).

    Parameters
    ----------
    size : tuple of int
        Number of voxels per axis in ITK order ``(x, y[, z])``.
    spacing : tuple of float, optional
        Voxel spacing in mm, ITK order. Defaults to 1 mm (also when empty or None).
    origin : tuple of float, optional
        Physical position (mm) of the centre of voxel ``(0, 0[, 0])``. Defaults to 0.
    direction : sequence of float, optional
        Direction cosines, ``D*D`` numbers in row-major order (as ``sitk.Image.GetDirection``)
        or a ``(D, D)`` array; column ``k`` is the physical direction of index axis ``k``.
        Defaults to identity.

    Raises
    ------
    ValueError
        If the dimension is not 2 or 3, a size is < 1, a spacing is not strictly positive
        and finite, or the direction matrix is singular or of the wrong shape.
    """

    size: tuple[int, ...]
    spacing: tuple[float, ...] = ()
    origin: tuple[float, ...] = ()
    direction: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        size = tuple(int(s) for s in self.size)
        ndim = len(size)
        if ndim not in (2, 3):
            raise ValueError(f"a grid must have 2 or 3 spatial dimensions, got size {size}")
        if any(s < 1 for s in size):
            raise ValueError(f"grid size must be >= 1 along every axis, got {size}")
        spacing = _as_float_tuple(self.spacing, "spacing") if _given(self.spacing) else (1.0,) * ndim
        origin = _as_float_tuple(self.origin, "origin") if _given(self.origin) else (0.0,) * ndim
        direction_in = np.asarray(self.direction if self.direction is not None else (), dtype=np.float64).ravel()
        direction = tuple(direction_in.tolist()) if direction_in.size else tuple(np.eye(ndim).ravel().tolist())
        if len(spacing) != ndim or len(origin) != ndim or len(direction) != ndim * ndim:
            raise ValueError(
                f"grid of dimension {ndim}: spacing ({len(spacing)}), origin ({len(origin)}) and "
                f"direction ({len(direction)} numbers) do not match"
            )
        if not all(np.isfinite(spacing)) or any(s <= 0 for s in spacing):
            raise ValueError(f"spacing must be strictly positive and finite, got {spacing}")
        if not all(np.isfinite(origin)):
            raise ValueError(f"origin must be finite, got {origin}")
        matrix = np.asarray(direction).reshape(ndim, ndim)
        if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) < 1e-6:
            raise ValueError(f"direction matrix is singular or not finite: {matrix.tolist()}")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)

    # ------------------------------------------------------------------ basic properties
    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return len(self.size)

    @property
    def shape(self) -> tuple[int, ...]:
        """Tensor spatial shape ``([Z,] Y, X)``: the reverse of ``size``."""
        return tuple(reversed(self.size))

    @property
    def numel(self) -> int:
        """Number of voxels."""
        return int(np.prod(self.size))

    def direction_matrix(self) -> np.ndarray:
        """Direction cosines as a ``(D, D)`` float64 array (columns are index axes)."""
        return np.asarray(self.direction, dtype=np.float64).reshape(self.ndim, self.ndim)

    def extent(self) -> np.ndarray:
        """Physical length (mm) covered by the voxels along each index axis: ``size * spacing``."""
        return np.asarray(self.size, dtype=np.float64) * np.asarray(self.spacing)

    def center(self) -> np.ndarray:
        """Physical position (mm) of the geometric centre of the grid, shape ``(D,)``."""
        half = (np.asarray(self.size, dtype=np.float64) - 1.0) / 2.0
        return self.index_to_physical_np(half)

    # ------------------------------------------------------------------ affine maps
    def index_to_physical_matrix(self) -> Tensor:
        """Homogeneous ``(D+1, D+1)`` float64 map from continuous index (x-first) to mm."""
        d = self.ndim
        m = np.eye(d + 1)
        m[:d, :d] = self.direction_matrix() @ np.diag(self.spacing)
        m[:d, d] = self.origin
        return torch.from_numpy(m)

    def physical_to_index_matrix(self) -> Tensor:
        """Homogeneous ``(D+1, D+1)`` float64 map from mm to continuous index (x-first)."""
        return torch.linalg.inv(self.index_to_physical_matrix())

    def normalized_to_index_matrix(self) -> Tensor:
        """Homogeneous map from grid_sample coordinates (align_corners=True) to index."""
        d = self.ndim
        half = torch.tensor([max(s - 1, 1) / 2.0 for s in self.size], dtype=torch.float64)
        m = torch.eye(d + 1, dtype=torch.float64)
        m[:d, :d] = torch.diag(half)
        m[:d, d] = half
        return m

    def physical_to_normalized_matrix(self) -> Tensor:
        """Homogeneous ``(D+1, D+1)`` float64 map from mm to grid_sample coordinates [-1, 1]."""
        return torch.linalg.inv(self.normalized_to_index_matrix()) @ self.physical_to_index_matrix()

    def normalized_to_physical_matrix(self) -> Tensor:
        """Homogeneous ``(D+1, D+1)`` float64 map from grid_sample coordinates to mm."""
        return self.index_to_physical_matrix() @ self.normalized_to_index_matrix()

    # ------------------------------------------------------------------ point conversions
    def index_to_physical_np(self, index: np.ndarray) -> np.ndarray:
        """Map continuous indices ``(..., D)`` (x-first) to physical points in mm (numpy)."""
        index = np.asarray(index, dtype=np.float64)
        a = self.direction_matrix() @ np.diag(self.spacing)
        return index @ a.T + np.asarray(self.origin)

    def physical_to_index_np(self, points: np.ndarray) -> np.ndarray:
        """Map physical points ``(..., D)`` in mm to continuous indices (numpy)."""
        points = np.asarray(points, dtype=np.float64)
        a = self.direction_matrix() @ np.diag(self.spacing)
        return (points - np.asarray(self.origin)) @ np.linalg.inv(a).T

    def index_to_physical(self, index: Tensor) -> Tensor:
        """Map continuous indices ``(..., D)`` (x-first) to physical points (mm), same dtype/device."""
        return apply_affine(self.index_to_physical_matrix(), index)

    def physical_to_index(self, points: Tensor) -> Tensor:
        """Map physical points ``(..., D)`` in mm to continuous indices (x-first)."""
        return apply_affine(self.physical_to_index_matrix(), points)

    def physical_to_normalized(self, points: Tensor) -> Tensor:
        """Map physical points ``(..., D)`` in mm to grid_sample coordinates (align_corners=True)."""
        return apply_affine(self.physical_to_normalized_matrix(), points)

    def normalized_to_physical(self, points: Tensor) -> Tensor:
        """Map grid_sample coordinates ``(..., D)`` to physical points in mm."""
        return apply_affine(self.normalized_to_physical_matrix(), points)

    def points(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        """Physical coordinates (mm) of every voxel centre.

        Returns
        -------
        Tensor
            Shape ``(*shape, D)`` = ``([Z,] Y, X, D)``, last axis ``(x, y[, z])`` in mm.
        """
        return apply_affine(self.index_to_physical_matrix(), self.indices(dtype=torch.float64, device=device)).to(dtype)

    def indices(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        """Integer voxel indices of every voxel as a ``(*shape, D)`` tensor, last axis x-first."""
        axes = [torch.arange(n, dtype=dtype, device=device) for n in self.shape]
        mesh = torch.meshgrid(*axes, indexing="ij")  # ([z,] y, x)
        return torch.stack(tuple(reversed(mesh)), dim=-1)

    def contains_index(self, index: Tensor, tolerance: float = 1e-3) -> Tensor:
        """Boolean mask ``(...)``: which continuous indices ``(..., D)`` lie inside the voxel centres' hull.

        A point is inside when every coordinate is within ``[-tolerance, size-1+tolerance]``,
        i.e. where linear interpolation needs no padding.
        """
        upper = torch.tensor([s - 1 for s in self.size], dtype=index.dtype, device=index.device)
        return ((index >= -tolerance) & (index <= upper + tolerance)).all(dim=-1)

    # ------------------------------------------------------------------ derived grids
    def with_spacing(self, spacing: Sequence[float]) -> "Grid":
        """A grid over the same physical region with another spacing (mm), centre preserved.

        The new size along each axis is ``max(1, round(size * old_spacing / new_spacing))``;
        the origin moves so that the geometric centre stays in place.
        """
        spacing = _as_float_tuple(spacing, "spacing")
        if len(spacing) != self.ndim:
            raise ValueError(f"spacing must have {self.ndim} values, got {spacing}")
        size = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(self.size, self.spacing, spacing))
        new = Grid(size, spacing, self.origin, self.direction)
        shift = self.center() - new.center()
        return Grid(size, spacing, tuple(np.asarray(self.origin) + shift), self.direction)

    def slab(self, lo: int, hi: int) -> "Grid":
        """The planes ``[lo, hi)`` of this grid along its slowest array axis (ITK axis ``D - 1``,
        array axis 0): same spacing and direction, the origin at plane ``lo``'s first voxel
        centre. Used to process a whole-grid field or image in bounded memory."""
        if not 0 <= lo < hi <= self.size[-1]:
            raise ValueError(f"slab [{lo}, {hi}) is not within the {self.size[-1]} planes of the grid")
        index = np.zeros(self.ndim)
        index[-1] = lo
        size = list(self.size)
        size[-1] = hi - lo
        return Grid(tuple(size), self.spacing, tuple(self.index_to_physical_np(index).tolist()), self.direction)

    def slabs(self, voxels: int) -> "list[tuple[int, int]]":
        """``(lo, hi)`` plane ranges along the slowest array axis of about ``voxels`` voxels each
        (at least one plane), covering the grid in order."""
        plane = max(1, self.numel // self.size[-1])
        step = max(1, int(voxels) // plane)
        return [(lo, min(self.size[-1], lo + step)) for lo in range(0, self.size[-1], step)]

    def slab_range(self, other: "Grid", tolerance: float = 1e-5) -> "tuple[int, int] | None":
        """``(lo, hi)`` when ``other`` is this grid's :meth:`slab` ``(lo, hi)`` (the whole grid
        included) within ``tolerance`` (mm, and voxels for the plane offset), else None."""
        if other.ndim != self.ndim or other.size[:-1] != self.size[:-1]:
            return None
        if not (np.allclose(self.spacing, other.spacing, atol=tolerance)
                and np.allclose(self.direction, other.direction, atol=tolerance)):
            return None
        index = self.physical_to_index_np(np.asarray(other.origin, dtype=np.float64))
        lo = int(round(float(index[-1])))
        if not (np.allclose(index[:-1], 0.0, atol=tolerance) and abs(index[-1] - lo) <= tolerance):
            return None
        hi = lo + other.size[-1]
        return (lo, hi) if 0 <= lo and hi <= self.size[-1] else None

    def same_as(self, other: "Grid", tolerance: float = 1e-5) -> bool:
        """True when both grids have the same size and, within ``tolerance``, geometry."""
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, atol=tolerance)
            and np.allclose(self.origin, other.origin, atol=tolerance)
            and np.allclose(self.direction, other.direction, atol=tolerance)
        )

    # ------------------------------------------------------------------ SimpleITK
    @classmethod
    def from_sitk(cls, image) -> "Grid":
        """The grid of a ``SimpleITK.Image`` (size, spacing, origin, direction)."""
        return cls(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()), tuple(image.GetDirection()))

    def copy_to_sitk(self, image) -> None:
        """Set spacing, origin and direction of a ``SimpleITK.Image`` in place (sizes must agree)."""
        if tuple(image.GetSize()) != self.size:
            raise ValueError(f"SimpleITK image size {image.GetSize()} does not match grid size {self.size}")
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)


def apply_affine(matrix: Tensor, points: Tensor) -> Tensor:
    """Apply a homogeneous ``(D+1, D+1)`` (or batched ``(B, D+1, D+1)``) affine to points ``(..., D)``.

    The computation runs in the points' dtype on the points' device. For a batched matrix the
    points must have shape ``(B, ..., D)``.
    """
    matrix = matrix.to(dtype=points.dtype, device=points.device)
    d = points.shape[-1]
    if matrix.dim() == 2:
        return points @ matrix[:d, :d].T + matrix[:d, d]
    b = matrix.shape[0]
    flat = points.reshape(b, -1, d)
    out = flat @ matrix[:, :d, :d].transpose(1, 2) + matrix[:, None, :d, d]
    return out.reshape(points.shape)
