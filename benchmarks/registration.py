"""Registration accuracy and speed: miregister against SimpleITK, ANTsPy and elastix.

Every case has a known fixed->moving mapping ``T`` (see :mod:`benchmarks.cases`); each method
registers the pair, its fixed->moving mapping is evaluated at every voxel of the fixed grid,
and the error is the mean Euclidean distance (mm) to ``T`` over the fixed brain voxels. Times
are wall clock (``time.perf_counter``) around the registration call only (no file I/O, no
evaluation), all methods in the same run with the same thread count.

How each method's mapping is evaluated (each path is checked by ``--cases verify``, which
feeds the TRUE transform through it and expects ~0 mm):

- SimpleITK: ``sitk.TransformToDisplacementField`` of the returned transform on the fixed
  grid (``T(x) = x + d(x)``).
- ANTsPy: three "coordinate images" on the moving grid whose voxel values are that voxel's
  physical x, y, z (mm) are warped onto the fixed grid by ``ants.apply_transforms`` with the
  ``fwdtransforms`` list and linear interpolation; linear interpolation of a linear function
  is exact, so the warped values are ``T(x)``. This sidesteps the inverse convention of
  ``apply_transforms_to_points``.
- elastix: ``itk.transformix_deformation_field`` of the result's TransformParameters (they
  map fixed to moving), ``T(x) = x + d(x)`` on the fixed grid.
- miregister: ``result.transform`` called on the fixed grid's points (float64, (1, ..., 3)).

Folding (fraction of brain voxels with det(dT/dx) <= 0) is computed the same way for all, by
central differences of the evaluated mapping on the fixed grid.

Usage::

    python benchmarks/registration.py                       # affine, oblique, deformable
    python benchmarks/registration.py --cases capture       # capture range of the affine stage
    python benchmarks/registration.py --cases verify        # check the evaluation paths
    python benchmarks/registration.py --quick --methods miregister,simpleitk
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from cases import (  # noqa: E402
    Case,
    grid_points,
    jacobian_determinant,
    make_affine_case,
    make_capture_case,
    make_deformable_case,
    mapping_error,
    matrix_to_sitk,
    upsample_case,
)

ALL_METHODS = ("miregister", "simpleitk", "ants", "elastix")
#: Also accepted by --methods: SimpleITK with DESIGN.md's lean set-up (10 %, 300 it., sigmas in voxels).
EXTRA_METHODS = ("simpleitk-lean",)
# (degrees, axis, shift mm) of the capture-range grid: rotations 0-45 deg about x, y, z and an
# oblique axis, translations 0-40 mm.
CAPTURE_GRID = [
    (0, (1, 0, 0), 0), (15, (1, 0, 0), 0), (15, (0, 1, 0), 20), (15, (0, 0, 1), 40),
    (30, (1, 0, 0), 20), (30, (0, 1, 0), 40), (30, (0, 0, 1), 0), (30, (1, 1, 1), 40),
    (45, (1, 0, 0), 0), (45, (0, 1, 0), 20), (45, (0, 0, 1), 40), (45, (1, -1, 1), 20),
]
LINEAR_CASES_NOTE = (
    "These cases are resampled with linear interpolation (the first version of this benchmark): its blur varies "
    "with the sub-voxel position, a texture of the test data that shifts every method's optimum by 0.1-0.2 mm; "
    "the headline section uses cubic B-spline resampling."
)
# Named miregister deformable runs beyond the plain transform names (``--deformable``).
DEFORMABLE_VARIANTS = {"bspline-linear": ("bspline", {"interpolation": "linear"})}
CAPTURE_QUICK = [CAPTURE_GRID[i] for i in (0, 4, 7, 10)]
SUCCESS_MM = 1.0
# Row name of the metric-bias diagnostic (run_metric_optimum) in affine tables.
METRIC_OPTIMUM = "miregister metric optimum (diagnostic)"
METRIC_OPTIMUM_NOTE = (
    f"`{METRIC_OPTIMUM}`: not a registration. L-BFGS on miregister's finest-level metric (hard bins for the "
    "fixed and cubic B-spline Parzen window for the moving intensities, bins by the same `auto` rule, cubic "
    "B-spline sampling), started AT the true affine and using every sampled fixed voxel in float64: where it "
    "settles is the metric's own optimum, so its error is the bias of the metric on the case, a floor for any "
    "optimiser of it. With 64 bins and the B-spline window on both axes (the defaults before the Mattes pairing "
    "and `bins='auto'`) the floors were 0.048 / 0.059 / 0.116 mm, and on the multimodal oblique case the "
    "optimum sat about +0.25 % in scale along the superior-inferior axis with 64-256 bins and any extra Gaussian "
    "blur of either image, while the T1 -> T1 "
    "oblique case shows no such bias: the synthetic T2-like image is not quite consistent with the T1 once the "
    "T1 is resampled onto another grid, a limit of the data rather than of an optimiser."
)


# ------------------------------------------------------------------------------ helpers
def _brain(case: Case) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayViewFromImage(case.fixed_mask) > 0


def _folded(mapped: np.ndarray, case: Case) -> float:
    """Fraction of fixed brain voxels where det(dT/dx) <= 0."""
    det = jacobian_determinant(mapped, case.fixed)
    return float((det[_brain(case)] <= 0).mean())


def _sitk_field_to_mapping(field, reference) -> np.ndarray:
    import SimpleITK as sitk

    return grid_points(reference) + sitk.GetArrayFromImage(field).astype(np.float64)


# ------------------------------------------------------------------------------ SimpleITK
def sitk_mapping(transform, reference) -> np.ndarray:
    """``T(x)`` at every voxel of ``reference`` (numpy order (nz, ny, nx, 3))."""
    import SimpleITK as sitk

    field = sitk.TransformToDisplacementField(
        transform, sitk.sitkVectorFloat64, reference.GetSize(), reference.GetOrigin(),
        reference.GetSpacing(), reference.GetDirection(),
    )
    return _sitk_field_to_mapping(field, reference)


def run_simpleitk(case: Case, kind: str, seed: int, threads: int, lean: bool = False, **_: Any) -> tuple[np.ndarray, float, dict]:
    """Affine Mattes-MI registration in the style of the SimpleITK notebooks; ``lean``: the set-up of
    DESIGN.md's anchors (10 % sampling, 300 iterations, sigmas 2/1/0 in voxels)."""
    import SimpleITK as sitk

    if kind != "affine":
        raise NotImplementedError("SimpleITK peer runs affine cases only")
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    fixed, moving = case.fixed, case.moving
    start = time.perf_counter()
    initial = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.AffineTransform(3), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    # seed 0 is sitkWallClock (non-reproducible) in SimpleITK, hence seed + 1
    reg.SetMetricSamplingPercentage(0.1 if lean else 0.2, seed + 1)
    reg.SetInterpolator(sitk.sitkLinear)
    # plain GradientDescent (lr 1, convergence window 10, learning rate estimated once), as in
    # the notebooks, stops after ~10 iterations per level here and leaves ~6 mm; the regular
    # step variant converges (0.16 mm on affine-mono)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-4, numberOfIterations=300 if lean else 200, relaxationFactor=0.5
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    if lean:
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    else:
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(initial, inPlace=False)
    transform = reg.Execute(fixed, moving)
    elapsed = time.perf_counter() - start
    info = {"iterations": reg.GetOptimizerIteration(), "stop": reg.GetOptimizerStopConditionDescription()}
    return sitk_mapping(transform, fixed), elapsed, info


# ------------------------------------------------------------------------------ ANTsPy
def sitk_to_ants(image):
    """A SimpleITK scalar image as an ANTsImage with the same grid (float32)."""
    import ants
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image).astype(np.float32).transpose(2, 1, 0).copy()
    return ants.from_numpy(
        array, origin=list(image.GetOrigin()), spacing=list(image.GetSpacing()),
        direction=np.asarray(image.GetDirection()).reshape(3, 3),
    )


def ants_mapping(transformlist: list[str], case: Case) -> np.ndarray:
    """``T(x)`` on the fixed grid for an ANTs forward transform list, via coordinate images."""
    import ants
    import SimpleITK as sitk

    fixed = sitk_to_ants(case.fixed)
    coords = grid_points(case.moving)
    out = []
    for axis in range(3):
        coordinate = sitk.GetImageFromArray(coords[..., axis].astype(np.float32))
        coordinate.CopyInformation(case.moving)
        warped = ants.apply_transforms(
            fixed=fixed, moving=sitk_to_ants(coordinate), transformlist=transformlist, interpolator="linear"
        )
        out.append(warped.numpy().transpose(2, 1, 0))
    return np.stack(out, axis=-1).astype(np.float64)


def run_ants(case: Case, kind: str, seed: int, threads: int, **_: Any) -> tuple[np.ndarray, float, dict]:
    """ants.registration with type "Affine" (affine) or "SyN" (deformable), defaults otherwise."""
    import ants

    ants.config._random_seed = seed + 1  # passed as --random-seed to antsRegistration
    fixed, moving = sitk_to_ants(case.fixed), sitk_to_ants(case.moving)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        reg = ants.registration(
            fixed, moving, type_of_transform="Affine" if kind == "affine" else "SyN", outprefix=os.path.join(tmp, "r_")
        )
        elapsed = time.perf_counter() - start
        mapped = ants_mapping(reg["fwdtransforms"], case)
    return mapped, elapsed, {"transforms": len(reg["fwdtransforms"])}


# ------------------------------------------------------------------------------ elastix
def sitk_to_itk(image):
    """A SimpleITK scalar image as an itk.Image[F, 3] with the same grid."""
    import itk
    import SimpleITK as sitk

    out = itk.image_from_array(sitk.GetArrayFromImage(image).astype(np.float32))
    out.SetOrigin(list(image.GetOrigin()))
    out.SetSpacing(list(image.GetSpacing()))
    out.SetDirection(itk.matrix_from_array(np.asarray(image.GetDirection()).reshape(3, 3).copy()))
    return out


def elastix_mapping(parameters, case: Case) -> np.ndarray:
    """``T(x)`` on the fixed grid from elastix TransformParameters (fixed -> moving)."""
    import itk

    field = itk.transformix_deformation_field(sitk_to_itk(case.moving), parameters)
    d = itk.array_from_image(field).astype(np.float64)
    return grid_points(case.fixed) + d.reshape(*case.fixed.GetSize()[::-1], 3)


def run_elastix(case: Case, kind: str, seed: int, threads: int, **_: Any) -> tuple[np.ndarray, float, dict]:
    """elastix with its default "affine" or "bspline" parameter map."""
    import itk

    fixed, moving = sitk_to_itk(case.fixed), sitk_to_itk(case.moving)
    parameters = itk.ParameterObject.New()
    pmap = parameters.GetDefaultParameterMap("affine" if kind == "affine" else "bspline")
    pmap["RandomSeed"] = [str(seed + 1)]
    parameters.AddParameterMap(pmap)
    start = time.perf_counter()
    # number_of_threads=... segfaults with the bspline map (itk-elastix 5.4.7); ITK's global
    # default (also set from ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS in main) does the job
    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(threads)
    _, result = itk.elastix_registration_method(fixed, moving, parameter_object=parameters, log_to_console=False)
    elapsed = time.perf_counter() - start
    return elastix_mapping(result, case), elapsed, {}


# ------------------------------------------------------------------------------ miregister
def miregister_mapping(transform, case: Case) -> np.ndarray:
    """``T(x)`` on the fixed grid from a miregister transform (fixed mm -> moving mm)."""
    import torch

    points = torch.as_tensor(grid_points(case.fixed), dtype=torch.float64)
    device = next((p.device for p in transform.parameters()), torch.device("cpu"))
    with torch.no_grad():
        flat = points.reshape(-1, 3)
        out = torch.cat([transform(chunk.to(device)[None])[0].cpu() for chunk in flat.split(1 << 18)])
    return out.reshape(points.shape).double().numpy()


def run_miregister(case: Case, kind: str, seed: int, threads: int, device: str = "cpu", transform: str | None = None, **options: Any) -> tuple[np.ndarray, float, dict]:
    """``miregister.register`` with its defaults: "affine" or the deformable ``transform``."""
    from miregister.registration import register

    import torch

    cuda = str(device).startswith("cuda")
    start = time.perf_counter()
    result = register(
        case.fixed, case.moving, transform=transform or kind, seed=seed, device=device, validate=False, **options
    )
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return miregister_mapping(result.transform, case), elapsed, {"timings": result.timings}


def run_metric_optimum(case: Case, kind: str, seed: int, threads: int, device: str = "cpu", **_: Any) -> tuple[np.ndarray, float, dict]:
    """The optimum of miregister's finest-level metric itself: L-BFGS started AT the true affine,
    on every sampled fixed voxel (no random subset), float64. Its error is the metric's bias on
    the case, a floor that no optimiser of this metric goes below; a registration whose error
    is close to it has found the metric's optimum."""
    import torch

    from miregister.registration import register
    from miregister.transforms import Affine

    start_transform = Affine.from_matrix(case.matrix, center=case.points.mean(axis=0), dtype=torch.float64)
    start = time.perf_counter()
    result = register(
        case.fixed, case.moving, transform="affine", initial_transform=start_transform, seed=seed, device=device,
        validate=False, dtype="float64", shrink_factors=(1,), smoothing_sigmas=(0.0,), iterations=(200,), samples=10**9,
    )
    return miregister_mapping(result.transform, case), time.perf_counter() - start, {"evaluations": result.history[-1]["evaluations"]}


# ------------------------------------------------------------------------------ running
_WARMED: set[str] = set()


def _run(method: str, runner: Callable, case: Case, kind: str, args, repeats: int = 1, **kw: Any) -> dict[str, Any]:
    """Register ``repeats`` times (seeds ``args.seed + r``) after one untimed warm-up per method;
    report the median time and the run with the median mean error, and the range of the mean
    error over the seeds: every method samples voxels at random, and the spread is part of
    its accuracy."""
    row: dict[str, Any] = {"case": case.name, "method": method}
    brain = _brain(case)
    runs = []
    try:
        if method not in _WARMED:  # one untimed run per method: imports and one-time set-up are not registration time
            _WARMED.add(method)
            runner(case, kind, args.seed, args.threads, **kw)
        for r in range(max(1, repeats)):
            mapped, elapsed, info = runner(case, kind, args.seed + r, args.threads, **kw)
            runs.append((mapping_error(mapped[brain], case.true_points), elapsed, info, mapped))
    except NotImplementedError:
        return {}
    except Exception as exc:  # a peer or miregister failing is a result, not a crash
        traceback.print_exc()
        row.update(error=f"{type(exc).__name__}: {exc}".splitlines()[0][:160])
        print(f"  {method:<24} FAILED {row['error']}", flush=True)
        return row
    runs.sort(key=lambda r: r[0]["mean"])
    err, _, info, mapped = runs[len(runs) // 2]
    elapsed = float(np.median([r[1] for r in runs]))
    row.update(err, time=elapsed, info=info, repeats=len(runs),
               mean_range=[runs[0][0]["mean"], runs[-1][0]["mean"]], times=[r[1] for r in runs])
    if kind != "affine":
        row["folded"] = _folded(mapped, case)
    fold = f"  folded {row['folded']:.2e}" if "folded" in row else ""
    spread = f"  (x{len(runs)}: {runs[0][0]['mean']:.3f}-{runs[-1][0]['mean']:.3f} mm, {min(row['times']):.2f}-{max(row['times']):.2f} s)" if len(runs) > 1 else ""
    print(f"  {method:<24} mean {err['mean']:6.3f} mm  p95 {err['p95']:6.3f}  max {err['max']:6.3f}  {elapsed:7.2f} s{fold}{spread}", flush=True)
    return row


def _baseline(case: Case) -> dict[str, Any]:
    err = mapping_error(case.points, case.true_points)
    print(f"  {'identity (before)':<24} mean {err['mean']:6.3f} mm  p95 {err['p95']:6.3f}  max {err['max']:6.3f}", flush=True)
    return {"case": case.name, "method": "identity (before)", **err}


def _methods(kind: str, args) -> list[tuple[str, Callable, dict]]:
    out = []
    for m in args.methods:
        if m == "miregister":
            if kind == "affine":
                out.append(("miregister affine", run_miregister, {"device": args.device}))
            else:
                for t in args.deformable:
                    transform, extra = DEFORMABLE_VARIANTS.get(t, (t, {}))
                    out.append((f"miregister {t}", run_miregister, {"device": args.device, "transform": transform, **extra}))
        elif m == "simpleitk" and kind == "affine":
            out.append(("SimpleITK affine", run_simpleitk, {}))
        elif m == "simpleitk-lean" and kind == "affine":
            out.append(("SimpleITK lean affine", run_simpleitk, {"lean": True}))
        elif m == "ants":
            out.append(("ANTsPy Affine" if kind == "affine" else "ANTsPy SyN", run_ants, {}))
        elif m == "elastix":
            out.append(("elastix affine" if kind == "affine" else "elastix bspline", run_elastix, {}))
    return out


def accuracy_cases(args) -> list[tuple[str, Callable[[], Case]]]:
    """(kind, case factory) for the requested accuracy cases."""
    out: list[tuple[str, Callable[[], Case]]] = []
    interp = args.case_interpolation
    if "affine" in args.cases:
        out.append(("affine", lambda: make_affine_case("mono", seed=args.seed, interpolation=interp)))
        if not args.quick:
            out.append(("affine", lambda: make_affine_case("multi", seed=args.seed, interpolation=interp)))
    if "t2inv" in args.cases:  # a second synthetic T2 contrast (cases.load_source("t2inv"))
        out.append(("affine", lambda: make_affine_case("multi-t2inv", seed=args.seed, interpolation=interp)))
    if "oblique" in args.cases:
        out.append(("affine", lambda: make_affine_case("multi", oblique=True, seed=args.seed, interpolation=interp)))
    if "deformable" in args.cases:
        out.append(("deformable", lambda: make_deformable_case("mono", seed=args.seed, interpolation=interp)))
        if not args.quick:
            out.append(("deformable", lambda: make_deformable_case("multi", seed=args.seed, interpolation=interp)))
    return out


def run_accuracy(args) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for kind, factory in accuracy_cases(args):
        case = factory()
        if args.resolution != 2.0:
            case = upsample_case(case, args.resolution)
        print(f"\n== {case.name}: fixed {case.fixed.GetSize()} @ {tuple(round(s, 2) for s in case.fixed.GetSpacing())} mm, "
              f"{len(case.points)} brain voxels", flush=True)
        rows.append(_baseline(case))
        for name, runner, kw in _methods(kind, args):
            row = _run(name, runner, case, kind, args, repeats=args.repeats, **kw)
            if row:
                rows.append(row)
        if kind == "affine" and "miregister" in args.methods:
            row = _run(METRIC_OPTIMUM, run_metric_optimum, case, kind, args, device=args.device)
            row.pop("time", None)  # a diagnostic, not a registration: its time means nothing
            rows.append(row)
    return rows


def run_capture(args) -> list[dict[str, Any]]:
    """Success rate (error < 1 mm) of affine registration over large initial misalignments."""
    grid = CAPTURE_QUICK if args.quick else CAPTURE_GRID
    configs: list[tuple[str, Callable, dict]] = []
    if "miregister" in args.methods:
        configs.append(("miregister affine", run_miregister, {"device": args.device}))
        configs.append(("miregister affine, rotation_search", run_miregister, {"device": args.device, "rotation_search": True}))
    if "simpleitk" in args.methods:
        configs.append(("SimpleITK affine", run_simpleitk, {}))
    rows = []
    for degrees, axis, shift in grid:
        case = make_capture_case(degrees, axis, shift, seed=args.seed, interpolation=args.case_interpolation)
        print(f"\n== {case.name} about {axis}", flush=True)
        for name, runner, kw in configs:
            row = _run(name, runner, case, "affine", args, **kw)
            if row:
                row.update(degrees=degrees, axis=axis, shift=shift)
                rows.append(row)
    return rows


# ------------------------------------------------------------------------------ verify
def run_verify(args) -> list[dict[str, Any]]:
    """Feed the TRUE transform through each peer's evaluation path; errors should be ~0 mm."""
    import SimpleITK as sitk

    rows = []
    for case in (make_affine_case("multi", oblique=True, seed=args.seed), make_deformable_case("mono", seed=args.seed)):
        print(f"\n== verify evaluation paths on {case.name}", flush=True)
        brain = _brain(case)
        checks: dict[str, Callable[[str], np.ndarray]] = {}
        checks["SimpleITK TransformToDisplacementField"] = lambda tmp: sitk_mapping(case.true_transform(), case.fixed)
        if "miregister" in args.methods and case.matrix is not None:
            def miregister_check(tmp: str) -> np.ndarray:
                import torch

                from miregister.transforms import Affine

                center = case.points.mean(axis=0)  # float32 parameters, as register() makes them
                return miregister_mapping(Affine.from_matrix(case.matrix, center=center, dtype=torch.float32), case)

            checks["miregister transform (float32)"] = miregister_check
        if "ants" in args.methods:
            def ants_check(tmp: str) -> np.ndarray:
                if case.matrix is not None:
                    path = os.path.join(tmp, "true.mat")
                    sitk.WriteTransform(matrix_to_sitk(case.matrix), path)
                else:
                    path = os.path.join(tmp, "true_warp.nii.gz")
                    sitk.WriteImage(sitk.Cast(case.displacement, sitk.sitkVectorFloat32), path)
                return ants_mapping([path], case)

            checks["ANTs coordinate images"] = ants_check

            def ants_points(tmp: str) -> np.ndarray:
                # cross-check: apply_transforms_to_points with the same (forward) list maps
                # fixed points to moving points, per the "points go the opposite way" rule
                import ants
                import pandas as pd

                if case.matrix is not None:
                    path = os.path.join(tmp, "true.mat")
                    sitk.WriteTransform(matrix_to_sitk(case.matrix), path)
                else:
                    path = os.path.join(tmp, "true_warp.nii.gz")
                    sitk.WriteImage(sitk.Cast(case.displacement, sitk.sitkVectorFloat32), path)
                mapped = grid_points(case.fixed)
                pts = pd.DataFrame(case.points, columns=["x", "y", "z"])
                out = ants.apply_transforms_to_points(3, pts, [path], whichtoinvert=[False])
                mapped[brain] = out[["x", "y", "z"]].to_numpy()
                return mapped

            checks["ANTs apply_transforms_to_points"] = ants_points
        if "elastix" in args.methods:
            def elastix_check(tmp: str) -> np.ndarray:
                import itk

                parameters = itk.ParameterObject.New()
                f = case.fixed
                common = {
                    "FixedImageDimension": ["3"], "MovingImageDimension": ["3"],
                    "FixedInternalImagePixelType": ["float"], "MovingInternalImagePixelType": ["float"],
                    "Size": [str(s) for s in f.GetSize()], "Index": ["0", "0", "0"],
                    "Spacing": [repr(float(s)) for s in f.GetSpacing()], "Origin": [repr(float(s)) for s in f.GetOrigin()],
                    # elastix parameter files store the direction matrix column by column
                    "Direction": [repr(float(s)) for s in np.asarray(f.GetDirection()).reshape(3, 3).T.ravel()],
                    "UseDirectionCosines": ["true"],
                    "InitialTransformParameterFileName": ["NoInitialTransform"], "HowToCombineTransforms": ["Compose"],
                    "ResampleInterpolator": ["FinalBSplineInterpolator"], "FinalBSplineInterpolationOrder": ["1"],
                    "Resampler": ["DefaultResampler"], "DefaultPixelValue": ["0"],
                    "ResultImagePixelType": ["float"], "ResultImageFormat": ["nii"],
                }
                if case.matrix is not None:
                    pmap = dict(common, Transform=["AffineTransform"], NumberOfParameters=["12"],
                                TransformParameters=[repr(float(v)) for v in list(case.matrix[:3, :3].ravel()) + list(case.matrix[:3, 3])],
                                CenterOfRotationPoint=["0", "0", "0"])
                else:
                    path = os.path.join(tmp, "true_warp.nii.gz")
                    sitk.WriteImage(case.displacement, path)
                    pmap = dict(common, Transform=["DeformationFieldTransform"], NumberOfParameters=["0"],
                                TransformParameters=[], DeformationFieldFileName=[path],
                                DeformationFieldInterpolationOrder=["1"])
                parameters.AddParameterMap(pmap)
                return elastix_mapping(parameters, case)

            checks["elastix transformix_deformation_field"] = elastix_check
        for name, check in checks.items():
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    mapped = check(tmp)
                except Exception as exc:
                    traceback.print_exc()
                    print(f"  {name:<40} FAILED {type(exc).__name__}: {exc}", flush=True)
                    continue
            err = mapping_error(mapped[brain], case.true_points)
            print(f"  {name:<40} mean {err['mean']:.2e} mm  max {err['max']:.2e} mm", flush=True)
            rows.append({"case": case.name, "method": name, **err})
    return rows


# ------------------------------------------------------------------------------ report
def _fmt_time(row: dict[str, Any]) -> str:
    return f"{row['time']:.1f}" if "time" in row else ""


def _variant(args) -> str:
    """What sets this run apart from the headline one, e.g. `` (linear-resampled cases)``: it
    names both the RESULTS.md section and its title, so variants never overwrite each other."""
    out = "" if args.case_interpolation == "bspline" else f" ({args.case_interpolation}-resampled cases)"
    if args.resolution != 2.0 or args.device != "cpu":
        out += f" ({args.resolution:g} mm, {args.device})"
    return out


def markdown(accuracy: list[dict], capture: list[dict], args, notes: list[str]) -> str:
    from results_file import machine_description

    lines = [f"## Registration: accuracy and speed against SimpleITK, ANTsPy and elastix{_variant(args)}", ""]
    lines.append(f"Machine: {machine_description()}.")
    lines.append("")
    lines.append(
        "Error: distance (mm) between the found and the known fixed->moving mapping at the fixed "
        "image's brain voxels (mean, 95th percentile, max). Time: wall clock of the registration "
        "call. `" + shlex.join(["python", "benchmarks/registration.py", *sys.argv[1:]]) + "`."
    )
    lines.append("")
    if accuracy:
        by_case: dict[str, list[dict]] = {}
        for r in accuracy:
            by_case.setdefault(r["case"], []).append(r)
        for name, rows in by_case.items():
            deformable = name.startswith("deformable")
            lines.append(f"**{name}**")
            lines.append("")
            head = "| method | mean error (mm) | seeds: mean error range (mm) | p95 (mm) | max (mm) | time (s) |" + (
                " folded voxels |" if deformable else "")
            lines.append(head)
            lines.append("|" + "---|" * (head.count("|") - 1))
            for r in rows:
                if "error" in r:
                    lines.append(f"| {r['method']} | failed: {r['error']} | | | | |" + (" |" if deformable else ""))
                    continue
                fold = f" {100 * r['folded']:.3f} % |" if "folded" in r else (" |" if deformable else "")
                spread = f"{r['mean_range'][0]:.3f} - {r['mean_range'][1]:.3f}" if r.get("repeats", 1) > 1 else ""
                lines.append(f"| {r['method']} | {r['mean']:.3f} | {spread} | {r['p95']:.3f} | {r['max']:.2f} | {_fmt_time(r)} |" + fold)
            lines.append("")
    if capture:
        lines.append(f"**capture range** (mono T1, rotation 0-45 deg about x, y, z, oblique; translation 0-40 mm; "
                     f"plus the known scaling; success = mean error < {SUCCESS_MM:g} mm)")
        lines.append("")
        methods = list(dict.fromkeys(r["method"] for r in capture))
        lines.append("| rotation | axis | shift (mm) | " + " | ".join(methods) + " |")
        lines.append("|---|---|---|" + "---|" * len(methods))
        keys = list(dict.fromkeys((r["degrees"], tuple(r["axis"]), r["shift"]) for r in capture))
        for key in keys:
            cells = []
            for m in methods:
                r = next((r for r in capture if (r["degrees"], tuple(r["axis"]), r["shift"]) == key and r["method"] == m), None)
                cells.append("" if r is None else ("failed" if "error" in r else f"{r['mean']:.2f} mm, {r['time']:.0f} s"))
            lines.append(f"| {key[0]} deg | {key[1]} | {key[2]} | " + " | ".join(cells) + " |")
        rates = []
        for m in methods:
            rs = [r for r in capture if r["method"] == m]
            ok = sum(1 for r in rs if "error" not in r and r["mean"] < SUCCESS_MM)
            rates.append(f"{ok}/{len(rs)}")
        lines.append("| **success** | | | " + " | ".join(rates) + " |")
        lines.append("")
    if notes:
        lines.append("Notes:")
        lines.append("")
        lines.extend(f"- {n}" for n in notes)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="affine,oblique,deformable",
                        help="comma list of affine, t2inv, oblique, deformable, capture, verify")
    parser.add_argument("--methods", default=",".join(ALL_METHODS), help=f"comma list of {', '.join(ALL_METHODS)}")
    parser.add_argument("--deformable", default="bspline,bspline-linear,svf",
                        help="miregister deformable runs: bspline, svf, bspline-linear (trilinear interpolation in the metric)")
    parser.add_argument("--quick", action="store_true", help="mono cases only, 4 capture cases")
    parser.add_argument("--device", default="cpu", help="miregister device (cpu, cuda, auto)")
    parser.add_argument("--threads", type=int, default=None, help="threads for torch and ITK (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--case-interpolation", default="bspline", choices=("bspline", "linear"),
                        help="SimpleITK interpolator that makes the cases' moving images (see benchmarks/cases.py)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs per method and accuracy case: median time, median-error run (default 3)")
    parser.add_argument("--resolution", type=float, default=2.0,
                        help="voxel size (mm) of the accuracy cases: 1.0 gives 197 x 233 x 189 (for GPU timing)")
    parser.add_argument("--no-write", action="store_true", help="do not write benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    args.methods = [m.strip().lower() for m in args.methods.split(",") if m.strip()]
    args.deformable = [t.strip() for t in args.deformable.split(",") if t.strip()]
    unknown = set(args.cases) - {"affine", "t2inv", "oblique", "deformable", "capture", "verify"}
    if unknown or set(args.methods) - set(ALL_METHODS + EXTRA_METHODS):
        parser.error(f"unknown case or method: {sorted(unknown | (set(args.methods) - set(ALL_METHODS + EXTRA_METHODS)))}")

    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    # ITK reads this when the library loads (ANTs, itk-elastix); SimpleITK is set per run
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    accuracy = run_accuracy(args)
    capture = run_capture(args) if "capture" in args.cases else []
    if "verify" in args.cases:
        run_verify(args)
    if not (accuracy or capture):
        return 0

    import SimpleITK as sitk

    versions = [f"SimpleITK {sitk.Version.VersionString()}"]
    for mod in ("ants", "itk"):
        try:
            versions.append(f"{'ANTsPy' if mod == 'ants' else 'itk-elastix'} {__import__(mod).__version__}")
        except Exception:
            pass
    notes = [
        f"Threads: torch {args.threads} (`torch.get_num_threads()`), ITK {args.threads} for SimpleITK, "
        f"ANTs and elastix (`ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`); miregister on `{args.device}`, float32, defaults.",
        "Peers: " + ", ".join(versions) + ". SimpleITK: Mattes MI 50 bins, random 20 % sampling (seeded), linear, "
        "regular-step gradient descent (lr 2, min step 1e-4, relaxation 0.5, <= 200 it. per level) with physical-shift scales, shrink 4/2/1, sigmas 2/1/0 mm, MOMENTS "
        "initialiser. ANTsPy: `ants.registration` `Affine` / `SyN` defaults, `--random-seed` set. elastix: default "
        "`affine` / `bspline` parameter maps.",
        "Cases (benchmarks/cases.py): affine = rotation 14 deg about an oblique axis, translation 11 mm, scalings "
        "1.05/0.96/1.03 about the brain centre; oblique = fixed T1 on a 1.8 x 1.8 x 3.0 mm grid rotated 12 deg; "
        "deformable = seeded random field smoothed by a 16 mm Gaussian, mean |u| 3.8 mm, det J in [0.31, 2.0]; "
        "moving = source through the inverted field (inverse error 0.02 mm mean). "
        f"Case images resampled by SimpleITK with `{args.case_interpolation}` interpolation "
        "(`--case-interpolation`).",
        "Evaluation paths checked with the true transform (`--cases verify`): all give <= 1e-3 mm.",
        "Every method runs once untimed on its first case (imports, one-time set-up), then "
        f"timed {args.repeats}x per accuracy case with seeds {args.seed}..{args.seed + args.repeats - 1} (voxel "
        "sampling of every method; the case itself is fixed): the time is the median, the errors are those of the "
        "run with the median mean error, the range is over the seeds (capture cases: one timed run).",
    ]
    if "miregister" in args.methods and any(r.get("method") == METRIC_OPTIMUM for r in accuracy):
        notes.append(METRIC_OPTIMUM_NOTE)
    if args.quick:
        notes.append("Quick run (`--quick`): mono cases only, 4 capture cases.")
    if args.case_interpolation == "linear":
        notes.append(LINEAR_CASES_NOTE)
    text = markdown(accuracy, capture, args, notes)
    print("\n" + text)
    if not args.no_write:
        from results_file import write_section

        write_section("registration" + _variant(args), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
