"""``register(fixed, moving)``: the multi-stage, multi-resolution MI registration."""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np
import torch

from ..errors import InputError, RegistrationError, UsageError
from ..grid import Grid
from ..image import Image
from ..io import as_image, check_image
from ..mi.bins import SOFT_AUTO_FACTOR, auto_bins
from ..transforms import Affine, Composite, Rigid, Similarity, SpatialTransform, Translation
from ..threads import with_threads
from ..warp import resample
from .initialization import initial_centers
from .levels import Level, LevelCache, check_level_sizes
from .memory import check_memory
from .optimize import MIN_OVERLAP, DenseDeformation, LevelProblem, optimize_level
from .quality import DoubtfulRegistrationError, assess
from .options import DEFORMABLE_STAGES, RegistrationOptions, StageOptions, build_options, parse_stages
from .result import RegistrationResult
from .sampling import sample_points
from .validation import measurement_region, validate

__all__ = ["register", "IterationInfo"]


@dataclass(frozen=True)
class IterationInfo:
    """What a ``register(..., callback=f)`` callback receives after every evaluation of the metric.

    Attributes
    ----------
    stage : str
        The stage being optimised (``"rigid"``, ``"affine"``, ``"bspline"``, ...).
    level : int
        Pyramid level within the stage, 0 = coarsest.
    iteration : int
        Evaluation count within the level, from 1 (L-BFGS evaluates the metric more than once
        per iteration in its line search; every evaluation is reported, as in the history).
    mi : float
        The objective just evaluated, in nats: soft-binned MI of the level's samples (minus the
        weighted regularisation penalty in a deformable stage); equals the level's
        ``history[i]["objective"][iteration - 1]``.
    transform : SpatialTransform
        The fixed -> moving transform being optimised, live (it keeps changing; copy what you
        want to keep, e.g. ``info.transform.affine_matrix().clone()``).
    """

    stage: str
    level: int
    iteration: int
    mi: float
    transform: SpatialTransform

_LINEAR_CLASSES = {"translation": Translation, "rigid": Rigid, "similarity": Similarity, "affine": Affine}


@with_threads  # the ``threads`` option: torch's CPU threads for this call only
def register(
    fixed: Any,
    moving: Any,
    transform: str = "affine",
    *,
    fixed_mask: Any = None,
    moving_mask: Any = None,
    initial_transform: Any = None,
    callback: Callable[[IterationInfo], Any] | None = None,
    **options: Any,
) -> RegistrationResult:
    """Register ``moving`` onto ``fixed`` by maximising mutual information.

    The result's transform maps points of the fixed image's physical space (mm, LPS) to the
    moving image's (the ITK convention), so ``result.warped`` = moving(T(x)) on the fixed grid.

    Parameters
    ----------
    fixed, moving : str, PathLike, SimpleITK.Image or Image
        The images (2D or 3D, the same dimension; any grids, spacings, modalities). A file
        path or DICOM folder is read with :func:`miregister.io.read_image`. Multi-channel
        images are averaged over channels.
    transform : str
        ``"translation"``, ``"rigid"``, ``"similarity"``, ``"affine"``, ``"bspline"``, ``"svf"``,
        or a chain such as ``"rigid+affine+bspline"``: each stage starts from the previous
        one; a deformable stage comes last and is composed after the linear ones
        (``T(x) = A(x + u(x))``).
    fixed_mask, moving_mask : image-like, optional
        Non-zero where the metric may look, on the grid of the image they belong to.
    initial_transform : SpatialTransform, SimpleITK.Transform, str or PathLike, optional
        A linear fixed->moving transform to start from instead of the centre initialisation
        (as ANTs' ``-r``): a transform, or a ``.tfm``/``.mat``/``.h5`` file written by ITK,
        ANTs or miregister. A composite of linear transforms collapses to one affine; a
        deformable one is refused (:class:`InputError`). Its centre of rotation is moved to
        the fixed grid's centre (the mapping is unchanged).
    callback : callable, optional
        Called after every evaluation of the metric with an :class:`IterationInfo` (stage,
        level, iteration, objective in nats, the live transform), as SimpleITK's iteration
        observers; its return value is ignored. An exception it raises stops the registration.
    **options
        Global options (:class:`~miregister.registration.options.RegistrationOptions`:
        ``kernel``, ``initialization``, ``rotation_search``, ``auto_search``, ``strict``, ``optimizer``, ``seed``, ``device``,
        ``dtype``, ``validate``, ``knn_samples``, ``verbose``: progress on stderr, off by
        default, ``threads``: CPU threads, default the CPUs this process may use) and per-stage options
        (:class:`~miregister.registration.options.StageOptions`: ``shrink_factors``,
        ``smoothing_sigmas`` in mm, ``iterations``, ``samples``, ``bins``, ``control_spacing``
        in mm, ``regularization``, ``interpolation``), either one value for all stages or a
        dict keyed by stage; the per-level ones (``shrink_factors``, ``smoothing_sigmas``,
        ``iterations``) a sequence, coarse to fine, or one number for every level.

    Returns
    -------
    RegistrationResult
        Transform, warped image, per-level metric history, timings, the options used,
        validation (MI before/after by soft bins, KDE, KNN, and NMI) and ``quality`` (is the result
        doubtful, why, and what the automatic searches did).

    Raises
    ------
    InputError
        For a missing, truncated or corrupt file, NaN/inf voxels, bad voxel sizes, a constant
        image, an empty mask, images of different dimension or thinner than 2 voxels along an
        axis, masks on the wrong grid, an input of the wrong type.
    UsageError
        For option values out of range, e.g. shrink factors that leave a level thinner than 2 voxels.
    RegistrationError
        When the run would not fit in memory, the images do not overlap or the metric diverges.
        :class:`~miregister.registration.quality.DoubtfulRegistrationError` (a RegistrationError,
        carrying the result) with ``strict=True`` when the result's quality check finds it doubtful
        (``result.quality``).
        All are :class:`~miregister.errors.MiregisterError` and ``ValueError`` subclasses.
    """
    start = time.perf_counter()
    stages = parse_stages(transform)
    opts = build_options(stages, **options)
    device = _device(opts.device)
    dtype = torch.float64 if opts.dtype == "float64" else torch.float32

    fixed_img = _single_channel(as_image(fixed), "fixed image")
    moving_img = _single_channel(as_image(moving), "moving image")
    if fixed_img.ndim != moving_img.ndim:
        raise InputError(
            f"the fixed image is {fixed_img.ndim}D but the moving image is {moving_img.ndim}D; both must have the same dimension"
        )
    check_level_sizes(fixed_img.grid, moving_img.grid, [f for kind in stages for f in opts.stage(kind).shrink_factors])
    fixed_mask_img = _mask(fixed_mask, fixed_img, "fixed mask")
    moving_mask_img = _mask(moving_mask, moving_img, "moving mask")
    check_memory(fixed_img.grid, moving_img.grid, stages, opts, device, fixed_mask_img is not None)
    check_image(fixed_img, "fixed image", None if fixed_mask_img is None else fixed_mask_img.data[0] > 0)
    check_image(moving_img, "moving image", None if moving_mask_img is None else moving_mask_img.data[0] > 0)

    inputs = _input_records(fixed=fixed, moving=moving, fixed_mask=fixed_mask, moving_mask=moving_mask)
    # One region for the metric's samples and the report's MI: the mask, else the foreground.
    region, region_name = measurement_region(fixed_img, fixed_mask_img, opts.sampling_region)
    sampling_mask = fixed_mask_img
    if sampling_mask is None and opts.sampling_region == "foreground":
        sampling_mask = fixed_img.with_data(region[None].to(torch.float32))

    fixed_dev = fixed_img.to(device=device, dtype=dtype)
    moving_dev = moving_img.to(device=device, dtype=dtype)
    cache = LevelCache(
        fixed_dev, moving_dev,
        None if sampling_mask is None else sampling_mask.to(device=device, dtype=dtype),
        None if moving_mask_img is None else moving_mask_img.to(device=device, dtype=dtype),
    )

    current = _initial_transform(initial_transform, fixed_img, moving_img, fixed_mask_img, moving_mask_img, opts, dtype, device)
    history: list[dict[str, Any]] = []
    searches: list[dict[str, Any] | None] = []  # what the automatic start searches did (quality report)
    timings: dict[str, float] = {"preparation": time.perf_counter() - start}
    for index, kind in enumerate(stages):
        stage_start = time.perf_counter()
        stage = opts.stage(kind)
        if kind in DEFORMABLE_STAGES:
            current = _run_deformable(kind, current, stage, cache, opts, fixed_img, history, index, callback)
        else:
            current = _LINEAR_CLASSES[kind].from_transform(current).to(device=device, dtype=dtype)
            first_linear = not any(h["stage"] in _LINEAR_CLASSES for h in history)
            coarsest = cache.get(stage.shrink_factors[0], stage.smoothing_sigmas[0])
            if first_linear and opts.auto_search:
                searches.append(_translation_search(current, coarsest, stage, opts, moving_img.grid))
            if opts.rotation_search and kind != "translation" and first_linear:
                _rotation_search(current, coarsest, stage, opts)
            # After the coarsest level, a cheap check of its result against 29 re-orientations
            # of it (axis swaps and flips, 45 degrees about each axis).
            def orientation_check(level_index: int, transform=current, stage=stage, kind=kind, index=index) -> bool:
                if level_index != 0:
                    return False
                info = _orientation_check(transform, coarsest, stage, opts, kind, cache, history, index)
                searches.append(info)
                return info["ran"]  # the check ran the finer levels itself

            check = first_linear and opts.auto_search and kind != "translation" and len(stage.shrink_factors) > 1
            _run_levels(kind, current, stage, cache, opts, history, index, callback=callback,
                        after_level=orientation_check if check else None)
        timings[f"stage {index}: {kind}"] = time.perf_counter() - stage_start
    current = current.eval()
    for parameter in current.parameters():
        parameter.requires_grad_(False)

    warp_start = time.perf_counter()
    warped = resample(moving_dev, current, fixed_dev.grid)
    timings["warp"] = time.perf_counter() - warp_start
    validation: dict[str, Any] = {}
    if opts.validate:
        validation_start = time.perf_counter()
        validation = validate(
            fixed_dev, moving_dev, warped, current, fixed_mask_img, region, region_name, opts.knn_samples, opts.seed
        )
        timings["validation"] = time.perf_counter() - validation_start
    quality_start = time.perf_counter()
    quality = assess(
        history=history, validation=validation, searches=[s for s in searches if s],
        flip_check=_final_flip_check(current, cache, stages, opts),
    )
    timings["quality"] = time.perf_counter() - quality_start
    timings["total"] = time.perf_counter() - start
    result = RegistrationResult(
        transform=current, warped=warped.to("cpu"), fixed=fixed_img, moving=moving_img,
        stages=stages, options=opts, history=history, timings=timings, validation=validation,
        device=str(device), inputs=inputs, threads=torch.get_num_threads(), quality=quality,
    )
    if opts.strict and quality["doubtful"]:
        raise DoubtfulRegistrationError(result)
    return result


# ------------------------------------------------------------------------------ inputs
def _input_records(**given: Any) -> dict[str, dict[str, Any] | None]:
    """Path, size and SHA-256 of each input given as a file or folder (None for in-memory images)."""
    from ..provenance import file_record

    return {
        name: file_record(value) if isinstance(value, (str, os.PathLike)) and os.path.exists(value) else None
        for name, value in given.items()
    }


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:  # not a device string at all
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UsageError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {name!r}")
    # A valid request this machine cannot serve: the run cannot proceed here (exit 1, not 2).
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RegistrationError(f"device {name!r} was asked for but CUDA is not available on this machine (use --device cpu or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RegistrationError(f"device {name!r} was asked for but this machine has {torch.cuda.device_count()} CUDA devices")
    return device


def _single_channel(image: Image, name: str) -> Image:
    if image.channels == 1:
        return image
    return image.with_data(image.data.float().mean(dim=0, keepdim=True))


def _mask(mask: Any, image: Image, name: str) -> Image | None:
    if mask is None:
        return None
    mask_img = as_image(mask)
    if mask_img.ndim != image.ndim:
        raise InputError(f"the {name} is {mask_img.ndim}D but its image is {image.ndim}D")
    if not mask_img.grid.same_as(image.grid, tolerance=1e-3):
        raise InputError(
            f"the {name} must lie on the grid of its image: mask size {mask_img.grid.size}, spacing "
            f"{mask_img.grid.spacing}, origin {mask_img.grid.origin} vs image size {image.grid.size}, "
            f"spacing {image.grid.spacing}, origin {image.grid.origin}"
        )
    binary = (mask_img.data[:1] != 0).to(torch.float32)
    if not bool(binary.any()):
        raise InputError(f"the {name} is empty: it selects no voxel")
    return mask_img.with_data(binary)


def _initial_transform(
    given: SpatialTransform | None,
    fixed: Image,
    moving: Image,
    fixed_mask: Image | None,
    moving_mask: Image | None,
    opts: RegistrationOptions,
    dtype: torch.dtype,
    device: torch.device,
) -> SpatialTransform:
    if given is not None:
        from ..errors import InputError
        from ..transforms.io import as_transform

        name = f"initial transform {given}" if isinstance(given, (str, os.PathLike)) else "initial_transform"
        transform = as_transform(given)
        if not transform.is_linear:
            raise InputError(
                f"{name} is deformable ({type(transform).__name__}): a start must be linear (translation, rigid, "
                "similarity, affine or a composite of them), because every stage re-fits a linear transform from it "
                "and a deformable stage is built fresh on the fixed grid"
            )
        if transform.ndim != fixed.ndim:
            raise InputError(f"{name} is {transform.ndim}D but the images are {fixed.ndim}D")
        start = Affine.from_transform(transform, dtype=torch.float64)
        # rotate and scale about the fixed grid's centre (mapping unchanged): files often carry
        # the world origin as centre (composites always do), which conditions the optimiser badly
        start.set_center(fixed.grid.center())
        return start.to(device=device, dtype=dtype)
    center, translation = initial_centers(
        fixed, moving, opts.initialization,
        None if fixed_mask is None else fixed_mask.data[0], None if moving_mask is None else moving_mask.data[0],
    )
    out = Translation(fixed.ndim, center=center, dtype=dtype)
    with torch.no_grad():
        out.translation.copy_(torch.as_tensor(translation, dtype=dtype)[None])
    return out.to(device)


# ------------------------------------------------------------------------------ levels
#: Fewest bins the ``bins="auto"`` rule may choose: fewer biased the multimodal affine optimum
#: (32 bins: +0.4 % in scale on the oblique benchmark case), although the rule's MSE-optimal
#: count for the entropies is ~60 there.
AUTO_MIN_BINS = 64


@torch.no_grad()
def _auto_bins(problem: LevelProblem, samples: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> int:
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
    return _level_bins(max(AUTO_MIN_BINS, rule), int(problem.points.shape[1]))


def _level_bins(bins: int, samples: int) -> int:
    """Histogram bins for a level with ``samples`` points: ``bins``, capped at ``sqrt(samples)`` (>= 8).

    With fewer samples than joint-histogram cells the soft-binned MI is mostly sampling noise and
    its landscape turns chaotic: on a 2D slice's coarsest level (~400 samples, 64 bins) a 1e-5
    relative change of the input flipped the level's optimum and 4 of 60 seeded 2D registrations
    ended ~1 mm off; with the cap, none did. 3D levels (thousands of samples) keep ``bins``.
    """
    return int(min(bins, max(8, math.isqrt(samples))))


def _level_kernel(kernel: tuple[str, str], last_level: bool) -> tuple[str, str]:
    """Parzen kernels (fixed, moving) of a level: ``kernel`` at the last level of a stage, the
    moving kernel on both axes before it.

    Hard fixed bins (the Mattes pairing) lower the metric's bias where precision is decided,
    but the smoother histogram of a soft fixed axis widens the capture range at the coarse
    levels: with hard bins throughout, 13 of 20 starts rotated 30-50 degrees converged, with
    soft coarse levels 16 of 20 (benchmarks/cases.py capture cases, 64 bins; 17 of 20 with
    ``bins="auto"``).
    """
    return kernel if last_level else (kernel[1], kernel[1])


def _problem(
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

    def value_range(image: Image, mask: torch.Tensor | None) -> torch.Tensor:
        values = image.data[0] if mask is None else image.data[0][mask]
        return torch.stack((values.min(), values.max()))[None]

    problem = LevelProblem(
        points=points, fixed_values=fixed_values, fixed_weights=weights,
        moving=level.moving_coefficients() if stage.interpolation == "bspline" else moving.batch(),
        moving_grid=moving.grid, moving_mask=moving_mask,
        fixed_range=value_range(fixed, level.fixed_mask), moving_range=value_range(moving, level.moving_mask),
        bins=_level_bins(AUTO_MIN_BINS if stage.bins == "auto" else stage.bins, int(points.shape[1])),
        kernel=_level_kernel(opts.kernel, last_level), radius=radius, interpolation=stage.interpolation,
    )
    return problem, indices


def _run_levels(
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
    progress = _Progress(kind, [_evaluation_budget(it, opts.optimizer) for _, (_, _, it) in schedule]) if opts.verbose else None
    for level_index, (factor, sigma, iterations) in schedule:
        level_start = time.perf_counter()
        level = cache.get(factor, sigma)
        problem, indices = _problem(
            level, stage, opts, seed=opts.seed + 1000 * stage_index + level_index,
            last_level=level_index == count - 1,
        )
        if dense_factory is not None:
            problem.dense, problem.penalty_weight = dense_factory(level, indices), stage.regularization
        with torch.no_grad():  # the moving image is sampled once for the overlap check, auto bins and mi_start
            samples = problem.moving_samples(transform)
            problem.check_overlap(samples[2])
            if stage.bins == "auto":
                problem.bins = _auto_bins(problem, samples)
            initial, overlap, _ = problem.score(samples, check_overlap=False)
        values = optimize_level(
            transform, problem, iterations, opts.optimizer,
            on_iteration=_observer(kind, level_index, transform, progress, callback),
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


def _observer(
    kind: str,
    level: int,
    transform: SpatialTransform,
    progress: "_Progress | None",
    callback: Callable[[IterationInfo], Any] | None,
) -> Callable[[float], None] | None:
    """The per-evaluation hook of :func:`optimize_level`: advance the bar, call the user's callback."""
    if progress is None and callback is None:
        return None
    count = 0

    def observe(value: float) -> None:
        nonlocal count
        count += 1
        if progress is not None:
            progress.step()
        if callback is not None:
            callback(IterationInfo(kind, level, count, value, transform))

    return observe


def _evaluation_budget(iterations: int, optimizer: str) -> int:
    """The most metric evaluations a level may make: L-BFGS's ``max_eval`` (see
    :func:`optimize_level`), Adam's iteration count."""
    if iterations <= 0:
        return 0
    return int(iterations * 1.25) + 1 if optimizer == "lbfgs" else iterations


class _Progress:
    """Progress of one stage on stderr: a bar counting metric evaluations on a terminal, else
    one line per level (stage, level, grid, MI start -> end, evaluations, seconds).

    The bar's total is what the stage can still run: the evaluations done plus the remaining
    levels' budgets. A level that converges early gives its unused budget back (the total
    shrinks); one whose last line search overran its budget adds the overrun.
    """

    def __init__(self, kind: str, budgets: list[int]) -> None:
        self.kind, self.budgets, self.level, self.done = kind, budgets, 0, 0
        self.bar = None
        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=sum(budgets), desc=f"{kind:>11s}", unit="eval", leave=True)

    def step(self) -> None:
        self.done += 1
        if self.bar is not None:
            if self.bar.n + 1 > self.bar.total:
                self.bar.total = self.bar.n + 1
            self.bar.update(1)

    def level_done(self, entry: dict[str, Any], levels: int) -> None:
        """Close a level: settle the bar's total on what ran, or print the level's line."""
        self.level += 1
        if self.bar is not None:
            self.bar.total = self.done + sum(self.budgets[self.level:])
            self.bar.refresh()
            return
        grid = "x".join(str(n) for n in entry["grid_size"])
        print(
            f"{self.kind} level {entry['level'] + 1}/{levels}: grid {grid}, MI {entry['mi_start']:.4f} -> "
            f"{entry['mi_end']:.4f} nats, {entry['evaluations']} evaluations, {entry['seconds']:.1f} s",
            file=sys.stderr, flush=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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
def _rotation_search(transform: SpatialTransform, level: Level, stage: StageOptions, opts: RegistrationOptions) -> None:
    """Keep the initial rotation (about the centre) with the highest MI at the coarsest level."""
    problem, _ = _problem(level, stage, opts, seed=opts.seed + 777, last_level=False)
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


# ------------------------------------------------------------------------------ start searches
#: A moving image whose extent along one of its axes is below this fraction of the fixed
#: object's extent along that axis has a partial field of view (a slab): the moments
#: initialisation then matches the slab's centre of mass to the whole fixed object's, off by up
#: to half the object, and :func:`_translation_search` looks along that axis.
PARTIAL_FOV = 0.6


def _orientation_candidates(ndim: int) -> list[np.ndarray]:
    """Re-orientations tried by the orientation check: :func:`_axis_rotations` plus +-45 degrees
    about each axis (29 in 3D, 5 in 2D): a start 45 degrees off lies halfway between two
    axis-aligned orientations, where neither helps."""
    from scipy.spatial.transform import Rotation

    out = _axis_rotations(ndim)
    if ndim == 2:
        c = math.sqrt(0.5)
        return out + [np.array([[c, -s * c], [s * c, c]]) for s in (1.0, -1.0)]
    for axis in np.eye(3):
        for sign in (1.0, -1.0):
            out.append(Rotation.from_rotvec(sign * math.pi / 4 * axis).as_matrix())
    return out


def _axis_rotations(ndim: int) -> list[np.ndarray]:
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
def _translation_search(
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
    problem, _ = _problem(level, stage, opts, seed=opts.seed + 555, last_level=False)
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


def _orientation_scores(
    transform: SpatialTransform, problem: LevelProblem
) -> tuple[float, list[tuple[float, np.ndarray]]]:
    """MI of ``transform`` and of its re-orientations (:func:`_orientation_candidates`) about the
    samples' centre, best first."""
    center = problem.points[0].mean(dim=0).detach().cpu().double().numpy()
    value, _ = problem.metric(transform, check_overlap=False)
    scores = []
    for rotation in _orientation_candidates(transform.ndim):
        candidate_value, overlap = problem.metric(_rotated_about(transform, rotation, center), check_overlap=False)
        if float(overlap) >= MIN_OVERLAP:
            scores.append((float(candidate_value[0]), rotation))
    scores.sort(key=lambda item: -item[0])
    return float(value[0]), scores


def _rotation_angle(rotation: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(rotation) - (rotation.shape[0] - 2)) / 2, -1.0, 1.0))))


@torch.no_grad()
def _orientation_check(
    transform: SpatialTransform, level: Level, stage: StageOptions, opts: RegistrationOptions, kind: str,
    cache: LevelCache, history: list[dict[str, Any]], stage_index: int, retries: int = 2,
) -> dict[str, Any]:
    """After the coarsest level: does an axis re-orientation of its result score a higher MI?

    A start more than ~45 degrees off (a header rotated by 90 or 180 degrees, swapped axes)
    ends the coarsest level in a local optimum. The check evaluates the level's MI at the 29
    re-orientations of :func:`_orientation_candidates` (29 evaluations). When one scores higher, the rotation search
    runs automatically: the whole stage is run from the ``retries`` best of them, the original
    finishes its finer levels too, and the result with the highest MI at the finest level
    (fixed 64 bins, same samples for all) is kept. The finest level decides because a coarse
    level can prefer a wrong orientation of a roughly symmetric object (a brain turned 180
    degrees about its vertical axis scored 0.73 against 0.46 at 8 mm for a start still on its
    way to the truth). ``transform`` and ``history`` then hold the winner, finer levels included.
    Returns what it found and did (``"ran"``: the finer levels were run here).
    """
    import copy

    problem, _ = _problem(level, stage, opts, seed=opts.seed + 1000 * stage_index, last_level=False)
    problem.bins = history[-1]["bins"]
    value, scores = _orientation_scores(transform, problem)
    better = [(v, r) for v, r in scores if v > value][:retries]
    info: dict[str, Any] = {"search": "orientation", "mi": value, "best_other": scores[0][0] if scores else None, "ran": False}
    if not better:
        return info
    center = problem.points[0].mean(dim=0).detach().cpu().double().numpy()
    last = len(stage.shrink_factors) - 1
    judge, _ = _problem(cache.get(stage.shrink_factors[last], stage.smoothing_sigmas[last]), replace(stage, bins=AUTO_MIN_BINS),
                        opts, seed=opts.seed + 1000 * stage_index + last, last_level=True)
    quiet = replace(opts, verbose=False)
    finished = []  # (transform, history entries, re-orientation angle)
    with torch.enable_grad():
        original = copy.deepcopy(transform)
        trial: list[dict[str, Any]] = []
        _run_levels(kind, original, stage, cache, quiet, trial, stage_index, levels=slice(1, None))
        finished.append((original, [history[-1], *trial], 0.0))
        for _, rotation in better:
            candidate = _rotated_about(transform, rotation, center)
            trial = []
            _run_levels(kind, candidate, stage, cache, quiet, trial, stage_index)
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
def _final_flip_check(
    transform: SpatialTransform, cache: LevelCache, stages: list[str], opts: RegistrationOptions
) -> dict[str, Any] | None:
    """The quality signal of a short rotation search: the final linear mapping's MI at the coarsest
    level of the last linear stage against its 29 re-orientations (no optimisation)."""
    linear = [k for k in stages if k in _LINEAR_CLASSES and k != "translation"]
    if not linear:
        return None
    members = getattr(transform, "transforms", [transform])
    mapping = next((t for t in reversed(members) if t.is_linear), None)
    if mapping is None:
        return None
    stage = opts.stage(linear[-1])
    level = cache.get(stage.shrink_factors[0], stage.smoothing_sigmas[0])
    problem, _ = _problem(level, stage, opts, seed=opts.seed + 999, last_level=False)
    value, scores = _orientation_scores(Affine.from_transform(mapping), problem)
    return {"mi": value, "best_other": scores[0][0] if scores else None,
            "best_other_rotation_deg": _rotation_angle(scores[0][1]) if scores else None}


def _deformation_penalty(deformation: SpatialTransform, grid: Grid, control_spacing: float, dtype: torch.dtype):
    """The regulariser of a deformable stage, as a closure over the deformation's parameters.

    B-spline: bending energy of the displacement on a grid at half the control spacing (fine
    enough to see the spline's curvature, 10-100x cheaper than the image grid). SVF: diffusion
    (membrane) energy of the velocity on its own grid: no flow integration needed, and a smooth
    velocity gives a smooth diffeomorphism.
    """
    from ..regularizers import bending_energy, diffusion
    from ..transforms import SVF

    if isinstance(deformation, SVF):
        return lambda: diffusion(torch.movedim(deformation.dense_velocity(), 1, -1), deformation.grid).sum()
    penalty_grid = grid.with_spacing([max(s, control_spacing / 2) for s in grid.spacing])
    return lambda: bending_energy(deformation.displacement_field(penalty_grid, dtype=dtype), penalty_grid).sum()


def _run_deformable(
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
    penalty = _deformation_penalty(deformation, fixed.grid, stage.control_spacing, dtype)

    def dense_factory(level: Level, indices: torch.Tensor) -> DenseDeformation:
        return DenseDeformation(linear, deformation, level.fixed.grid, indices, penalty, pointwise=kind == "svf")

    _run_levels(kind, composite, stage, cache, opts, history, stage_index, dense_factory, callback)
    return composite
