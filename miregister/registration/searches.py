"""Searches for a better start than the centre initialisation: the rotation search (a grid of
initial rotations), the translation search along a partial field of view's short axes, the
orientation check after the coarsest level (axis swaps, flips and 45 degree turns), and the
final flip check that feeds the quality report."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from .. import mi
from ..grid import Grid
from ..interpolation import sample
from ..transforms import Affine, Rigid, SpatialTransform
from .levels import Level, LevelCache
from .objective import AUTO_MIN_BINS, level_problem
from .optimize import MIN_OVERLAP, LevelProblem
from .options import RegistrationOptions, StageOptions
from .stages import LINEAR_CLASSES, run_levels

__all__ = ["PARTIAL_FOV", "rotation_search", "translation_search", "orientation_check", "final_flip_check", "axis_rotations"]


def _rotation_candidates(ndim: int) -> list[np.ndarray]:
    """Rotation parameters tried by the rotation search (radians)."""
    if ndim == 2:
        return [np.array([a]) for a in np.deg2rad(np.arange(-180, 180, 15))]
    angles = np.deg2rad([-60.0, -30.0, 0.0, 30.0, 60.0])
    from scipy.spatial.transform import Rotation

    out = []
    for ax in angles:
        for ay in angles:
            for az in angles:
                out.append(Rotation.from_euler("xyz", [ax, ay, az]).as_rotvec())
    return out


@torch.no_grad()
def rotation_search(transform: SpatialTransform, level: Level, stage: StageOptions, opts: RegistrationOptions) -> None:
    """Keep the initial rotation (about the centre) with the highest MI at the coarsest level."""
    problem, _ = level_problem(level, stage, opts, seed=opts.seed + 777, last_level=False)
    start = Rigid.from_transform(transform)
    best_value, best_matrix = -math.inf, None
    for rotation in _rotation_candidates(transform.ndim):
        candidate = Rigid(transform.ndim, center=start.center.cpu(), dtype=start.translation.dtype).to(start.center.device)
        candidate.rotation.copy_(torch.as_tensor(rotation, dtype=candidate.rotation.dtype)[None])
        candidate.translation.copy_(start.translation)
        value, overlap = problem.metric(candidate, check_overlap=False)
        if float(overlap) > 0.5 and float(value[0]) > best_value:
            best_value, best_matrix = float(value[0]), candidate.affine_matrix()
    if best_matrix is not None:
        best = type(transform).from_matrix(best_matrix, center=transform.center, dtype=transform.translation.dtype)
        transform.load_state_dict(best.to(transform.center.device).state_dict())


#: A moving image whose extent along one of its axes is below this fraction of the fixed
#: object's extent along that axis has a partial field of view (a slab): the moments
#: initialisation then matches the slab's centre of mass to the whole fixed object's, off by up
#: to half the object, and :func:`translation_search` looks along that axis.
PARTIAL_FOV = 0.6


def _orientation_candidates(ndim: int) -> list[np.ndarray]:
    """Re-orientations tried by the orientation check: :func:`_axis_rotations` plus +-45 degrees
    about each axis (29 in 3D, 5 in 2D): a start 45 degrees off lies halfway between two
    axis-aligned orientations, where neither helps."""
    out = axis_rotations(ndim)
    c = math.sqrt(0.5)
    if ndim == 2:
        return out + [np.array([[c, -s * c], [s * c, c]]) for s in (1.0, -1.0)]
    for axis in range(3):
        for sign in (1.0, -1.0):
            # about coordinate axis ``axis``: the 2-D rotation in the plane of the other two
            # (right-handed order), written out rather than importing scipy.spatial (slow to import)
            i, j = (axis + 1) % 3, (axis + 2) % 3
            r = np.eye(3)
            r[i, i] = r[j, j] = c
            r[i, j], r[j, i] = -sign * c, sign * c
            out.append(r)
    return out


def axis_rotations(ndim: int) -> list[np.ndarray]:
    """The proper rotations that permute and flip the coordinate axes (23 in 3D, 3 in 2D),
    identity excluded: the orientations a wrong header or a swapped axis produces."""
    from itertools import permutations, product

    out = []
    for perm in permutations(range(ndim)):
        for signs in product((1.0, -1.0), repeat=ndim):
            r = np.zeros((ndim, ndim))
            r[np.arange(ndim), perm] = signs
            if np.linalg.det(r) > 0 and not np.allclose(r, np.eye(ndim)):
                out.append(r)
    return out


def _rotated_about(transform: SpatialTransform, rotation: np.ndarray, center: np.ndarray) -> SpatialTransform:
    """``T(R (x - c) + c)`` as a transform of ``transform``'s class and centre."""
    d = transform.ndim
    h = np.eye(d + 1)
    h[:d, :d] = rotation
    h[:d, d] = center - rotation @ center
    m = transform.affine_matrix()[0].detach().cpu().double().numpy() @ h
    out = type(transform).from_matrix(m, center=transform.center, dtype=transform.translation.dtype)
    return out.to(transform.center.device)


@torch.no_grad()
def translation_search(
    transform: SpatialTransform, level: Level, stage: StageOptions, opts: RegistrationOptions, moving_grid: Grid
) -> dict[str, Any] | None:
    """Partial field of view: slide the start along the moving image's short axes, keep the best MI.

    For each moving index axis along which the moving image covers less than
    :data:`PARTIAL_FOV` of the fixed sampled object (seen through the current transform), the
    start's translation is moved so that the slab's centre visits the object's extent in steps
    of a quarter of the slab (at least 2 voxels of the level), and the coarsest level's MI is
    evaluated at each (no optimisation: tens of evaluations). Returns what it did, or None
    when the moving image covers the object.
    """
    problem, _ = level_problem(level, stage, opts, seed=opts.seed + 555, last_level=False)
    moved = transform(problem.points)[0].detach().cpu().double().numpy()
    direction = moving_grid.direction_matrix()
    extent = moving_grid.extent()
    local = (moved - moving_grid.center()) @ direction  # coordinates along the moving axes
    low, high = np.percentile(local, 2, axis=0), np.percentile(local, 98, axis=0)
    axes = [a for a in range(transform.ndim) if extent[a] < PARTIAL_FOV * (high[a] - low[a])]
    if not axes:
        return None
    step_floor = 2 * max(level.moving.grid.spacing)
    offsets = [np.zeros(transform.ndim)]
    for a in axes:
        step = max(extent[a] / 4, step_floor)
        # the slab's centre at s along axis a: the fixed point now at local coordinate s must move to 0
        for s in np.arange(low[a] + extent[a] / 4, high[a] - extent[a] / 4 + 1e-6, step):
            offsets.append(-s * direction[:, a])
    start_value, _ = problem.metric(transform, check_overlap=False)
    best_value, best_offset = float(start_value[0]), offsets[0]
    base = transform.translation.detach().clone()
    for offset in offsets[1:]:
        transform.translation.copy_(base + torch.as_tensor(offset, dtype=base.dtype, device=base.device))
        value, overlap = problem.metric(transform, check_overlap=False)
        if float(overlap) >= MIN_OVERLAP and float(value[0]) > best_value:
            best_value, best_offset = float(value[0]), offset
    transform.translation.copy_(base + torch.as_tensor(best_offset, dtype=base.dtype, device=base.device))
    return {
        "search": "translation", "axes": axes, "candidates": len(offsets), "mi_start": float(start_value[0]),
        "mi_best": best_value, "shift_mm": float(np.linalg.norm(best_offset)),
        "note": f"partial field of view along moving axis {axes}: {len(offsets)} starts along it, best "
                f"shifted by {np.linalg.norm(best_offset):.1f} mm (coarse MI {float(start_value[0]):.4f} -> {best_value:.4f})",
    }


#: Most fixed samples the re-orientation scores use: they only rank orientations, and at most
#: this many keep the ranking (a 2 mm brain's coarsest level has ~5 k in its foreground, so all
#: are used there; a 1 mm brain's ~40 k would cost 8x more for the same ranking).
ORIENTATION_SAMPLES = 8192
#: Moved points per batched evaluation of the re-orientation scores (~64 B a point with linear
#: interpolation and the histogram's taps): bounds the memory at ~16 MB.
ORIENTATION_CHUNK_POINTS = 1 << 18


def _scoring_problem(level: Level, stage: StageOptions, opts: RegistrationOptions, seed: int) -> LevelProblem:
    """The level's problem for ranking re-orientations: at most :data:`ORIENTATION_SAMPLES`
    samples and linear interpolation of the level's moving image.

    Measured on the 2 mm quick-start pair (30 scores): cubic B-spline sampling, one candidate
    at a time, 0.15-0.2 s; linear and batched ~0.03 s. Both score the base and its
    re-orientations the same way, so the ranking is what is compared (see
    :func:`_orientation_scores`)."""
    samples = min(stage.samples, ORIENTATION_SAMPLES)
    problem, _ = level_problem(level, replace(stage, samples=samples, interpolation="linear"), opts, seed=seed, last_level=False)
    return problem


def _orientation_scores(
    transform: SpatialTransform, problem: LevelProblem
) -> tuple[float, list[tuple[float, np.ndarray]]]:
    """MI of ``transform`` and of its re-orientations (:func:`_orientation_candidates`) about the
    samples' centre, best first.

    All 30 mappings are evaluated in one batch (chunked by :data:`ORIENTATION_CHUNK_POINTS`):
    each is ``M_k = T H_k`` (:func:`_rotated_about`'s matrix) applied to the samples, the moving
    image sampled as ``problem`` says, and the soft-binned MI of each row computed with the
    problem's bins, kernels, ranges and weights (its fixed weights times inside, times the
    moving mask): what ``problem.metric`` gives for each candidate, to float rounding.
    """
    d = transform.ndim
    points = problem.points  # (1, N, D)
    center = points[0].mean(dim=0).detach().cpu().double().numpy()
    base = transform.affine_matrix()[0].detach().cpu().double().numpy()
    rotations = _orientation_candidates(d)
    matrices = [base]
    for rotation in rotations:
        h = np.eye(d + 1)
        h[:d, :d] = rotation
        h[:d, d] = center - rotation @ center
        matrices.append(base @ h)
    # (x - c) A^T + c + o', with c the samples' centre: far-from-origin points keep their float32 precision
    m = torch.as_tensor(np.stack(matrices), dtype=points.dtype, device=points.device)
    c = torch.as_tensor(center, dtype=points.dtype, device=points.device)
    offsets = (m[:, :d, :d] @ c + m[:, :d, d]).unsqueeze(1)  # (K, 1, D): T(c) of each mapping
    n = int(points.shape[1])
    chunk = max(1, ORIENTATION_CHUNK_POINTS // max(n, 1))
    values: list[float] = []
    overlaps: list[float] = []
    for lo in range(0, m.shape[0], chunk):
        part = m[lo:lo + chunk]
        k = int(part.shape[0])
        moved = (points - c) @ part[:, :d, :d].transpose(1, 2) + offsets[lo:lo + chunk]
        samples, inside = sample(problem.moving, problem.moving_grid, moved, mode=problem.interpolation,
                                 prefiltered=problem.interpolation == "bspline")
        weights = problem.fixed_weights * inside.to(problem.fixed_weights.dtype)
        if problem.moving_mask is not None:
            mask_values, _ = sample(problem.moving_mask, problem.moving_grid, moved)
            weights = weights * mask_values[:, 0]
        value = mi.soft_mutual_information(
            problem.fixed_values.expand(k, n), samples[:, 0], bins=problem.bins, kernel=problem.kernel, weights=weights,
            x_range=problem.fixed_range.expand(k, 2), y_range=problem.moving_range.expand(k, 2), validate=False,
        )
        values += value.tolist()
        overlaps += (weights.sum(dim=1) / problem.fixed_weights.sum(dim=1)).tolist()
    scores = [(v, r) for v, o, r in zip(values[1:], overlaps[1:], rotations) if o >= MIN_OVERLAP]
    scores.sort(key=lambda item: -item[0])
    return values[0], scores


def _rotation_angle(rotation: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(rotation) - (rotation.shape[0] - 2)) / 2, -1.0, 1.0))))


@torch.no_grad()
def orientation_check(
    transform: SpatialTransform, level: Level, stage: StageOptions, opts: RegistrationOptions, kind: str,
    cache: LevelCache, history: list[dict[str, Any]], stage_index: int, retries: int = 2,
) -> dict[str, Any]:
    """After the coarsest level: does an axis re-orientation of its result score a higher MI?

    A start more than ~45 degrees off (a header rotated by 90 or 180 degrees, swapped axes)
    ends the coarsest level in a local optimum. The check evaluates the level's MI at the 29
    re-orientations of :func:`_orientation_candidates` (one batched evaluation of 30 mappings on
    :func:`_scoring_problem`'s samples, linear interpolation). When one scores higher, the rotation search
    runs automatically: the whole stage is run from the ``retries`` best of them, the original
    finishes its finer levels too, and the result with the highest MI at the finest level
    (fixed 64 bins, same samples for all) is kept. The finest level decides because a coarse
    level can prefer a wrong orientation of a roughly symmetric object (a brain turned 180
    degrees about its vertical axis scored 0.73 against 0.46 at 8 mm for a start still on its
    way to the truth). ``transform`` and ``history`` then hold the winner, finer levels included.
    Returns what it found and did (``"ran"``: the finer levels were run here).
    """
    import copy

    problem = _scoring_problem(level, stage, opts, seed=opts.seed + 1000 * stage_index)
    problem.bins = history[-1]["bins"]
    value, scores = _orientation_scores(transform, problem)
    better = [(v, r) for v, r in scores if v > value][:retries]
    info: dict[str, Any] = {"search": "orientation", "mi": value, "best_other": scores[0][0] if scores else None, "ran": False}
    if not better:
        return info
    center = problem.points[0].mean(dim=0).detach().cpu().double().numpy()
    last = len(stage.shrink_factors) - 1
    judge, _ = level_problem(cache.get(stage.shrink_factors[last], stage.smoothing_sigmas[last]), replace(stage, bins=AUTO_MIN_BINS),
                        opts, seed=opts.seed + 1000 * stage_index + last, last_level=True)
    quiet = replace(opts, verbose=False)
    finished = []  # (transform, history entries, re-orientation angle)
    with torch.enable_grad():
        original = copy.deepcopy(transform)
        trial: list[dict[str, Any]] = []
        run_levels(kind, original, stage, cache, quiet, trial, stage_index, levels=slice(1, None))
        finished.append((original, [history[-1], *trial], 0.0))
        for _, rotation in better:
            candidate = _rotated_about(transform, rotation, center)
            trial = []
            run_levels(kind, candidate, stage, cache, quiet, trial, stage_index)
            finished.append((candidate, trial, _rotation_angle(rotation)))
    runs = [(float(judge.metric(t, check_overlap=False)[0][0]), t, entries, angle) for t, entries, angle in finished]
    reached, winner, entries, angle = max(runs, key=lambda run: run[0])
    transform.load_state_dict(winner.state_dict())
    if angle:
        entries = [dict(entries[0], restart=f"orientation check: re-oriented by {angle:.0f} deg"), *entries[1:]]
    history[-1:] = entries
    reason = (f"a re-orientation of the coarsest level's result scored a higher MI "
              f"({better[0][0]:.4f} > {value:.4f})")
    outcome = (f"kept the start re-oriented by {angle:.0f} deg" if angle else "the original start stayed the best")
    info.update(ran=True, retries=len(better), finest_mi=[{"rotation_deg": a, "mi": m} for m, _, _, a in runs], kept_rotation_deg=angle,
                note=f"rotation search run automatically because {reason}; {outcome} (finest-level MI, 64 bins: "
                     + ", ".join(f"{a:.0f} deg {m:.4f}" for m, _, _, a in runs) + ")")
    return info


@torch.no_grad()
def final_flip_check(
    transform: SpatialTransform, cache: LevelCache, stages: list[str], opts: RegistrationOptions
) -> dict[str, Any] | None:
    """The quality signal of a short rotation search: the final linear mapping's MI at the coarsest
    level of the last linear stage against its 29 re-orientations (no optimisation; scored as in
    :func:`orientation_check`, on :func:`_scoring_problem`'s samples)."""
    linear = [k for k in stages if k in LINEAR_CLASSES and k != "translation"]
    if not linear:
        return None
    members = getattr(transform, "transforms", [transform])
    mapping = next((t for t in reversed(members) if t.is_linear), None)
    if mapping is None:
        return None
    stage = opts.stage(linear[-1])
    level = cache.get(stage.shrink_factors[0], stage.smoothing_sigmas[0])
    problem = _scoring_problem(level, stage, opts, seed=opts.seed + 999)
    value, scores = _orientation_scores(Affine.from_transform(mapping), problem)
    return {"mi": value, "best_other": scores[0][0] if scores else None,
            "best_other_rotation_deg": _rotation_angle(scores[0][1]) if scores else None}
