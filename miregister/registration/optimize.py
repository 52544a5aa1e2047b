"""Gradient descent on soft-binned MI for one pyramid level.

The objective is ``-MI(fixed(x_i), moving(T(x_i)))`` over a fixed set of sample points
``x_i`` (plus an optional regularisation penalty), in nats. Parameters are rescaled so that
one unit of every optimised variable moves points by about one millimetre: rotations and
matrix entries are multiplied by the sampled region's radius, translations and
displacements are already in mm. That makes L-BFGS's curvature model and Adam's step size
meaningful for all parameters together (SimpleITK calls this "parameter scales").
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .. import mi
from ..errors import RegistrationError
from ..grid import Grid
from ..interpolation import physical_to_index, sample_at_indices
from ..transforms.linear import CenteredLinearTransform

__all__ = ["LevelProblem", "DenseDeformation", "optimize_level", "batch_participation", "RegistrationError"]

# Parameters whose unit is dimensionless (radians, matrix entries, log-scale): scaled by radius.
_ANGULAR_NAMES = ("rotation", "matrix", "log_scale")
#: Fraction of the fixed samples that must map inside the moving image for a usable metric.
MIN_OVERLAP = 0.02
#: Within a level, a trial transform must keep this share of the level's starting overlap.
#: MI estimated on fewer samples is biased upwards (a soft histogram of a few hundred samples
#: looks more structured than one of thousands), so the values of transforms whose overlaps
#: differ several-fold do not compare: on a 28-slice slab, a coarsest-level line search once
#: stepped from 68 % to 5 % of the samples, where the MI of ~280 samples (0.65) beat the 0.59
#: reached, and the run ended 140 mm off (1.2 at the truth). Halving the overlap in one level is
#: still allowed; growing it always is.
OVERLAP_KEEP = 0.5


def _active_batcher():
    """The calling thread's batcher of :func:`~miregister.registration.batch.register_batch`, or None."""
    from .batch import active_batcher  # batch imports this module

    return active_batcher()


def batch_participation() -> contextlib.AbstractContextManager:
    """In a thread of :func:`~miregister.registration.batch.register_batch`, count this pair
    among those whose metric evaluations are batched until the block ends (re-entrant); a
    no-op in a single run."""
    batcher = _active_batcher()
    return batcher.participant() if batcher is not None else contextlib.nullcontext()


class _Scaled(nn.Module):
    """Parametrisation ``p = z / scale`` so the optimiser sees ``z`` in ~mm units."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = float(scale)

    def forward(self, z: Tensor) -> Tensor:
        return z / self.scale

    def right_inverse(self, p: Tensor) -> Tensor:
        return p * self.scale


@dataclass
class DenseDeformation:
    """A deformable stage: ``T(x) = linear(x + u(x))``, with its regulariser.

    With ``pointwise=False`` (B-splines) the displacement ``u`` is computed on the whole level
    grid with the deformation's fast separable path and gathered at the sample voxels by flat
    index. With ``pointwise=True`` (SVF) the deformation is evaluated at the sample points
    only: its flow lives on a coarse grid, so interpolating it at 100k points is cheaper than
    filling (and back-propagating through) the full-resolution grid. ``penalty`` computes the
    regulariser (a scalar, a mean over voxels so independent of the grid's resolution) from the
    deformation's current parameters; see ``stages.deformation_penalty``. ``at_samples``, where
    given, computes ``u`` at the sample voxels directly, axis first ``(1, D, N)``
    (:meth:`~miregister.transforms.BSpline.voxel_displacement`), instead of the whole grid.
    """

    linear: nn.Module
    deformation: nn.Module
    grid: Grid
    indices: Tensor
    penalty: Callable[[], Tensor] | None = None
    pointwise: bool = False
    at_samples: Callable[[], Tensor] | None = None


@dataclass
class LevelProblem:
    """Everything the metric needs at one level.

    Attributes
    ----------
    points : Tensor
        Sample points ``(1, N, D)`` in fixed physical space (mm).
    fixed_values : Tensor
        Fixed intensities at the points, ``(1, N)``.
    fixed_weights : Tensor
        Sample weights ``(1, N)`` (fixed mask; 1 where unmasked).
    moving : Tensor
        Moving level image ``(1, C, *shape)``, or its cubic B-spline coefficients
        (:func:`~miregister.cubic.bspline_prefilter`) when ``interpolation`` is ``"bspline"``.
    moving_grid : Grid
        Grid of ``moving``.
    fixed_range, moving_range : Tensor
        ``(1, 2)`` intensity ranges (min, max) fixing the histogram bins for the level.
    bins : int
        Number of histogram bins.
    kernel : (str, str)
        Parzen kernels of the (fixed, moving) histogram axes.
    radius : float
        RMS distance (mm) of the points from their centroid: the scale of angular parameters.
    moving_mask : Tensor, optional
        Moving mask ``(1, 1, *shape)`` as float, sampled linearly (weights in [0, 1]).
    dense : DenseDeformation, optional
        For deformable stages: evaluate the deformation densely on the level grid.
    penalty_weight : float
        Weight of the deformation energy added to ``-MI``.
    interpolation : str
        ``"linear"`` or ``"bspline"`` sampling of ``moving``.
    overlap_floor : float
        A transform whose overlap (fraction of the samples inside the moving image) is below
        this gets :meth:`loss` 0 (never below :data:`MIN_OVERLAP`; :func:`optimize_level`
        raises it to :data:`OVERLAP_KEEP` of the level's starting overlap).
    last_overlap : float
        The overlap of the last :meth:`loss` (or batched) evaluation.
    """

    points: Tensor
    fixed_values: Tensor
    fixed_weights: Tensor
    moving: Tensor
    moving_grid: Grid
    fixed_range: Tensor
    moving_range: Tensor
    bins: int
    kernel: tuple[str, str]
    radius: float
    moving_mask: Tensor | None = None
    dense: DenseDeformation | None = None
    penalty_weight: float = 0.0
    interpolation: str = "linear"
    overlap_floor: float = MIN_OVERLAP
    last_overlap: float = math.nan

    def _map(self, transform: nn.Module) -> Tensor:
        """Moved sample points ``(1, N, D)`` in moving space (mm)."""
        if self.dense is None:
            return transform(self.points)
        if self.dense.pointwise:
            return self.dense.linear(self.dense.deformation(self.points))
        d = self.points.shape[-1]
        field = self.dense.deformation.displacement_field(self.dense.grid, dtype=self.points.dtype)
        displacement = field.reshape(field.shape[0], -1, d)[:, self.dense.indices]
        return self.dense.linear(self.points + displacement)

    def moving_index(self, transform: nn.Module) -> Tensor:
        """The moved sample points as continuous indices of the moving grid, axis first ``(1, D, N)``.

        A centred linear transform ``A (x - c) + c + t`` (alone, or after a deformation with
        ``at_samples``) and the moving grid's mm -> index map are composed into one ``(D, D)``
        matrix (in float64) applied to the centred points stored axis first: one small product
        per evaluation instead of three ``(N, D) @ (D, D)`` ones, each ~20x slower on the CPU.
        """
        to_index = physical_to_index(self.moving_grid).to(self.points.device)
        d = self.points.shape[-1]
        scale, offset = to_index[:d, :d], to_index[:d, d]
        dense = self.dense
        linear = transform if dense is None else dense.linear
        composable = isinstance(linear, CenteredLinearTransform) and linear.batch_size == 1
        if composable and (dense is None or dense.at_samples is not None):
            center = linear.center[0]
            matrix = (scale @ linear.linear_part()[0].double()).to(self.points.dtype)
            shift = (scale @ (center + linear.translation[0]).double() + offset).to(self.points.dtype)
            points = self._centred_points(center)
            if dense is not None:  # linear(x + u(x)) at the sample voxels
                points = points + dense.at_samples()[0].to(points.dtype)
            return torch.addmm(shift[:, None], matrix, points)[None]
        moved = self._map(transform)  # (1, N, D) mm
        return scale.to(moved.dtype) @ moved.transpose(1, 2) + offset.to(moved.dtype)[:, None]

    def _centred_points(self, center: Tensor) -> Tensor:
        """``(points - center)`` axis first ``(D, N)``, kept while the centre stays the same."""
        cached = self.__dict__.get("_centred")
        if cached is None or not torch.equal(cached[0], center):
            cached = (center.detach().clone(), (self.points[0] - center.detach().to(self.points.dtype)).T.contiguous())
            self.__dict__["_centred"] = cached
        return cached[1]

    def moving_samples(self, transform: nn.Module) -> tuple[Tensor, Tensor, Tensor]:
        """Moving intensities at the moved points ``(1, N)``, their weights ``(1, N)`` (fixed
        mask x inside the moving image x moving mask), and the overlap fraction (scalar)."""
        index = self.moving_index(transform)
        values, inside = sample_at_indices(
            self.moving, self.moving_grid, index, mode=self.interpolation, prefiltered=self.interpolation == "bspline"
        )
        weights = self.fixed_weights * inside.to(self.fixed_weights.dtype)
        if self.moving_mask is not None:
            mask_values, _ = sample_at_indices(self.moving_mask, self.moving_grid, index)
            weights = weights * mask_values[:, 0]
        return values[:, 0], weights, weights.sum() / self.fixed_weights.sum()

    def evaluate(self, transform: nn.Module, check_overlap: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """MI (nats, ``(1,)``), overlap fraction, and penalty (0 for linear stages)."""
        return self.score(self.moving_samples(transform), check_overlap)

    def score(
        self, samples: tuple[Tensor, Tensor, Tensor], check_overlap: bool = True
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`evaluate` on the output of :meth:`moving_samples` (for callers that also need
        the samples themselves, so that the moving image is sampled once)."""
        values, weights, overlap = samples
        if check_overlap:
            self.check_overlap(overlap)
        value = mi.soft_mutual_information(
            self.fixed_values, values, bins=self.bins, kernel=self.kernel, weights=weights,
            x_range=self.fixed_range, y_range=self.moving_range, validate=False,
        )
        penalty = torch.zeros((), dtype=value.dtype, device=value.device)
        if self.dense is not None and self.dense.penalty is not None and self.penalty_weight > 0:
            penalty = self.dense.penalty()
        return value, overlap, penalty

    @staticmethod
    def check_overlap(overlap: Tensor) -> None:
        """Raise :class:`RegistrationError` when fewer than ``MIN_OVERLAP`` of the samples map
        inside the moving image."""
        if float(overlap) < MIN_OVERLAP:
            raise RegistrationError(
                f"the images do not overlap: only {100 * float(overlap):.2f}% of the fixed samples map inside "
                "the moving image; check the images' origins/directions or initialise differently"
            )

    def metric(self, transform: nn.Module, check_overlap: bool = True) -> tuple[Tensor, Tensor]:
        """Soft-binned MI (nats, shape ``(1,)``) and the fraction of samples inside the moving image."""
        value, overlap, _ = self.evaluate(transform, check_overlap)
        return value, overlap

    def loss(self, transform: nn.Module) -> Tensor:
        """``-MI + penalty_weight * penalty`` (a scalar).

        A transform that maps fewer than ``MIN_OVERLAP`` (or ``overlap_floor``) of the samples
        into the moving image gets loss 0 with no gradient (worse than any real alignment, whose ``-MI`` < 0) instead
        of an error: L-BFGS's line search may try such a far step and must be able to back off.
        Where a level starts or ends that far off, :meth:`metric` raises.
        """
        value, overlap, penalty = self.evaluate(transform, check_overlap=False)
        if self.refuses(float(overlap)):
            return torch.zeros((), dtype=value.dtype, device=value.device, requires_grad=True)
        return -value.sum() + self.penalty_weight * penalty

    def refuses(self, overlap: float) -> bool:
        """Record ``overlap`` as :attr:`last_overlap`; True when it is below ``MIN_OVERLAP`` or
        ``overlap_floor``, i.e. when :meth:`loss` (and the batched loss) gives 0 with no gradient."""
        self.last_overlap = overlap
        return overlap < max(MIN_OVERLAP, self.overlap_floor)


class _LBFGS(torch.optim.LBFGS):
    """torch's L-BFGS without the ``torch._dynamo`` import that its base class's
    ``add_param_group``/``zero_grad`` wrappers trigger on first use (~1 s of CPU, paid by the
    first registration of every process). The methods are torch's own, unwrapped: same steps."""

    add_param_group = torch.optim.Optimizer.add_param_group.__wrapped__
    zero_grad = torch.optim.Optimizer.zero_grad.__wrapped__


#: Evaluations in a row without a gain above the metric's rounding after which L-BFGS stops.
STALL_EVALUATIONS = 4
#: That rounding, in units of the loss dtype's epsilon times ``max(1, |MI|)``.
STALL_ULPS = 8.0


class _Stalled(Exception):
    """Raised by the closure to end L-BFGS once the metric no longer improves (:class:`_Stall`)."""


class _Stall:
    """Stops L-BFGS when :data:`STALL_EVALUATIONS` evaluations in a row have not raised the best
    MI by more than its float rounding (:data:`STALL_ULPS` epsilons).

    torch's own rule (``tolerance_change``, 1e-8 in the loss) is below float32's resolution of
    an MI near 1 (~1.2e-7): at the finest level a third of the evaluations were spent in line
    searches among values equal to the last digit, which can no longer tell a better point
    from a worse one. The best parameters seen are kept, so stopping mid line search returns
    the best point evaluated, not the last trial.
    """

    def __init__(self, variables: list[Tensor]) -> None:
        self.variables = variables
        self.best = -math.inf
        self.kept: list[Tensor] | None = None
        self.since = 0

    def update(self, mi: float, dtype: torch.dtype) -> bool:
        """Record one evaluation's MI (nats); True when the optimiser should stop."""
        rounding = STALL_ULPS * torch.finfo(dtype).eps * max(1.0, abs(self.best) if math.isfinite(self.best) else 1.0)
        if mi > self.best:
            gained = mi - self.best > rounding
            self.best = mi
            self.kept = [v.detach().clone() for v in self.variables]
            if gained:
                self.since = 0
                return False
        self.since += 1
        return self.since >= STALL_EVALUATIONS

    def restore(self) -> None:
        """Put the best parameters evaluated back."""
        if self.kept is not None:
            with torch.no_grad():
                for variable, kept in zip(self.variables, self.kept):
                    variable.copy_(kept)


def _trainable(transform: nn.Module) -> list[tuple[nn.Module, str, float]]:
    """(module, parameter name, scale) for every parameter that requires a gradient."""
    found = []
    for module in transform.modules():
        for name, parameter in list(module._parameters.items()):
            if parameter is not None and parameter.requires_grad:
                found.append((module, name, 1.0 if not any(k in name for k in _ANGULAR_NAMES) else None))
    return found


def optimize_level(
    transform: nn.Module,
    problem: LevelProblem,
    iterations: int,
    optimizer: str = "lbfgs",
    on_iteration: Callable[[float], None] | None = None,
) -> list[float]:
    """Minimise the level's loss over the transform's trainable parameters, in place.

    Parameters
    ----------
    transform : nn.Module
        A spatial transform (fixed -> moving); parameters with ``requires_grad=False`` stay fixed.
    problem : LevelProblem
        Samples, images and metric settings of the level.
    iterations : int
        Maximum number of iterations (function evaluations for L-BFGS).
    optimizer : {"lbfgs", "adam"}
        L-BFGS with strong-Wolfe line search (default) or Adam (step 0.5 mm, cosine decay).

    Returns
    -------
    list of float
        The metric (MI, nats) after each evaluation.

    Notes
    -----
    In a thread of :func:`~miregister.registration.batch.register_batch` each evaluation of the
    loss is handed to the batch (evaluated with the other pairs' in one pass); the optimiser,
    its state and its stopping rule stay this pair's own.
    """
    if iterations <= 0:
        return []
    targets = _trainable(transform)
    if not targets:
        raise RegistrationError("the transform has no trainable parameter")
    for module, name, scale in targets:
        parametrize.register_parametrization(module, name, _Scaled(problem.radius if scale is None else scale))
    history: list[float] = []
    # register_batch: this pair's evaluations join the other pairs' in one batched pass.
    batcher = _active_batcher()
    try:
        variables = [p for p in transform.parameters() if p.requires_grad]
        stall = _Stall(variables)

        def closure() -> Tensor:
            opt.zero_grad()
            if batcher is not None:  # the batcher has already accumulated this pair's gradient
                loss = batcher.loss(problem, transform)
            else:
                loss = problem.loss(transform)
            if not torch.isfinite(loss):
                raise RegistrationError("the metric became NaN or infinite during optimisation")
            if batcher is None:
                loss.backward()
            history.append(-float(loss.detach()))
            if on_iteration is not None:
                on_iteration(history[-1])
            if len(history) == 1:  # the level's start: later trials keep OVERLAP_KEEP of its overlap
                problem.overlap_floor = max(MIN_OVERLAP, OVERLAP_KEEP * problem.last_overlap)
            if optimizer == "lbfgs" and stall.update(history[-1], loss.dtype):
                raise _Stalled()
            return loss

        with batch_participation():
            if optimizer == "lbfgs":
                opt = _LBFGS(
                    variables, lr=1.0, max_iter=iterations, max_eval=int(iterations * 1.25) + 1,
                    tolerance_grad=1e-9, tolerance_change=1e-8, history_size=20, line_search_fn="strong_wolfe",
                )
                try:
                    opt.step(closure)
                except _Stalled:  # mid line search: go back to the best point evaluated
                    stall.restore()
            elif optimizer == "adam":
                opt = torch.optim.Adam(variables, lr=0.5)
                schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=iterations, eta_min=0.01)
                for _ in range(iterations):
                    opt.step(closure)
                    schedule.step()
            else:
                raise ValueError(f"unknown optimizer {optimizer!r}; choose 'lbfgs' or 'adam'")
    finally:
        problem.overlap_floor = MIN_OVERLAP
        for module, name, _ in targets:
            parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return history
