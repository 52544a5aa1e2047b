"""The per-level problem: samples of the fixed level image, the moving level image, the
histogram bins and Parzen kernels of the soft-binned MI at that level."""
from __future__ import annotations

import math

import torch

from ..mi.bins import SOFT_AUTO_FACTOR, auto_bins
from .levels import Level
from .optimize import LevelProblem
from .options import RegistrationOptions, StageOptions
from .sampling import sample_points

__all__ = ["AUTO_MIN_BINS", "auto_level_bins", "level_bins", "level_kernel", "level_problem"]

#: Fewest bins the ``bins="auto"`` rule may choose: fewer biased the multimodal affine optimum
#: (32 bins: +0.4 % in scale on the oblique benchmark case), although the rule's MSE-optimal
#: count for the entropies is ~60 there.
AUTO_MIN_BINS = 64


@torch.no_grad()
def auto_level_bins(problem: LevelProblem, samples: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> int:
    """The ``bins="auto"`` count of a level, from its samples at the level's starting alignment
    (:meth:`LevelProblem.moving_samples`).

    The soft joint-histogram rule of :func:`miregister.mi.auto_bins` with ``SOFT_AUTO_FACTOR``
    (Hacine-Gharbi & Ravier, 2018) grows with the correlation of the two images: an aligned
    mono-modal pair gets the rule's cap of 256 bins at 80k samples, whose finer histogram
    lowers the metric's bias (2 mm T1 -> T1 affine: 0.047 -> 0.032 mm), a multimodal pair ~60,
    raised to :data:`AUTO_MIN_BINS`.
    """
    values, weights, _ = samples
    rule = auto_bins(problem.fixed_values, values, weights, factor=SOFT_AUTO_FACTOR)[0]
    return level_bins(max(AUTO_MIN_BINS, rule), int(problem.points.shape[1]))


def level_bins(bins: int, samples: int) -> int:
    """Histogram bins for a level with ``samples`` points: ``bins``, capped at ``sqrt(samples)`` (>= 8).

    With fewer samples than joint-histogram cells the soft-binned MI is mostly sampling noise and
    its landscape turns chaotic: on a 2D slice's coarsest level (~400 samples, 64 bins) a 1e-5
    relative change of the input flipped the level's optimum and 4 of 60 seeded 2D registrations
    ended ~1 mm off; with the cap, none did. 3D levels (thousands of samples) keep ``bins``.
    """
    return int(min(bins, max(8, math.isqrt(samples))))


def level_kernel(kernel: tuple[str, str], last_level: bool) -> tuple[str, str]:
    """Parzen kernels (fixed, moving) of a level: ``kernel`` at the last level of a stage, the
    moving kernel on both axes before it.

    Hard fixed bins (the Mattes pairing) lower the metric's bias where precision is decided,
    but the smoother histogram of a soft fixed axis widens the capture range at the coarse
    levels: with hard bins throughout, 13 of 20 starts rotated 30-50 degrees converged, with
    soft coarse levels 16 of 20 (benchmarks/cases.py capture cases, 64 bins; 17 of 20 with
    ``bins="auto"``).
    """
    return kernel if last_level else (kernel[1], kernel[1])


def level_problem(
    level: Level, stage: StageOptions, opts: RegistrationOptions, seed: int, last_level: bool
) -> tuple[LevelProblem, torch.Tensor]:
    """Sample the fixed level image and gather what the metric needs (and the sample indices).

    Samples sit at voxel centres: random jitter within voxels, tried first, biased MI towards
    a ~0.5% larger scale on the multimodal sample pair (interpolated fixed values are
    smoother than the moving ones), while voxel centres gave the right optimum.
    """
    fixed, moving = level.fixed, level.moving
    points, indices = sample_points(
        fixed.grid, stage.samples, mask=level.fixed_mask, seed=seed, jitter=False,
        device=fixed.device, dtype=fixed.dtype, return_indices=True,
    )
    points = points[None]
    fixed_values = fixed.data[0].reshape(-1)[indices][None]
    weights = torch.ones_like(fixed_values)
    moving_mask = None if level.moving_mask is None else level.moving_mask.to(moving.dtype)[None, None]
    centred = points[0] - points[0].mean(dim=0)
    radius = float(centred.pow(2).sum(dim=1).mean().sqrt().clamp(min=1.0))
    fixed_range, moving_range = level.value_ranges()

    problem = LevelProblem(
        points=points, fixed_values=fixed_values, fixed_weights=weights,
        moving=level.moving_coefficients() if stage.interpolation == "bspline" else moving.batch(),
        moving_grid=moving.grid, moving_mask=moving_mask,
        fixed_range=fixed_range, moving_range=moving_range,
        bins=level_bins(AUTO_MIN_BINS if stage.bins == "auto" else stage.bins, int(points.shape[1])),
        kernel=level_kernel(opts.kernel, last_level), radius=radius, interpolation=stage.interpolation,
    )
    return problem, indices
