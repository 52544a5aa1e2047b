"""Cubic B-spline free-form deformation (FFD) with ITK's control-point layout.

``T(x) = x + u(x)`` maps fixed-space points (mm) to moving-space points (mm), where ``u`` is a
tensor product of cubic B-splines on a regular control-point lattice (Rueckert et al., IEEE TMI
18(8), 1999). The lattice follows ``itk::BSplineTransform`` exactly, so a transform can be
handed to SimpleITK (:meth:`BSpline.to_sitk`) and saved as a native ``.tfm``/``.h5`` file:

* the *transform domain* is a box of ``mesh_size`` cells of ``control_spacing`` mm along each
  axis of the image's direction;
* the lattice has ``mesh_size + 3`` control points per axis; its point 0 lies one control
  spacing before the domain start (ITK: ``origin = domain_origin - spacing * (order - 1) / 2``),
  so the domain is lattice indices ``[1, mesh_size + 1]``;
* a point at continuous lattice index ``c`` is moved by the 4 control points
  ``floor(c) - 1 .. floor(c) + 2`` per axis; points outside the domain are not moved (zero
  displacement), as in ITK.

Built from an image grid, the domain is the box spanned by the grid's voxel *corners*, grown
to a whole number of control cells and centred on the grid, so ``u`` is smooth on every voxel.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cubic import cubic_bspline_weights
from ..grid import Grid, apply_affine
from .base import SpatialTransform

__all__ = ["BSpline", "bspline_lattice", "cubic_bspline_weights"]

#: Points evaluated at once by :meth:`BSpline.forward` (bounds its temporaries).
_CHUNK = 1 << 18


# ---------------------------------------------------------------------------------- helpers
def _as_spacing(control_spacing: float | Sequence[float], ndim: int) -> tuple[float, ...]:
    if np.ndim(control_spacing) == 0:  # also numpy / torch scalars
        spacing = (float(control_spacing),) * ndim
    else:
        spacing = tuple(float(s) for s in control_spacing)
    if len(spacing) != ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"control_spacing must be {ndim} positive numbers (mm), got {control_spacing!r}")
    return spacing


def bspline_lattice(grid: Grid, control_spacing: float | Sequence[float]) -> Grid:
    """The control-point lattice (ITK layout) of a cubic B-spline covering ``grid``.

    Parameters
    ----------
    grid : Grid
        Image grid whose voxel-corner box the transform domain must cover.
    control_spacing : float or sequence of float
        Control-point spacing in mm, one value or one per axis in ITK order ``(x, y[, z])``.

    Returns
    -------
    Grid
        Lattice of ``mesh_size + 3`` points per axis with spacing ``control_spacing`` and the
        grid's direction, where ``mesh_size = ceil(size * spacing / control_spacing)``; the
        domain (lattice indices 1 .. mesh_size + 1) is centred on the grid.
    """
    spacing = _as_spacing(control_spacing, grid.ndim)
    extent = grid.extent()
    # the small slack keeps an exact multiple (e.g. 200 mm / 20 mm) from gaining a cell
    mesh = [max(1, int(math.ceil(e / s - 1e-6))) for e, s in zip(extent, spacing)]
    # lattice index of the grid centre is 1 + mesh / 2 (domain start is lattice index 1)
    offset = np.array([-(1.0 + m / 2.0) * s for m, s in zip(mesh, spacing)])
    origin = grid.center() + grid.direction_matrix() @ offset
    return Grid(tuple(m + 3 for m in mesh), spacing, tuple(origin.tolist()), grid.direction)


def _axis_weight_matrix(position: Tensor, n_ctrl: int) -> Tensor:
    """Dense ``(n_points, n_ctrl)`` B-spline weights along one lattice axis.

    ``position`` holds continuous lattice indices; rows of points outside the domain
    ``[1, n_ctrl - 2]`` are zero, which zeroes the displacement there (ITK behaviour).
    """
    inside = (position >= 1.0) & (position <= n_ctrl - 2.0)
    cell = torch.floor(position).clamp(1, n_ctrl - 3)  # the last node belongs to the last cell
    t = (position - cell).clamp(0.0, 1.0)
    weights = torch.stack(cubic_bspline_weights(t), dim=-1) * inside[:, None].to(position.dtype)
    columns = cell.long()[:, None] + torch.arange(-1, 3, device=position.device)
    matrix = torch.zeros(position.shape[0], n_ctrl, dtype=position.dtype, device=position.device)
    return matrix.scatter_(1, columns.clamp(0, n_ctrl - 1), weights)


def _apply_along_axes(coefficients: Tensor, matrices: Sequence[Tensor | None]) -> Tensor:
    """Contract ``(B, D, *ctrl_shape)`` with one ``(n_out, n_ctrl)`` matrix per axis (ITK order;
    ``None`` leaves that axis as it is).

    Returns ``(B, D, *out_shape)``. Separable evaluation: a few matrix products instead of
    ``4**D`` gathers per point.
    """
    out = coefficients
    ndim = len(matrices)
    for axis_itk, matrix in enumerate(matrices):
        if matrix is None:
            continue
        dim = 2 + ndim - 1 - axis_itk  # tensor axes are reversed
        weights = matrix.to(out.dtype)
        if dim == out.dim() - 1:
            out = out @ weights.T
        else:  # (n_out, n) @ (lead, n, trail): no axis moved, so no copy in or out (~30 % faster)
            shape = out.shape
            middle = out.reshape(math.prod(shape[:dim]), shape[dim], math.prod(shape[dim + 1:]))
            out = torch.matmul(weights, middle).reshape(*shape[:dim], weights.shape[0], *shape[dim + 1:])
    return out


# ---------------------------------------------------------------------------------- module
class BSpline(SpatialTransform):
    """Cubic B-spline free-form deformation ``T(x) = x + u(x)`` (fixed mm -> moving mm).

    Parameters
    ----------
    grid : Grid
        The (fixed) image grid the deformation must cover; the lattice takes its direction.
    control_spacing : float or sequence of float
        Control-point spacing in mm (one value or one per axis, ITK order ``(x, y[, z])``).
    batch_size : int, optional
        Number B of independent transforms (one per image pair).
    dtype : torch.dtype, optional
        Dtype of the coefficients.

    Attributes
    ----------
    coefficients : nn.Parameter
        Control-point displacements in mm, shape ``(B, D, *lattice.shape)`` (components in
        ``(x, y[, z])`` order, lattice axes in tensor order ``([z,] y, x)``); zeros = identity.
    grid : Grid
        The image grid given at construction (used by :meth:`upsample`).
    lattice : Grid
        Control-point positions (ITK ``BSplineTransform`` fixed parameters).

    Notes
    -----
    Points outside the transform domain get zero displacement (as ITK). Dense evaluation on a
    grid aligned with the lattice (:meth:`displacement_field`) is separable and much faster
    than evaluation at scattered points (:meth:`forward`).
    """

    def __init__(
        self,
        grid: Grid,
        control_spacing: float | Sequence[float],
        batch_size: int = 1,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        lattice = bspline_lattice(grid, control_spacing)
        self._setup(grid, lattice, torch.zeros(batch_size, grid.ndim, *lattice.shape, dtype=dtype))

    def _setup(self, grid: Grid, lattice: Grid, coefficients: Tensor) -> None:
        if coefficients.shape[1:] != (lattice.ndim, *lattice.shape):
            raise ValueError(
                f"coefficients of shape {tuple(coefficients.shape)} do not match (B, {lattice.ndim}, *{lattice.shape})"
            )
        if any(n < 4 for n in lattice.size):
            raise ValueError(f"a cubic B-spline lattice needs >= 4 points per axis, got {lattice.size}")
        self.grid = grid
        self.lattice = lattice
        self.ndim = lattice.ndim
        self.batch_size = int(coefficients.shape[0])
        self.coefficients = nn.Parameter(coefficients)

    @classmethod
    def from_lattice(cls, lattice: Grid, coefficients: Tensor, grid: Grid | None = None) -> "BSpline":
        """A B-spline on a given control lattice (ITK layout) with given coefficients.

        Parameters
        ----------
        lattice : Grid
            Control-point lattice, ``mesh_size + 3`` points per axis.
        coefficients : Tensor
            ``(B, D, *lattice.shape)`` displacements in mm (copied into a new parameter).
        grid : Grid, optional
            Image grid for :meth:`upsample`; defaults to the transform domain as a grid of
            ``mesh_size`` voxels of ``control_spacing`` mm.
        """
        self = cls.__new__(cls)
        SpatialTransform.__init__(self)
        if grid is None:
            grid = _domain_grid(lattice)
        self._setup(grid, lattice, coefficients.detach().clone())
        return self

    # ------------------------------------------------------------------ properties
    @property
    def control_spacing(self) -> tuple[float, ...]:
        """Control-point spacing in mm, ITK order."""
        return self.lattice.spacing

    @property
    def mesh_size(self) -> tuple[int, ...]:
        """Number of control cells per axis over the transform domain (ITK ``MeshSize``)."""
        return tuple(n - 3 for n in self.lattice.size)

    def extra_repr(self) -> str:
        return f"ndim={self.ndim}, batch_size={self.batch_size}, control_spacing={self.control_spacing}, mesh_size={self.mesh_size}"

    # ------------------------------------------------------------------ evaluation
    def forward(self, points: Tensor) -> Tensor:
        """Map points ``(B, ..., D)`` in fixed space (mm) to moving space (mm).

        Evaluates the spline at arbitrary points with 2D bilinear lookups (``grid_sample``):
        in the x-y plane each pair of cubic weights along an axis is folded into one linear
        interpolation (Sigg & Hadwiger, GPU Gems 2, ch. 20, 2005), 4 lookups per point, and
        a 3D lattice's four z-taps are four tiles of a mosaic of its slices (:func:`_mosaic`),
        16 lookups per point. Exact up to rounding (float32: ~3e-5 mm, a few ulps of mm
        coordinates), and autograd memory stays O(points). A points batch of 1 is broadcast to B.
        """
        batch = max(points.shape[0], self.batch_size)
        lead = points.shape[1:-1]
        flat = points.reshape(points.shape[0], -1, self.ndim).expand(batch, -1, -1)
        return (flat + self._displacement_at(flat)).reshape(batch, *lead, self.ndim)

    def _displacement_at(self, points: Tensor) -> Tensor:
        """Displacement ``(B, P, D)`` in mm at points ``(B, P, D)`` in mm (in chunks of points)."""
        coefficients = self.coefficients.expand(points.shape[0], *self.coefficients.shape[1:]).to(points.dtype)
        to_index = self.lattice.physical_to_index_matrix()
        plane, offsets = _mosaic(coefficients)
        # chunks keep the temporaries cache-sized; autograd still sees one graph per chunk
        pieces = [self._chunk(plane, offsets, to_index, chunk) for chunk in points.split(_CHUNK, dim=1)]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)

    def _chunk(self, plane: Tensor, offsets: Tensor, to_index: Tensor, points: Tensor) -> Tensor:
        batch, count, ndim = points.shape
        # continuous lattice index, one contiguous (B, P) tensor per axis (x-first)
        index = apply_affine(to_index, points).movedim(-1, 0).contiguous()
        sizes = torch.tensor(self.lattice.size, dtype=points.dtype, device=points.device).view(ndim, 1, 1)
        inside = ((index >= 1.0) & (index <= sizes - 2.0)).all(dim=0)
        cell = torch.minimum(torch.floor(index.detach()).clamp(min=1.0), sizes - 3.0)
        w0, w1, w2, w3 = cubic_bspline_weights((index - cell).clamp(0.0, 1.0))
        # in the x-y plane, each pair of cubic weights along an axis is one linear lookup
        low = w0 + w1
        high = 1.0 - low
        height, width = plane.shape[-2:]
        scale = (2.0 / (width - 1.0), 2.0 / (height - 1.0))  # mosaic index -> grid_sample coordinates
        where = [((cell[k] - 1.0 + w1[k] / low[k]) * scale[k], (cell[k] + 1.0 + w3[k] / high[k]) * scale[k]) for k in range(2)]
        gain = [(low[k], high[k]) for k in range(2)]
        # along z, the four taps are four tiles of the mosaic (a 2D image has one, weight 1)
        if ndim == 2:
            taps = [(offsets[0], None)]
        else:
            first = cell[2].to(torch.long) - 1
            taps = [(offsets[first + k].movedim(-1, 0), weight) for k, weight in enumerate((w0[2], w1[2], w2[2], w3[2]))]
        total = None
        for offset, tap_weight in taps:
            for by in range(2):
                y = where[1][by] + offset[1]
                weight_y = gain[1][by] if tap_weight is None else gain[1][by] * tap_weight
                for bx in range(2):
                    position = torch.stack((where[0][bx] + offset[0], y), dim=-1)
                    sampled = F.grid_sample(plane, position.view(batch, count, 1, 2), mode="bilinear",
                                            padding_mode="border", align_corners=True).view(batch, ndim, count)
                    term = sampled * (gain[0][bx] * weight_y).unsqueeze(1)
                    total = term if total is None else total + term
        return (total * inside.unsqueeze(1).to(total.dtype)).transpose(1, 2)

    def displacement_field(self, grid: Grid, dtype: torch.dtype = torch.float32) -> Tensor:
        """Displacement ``T(x) - x`` in mm at every voxel of ``grid``: ``(B, *grid.shape, D)``.

        When ``grid`` is axis-aligned with the lattice (same direction, any spacing/origin) the
        spline is evaluated separably with one ``(n, n_ctrl)`` weight matrix per axis; otherwise
        it falls back to :meth:`forward` on the grid's points.
        """
        matrices = self.axis_matrices(grid, dtype)
        if matrices is None:
            return super().displacement_field(grid, dtype=dtype)
        field = _apply_along_axes(self.coefficients.to(dtype), matrices)
        return torch.movedim(field, 1, -1)

    def _grid_to_lattice(self, grid: Grid) -> np.ndarray | None:
        """The lattice index as an affine function of ``grid``'s index (homogeneous, float64), or
        None where it is not one function per axis (the spline is then not separable on ``grid``)."""
        m = (self.lattice.physical_to_index_matrix() @ grid.index_to_physical_matrix()).numpy()
        linear = m[: grid.ndim, : grid.ndim]
        if grid.ndim != self.ndim or np.abs(linear - np.diag(np.diag(linear))).max() > 1e-9 * np.abs(linear).max():
            return None
        return m

    def axis_matrices(self, grid: Grid, dtype: torch.dtype = torch.float32) -> list[Tensor] | None:
        """The spline sampled on ``grid``, one axis at a time: ``(grid.size[k], lattice.size[k])``
        weight matrices in ITK axis order, or None where ``grid`` is not axis-aligned with the
        lattice (the lattice index is then not a per-axis function of the grid index)."""
        device = self.coefficients.device
        m = self._grid_to_lattice(grid)
        if m is None:
            return None
        matrices = []
        for k in range(self.ndim):
            position = torch.arange(grid.size[k], dtype=torch.float64, device=device) * m[k, k] + m[k, -1]
            matrices.append(_axis_weight_matrix(position, self.lattice.size[k]).to(dtype))
        return matrices

    def voxel_displacement(self, grid: Grid, indices: Tensor, dtype: torch.dtype = torch.float32) -> Callable[[], Tensor] | None:
        """A function giving the displacement (mm) at some voxels of ``grid``, axis first ``(B, D, N)``.

        ``indices`` ``(N,)`` are flat (C-order) voxel indices of ``grid``, e.g. a registration
        level's metric samples. The returned function evaluates the current coefficients
        (differentiably): the lattice is contracted densely along the slower axes (y[, z]), which
        keeps x at the lattice's resolution, and then at each voxel's 4 x taps: ~5x less work
        than :meth:`displacement_field` on the whole grid followed by a gather, whose last
        contraction alone writes every voxel of the grid. Returns None where the grid is not
        axis-aligned with the lattice (use :meth:`displacement_field`).
        """
        device = self.coefficients.device
        m = self._grid_to_lattice(grid)
        if m is None:
            return None
        matrices: list[Tensor | None] = [None]
        for k in range(1, self.ndim):
            position = torch.arange(grid.size[k], dtype=torch.float64, device=device) * m[k, k] + m[k, -1]
            matrices.append(_axis_weight_matrix(position, self.lattice.size[k]).to(dtype))
        # the x taps of each voxel, as _axis_weight_matrix lays them out (zero weight outside the domain)
        n_ctrl, n_x = self.lattice.size[0], grid.size[0]
        indices = indices.to(device)
        position = (indices % n_x).to(torch.float64) * m[0, 0] + m[0, -1]
        inside = (position >= 1.0) & (position <= n_ctrl - 2.0)
        cell = torch.floor(position).clamp(1, n_ctrl - 3)
        weights = (torch.stack(cubic_bspline_weights((position - cell).clamp(0.0, 1.0)), dim=0)
                   * inside.to(position.dtype)).to(dtype)  # (4, N)
        taps = ((indices // n_x)[None] * n_ctrl + cell.long()[None] - 1 + torch.arange(4, device=device)[:, None]).reshape(-1)

        rows = math.prod(grid.shape[:-1]) * n_ctrl  # length of one component of the partial contraction
        components = self.batch_size * self.ndim
        if components * rows >= 2**31:
            raise ValueError("grid too large for the per-voxel B-spline evaluation")
        # every component's taps into the flattened partial contraction: one 1-D index_select
        # (a gather along the last dimension of a (B, D, L) tensor is ~5x slower)
        taps = (taps.to(torch.int32)[None] + torch.arange(components, dtype=torch.int32, device=device)[:, None] * rows).reshape(-1)

        def displacement() -> Tensor:
            partial = _apply_along_axes(self.coefficients.to(dtype), matrices)  # (B, D, [nz,] ny, n_ctrl)
            values = partial.reshape(-1).index_select(0, taps).reshape(*partial.shape[:2], 4, -1)
            return (values * weights).sum(2)

        return displacement

    # ------------------------------------------------------------------ multi-resolution
    def refine(self) -> "BSpline":
        """The same deformation on a lattice of half the spacing over the same domain.

        Exact (cubic B-spline subdivision: even nodes ``(c[i-1] + 6 c[i] + c[i+1]) / 8``, odd
        nodes ``(c[i] + c[i+1]) / 2``). Returns a new module with fresh (detached) parameters.
        """
        matrices = [_subdivision_matrix(n, torch.float64) for n in self.lattice.size]
        spacing = tuple(s / 2.0 for s in self.lattice.spacing)
        # the fine lattice starts half a coarse spacing later, so the domain is unchanged
        origin = self.lattice.index_to_physical_np(np.full(self.ndim, 0.5))
        lattice = Grid(tuple(2 * n - 3 for n in self.lattice.size), spacing, tuple(origin.tolist()), self.lattice.direction)
        with torch.no_grad():
            coefficients = _apply_along_axes(self.coefficients.double(), [m.to(self.coefficients.device) for m in matrices])
        return BSpline.from_lattice(lattice, coefficients.to(self.coefficients.dtype), grid=self.grid)

    def upsample(self, control_spacing: float | Sequence[float]) -> "BSpline":
        """A B-spline with another control spacing (mm) closest to this one on the image grid.

        The new lattice is laid out as if built with ``BSpline(self.grid, control_spacing)``;
        its coefficients are the least-squares fit of this deformation, sampled densely over
        the grid's voxel-corner box (separable, per axis). Where the new spline space contains
        this one (e.g. half the spacing with whole-cell extents) the result is exact. Returns a
        new module with fresh (detached) parameters.
        """
        lattice = bspline_lattice(self.grid, control_spacing)
        if lattice.same_as(self.lattice):
            return BSpline.from_lattice(self.lattice, self.coefficients, grid=self.grid)
        device = self.coefficients.device
        old_index = self.lattice.physical_to_index_matrix() @ self.grid.index_to_physical_matrix()
        new_index = lattice.physical_to_index_matrix() @ self.grid.index_to_physical_matrix()
        matrices = []
        for k in range(self.ndim):
            # samples along grid axis k: >= 8 per cell of either lattice, over the corner box
            per_voxel = max(self.grid.spacing[k] / min(lattice.spacing[k], self.lattice.spacing[k]), 1.0)
            n = max(16, int(math.ceil(8 * self.grid.size[k] * per_voxel)))
            grid_index = torch.linspace(-0.5, self.grid.size[k] - 0.5, n, dtype=torch.float64)
            old = _axis_weight_matrix(grid_index * old_index[k, k] + old_index[k, -1], self.lattice.size[k])
            new = _axis_weight_matrix(grid_index * new_index[k, k] + new_index[k, -1], lattice.size[k])
            matrices.append((torch.linalg.pinv(new, rtol=1e-10) @ old).to(device))
        with torch.no_grad():
            coefficients = _apply_along_axes(self.coefficients.double(), matrices)
        return BSpline.from_lattice(lattice, coefficients.to(self.coefficients.dtype), grid=self.grid)

    # ------------------------------------------------------------------ SimpleITK
    def to_sitk(self, batch_index: int = 0):
        """The equivalent ``SimpleITK.BSplineTransform`` (order 3) of batch element ``batch_index``.

        The coefficient images carry the lattice geometry, so ``TransformPoint`` agrees with
        :meth:`forward` everywhere (inside and outside the domain) and the transform can be
        written natively with ``sitk.WriteTransform`` (.tfm, .h5).
        """
        import SimpleITK as sitk

        images = []
        for d in range(self.ndim):
            array = self.coefficients[batch_index, d].detach().cpu().double().numpy()
            image = sitk.GetImageFromArray(array)
            self.lattice.copy_to_sitk(image)
            images.append(image)
        return sitk.BSplineTransform(images, 3)

    @classmethod
    def from_sitk(cls, transform, grid: Grid | None = None, dtype: torch.dtype = torch.float32) -> "BSpline":
        """A batch-of-one :class:`BSpline` from a cubic ``SimpleITK.BSplineTransform``.

        Parameters
        ----------
        transform : SimpleITK.BSplineTransform or SimpleITK.Transform
            An order-3 B-spline transform (a generic ``Transform`` holding one is converted).
        grid : Grid, optional
            Image grid for :meth:`upsample`; defaults to the transform domain.
        """
        import SimpleITK as sitk

        transform = sitk.BSplineTransform(transform)
        if transform.GetOrder() != 3:
            raise ValueError(f"only cubic B-splines are supported, got order {transform.GetOrder()}")
        images = transform.GetCoefficientImages()
        lattice = Grid.from_sitk(images[0])
        coefficients = torch.stack([torch.from_numpy(sitk.GetArrayFromImage(im)) for im in images])[None]
        return cls.from_lattice(lattice, coefficients.to(dtype), grid=grid)


def _mosaic(coefficients: Tensor) -> tuple[Tensor, Tensor]:
    """The lattice as one 2D image for ``grid_sample``: ``(B, D, H, W)``, and the offset of each
    z-slice's tile in grid_sample's coordinates (``align_corners=True``), ``(nz, 2)`` (x, y).

    A 3D lattice's z-slices are laid side by side in a near-square mosaic of tiles, so that
    :meth:`BSpline.forward` evaluates the spline with 2D bilinear lookups (16 per point, the
    four z-taps picking tiles) where 3D trilinear ones (8 per point) cost more on the CPU
    (torch vectorises only the 2D sampler). A near-square mosaic keeps the lookup coordinates
    small: a float32 coordinate of a tall strip of all slices loses an order of magnitude more
    of the lattice index. A 2D lattice is its own mosaic, offset ``-1``.
    """
    if coefficients.dim() == 4:
        return coefficients, torch.full((1, 2), -1.0, dtype=coefficients.dtype, device=coefficients.device)
    batch, channels, nz, ny, nx = coefficients.shape
    columns = max(1, round(math.sqrt(nz * ny / nx)))
    rows = -(-nz // columns)
    padded = F.pad(coefficients, (0, 0, 0, 0, 0, rows * columns - nz))
    plane = (padded.view(batch, channels, rows, columns, ny, nx).permute(0, 1, 2, 4, 3, 5)
             .reshape(batch, channels, rows * ny, columns * nx))
    tile = torch.arange(nz, dtype=torch.float64)
    first = torch.stack(((tile % columns) * nx, torch.div(tile, columns, rounding_mode="floor") * ny), dim=-1)
    scale = torch.tensor([2.0 / (columns * nx - 1.0), 2.0 / (rows * ny - 1.0)], dtype=torch.float64)
    offsets = (first * scale - 1.0).to(dtype=coefficients.dtype, device=coefficients.device)
    return plane, offsets


def _domain_grid(lattice: Grid) -> Grid:
    """The transform domain as a grid: one voxel per control cell, corners on the domain box."""
    origin = lattice.index_to_physical_np(np.full(lattice.ndim, 1.5))
    return Grid(tuple(n - 3 for n in lattice.size), lattice.spacing, tuple(origin.tolist()), lattice.direction)


def _subdivision_matrix(n_coarse: int, dtype: torch.dtype) -> Tensor:
    """``(2 n - 3, n)`` matrix mapping coarse to fine lattice coefficients along one axis.

    Fine node ``j`` sits at coarse index ``(j + 1) / 2``.
    """
    n_fine = 2 * n_coarse - 3
    matrix = torch.zeros(n_fine, n_coarse, dtype=dtype)
    for j in range(n_fine):
        if j % 2:  # on a coarse node i
            i = (j + 1) // 2
            matrix[j, i - 1 : i + 2] = torch.tensor([1.0, 6.0, 1.0], dtype=dtype) / 8.0
        else:  # mid-way between coarse nodes i and i + 1
            i = j // 2
            matrix[j, i : i + 2] = 0.5
    return matrix
