"""One stage of a registration run level by level (coarse to fine): the level loop shared by
linear and deformable stages, and the set-up of a deformable stage (B-spline or SVF)."""
from __future__ import annotations

import time
from typing import Any, Callable

import torch

from ..grid import Grid
from ..image import Image
from ..threads import level_threads, torch_threads
from ..transforms import Affine, Composite, Rigid, Similarity, SpatialTransform, Translation
from .levels import Level, LevelCache
from .objective import auto_level_bins, level_problem
from .optimize import DenseDeformation, optimize_level
from .options import RegistrationOptions, StageOptions
from .progress import IterationInfo, Progress, evaluation_budget, observer

__all__ = ["LINEAR_CLASSES", "run_levels", "run_deformable", "deformation_penalty"]

#: The transform class of each linear stage.
LINEAR_CLASSES = {"translation": Translation, "rigid": Rigid, "similarity": Similarity, "affine": Affine}


def run_levels(
    kind: str,
    transform: SpatialTransform,
    stage: StageOptions,
    cache: LevelCache,
    opts: RegistrationOptions,
    history: list[dict[str, Any]],
    stage_index: int,
    dense_factory=None,
    callback: Callable[[IterationInfo], Any] | None = None,
    levels: slice = slice(None),
    after_level: Callable[[int], bool] | None = None,
) -> None:
    """Optimise ``transform`` in place level by level (``levels``: a part of the stage's levels),
    appending one history entry per level; ``after_level(level_index)`` runs after each and
    ends the stage when it returns True (it has run the remaining levels itself)."""
    count = len(stage.shrink_factors)
    schedule = list(enumerate(zip(stage.shrink_factors, stage.smoothing_sigmas, stage.iterations)))[levels]
    progress = Progress(kind, [evaluation_budget(it, opts.optimizer) for _, (_, _, it) in schedule]) if opts.verbose else None
    for level_index, (factor, sigma, iterations) in schedule:
        level_start = time.perf_counter()
        level = cache.get(factor, sigma)
        problem, indices = level_problem(
            level, stage, opts, seed=opts.seed + 1000 * stage_index + level_index,
            last_level=level_index == count - 1,
        )
        if dense_factory is not None:
            problem.dense, problem.penalty_weight = dense_factory(level, indices), stage.regularization
        with torch.no_grad():  # the moving image is sampled once for the overlap check, auto bins and mi_start
            samples = problem.moving_samples(transform)
            problem.check_overlap(samples[2])
            if stage.bins == "auto":
                problem.bins = auto_level_bins(problem, samples)
            initial, overlap, _ = problem.score(samples, check_overlap=False)
        dense_voxels = 0 if problem.dense is None or problem.dense.pointwise else level.fixed.grid.numel
        with torch_threads(level_threads(opts.threads, dense_voxels)):
            values = optimize_level(
                transform, problem, iterations, opts.optimizer,
                on_iteration=observer(kind, level_index, transform, progress, callback),
            )
        with torch.no_grad():
            final, overlap = problem.metric(transform)
        history.append({
            "stage": kind, "level": level_index, "shrink_factor": factor, "smoothing_sigma_mm": sigma,
            "grid_size": list(level.fixed.grid.size), "spacing_mm": list(level.fixed.grid.spacing),
            "samples": int(problem.points.shape[1]), "bins": problem.bins, "kernel": list(problem.kernel),
            "evaluations": len(values),
            "mi_start": float(initial[0]), "mi_end": float(final[0]), "overlap": float(overlap),
            "objective": values, "seconds": time.perf_counter() - level_start,
        })
        if progress is not None:
            progress.level_done(history[-1], count)
        if after_level is not None and after_level(level_index):
            break
    if progress is not None:
        progress.close()


def deformation_penalty(deformation: SpatialTransform, grid: Grid, control_spacing: float, dtype: torch.dtype):
    """The regulariser of a deformable stage, as a closure over the deformation's parameters.

    B-spline: bending energy of the displacement on a grid at half the control spacing (fine
    enough to see the spline's curvature, 10-100x cheaper than the image grid). SVF: diffusion
    (membrane) energy of the velocity on its own grid: no flow integration needed, and a smooth
    velocity gives a smooth diffeomorphism.
    """
    from ..regularizers import bspline_bending_energy, diffusion
    from ..transforms import SVF

    if isinstance(deformation, SVF):
        return lambda: diffusion(torch.movedim(deformation.dense_velocity(), 1, -1), deformation.grid).sum()
    penalty_grid = grid.with_spacing([max(s, control_spacing / 2) for s in grid.spacing])
    return lambda: bspline_bending_energy(deformation, penalty_grid, dtype=dtype).sum()


def run_deformable(
    kind: str,
    linear: SpatialTransform,
    stage: StageOptions,
    cache: LevelCache,
    opts: RegistrationOptions,
    fixed: Image,
    history: list[dict[str, Any]],
    stage_index: int,
    callback: Callable[[IterationInfo], Any] | None = None,
) -> SpatialTransform:
    """Optimise a B-spline or SVF deformation composed after the (frozen) linear transform."""
    from ..transforms import SVF, BSpline

    for parameter in linear.parameters():
        parameter.requires_grad_(False)
    device = next(linear.buffers()).device
    dtype = next(linear.buffers()).dtype
    if kind == "bspline":
        deformation = BSpline(fixed.grid, stage.control_spacing).to(device=device, dtype=dtype)
    else:
        field_grid = fixed.grid.with_spacing([max(s, stage.control_spacing) for s in fixed.grid.spacing])
        deformation = SVF(field_grid).to(device=device, dtype=dtype)
    composite = Composite([linear, deformation])
    penalty = deformation_penalty(deformation, fixed.grid, stage.control_spacing, dtype)

    def dense_factory(level: Level, indices: torch.Tensor) -> DenseDeformation:
        at_samples = None if kind == "svf" else deformation.voxel_displacement(level.fixed.grid, indices, dtype)
        return DenseDeformation(linear, deformation, level.fixed.grid, indices, penalty, pointwise=kind == "svf", at_samples=at_samples)

    run_levels(kind, composite, stage, cache, opts, history, stage_index, dense_factory, callback)
    return composite
