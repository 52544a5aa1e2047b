"""Regularisers and diagnostics of a dense displacement field, in physical units.

All functions are stateless and differentiable. A displacement field ``u`` has shape
``(B, *grid.shape, D)``: for every voxel of ``grid`` the vector ``T(x) - x`` in mm, components
in ``(x, y[, z])`` order, where ``T`` maps fixed-space points to moving-space points.

Derivatives are taken with respect to *physical* position (mm), accounting for both spacing
and direction: finite differences along the index axes (second-order accurate central
differences, second-order one-sided at the borders, via ``torch.gradient``) are mapped by the
inverse of the grid's index-to-physical matrix ``A = direction @ diag(spacing)``:
``du/dx = (du/di) A^-1``. Finite differences are exact for fields that are quadratic in x.
"""
from __future__ import annotations

import math
import weakref
from typing import TYPE_CHECKING, Callable, Iterator, NamedTuple

import numpy as np
import torch
from torch import Tensor

from .grid import Grid

if TYPE_CHECKING:  # for annotations only: the transforms package need not load with this module
    from .transforms.base import SpatialTransform
    from .transforms.bspline import BSpline

__all__ = [
    "bending_energy", "bspline_bending_energy", "diffusion", "jacobian_determinant", "jacobian_matrix", "jacobian_statistics",
    "transform_jacobian", "JacobianMap",
]


def _check(u: Tensor, grid: Grid) -> None:
    if u.dim() != grid.ndim + 2 or tuple(u.shape[1:]) != (*grid.shape, grid.ndim):
        raise ValueError(f"displacement of shape {tuple(u.shape)} does not match (B, *{grid.shape}, {grid.ndim})")


def _index_derivative(f: Tensor, grid: Grid, axis_itk: int) -> Tensor:
    """``df/di_k`` (per voxel step) along ITK axis k of ``f`` ``(B, *shape, C)``; 0 on singleton axes."""
    dim = 1 + grid.ndim - 1 - axis_itk
    n = f.shape[dim]
    if n == 1:
        return torch.zeros_like(f)
    return torch.gradient(f, dim=dim, edge_order=2 if n >= 3 else 1)[0]


def _inverse_index_matrix(grid: Grid, like: Tensor) -> Tensor:
    """``A^-1`` ``(D, D)``: row k maps physical to index axis k, so ``d/dx_p = sum_k Ainv[k, p] d/di_k``."""
    return grid.physical_to_index_matrix()[: grid.ndim, : grid.ndim].to(dtype=like.dtype, device=like.device)


def _physical_first(u: Tensor, grid: Grid) -> Iterator[Tensor]:
    """Yield ``du/dx_p`` ``(B, *shape, D)`` for each physical axis p."""
    yield from _to_physical([_index_derivative(u, grid, k) for k in range(grid.ndim)], _inverse_index_matrix(grid, u))


def _to_physical(index_derivatives: list[Tensor], ainv: Tensor) -> Iterator[Tensor]:
    """``du/dx_p = sum_k Ainv[k, p] du/di_k`` for each physical axis p, from the index derivatives."""
    d = len(index_derivatives)
    for p in range(d):
        yield sum(ainv[k, p] * index_derivatives[k] for k in range(d))


def _determinant(columns: list[Tensor]) -> Tensor:
    """``det(I + du/dx)`` from the columns ``du/dx_p`` ``(B, *shape, D)``, by cofactors: no
    ``(..., D, D)`` stack and no batched LU (which took ~70 % of a whole-grid determinant)."""
    d = len(columns)
    j = [[columns[p][..., i] + 1.0 if i == p else columns[p][..., i] for p in range(d)] for i in range(d)]  # J[i][p]
    if d == 2:
        return j[0][0] * j[1][1] - j[0][1] * j[1][0]
    return (
        j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1])
        - j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])
        + j[0][2] * (j[1][0] * j[2][1] - j[1][1] * j[2][0])
    )


def jacobian_matrix(u: Tensor, grid: Grid) -> Tensor:
    """Physical Jacobian of ``T(x) = x + u(x)``: ``(B, *shape, D, D)``, entry ``[i, j] = dT_i/dx_j``."""
    _check(u, grid)
    columns = list(_physical_first(u, grid))
    jac = torch.stack(columns, dim=-1)  # [..., i, j] = du_i/dx_j
    return jac + torch.eye(grid.ndim, dtype=u.dtype, device=u.device)


def jacobian_determinant(u: Tensor, grid: Grid) -> Tensor:
    """Determinant of the physical Jacobian of ``T(x) = x + u(x)`` at every voxel.

    Parameters
    ----------
    u : Tensor
        ``(B, *grid.shape, D)`` displacement in mm.
    grid : Grid
        The voxels' placement (spacing and direction are taken into account).

    Returns
    -------
    Tensor
        ``(B, *grid.shape)``, dimensionless; ``<= 0`` where the mapping folds.
    """
    _check(u, grid)
    return _determinant(list(_physical_first(u, grid)))


def diffusion(u: Tensor, grid: Grid) -> Tensor:
    """Membrane (diffusion) energy: mean over voxels of ``sum_ij (du_i/dx_j)^2``.

    Parameters
    ----------
    u : Tensor
        ``(B, *grid.shape, D)`` displacement in mm.
    grid : Grid
        The voxels' placement.

    Returns
    -------
    Tensor
        ``(B,)``, dimensionless (mm/mm squared). For ``u(x) = M x`` it is ``|M|_F^2``.
    """
    _check(u, grid)
    total = sum(d.square().sum(dim=-1) for d in _physical_first(u, grid))
    return total.flatten(1).mean(dim=1)


def bending_energy(u: Tensor, grid: Grid) -> Tensor:
    """Bending energy: mean over voxels of ``sum_i sum_pq (d^2 u_i / dx_p dx_q)^2``.

    The sum runs over all ordered pairs ``(p, q)``, so mixed terms count twice
    (``u_xx^2 + u_yy^2 + 2 u_xy^2`` in 2D), which makes it rotation invariant (Rueckert et al.
    1999, without the volume normalisation of the integral).

    Parameters
    ----------
    u : Tensor
        ``(B, *grid.shape, D)`` displacement in mm.
    grid : Grid
        The voxels' placement.

    Returns
    -------
    Tensor
        ``(B,)`` in mm^-2 (mm / mm^2, squared). Zero for affine ``u``.
    """
    _check(u, grid)
    d = grid.ndim
    first = [_index_derivative(u, grid, k) for k in range(d)]
    # index-space Hessian, upper triangle only (symmetric)
    hessian = {(k, l): _index_derivative(first[k], grid, l) for k in range(d) for l in range(k, d)}
    del first
    return _bending_from_index_hessian(hessian, _inverse_index_matrix(grid, u), channel_dim=-1)


def _bending_from_index_hessian(hessian: dict[tuple[int, int], Tensor], ainv: Tensor, channel_dim: int) -> Tensor:
    """:func:`bending_energy` ``(B,)`` from the index-space Hessian ``{(k, l): d2u/di_k di_l}``
    (``k <= l``, each ``(B, ...)`` with the D displacement components along ``channel_dim``)."""
    d = ainv.shape[0]
    # H_phys[p, q] = sum_kl Ainv[k, p] Ainv[l, q] H_idx[k, l] over the upper triangle k <= l,
    # the k < l terms weighted Ainv[k, p] Ainv[l, q] + Ainv[l, p] Ainv[k, q]. The weights are
    # read as Python numbers and the zero ones skipped: an axis-aligned grid has one non-zero
    # weight per (p, q), so a B-spline stage pays 6 field-sized products per evaluation
    # instead of 36 (and as many backward ops).
    outer = ainv[:, None, :, None] * ainv[None, :, None, :]  # [k, l, p, q] = Ainv[k, p] Ainv[l, q]
    weights = [outer.tolist(), (outer + outer.transpose(0, 1)).tolist()]
    total = None
    for p in range(d):
        for q in range(p, d):
            term = None
            for (k, l), h in hessian.items():
                weight = weights[k != l][k][l][p][q]
                if weight != 0.0:
                    term = weight * h if term is None else term + weight * h
            if term is not None:
                energy = (1.0 if p == q else 2.0) * term.square().sum(dim=channel_dim)
                total = energy if total is None else total + energy
    return total.flatten(1).mean(dim=1)


def _gradient_matrix(n: int, dtype: torch.dtype, device: torch.device | str | None) -> Tensor:
    """``(n, n)`` matrix of :func:`_index_derivative` along one axis (torch.gradient's central
    differences, second-order one-sided at the ends; first-order for n = 2; zero for n = 1)."""
    g = torch.zeros(n, n, dtype=torch.float64)
    if n == 2:
        g[:, 0], g[:, 1] = -1.0, 1.0
    elif n >= 3:
        rows = torch.arange(1, n - 1)
        g[rows, rows - 1], g[rows, rows + 1] = -0.5, 0.5
        g[0, :3] = torch.tensor([-1.5, 2.0, -0.5], dtype=torch.float64)
        g[-1, -3:] = torch.tensor([0.5, -2.0, 1.5], dtype=torch.float64)
    return g.to(dtype=dtype, device=device)


def bspline_bending_energy(bspline: "BSpline", grid: Grid, dtype: torch.dtype = torch.float32) -> Tensor:
    """:func:`bending_energy` of a B-spline's displacement on ``grid``, without the field.

    The same value as ``bending_energy(bspline.displacement_field(grid), grid)``, computed as
    the quadratic form it is in the coefficients ``c``: each index-space Hessian component on
    ``grid`` is ``K c`` with ``K`` a Kronecker product of per-axis matrices (the spline sampled
    on the grid's axis, :meth:`~miregister.transforms.BSpline.axis_matrices`, then finite
    differences along it, :func:`_gradient_matrix`), so the energy is ``c . Q c`` with ``Q`` a
    sum of Kronecker products of small per-axis Gram matrices (:func:`_bending_operator`).
    An evaluation applies ``Q`` once on the lattice (a few small matrix products, no field on
    ``grid``) and its gradient is ``2 Q c``, no backward graph: much cheaper than
    differentiating the sampled field's finite differences. Falls back to the field where
    ``grid`` is not axis-aligned with the lattice.

    Parameters
    ----------
    bspline : BSpline
        The deformation (fixed mm -> moving mm), ``B`` pairs of coefficients.
    grid : Grid
        Where the energy is measured (e.g. the fixed grid at half the control spacing).
    dtype : torch.dtype
        Dtype of the computation (the per-axis matrices are built in float64).

    Returns
    -------
    Tensor
        ``(B,)`` in mm^-2, differentiable with respect to the coefficients.
    """
    operator = _bending_operator(bspline, grid, dtype)
    if operator is None:
        return bending_energy(bspline.displacement_field(grid, dtype=dtype), grid)
    return _QuadraticForm.apply(bspline.coefficients.to(dtype), operator)


class _QuadraticForm(torch.autograd.Function):
    """``E_b = c_b . (Q c)_b`` per batch element for a symmetric linear ``Q`` (a callable):
    the gradient is ``2 Q c``, kept from the forward pass."""

    @staticmethod
    def forward(ctx, coefficients: Tensor, operator: Callable[[Tensor], Tensor]) -> Tensor:  # noqa: D102
        applied = operator(coefficients)
        ctx.save_for_backward(applied)
        return (coefficients * applied).flatten(1).sum(1)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102 (autograd protocol)
        (applied,) = ctx.saved_tensors
        return 2.0 * applied * grad.view(-1, *(1,) * (applied.dim() - 1)), None


_BENDING_OPERATORS: dict[tuple, Callable[[Tensor], Tensor]] = {}


def _bending_operator(bspline: "BSpline", grid: Grid, dtype: torch.dtype) -> Callable[[Tensor], Tensor] | None:
    """``c -> Q c`` with ``c . Q c`` the mean over ``grid``'s voxels of the squared physical
    Hessian (Frobenius, summed over the D components), or None off the lattice's axes.

    With ``h_a = K_a c`` the index-space Hessian component ``a = (k, l)``, ``k <= l``, and
    ``H_phys = A^-T H A^-1`` (``A`` the grid's index -> physical matrix), the energy is
    ``sum_ab C[a, b] (K_a c) . (K_b c) / N``, so ``Q = sum_ab C[a, b] K_a^T K_b / N``, and
    ``K_a^T K_b`` is the Kronecker product of the per-axis ``A_j^T B_j``. For an orthonormal
    direction ``C`` is diagonal (the Frobenius norm ignores the rotation), so ``Q`` is
    D(D+1)/2 Kronecker terms (6 in 3D) of D small matrix products each; a non-orthonormal
    direction gives up to (D(D+1)/2)^2 terms. Built once per lattice and grid (the last few
    are kept).
    """
    from .transforms.bspline import _apply_along_axes

    lattice = bspline.lattice
    key = (lattice.size, lattice.spacing, lattice.origin, lattice.direction, grid.size, grid.spacing, grid.origin,
           grid.direction, dtype, bspline.coefficients.device)
    if key in _BENDING_OPERATORS:
        return _BENDING_OPERATORS[key]
    matrices = bspline.axis_matrices(grid, dtype=torch.float64)
    if matrices is None:
        return None
    d = grid.ndim
    device = bspline.coefficients.device
    # per axis: the spline's values (order 0), first (1) and second (2) index differences on the grid
    per_axis = []
    for m in matrices:
        g = _gradient_matrix(m.shape[0], torch.float64, device)
        first = g @ m
        per_axis.append([m, first, g @ first])
    pairs = [(k, l) for k in range(d) for l in range(k, d)]
    orders = {pair: tuple(2 if pair[0] == pair[1] == j else int(j in pair) for j in range(d)) for pair in pairs}
    ainv = _inverse_index_matrix(grid, torch.empty(0, dtype=torch.float64)).cpu().numpy()
    # W[(p, q)][a]: weight of h_a in H_phys[p, q] (both triangles of the symmetric H_idx)
    mix = np.zeros((d, d, len(pairs)))
    for a, (k, l) in enumerate(pairs):
        mix[:, :, a] += np.outer(ainv[k], ainv[l])
        if k != l:
            mix[:, :, a] += np.outer(ainv[l], ainv[k])
    coupling = np.einsum("pqa,pqb->ab", mix, mix) / grid.numel  # over all (p, q): the Frobenius norm
    coupling[np.abs(coupling) < 1e-12 * np.abs(coupling).max()] = 0.0  # a rotation's round-off
    terms = []  # (weight, per-axis Gram matrices A_j^T B_j) of each non-zero K_a^T K_b
    for a, pa in enumerate(pairs):
        for b, pb in enumerate(pairs):
            if coupling[a, b] != 0.0:
                grams = [(per_axis[j][orders[pa][j]].T @ per_axis[j][orders[pb][j]]).to(dtype) for j in range(d)]
                terms.append((float(coupling[a, b]), grams))

    def apply(coefficients: Tensor) -> Tensor:
        total = None
        for weight, grams in terms:
            term = _apply_along_axes(coefficients, grams) * weight
            total = term if total is None else total + term
        return total

    if len(_BENDING_OPERATORS) >= 4:
        _BENDING_OPERATORS.clear()
    _BENDING_OPERATORS[key] = apply
    return apply


def jacobian_statistics(u: Tensor, grid: Grid, mask: Tensor | None = None) -> dict[str, Tensor]:
    """Summary of the Jacobian determinant of ``T(x) = x + u(x)``, per batch element.

    Computed slab by slab (:func:`transform_jacobian`'s routine), in float64 whatever the
    dtype of ``u``: the same values as :func:`jacobian_determinant` on the whole field.

    Parameters
    ----------
    u : Tensor
        ``(B, *grid.shape, D)`` displacement in mm.
    grid : Grid
        The voxels' placement.
    mask : Tensor, optional
        Boolean ``(B, *grid.shape)`` or ``(*grid.shape)``: voxels to include (e.g. the brain).

    Returns
    -------
    dict of str to Tensor
        Each a ``(B,)`` float64 tensor (detached, on ``u``'s device): ``min``, ``max``, ``mean``,
        ``std``, ``folded_fraction`` (share of voxels with ``det <= 0``), ``folded_count`` and
        ``log_std`` (standard deviation of ``log det`` over the unfolded voxels, a common
        smoothness score). Empty masks give NaN.
    """
    _check(u, grid)
    u = u.detach()
    _, stats = _slab_pass(lambda lo, hi, sub: u[:, lo:hi], grid, u.shape[0], mask, keep=False)
    return {key: value.to(u.device) for key, value in stats.items()}


# ------------------------------------------------------------------ whole transforms, in slabs
#: Voxels of one slab (its halo included) of :func:`transform_jacobian`: the float64 field, its
#: derivatives and the determinant's temporaries take ~200 B a voxel, ~50 MB at this size,
#: whatever the size of the grid.
SLAB_VOXELS = 1 << 18

#: The last determinant computed by :func:`transform_jacobian` with ``keep=True`` (one entry:
#: the validation of a run computes it, its QC picture and ``--jacobian`` image reuse it;
#: dropped when its transform is garbage-collected or another determinant is kept).
_LAST: dict[str, object] = {}


class JacobianMap(NamedTuple):
    """What :func:`transform_jacobian` returns."""

    #: ``(B, *grid.shape)`` float32 on the CPU, or None when not kept.
    determinant: Tensor | None
    #: As :func:`jacobian_statistics` (CPU), or None when not asked for.
    statistics: dict[str, Tensor] | None


@torch.no_grad()
def transform_jacobian(
    transform: "SpatialTransform",
    grid: Grid,
    mask: Tensor | None = None,
    keep: bool = True,
    statistics: bool = True,
    slab_voxels: int | None = None,
) -> JacobianMap:
    """Jacobian determinant of a fixed -> moving transform at every voxel of ``grid``, in slabs.

    The one routine behind the validation's Jacobian summary, the QC picture and the
    ``--jacobian`` image. The transform's displacement is evaluated in float64 on slabs of
    planes along the slowest array axis, each with a one-plane halo on both sides (more at the
    grid's ends, where the one-sided differences need three planes), so every voxel gets the
    very derivatives :func:`jacobian_determinant` takes on the whole field (second-order
    central differences inside, second-order one-sided at the borders, in physical mm), while
    the float64 work never exceeds about ``200 * slab_voxels`` bytes. Statistics are
    accumulated in float64 per slab; the determinant itself is kept in float32 (4 B a voxel).

    Parameters
    ----------
    transform : SpatialTransform
        Any transform mapping fixed points (mm) to moving points (mm), batch ``B``.
    grid : Grid
        Where to evaluate it, normally the fixed image's grid.
    mask : Tensor, optional
        Boolean ``(B, *grid.shape)`` or ``(*grid.shape)``: the voxels the statistics cover.
    keep : bool
        Return (and remember, for the next call with the same transform, unchanged, and grid)
        the float32 determinant.
    statistics : bool
        Compute the summary (:func:`jacobian_statistics`' keys).
    slab_voxels : int, optional
        Voxels per slab; :data:`SLAB_VOXELS` by default.

    Returns
    -------
    JacobianMap
        ``determinant`` ``(B, *grid.shape)`` float32 on the CPU (dimensionless: > 1 where a
        fixed voxel maps onto more moving volume, <= 0 where the mapping folds), or None
        without ``keep``; ``statistics``, float64 ``(B,)`` tensors on the CPU, or None. A
        determinant remembered from an earlier call is reused: its statistics are then taken
        from the float32 values.
    """
    key = (grid, _parameter_versions(transform))
    last = _LAST.copy()  # one consistent snapshot: write_run's threads may read while another stores
    if last.get("key") == key and last["transform"]() is transform:
        det = last["determinant"]
        stats = _statistics_of(det, mask) if statistics else None
        return JacobianMap(det if keep else None, stats)

    def field(lo: int, hi: int, sub: Grid) -> Tensor:
        return transform.displacement_field(sub, dtype=torch.float64)

    det, stats = _slab_pass(field, grid, transform.batch_size, mask, keep, slab_voxels)
    if keep:
        _LAST.clear()

        def forget(ref: weakref.ref) -> None:  # the transform is gone: so is the need for its determinant
            if _LAST.get("transform") is ref:
                _LAST.clear()

        _LAST.update(key=key, transform=weakref.ref(transform, forget), determinant=det)
    return JacobianMap(det, stats if statistics else None)


def _parameter_versions(module: torch.nn.Module) -> tuple:
    """Identity and in-place version of every tensor of ``module``: changes when it is updated."""
    return tuple((t.data_ptr(), t._version) for t in (*module.parameters(), *module.buffers()))


def _planes(n: int, plane: int, slab_voxels: int) -> Iterator[tuple[int, int, int, int]]:
    """``(lo, hi, start, stop)``: slabs ``[lo, hi)`` of ``n`` planes of ``plane`` voxels, each
    computing planes ``[start, stop)`` with the halo that reproduces the whole-grid differences."""
    core = max(1, slab_voxels // max(plane, 1) - 2)
    for start in range(0, n, core):
        stop = min(n, start + core)
        lo, hi = max(0, start - 1), min(n, stop + 1)
        while hi - lo < min(3, n):  # second-order one-sided differences at the ends: 3 planes
            lo, hi = (lo - 1, hi) if lo > 0 else (lo, hi + 1)
        yield lo, hi, start, stop


def _slab_pass(
    field: Callable[[int, int, Grid], Tensor],
    grid: Grid,
    batch: int,
    mask: Tensor | None,
    keep: bool,
    slab_voxels: int | None = None,
) -> tuple[Tensor | None, dict[str, Tensor]]:
    """Determinant slab by slab: ``field(lo, hi, sub_grid)`` gives ``(B, *sub_grid.shape, D)``."""
    n, plane = grid.shape[0], int(np.prod(grid.shape[1:]))
    mask = _batch_mask(mask, (batch, *grid.shape))
    det_out = torch.empty((batch, *grid.shape), dtype=torch.float32) if keep else None
    summary = _Summary(batch)
    ainv = _inverse_index_matrix(grid, torch.empty(0, dtype=torch.float64))
    for lo, hi, start, stop in _planes(n, plane, slab_voxels or SLAB_VOXELS):
        sub = grid.slab(lo, hi)
        u = field(lo, hi, sub).to(torch.float64)
        core = slice(start - lo, stop - lo)
        # along the slab axis (ITK axis D - 1) the halo planes are needed; within planes, not
        derivatives = [_index_derivative(u[:, core], sub, k) for k in range(grid.ndim - 1)]
        derivatives.append(_index_derivative(u, sub, grid.ndim - 1)[:, core])
        del u
        det = _determinant(list(_to_physical(derivatives, ainv.to(derivatives[0].device))))
        del derivatives
        slab_mask = None if mask is None else mask[:, start:stop].to(det.device)
        summary.add(det, slab_mask)
        if det_out is not None:
            det_out[:, start:stop] = det.cpu()
    return det_out, summary.result()


def _batch_mask(mask: Tensor | None, shape: tuple[int, ...]) -> Tensor | None:
    """A boolean mask ``(B, *spatial)`` or ``(*spatial)`` expanded to ``shape`` = ``(B, *spatial)``."""
    if mask is None:
        return None
    mask = mask.to(torch.bool)
    return mask.expand(shape) if mask.dim() == len(shape) else mask[None].expand(shape)


def _statistics_of(det: Tensor, mask: Tensor | None) -> dict[str, Tensor]:
    summary = _Summary(det.shape[0])
    mask = _batch_mask(mask, tuple(det.shape))
    summary.add(det.double(), None if mask is None else mask.cpu())
    return summary.result()


class _Summary:
    """Running min, max, count, folds and mean/variance of det and of log det (Chan et al.'s
    pairwise update: slab order does not change the result beyond round-off)."""

    def __init__(self, batch: int) -> None:
        self.count = [0] * batch
        self.low = [math.inf] * batch
        self.high = [-math.inf] * batch
        self.folded = [0] * batch
        self.moments = [[0, 0.0, 0.0] for _ in range(batch)]  # n, mean, M2 of det
        self.log_moments = [[0, 0.0, 0.0] for _ in range(batch)]  # of log det (unfolded)

    @staticmethod
    def _merge(moments: list, values: Tensor) -> None:
        m = values.numel()
        if m == 0:
            return
        mean = float(values.mean())
        m2 = float((values - mean).square().sum())
        n, old_mean, old_m2 = moments
        total = n + m
        delta = mean - old_mean
        moments[:] = [total, old_mean + delta * m / total, old_m2 + m2 + delta * delta * n * m / total]

    def add(self, det: Tensor, mask: Tensor | None) -> None:
        for b in range(det.shape[0]):
            values = det[b] if mask is None else det[b][mask[b]]
            values = values.reshape(-1)
            if values.numel() == 0:
                continue
            folded = values <= 0
            self.count[b] += values.numel()
            self.low[b] = min(self.low[b], float(values.min()))
            self.high[b] = max(self.high[b], float(values.max()))
            self.folded[b] += int(folded.sum())
            self._merge(self.moments[b], values)
            self._merge(self.log_moments[b], values[~folded].log())

    def result(self) -> dict[str, Tensor]:
        nan = math.nan
        rows = []
        for b in range(len(self.count)):
            n = self.count[b]
            if n == 0:
                rows.append((nan,) * 7)
                continue
            log_n, _, log_m2 = self.log_moments[b]
            rows.append((
                self.low[b], self.high[b], self.moments[b][1], math.sqrt(max(self.moments[b][2], 0.0) / n),
                self.folded[b] / n, float(self.folded[b]), math.sqrt(max(log_m2, 0.0) / log_n) if log_n else nan,
            ))
        keys = ("min", "max", "mean", "std", "folded_fraction", "folded_count", "log_std")
        table = torch.tensor(rows, dtype=torch.float64).reshape(len(rows), len(keys))
        return {key: table[:, i].clone() for i, key in enumerate(keys)}
