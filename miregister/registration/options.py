"""Options of a registration: every default in one visible place.

The vocabulary follows SimpleITK's registration framework (shrink factors, smoothing sigmas in
mm, sampling, metric bins), so users of ITK/ANTs/elastix recognise each knob.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from ..mi.kernels import axis_kernels

__all__ = ["StageOptions", "RegistrationOptions", "LINEAR_STAGES", "DEFORMABLE_STAGES", "parse_stages"]

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
        """Raise ValueError if the per-level lists disagree or a value is out of range."""
        n = len(self.shrink_factors)
        if n == 0 or len(self.smoothing_sigmas) != n or len(self.iterations) != n:
            raise ValueError(
                f"stage {name!r}: shrink_factors {self.shrink_factors}, smoothing_sigmas "
                f"{self.smoothing_sigmas} and iterations {self.iterations} must have the same non-zero length"
            )
        if any(f < 1 for f in self.shrink_factors):
            raise ValueError(f"stage {name!r}: shrink factors must be >= 1, got {self.shrink_factors}")
        if any(s < 0 for s in self.smoothing_sigmas):
            raise ValueError(f"stage {name!r}: smoothing sigmas must be >= 0 mm, got {self.smoothing_sigmas}")
        if any(i < 0 for i in self.iterations):
            raise ValueError(f"stage {name!r}: iterations must be >= 0, got {self.iterations}")
        if self.samples < 100:
            raise ValueError(f"stage {name!r}: samples must be >= 100, got {self.samples}")
        if self.bins != "auto" and (isinstance(self.bins, bool) or not isinstance(self.bins, int) or self.bins < 4):
            raise ValueError(f"stage {name!r}: bins must be 'auto' or an int >= 4, got {self.bins!r}")
        if self.control_spacing <= 0:
            raise ValueError(f"stage {name!r}: control_spacing must be > 0 mm, got {self.control_spacing}")
        if self.regularization < 0:
            raise ValueError(f"stage {name!r}: regularization must be >= 0, got {self.regularization}")
        if self.interpolation not in ("linear", "bspline"):
            raise ValueError(f"stage {name!r}: interpolation must be 'linear' or 'bspline', got {self.interpolation!r}")


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
    raise ValueError(f"unknown transform {kind!r}; choose from {LINEAR_STAGES + DEFORMABLE_STAGES}")


def parse_stages(transform: str) -> list[str]:
    """Split ``"rigid+affine+bspline"`` into stages, checking names and order.

    Raises
    ------
    ValueError
        For an unknown stage name, an empty chain, or a linear stage after a deformable one.
    """
    stages = [s.strip().lower() for s in str(transform).split("+") if s.strip()]
    if not stages:
        raise ValueError(f"empty transform specification {transform!r}")
    for s in stages:
        if s not in LINEAR_STAGES + DEFORMABLE_STAGES:
            raise ValueError(f"unknown transform {s!r} in {transform!r}; choose from {LINEAR_STAGES + DEFORMABLE_STAGES}")
    deformable = [i for i, s in enumerate(stages) if s in DEFORMABLE_STAGES]
    if len(deformable) > 1:
        raise ValueError(f"at most one deformable stage is supported, got {transform!r}")
    if deformable and deformable[0] != len(stages) - 1:
        raise ValueError(f"the deformable stage must come last in {transform!r}")
    return stages


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
    stages: dict[str, StageOptions] = field(default_factory=dict)

    def validate_options(self) -> None:
        """Raise ValueError naming the first option that is out of range."""
        self.kernel = axis_kernels(self.kernel)
        if self.kernel[1] == "box":
            raise ValueError("kernel: the moving image's kernel must be differentiable, not 'box'")
        if self.initialization not in ("moments", "geometry", "none"):
            raise ValueError(f"initialization must be 'moments', 'geometry' or 'none', got {self.initialization!r}")
        if self.sampling_region not in ("foreground", "all"):
            raise ValueError(f"sampling_region must be 'foreground' or 'all', got {self.sampling_region!r}")
        if self.optimizer not in ("lbfgs", "adam"):
            raise ValueError(f"optimizer must be 'lbfgs' or 'adam', got {self.optimizer!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if self.knn_samples < 100:
            raise ValueError(f"knn_samples must be >= 100, got {self.knn_samples}")

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
    ValueError / TypeError
        For an unknown keyword (naming it), a value out of range, or a per-stage dict naming a
        stage that is not in the chain.
    """
    global_names = {f.name for f in fields(RegistrationOptions)} - {"stages"}
    stage_names = {f.name for f in fields(StageOptions)}
    unknown = set(overrides) - global_names - stage_names
    if unknown:
        raise TypeError(
            f"unknown registration option(s) {sorted(unknown)}; known: {sorted(global_names | stage_names)}"
        )
    for name in stage_names & set(overrides):
        if isinstance(overrides[name], dict) and set(overrides[name]) - set(stages):
            raise ValueError(
                f"{name}: stage(s) {sorted(set(overrides[name]) - set(stages))} are not in the chain {'+'.join(stages)!r}"
            )
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
            changes["shrink_factors"] = _per_level(changes["shrink_factors"], int, 1)
        n = len(changes.get("shrink_factors", stage.shrink_factors))
        for name, cast in (("iterations", int), ("smoothing_sigmas", float)):
            if name in changes:
                changes[name] = _per_level(changes[name], cast, n)
        stage = replace(stage, **changes)
        # Let users change the number of levels with shrink_factors alone.
        if "smoothing_sigmas" not in changes and len(stage.smoothing_sigmas) != n:
            stage = replace(stage, smoothing_sigmas=tuple(f / 2.0 if f > 1 else 0.0 for f in stage.shrink_factors))
        if "iterations" not in changes and len(stage.iterations) != n:
            stage = replace(stage, iterations=tuple([stage.iterations[0]] * n))
        stage.validate(kind)
        options.stages[kind] = stage
    options.validate_options()
    return options


def _per_level(value: Any, cast: type, levels: int) -> tuple:
    """Per-level values: a sequence as given, a single number repeated for each of ``levels``."""
    if isinstance(value, (int, float)):
        return (cast(value),) * levels
    return tuple(cast(v) for v in value)


def stage_to_dict(stage: StageOptions) -> dict[str, Any]:
    """A stage's options as JSON-ready values."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(stage).items()}
