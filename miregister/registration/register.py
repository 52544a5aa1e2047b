"""``register(fixed, moving)``: the multi-stage, multi-resolution MI registration.

This module orchestrates a run; each part has its own module: inputs (``inputs.py``), the
per-level problem (``objective.py``), the level loop and deformable set-up (``stages.py``), the
start searches (``searches.py``), progress (``progress.py``), validation, quality and memory.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch

from ..errors import InputError
from ..io import as_image, check_image
from ..threads import optimisation_threads, with_threads
from ..warp import resample
from .inputs import choose_device, input_records, load_mask, single_channel, starting_transform
from .levels import LevelCache, check_level_sizes
from .memory import check_memory
from .optimize import batch_participation
from .options import DEFORMABLE_STAGES, build_options, parse_stages
from .progress import IterationInfo
from .quality import DoubtfulRegistrationError, assess
from .result import RegistrationResult
from .searches import final_flip_check, orientation_check, rotation_search, translation_search
from .stages import LINEAR_CLASSES, run_deformable, run_levels
from .validation import measurement_region, validate

__all__ = ["register", "IterationInfo"]


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
    on_warped: Callable[[RegistrationResult], Any] | None = None,
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
    on_warped : callable, optional
        Called once with a preliminary :class:`RegistrationResult` as soon as the transform and
        the warped image are final, before the validation: its ``transform``, ``warped``,
        ``fixed``, ``moving``, ``history`` and ``stages`` are those of the returned result (the
        same objects), its ``validation`` and ``quality`` are still empty. Work that needs only
        the images (the command line starts drawing the QC picture) can then overlap the
        validation. Its return value is ignored, its time is left out of ``timings``, torch's
        thread count it sets holds for the validation and is restored on return (as
        ``threads``); an exception it raises stops the registration.
    **options
        Global options (:class:`~miregister.registration.options.RegistrationOptions`:
        ``kernel``, ``initialization``, ``rotation_search``, ``auto_search``, ``strict``, ``optimizer``, ``seed``, ``device``,
        ``dtype``, ``validate``, ``knn_samples``, ``verbose``: progress on stderr, off by
        default, ``threads``: CPU threads of the preparation, the final warp and the validation, default
        the CPUs this process may use, and of deformable levels of 2 M voxels or more; the rest of the optimisation runs on one thread, see
        :func:`~miregister.threads.optimisation_threads`) and per-stage options
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
    device = choose_device(opts.device)
    dtype = torch.float64 if opts.dtype == "float64" else torch.float32

    fixed_img = single_channel(as_image(fixed), "fixed image")
    moving_img = single_channel(as_image(moving), "moving image")
    if fixed_img.ndim != moving_img.ndim:
        raise InputError(
            f"the fixed image is {fixed_img.ndim}D but the moving image is {moving_img.ndim}D; both must have the same dimension"
        )
    check_level_sizes(fixed_img.grid, moving_img.grid, [f for kind in stages for f in opts.stage(kind).shrink_factors])
    fixed_mask_img = load_mask(fixed_mask, fixed_img, "fixed mask")
    moving_mask_img = load_mask(moving_mask, moving_img, "moving mask")
    check_memory(fixed_img.grid, moving_img.grid, stages, opts, device, fixed_mask_img is not None)
    check_image(fixed_img, "fixed image", None if fixed_mask_img is None else fixed_mask_img.data[0] > 0)
    check_image(moving_img, "moving image", None if moving_mask_img is None else moving_mask_img.data[0] > 0)

    inputs = input_records(fixed=fixed, moving=moving, fixed_mask=fixed_mask, moving_mask=moving_mask)
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

    current = starting_transform(initial_transform, fixed_img, moving_img, fixed_mask_img, moving_mask_img, opts, dtype, device)
    history: list[dict[str, Any]] = []
    searches: list[dict[str, Any] | None] = []  # what the automatic start searches did (quality report)
    timings: dict[str, float] = {"preparation": time.perf_counter() - start}
    for kind in stages:  # the pyramid levels are image-sized work: built on the user's threads
        for factor, sigma in zip(opts.stage(kind).shrink_factors, opts.stage(kind).smoothing_sigmas):
            cache.get(factor, sigma)
    # one CPU thread while optimising (threads.py says why); in a batch, the other pairs'
    # evaluations wait for this pair's until its optimisation is over
    with optimisation_threads(), batch_participation():
        for index, kind in enumerate(stages):
            stage_start = time.perf_counter()
            stage = opts.stage(kind)
            if kind in DEFORMABLE_STAGES:
                current = run_deformable(kind, current, stage, cache, opts, fixed_img, history, index, callback)
            else:
                current = LINEAR_CLASSES[kind].from_transform(current).to(device=device, dtype=dtype)
                first_linear = not any(h["stage"] in LINEAR_CLASSES for h in history)
                coarsest = cache.get(stage.shrink_factors[0], stage.smoothing_sigmas[0])
                if first_linear and opts.auto_search:
                    searches.append(translation_search(current, coarsest, stage, opts, moving_img.grid))
                if opts.rotation_search and kind != "translation" and first_linear:
                    rotation_search(current, coarsest, stage, opts)
                # After the coarsest level, a cheap check of its result against 29 re-orientations
                # of it (axis swaps and flips, 45 degrees about each axis).
                def check_orientation(level_index: int, transform=current, stage=stage, kind=kind, index=index) -> bool:
                    if level_index != 0:
                        return False
                    info = orientation_check(transform, coarsest, stage, opts, kind, cache, history, index)
                    searches.append(info)
                    return info["ran"]  # the check ran the finer levels itself

                check = first_linear and opts.auto_search and kind != "translation" and len(stage.shrink_factors) > 1
                run_levels(kind, current, stage, cache, opts, history, index, callback=callback,
                            after_level=check_orientation if check else None)
            timings[f"stage {index}: {kind}"] = time.perf_counter() - stage_start
    current = current.eval()
    for parameter in current.parameters():
        parameter.requires_grad_(False)
    flip_start = time.perf_counter()
    with optimisation_threads():  # 29 small coarse-level evaluations: as the optimisation
        flip_check = final_flip_check(current, cache, stages, opts)
    flip_seconds = time.perf_counter() - flip_start

    warp_start = time.perf_counter()
    # its inside mask is the validation's "after" overlap (SimpleITK's inside rule, as the validation's)
    warped, inside = resample(moving_dev, current, fixed_dev.grid, return_inside=True)
    warped_cpu = warped.to("cpu")
    timings["warp"] = time.perf_counter() - warp_start

    def result_with(validation: dict[str, Any], quality: dict[str, Any]) -> RegistrationResult:
        return RegistrationResult(
            transform=current, warped=warped_cpu, fixed=fixed_img, moving=moving_img,
            stages=stages, options=opts, history=history, timings=timings, validation=validation,
            device=str(device), inputs=inputs, threads=torch.get_num_threads(), quality=quality,
        )

    caller_seconds = 0.0  # on_warped's time is the caller's work, not the registration's
    if on_warped is not None:
        hook_start = time.perf_counter()
        on_warped(result_with({}, {}))
        caller_seconds = time.perf_counter() - hook_start
    validation: dict[str, Any] = {}
    if opts.validate:
        validation_start = time.perf_counter()
        validation = validate(
            fixed_dev, moving_dev, warped, current, fixed_mask_img, region, region_name, opts.knn_samples, opts.seed,
            after_inside=inside,
        )
        timings["validation"] = time.perf_counter() - validation_start
    quality_start = time.perf_counter()
    quality = assess(
        history=history, validation=validation, searches=[s for s in searches if s],
        flip_check=flip_check,
    )
    timings["quality"] = time.perf_counter() - quality_start + flip_seconds
    timings["total"] = time.perf_counter() - start - caller_seconds
    result = result_with(validation, quality)
    if opts.strict and quality["doubtful"]:
        raise DoubtfulRegistrationError(result)
    return result
