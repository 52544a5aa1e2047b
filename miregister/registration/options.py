"""Options of a registration: every default in one visible place.

The vocabulary follows SimpleITK's registration framework (shrink factors, smoothing sigmas in
mm, sampling, metric bins), so users of ITK/ANTs/elastix recognise each knob.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from ..errors import UsageError
from ..mi.kernels import KERNELS
from ..threads import resolve_threads

__all__ = [
    "StageOptions", "RegistrationOptions", "LINEAR_STAGES", "DEFORMABLE_STAGES", "SEED_MAX", "parse_stages",
    "build_options", "check_device_name",
]

LINEAR_STAGES = ("translation", "rigid", "similarity", "affine")
DEFORMABLE_STAGES = ("bspline", "svf")


@dataclass
class StageOptions:
    """How one stage (one transform model) is optimised.

    Attributes
    ----------
    shrink_factors : tuple of int
        Pyramid levels, coarse to fine: the level's spacing is the finest spacing times the
        factor (axes that are already coarse are not shrunk further).
    smoothing_sigmas : tuple of float
        Gaussian smoothing per level, in mm (0 = none), applied to both images.
    iterations : tuple of int
        Maximum optimiser iterations per level.
    samples : int
        Fixed-image voxels sampled per level (random, seeded, at voxel centres);
        all voxels are used when the level has fewer. One sample set per level keeps the
        objective deterministic, which L-BFGS needs. Linear stages: 80 000, where the sample
        set's own noise is below the metric's bias (on the 2 mm benchmark cases, over 8 seeds,
        the multimodal oblique affine error spans 0.07-0.11 mm; with 40 000, 0.06-0.14 mm,
        ~0.4 s faster). Only levels with more voxels than that are subsampled.
    bins : int or "auto"
        Histogram bins of the soft-binned (Parzen) MI metric. ``"auto"`` (the default of
        linear stages): per level, the soft joint-histogram rule of
        :func:`miregister.mi.auto_bins` on the level's samples at its starting alignment, at
        least 64. It grows with the images' correlation: an aligned mono-modal pair gets the
        rule's cap, 256 bins, at 80k samples (2 mm T1 -> T1 affine error 0.047 -> 0.032 mm), a
        multimodal pair 64 (32 biased the multimodal oblique affine optimum by +0.4 % in scale;
        64 halves that). Deformable stages default to 64: their many parameters fit the sampling
        noise of a finer histogram (mono-modal B-spline 0.345 -> 0.348 mm, cubic variant 0.184
        -> 0.196, SVF 0.419 -> 0.431 with "auto"). An int fixes the count. A level with few
        samples uses at most ``sqrt(samples)`` bins (at least 8): a 2D slice's coarsest level
        has only a few hundred. The bins used are in the history.
    control_spacing : float
        B-spline control-point spacing (mm) at the finest level, or the SVF grid spacing.
    regularization : float
        Weight of the bending energy (bspline: of the displacement, mm^-2) or diffusion (svf: of
        the velocity on its grid, dimensionless) penalty added to -MI (nats).
    interpolation : str
        How the metric samples the moving image: ``"bspline"`` (cubic B-spline, the default of
        every stage: linear interpolation blurs by an amount that varies with the sub-voxel
        position, which biased the affine optimum by ~0.3 % in scale, ~0.15 mm on a brain, and
        doubled the deformable error on the benchmark, B-spline stage 0.19 vs 0.35 mm mono,
        0.87 vs 1.03 mm multimodal, SVF 0.26 vs 0.42 mm, for ~20 % more time; see
        benchmarks/RESULTS.md) or ``"linear"`` (trilinear, cheaper per evaluation).
    """

    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_sigmas: tuple[float, ...] = (2.0, 1.0, 0.0)
    iterations: tuple[int, ...] = (100, 60, 30)
    samples: int = 80_000
    bins: int | str = "auto"
    control_spacing: float = 16.0
    regularization: float = 0.0
    interpolation: str = "bspline"

    def validate(self, name: str) -> None:
        """Raise :class:`~miregister.errors.UsageError` (a ValueError) naming the first option
        of stage ``name`` whose value is out of range, or per-level lists of different lengths."""
        where = f"stage {name!r}"
        _check_levels("shrink_factors", self.shrink_factors, _whole(1), where)
        n = len(self.shrink_factors)
        _check_levels("smoothing_sigmas", self.smoothing_sigmas, _real(0.0, unit=" mm"), where)
        _check_levels("iterations", self.iterations, _whole(0), where)
        for option, values in (("smoothing_sigmas", self.smoothing_sigmas), ("iterations", self.iterations)):
            if len(values) != n:
                raise _usage(
                    option, values, "shrink_factors, smoothing_sigmas and iterations must have the same non-zero "
                    f"length, one value per pyramid level (or one for all): shrink_factors {list(self.shrink_factors)} "
                    f"has {n} level(s), {option} has {len(values)}", where,
                )
        _check_scalar("samples", self.samples, _whole(100), where)
        if self.bins != "auto":
            _check_scalar("bins", self.bins, _whole(4, "or 'auto'"), where)
        _check_scalar("control_spacing", self.control_spacing, _real(0.0, strict=True, unit=" mm"), where)
        _check_scalar("regularization", self.regularization, _real(0.0), where)
        _check_choice("interpolation", self.interpolation, ("linear", "bspline"), where)


# ---------------------------------------------------------------- value checks (UsageError)
# Each check returns None for a good value or the words "what is allowed" for a bad one; a
# UsageError carries ``option`` (the register() keyword) and ``detail`` so that the command
# line can name its own flag (--shrink-factors) where the Python API names the keyword.
def _usage(option: str, value: Any, allowed: str, where: str | None = None) -> UsageError:
    value_text = list(value) if isinstance(value, tuple) else value
    detail = f"got {value_text!r}; {allowed}" + (f" ({where})" if where else "")
    error = UsageError(f"{option}: {detail}")
    error.option, error.detail, error.allowed = option, detail, allowed  # type: ignore[attr-defined]
    return error


def _whole(low: int, extra: str = ""):
    def check(v: Any) -> str | None:
        good = isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= low
        return None if good else f"must be a whole number >= {low}{' ' + extra if extra else ''}"
    return check


def _real(low: float, strict: bool = False, unit: str = ""):
    def check(v: Any) -> str | None:
        good = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and (v > low if strict else v >= low)
        return None if good else f"must be a finite number {'>' if strict else '>='} {low:g}{unit}"
    return check


def _check_scalar(option: str, value: Any, check, where: str | None = None) -> None:
    problem = check(value)
    if problem:
        raise _usage(option, value, problem, where)


def _check_levels(option: str, values: Any, check, where: str | None = None) -> None:
    if not isinstance(values, (tuple, list)) or len(values) == 0:
        raise _usage(option, values, "must be a non-empty sequence, one value per pyramid level", where)
    for value in values:
        problem = check(value)
        if problem:
            raise _usage(option, values, f"each value {problem}", where)


def _check_choice(option: str, value: Any, choices: tuple[str, ...], where: str | None = None) -> None:
    if value not in choices:
        raise _usage(option, value, "choose from " + ", ".join(repr(c) for c in choices), where)


def default_stage_options(kind: str) -> StageOptions:
    """Defaults per transform kind, tuned on 1-2 mm brain MR (see benchmarks/registration.py)."""
    if kind in LINEAR_STAGES:
        return StageOptions()
    if kind == "bspline":
        return StageOptions(
            shrink_factors=(4, 2, 1), smoothing_sigmas=(2.0, 1.0, 0.0), iterations=(40, 30, 20),
            samples=100_000, bins=64, control_spacing=12.0, regularization=300.0,
        )
    if kind == "svf":
        return StageOptions(
            shrink_factors=(4, 2, 1), smoothing_sigmas=(2.0, 1.0, 0.0), iterations=(40, 30, 20),
            samples=100_000, bins=64, control_spacing=12.0, regularization=2.0,
        )
    raise _usage("transform", kind, "choose from " + ", ".join(LINEAR_STAGES + DEFORMABLE_STAGES))


def parse_stages(transform: str) -> list[str]:
    """Split ``"rigid+affine+bspline"`` into stages, checking names and order.

    Raises
    ------
    UsageError
        (a ValueError) For an unknown stage name, an empty chain or an empty stage
        (``"rigid++affine"``), more than one deformable stage, or a linear stage after a
        deformable one.
    """
    names = ", ".join(LINEAR_STAGES + DEFORMABLE_STAGES)
    allowed = f"a stage ({names}) or a chain of them joined by '+', e.g. rigid+affine+bspline"
    if not isinstance(transform, str):
        raise _usage("transform", transform, allowed)
    stages = [s.strip().lower() for s in transform.split("+")]
    if any(not s for s in stages):
        raise _usage("transform", transform, f"a stage name is missing; expected {allowed}")
    for s in stages:
        if s not in LINEAR_STAGES + DEFORMABLE_STAGES:
            hint = _close_name(s, LINEAR_STAGES + DEFORMABLE_STAGES)
            raise _usage("transform", transform, f"unknown transform {s!r}{hint}; expected {allowed}")
    deformable = [i for i, s in enumerate(stages) if s in DEFORMABLE_STAGES]
    if len(deformable) > 1:
        raise _usage("transform", transform, "at most one deformable stage (bspline or svf) is supported")
    if deformable and deformable[0] != len(stages) - 1:
        raise _usage("transform", transform, "the deformable stage must come last (a chain may end in one bspline or svf stage)")
    return stages


def _close_name(name: str, choices: tuple[str, ...]) -> str:
    import difflib

    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


SEED_MAX = 2**32 - 1
"""Largest seed: seeds are 0 .. 2**32 - 1, the range NumPy and PyTorch both accept, so a seed
written in a report can be replayed by either."""


def check_device_name(name: Any) -> None:
    """Raise :class:`~miregister.errors.UsageError` unless ``name`` is ``"cpu"``, ``"cuda"``,
    ``"cuda:N"`` or ``"auto"`` (whether CUDA is present is checked when registering)."""
    import re

    if not isinstance(name, str) or not re.fullmatch(r"cpu|auto|cuda(:[0-9]+)?", name):
        raise _usage("device", name, "choose from 'cpu', 'cuda', 'cuda:N' or 'auto'")


@dataclass
class RegistrationOptions:
    """Global options of :func:`miregister.register` (per-stage ones live in :class:`StageOptions`).

    Attributes
    ----------
    kernel : str or (str, str)
        Parzen kernels of the metric's (fixed, moving) histogram axes at the last level of
        each stage, names from :data:`miregister.mi.kernels.KERNELS` (one name: the same
        kernel on both axes, as in :mod:`miregister.mi`); earlier, coarser levels
        use the moving kernel on both axes (a smoother histogram, a wider capture range; the
        kernels used are in the history). Default ``("box", "bspline")``, the pairing of
        Mattes et al. (2003) that ITK uses: the fixed intensities never move, so they are
        binned hard; the moving ones get the differentiable cubic B-spline. On the benchmark
        cases this lowers the metric's own bias (the multimodal oblique affine optimum
        0.116 -> 0.087 mm from the truth) and costs a quarter of the histogram work of
        ``("bspline", "bspline")``. The moving kernel must be differentiable (not ``"box"``).
    sampling_region : str
        ``"foreground"`` (default): sample the fixed image's object (Otsu threshold) dilated by
        10 mm, unless a fixed mask is given; ``"all"``: every voxel (as ITK does).
    initialization : str
        ``"moments"`` (centres of intensity mass), ``"geometry"`` (centres of the grids) or
        ``"none"`` (identity).
    rotation_search : bool
        Try a coarse set of initial rotations at the coarsest level and keep the best by MI;
        for misalignments beyond ~30 degrees.
    auto_search : bool
        Cheap automatic start searches of the first linear stage (default True): when the moving
        image covers less than 60 % of the fixed object along one of its axes (a slab), slide the
        start along that axis and keep the best coarse MI (the moments initialisation is off by
        up to half the object there); after the coarsest level, compare its result with 29
        re-orientations (axis permutations and flips, +-45 degrees about each axis) and, when one scores a higher MI, run the rotation search from
        them (reported in ``quality["notes"]``). Also computes the quality check's rotation
        signal. A 90-degree header rotation then ends within 0.1 mm instead of ~70 mm off.
    strict : bool
        Raise :class:`~miregister.registration.quality.DoubtfulRegistrationError` (carrying the
        result) when the quality check finds the result doubtful; the command line's
        ``--strict`` exits with code 3 instead.
    optimizer : str
        ``"lbfgs"`` (deterministic objective per level, strong-Wolfe line search) or ``"adam"``.
    seed : int
        Seed for every random choice (voxel sampling, KNN subsample); same seed, same result.
    device : str
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, or ``"auto"`` (CUDA when available).
    dtype : str
        ``"float32"`` or ``"float64"``.
    validate : bool
        Compute MI before/after with three estimators (soft bins, KDE, KNN) and NMI.
    knn_samples : int
        Voxels subsampled (seeded) for the KNN validation estimate.
    verbose : bool
        Show a progress bar per stage.
    threads : int or None
        CPU threads of torch's kernels during the registration (``torch.set_num_threads``,
        restored afterwards). ``None`` (default): the CPUs this process may use
        (``os.sched_getaffinity``); the count used is recorded here and in the report. It
        applies to the image-sized work (foreground mask, pyramid levels, final warp,
        validation); the optimisation (metric evaluations, start searches, flip check) runs on
        one thread (:func:`~miregister.threads.optimisation_threads`: its ops are small, and
        more threads cost futex wake-ups or, spinning, starve concurrent runs), except the
        levels of a deformable stage with a dense field of at least 2 M voxels, which use
        ``threads`` (:func:`~miregister.threads.level_threads`).
    stages : dict
        Per-stage :class:`StageOptions` overrides, keyed by stage name.
    """

    kernel: str | tuple[str, str] = ("box", "bspline")
    sampling_region: str = "foreground"
    initialization: str = "moments"
    rotation_search: bool = False
    auto_search: bool = True
    strict: bool = False
    optimizer: str = "lbfgs"
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    validate: bool = True
    knn_samples: int = 20_000
    verbose: bool = False
    threads: int | None = None
    stages: dict[str, StageOptions] = field(default_factory=dict)

    def validate_options(self) -> None:
        """Raise :class:`~miregister.errors.UsageError` (a ValueError) naming the first option
        that is out of range or unknown."""
        kernel = (self.kernel, self.kernel) if isinstance(self.kernel, str) else self.kernel
        names = ", ".join(repr(k) for k in KERNELS)
        if not isinstance(kernel, (tuple, list)) or len(kernel) != 2 or any(not isinstance(k, str) or k not in KERNELS for k in kernel):
            raise _usage("kernel", self.kernel, f"a kernel name or a (fixed, moving) pair of them, from {names}")
        self.kernel = tuple(kernel)  # type: ignore[assignment]
        if self.kernel[1] == "box":
            raise _usage("kernel", self.kernel, "the moving image's kernel must be differentiable, not 'box'")
        _check_choice("initialization", self.initialization, ("moments", "geometry", "none"))
        _check_choice("sampling_region", self.sampling_region, ("foreground", "all"))
        _check_choice("optimizer", self.optimizer, ("lbfgs", "adam"))
        _check_choice("dtype", self.dtype, ("float32", "float64"))
        check_device_name(self.device)
        if not isinstance(self.seed, numbers.Integral) or isinstance(self.seed, bool) or not 0 <= self.seed <= SEED_MAX:
            raise _usage("seed", self.seed, f"must be a whole number from 0 to {SEED_MAX} (2**32 - 1)")
        _check_scalar("knn_samples", self.knn_samples, _whole(100))
        self.threads = resolve_threads(self.threads)

    def stage(self, kind: str) -> StageOptions:
        """The options of stage ``kind``: its defaults updated by the user's overrides."""
        options = self.stages.get(kind, default_stage_options(kind))
        options.validate(kind)
        return options

    def to_dict(self) -> dict[str, Any]:
        """All options as plain JSON-ready values."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "stages"}
        return out


def build_options(stages: list[str], **overrides: Any) -> RegistrationOptions:
    """Make :class:`RegistrationOptions` from keyword arguments of :func:`register`.

    Global keywords set :class:`RegistrationOptions` fields. Stage keywords
    (``shrink_factors``, ``smoothing_sigmas``, ``iterations``, ``samples``, ``bins``,
    ``control_spacing``, ``regularization``, ``interpolation``) apply to every stage of the
    chain unless given as a dict keyed by stage name, e.g. ``iterations={"affine": (200, 100,
    50)}``. The per-level ones take a sequence (coarse to fine) or a single number:
    ``iterations=50`` and ``smoothing_sigmas=0`` hold for every level, ``shrink_factors=1``
    is a single full-resolution level.

    Raises
    ------
    UsageError
        (a ValueError) For a value out of range or of the wrong kind, naming the option, the
        value and what is allowed, or a per-stage dict naming a stage that is not in the chain.
        An unknown keyword is a UsageError too, naming it and the closest known names.
    """
    global_names = {f.name for f in fields(RegistrationOptions)} - {"stages"}
    stage_names = {f.name for f in fields(StageOptions)}
    unknown = set(overrides) - global_names - stage_names
    if unknown:
        import difflib

        known = sorted(global_names | stage_names)
        hints = {name: difflib.get_close_matches(name, known, n=1) for name in sorted(unknown)}
        said = ", ".join(f"{name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "") for name, hint in hints.items())
        raise UsageError(f"unknown registration option(s) {said}; known: {known}")
    for name in stage_names & set(overrides):
        if isinstance(overrides[name], dict) and set(overrides[name]) - set(stages):
            extra = sorted(set(overrides[name]) - set(stages))
            error = _usage(name, overrides[name], f"stage(s) {extra} are not in the chain {'+'.join(stages)!r}")
            error.args = (f"{name}: stage(s) {extra} are not in the chain {'+'.join(stages)!r}",)
            raise error
    options = RegistrationOptions(**{k: v for k, v in overrides.items() if k in global_names})
    for kind in stages:
        stage = default_stage_options(kind)
        changes = {}
        for name in stage_names & set(overrides):
            value = overrides[name]
            if isinstance(value, dict):
                if kind not in value:
                    continue
                value = value[kind]
            changes[name] = value
        if "shrink_factors" in changes:
            changes["shrink_factors"] = _per_level("shrink_factors", changes["shrink_factors"], 1)
        n = len(changes.get("shrink_factors", stage.shrink_factors))
        for name in ("iterations", "smoothing_sigmas"):
            if name in changes:
                changes[name] = _per_level(name, changes[name], n)
        stage = replace(stage, **changes)
        # Let users change the number of levels with shrink_factors alone.
        if "smoothing_sigmas" not in changes and len(stage.smoothing_sigmas) != n:
            stage = replace(stage, smoothing_sigmas=tuple(f / 2.0 if f > 1 else 0.0 for f in stage.shrink_factors))
        if "iterations" not in changes and len(stage.iterations) != n:
            stage = replace(stage, iterations=tuple([stage.iterations[0]] * n))
        try:
            stage.validate(kind)
        except UsageError as error:
            option = getattr(error, "option", None)
            if option in overrides and not isinstance(overrides[option], dict):
                # Name the value as the user gave it (one -5 for all levels), for every stage.
                raise _usage(option, overrides[option], error.allowed) from None  # type: ignore[attr-defined]
            raise
        options.stages[kind] = stage
    options.validate_options()
    return options


def _per_level(option: str, value: Any, levels: int) -> tuple:
    """Per-level values: a sequence as given, a single number repeated for each of ``levels``.
    Whole floats (``2.0``) count as ints and ints as floats; anything else is left for
    :meth:`StageOptions.validate` to refuse by name (no silent truncation of 2.5 to 2)."""
    values = (value,) * levels if isinstance(value, numbers.Real) else value
    if isinstance(values, (str, bytes)):
        raise _usage(option, value, "a number or a sequence of numbers, one per pyramid level")
    try:
        values = tuple(values)
    except TypeError:
        raise _usage(option, value, "a number or a sequence of numbers, one per pyramid level") from None
    if option == "smoothing_sigmas":
        return tuple(float(v) if isinstance(v, numbers.Integral) and not isinstance(v, bool) else v for v in values)
    return tuple(int(v) if isinstance(v, float) and v.is_integer() else v for v in values)


def stage_to_dict(stage: StageOptions) -> dict[str, Any]:
    """A stage's options as JSON-ready values."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(stage).items()}
