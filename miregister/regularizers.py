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

from typing import Iterator

import torch
from torch import Tensor

from .grid import Grid

__all__ = ["bending_energy", "diffusion", "jacobian_determinant", "jacobian_matrix", "jacobian_statistics"]


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
    ainv = _inverse_index_matrix(grid, u)
    index_derivatives = [_index_derivative(u, grid, k) for k in range(grid.ndim)]
    for p in range(grid.ndim):
        yield sum(ainv[k, p] * index_derivatives[k] for k in range(grid.ndim))


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
    return torch.linalg.det(jacobian_matrix(u, grid))


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
    ainv = _inverse_index_matrix(grid, u)
    first = [_index_derivative(u, grid, k) for k in range(d)]
    # index-space Hessian, upper triangle only (symmetric)
    hessian = {(k, l): _index_derivative(first[k], grid, l) for k in range(d) for l in range(k, d)}
    del first
    # H_phys[p, q] = sum_kl Ainv[k, p] Ainv[l, q] H_idx[k, l] over the upper triangle k <= l,
    # the k < l terms weighted Ainv[k, p] Ainv[l, q] + Ainv[l, p] Ainv[k, q]. The weights are
    # computed in u's dtype, read as Python numbers (the same values), and the zero ones
    # skipped: an axis-aligned grid has one non-zero weight per (p, q), so a B-spline stage
    # pays 6 field-sized products per evaluation instead of 36 (and as many backward ops).
    outer = ainv[:, None, :, None] * ainv[None, :, None, :]  # [k, l, p, q] = Ainv[k, p] Ainv[l, q]
    weights = [outer.tolist(), (outer + outer.transpose(0, 1)).tolist()]
    total = u.new_zeros(u.shape[:-1])
    for p in range(d):
        for q in range(p, d):
            term = None
            for (k, l), h in hessian.items():
                weight = weights[k != l][k][l][p][q]
                if weight != 0.0:
                    term = weight * h if term is None else term + weight * h
            if term is not None:
                total = total + (1.0 if p == q else 2.0) * term.square().sum(dim=-1)
    return total.flatten(1).mean(dim=1)


def jacobian_statistics(u: Tensor, grid: Grid, mask: Tensor | None = None) -> dict[str, Tensor]:
    """Summary of the Jacobian determinant of ``T(x) = x + u(x)``, per batch element.

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
    det = jacobian_determinant(u.detach(), grid).double()
    batch = det.shape[0]
    if mask is None:
        mask = torch.ones_like(det, dtype=torch.bool)
    mask = mask.to(device=det.device, dtype=torch.bool).expand_as(det).reshape(batch, -1)
    det = det.reshape(batch, -1)
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=det.device)
    stats: dict[str, list[Tensor]] = {k: [] for k in ("min", "max", "mean", "std", "folded_fraction", "folded_count", "log_std")}
    for b in range(batch):
        values = det[b][mask[b]]
        if values.numel() == 0:
            for key in stats:
                stats[key].append(nan)
            continue
        folded = values <= 0
        unfolded = values[~folded]
        stats["min"].append(values.min())
        stats["max"].append(values.max())
        stats["mean"].append(values.mean())
        stats["std"].append(values.std(unbiased=False))
        stats["folded_fraction"].append(folded.double().mean())
        stats["folded_count"].append(folded.sum().double())
        stats["log_std"].append(unfolded.log().std(unbiased=False) if unfolded.numel() else nan)
    return {key: torch.stack(values) for key, values in stats.items()}
