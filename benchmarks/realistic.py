"""Realistic registration cases (issue 15): partial field of view, skull-stripped vs whole head,
bias field, large header rotations; miregister beside SimpleITK, ANTsPy and elastix.

Each case (:mod:`benchmarks.cases`, synthesised from the sample template, see there) is scored
three ways, the last two as a user without ground truth can:

- **error vs truth**: mean distance (mm) between the found and the true fixed->moving mapping
  over the fixed brain voxels (for the slab: those that map into the slab).
- **reached MI**: one common estimator for every tool, :func:`miregister.mi.soft_mutual_information`
  with 64 bins (cubic B-spline Parzen window on both axes, each variable's own min-max range), of
  the fixed intensities and the moving image sampled trilinearly at each tool's ``T(x)``, over the
  fixed brain mask intersected with the overlap (``T(x)`` inside the moving image).
- **consistency under header perturbations**: register; move the moving image's header by a known
  rigid ``P`` (4 seeded perturbations of up to 10 deg / 10 mm about the brain centre); register
  again; the second result should be ``P o T``. Reported: distance (mm) between the two over the
  overlapping brain, mean (range of the 4 means) and max (over all 4).

Every tool gives a linear transform, evaluated as a 4x4 matrix (SimpleITK and ANTs transforms
through their ``TransformPoint``; elastix through transformix's field on the fixed grid, fitted
exactly by least squares). Times are wall clock of the registration call and are printed; they
are only meaningful on an otherwise idle machine (``--no-times`` leaves them out of the table).

Usage::

    python benchmarks/realistic.py                                # every case, every tool
    python benchmarks/realistic.py --cases slab --methods miregister,simpleitk
"""
from __future__ import annotations

import argparse
import json
import os
import re
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
    brain_center,
    grid_points,
    inside_image,
    make_bias_case,
    make_header_rotation_case,
    make_skullstrip_case,
    make_slab_case,
    mapping_error,
    perturb_header,
    rigid_about_center,
)

ALL_METHODS = ("miregister", "simpleitk", "ants", "elastix")
#: name -> (factory, transform kind, run the consistency test)
CASES: dict[str, tuple[Callable[[], Case], str, bool]] = {
    "slab": (lambda: make_slab_case(seed=0, interpolation="bspline"), "rigid", True),
    "slab-thick": (lambda: make_slab_case(seed=3, slices=28, spacing=(2.0, 2.0, 3.5), tilt_deg=20.0, offset_mm=25.0,
                                          interpolation="linear"), "rigid", True),
    "skullstrip": (lambda: make_skullstrip_case(seed=0, interpolation="linear"), "rigid", True),
    "bias": (lambda: make_bias_case(seed=0, interpolation="linear"), "affine", True),
    "header90": (lambda: make_header_rotation_case(90.0, axis=(1.0, 0.0, 0.0)), "rigid", False),
    "header180": (lambda: make_header_rotation_case(180.0, axis=(0.0, 0.0, 1.0)), "rigid", False),
    "header45": (lambda: make_header_rotation_case(45.0, axis=(0.0, 0.0, 1.0)), "rigid", False),
}
MI_BINS = 64
PERTURBATIONS = 4


# ------------------------------------------------------------------------------ scoring
def perturbations(count: int = PERTURBATIONS, seed: int = 11) -> list[np.ndarray]:
    """``count`` seeded rigid header moves about the brain centre: 10 deg about a random axis
    and 10 mm in a random direction for the first; the others 5-10 deg and 5-10 mm."""
    rng = np.random.default_rng(seed)
    c = brain_center()
    out = []
    for k in range(count):
        axis = rng.normal(size=3)
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        degrees = 10.0 if k == 0 else rng.uniform(5, 10)
        shift = 10.0 if k == 0 else rng.uniform(5, 10)
        out.append(rigid_about_center(axis, degrees, shift * direction, c))
    return out


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def overlap_points(case: Case, matrix: np.ndarray) -> np.ndarray:
    """Fixed brain voxels (mm) whose image under ``matrix`` lies inside the moving image."""
    from cases import mask_points

    points = mask_points(case.fixed_mask)
    return points[inside_image(case.moving, apply(matrix, points))]


def common_mi(case: Case, matrix: np.ndarray) -> tuple[float, float]:
    """The common score: soft-bins MI (64 bins, nats) of fixed vs moving(T(x)) over the fixed
    brain mask and the overlap; and the overlap fraction of the brain."""
    import SimpleITK as sitk
    import torch
    from scipy import ndimage

    from miregister import mi

    inside_brain = sitk.GetArrayViewFromImage(case.fixed_mask) > 0
    points = grid_points(case.fixed)[inside_brain]
    fixed_values = sitk.GetArrayViewFromImage(case.fixed)[inside_brain].astype(np.float64)
    mapped = apply(matrix, points)
    inside = inside_image(case.moving, mapped)
    direction = np.asarray(case.moving.GetDirection()).reshape(3, 3)
    index = (mapped[inside] - np.asarray(case.moving.GetOrigin())) @ direction / np.asarray(case.moving.GetSpacing())
    moving = sitk.GetArrayViewFromImage(case.moving).astype(np.float64)
    values = ndimage.map_coordinates(moving, index[:, ::-1].T, order=1, mode="nearest")
    x = torch.as_tensor(fixed_values[inside])[None]
    y = torch.as_tensor(values)[None]
    return float(mi.soft_mutual_information(x, y, bins=MI_BINS)[0]), float(inside.mean())


def linear_matrix(transform_point: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """The 4x4 matrix of a linear mapping known through a point function."""
    base = np.asarray(transform_point(np.zeros(3)), dtype=np.float64)
    m = np.eye(4)
    for i in range(3):
        e = np.zeros(3)
        e[i] = 100.0
        m[:3, i] = (np.asarray(transform_point(e), dtype=np.float64) - base) / 100.0
    m[:3, 3] = base
    return m


# ------------------------------------------------------------------------------ tools
def run_miregister(fixed, moving, kind: str, seed: int, **options: Any) -> tuple[np.ndarray, dict]:
    from miregister.registration import register

    result = register(fixed, moving, transform=kind, seed=seed, device="cpu", **options)
    quality = getattr(result, "quality", None) or {}
    return result.matrix, {"doubtful": quality.get("doubtful"), "reasons": quality.get("reasons"),
                           "timings": result.timings}


def run_simpleitk(fixed, moving, kind: str, seed: int, **_: Any) -> tuple[np.ndarray, dict]:
    """The lean set-up of DESIGN.md's anchors: Mattes 50 bins, 10 % random sampling, linear,
    regular-step GD (lr 2, min step 1e-4, 300 it.), physical-shift scales, shrink 4/2/1,
    sigmas 2/1/0 voxels, moments initialisation."""
    import SimpleITK as sitk

    model = sitk.Euler3DTransform() if kind == "rigid" else sitk.AffineTransform(3)
    initial = sitk.CenteredTransformInitializer(fixed, moving, model, sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.1, seed + 1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-4, numberOfIterations=300)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2, 1, 0])
    reg.SetInitialTransform(initial, inPlace=False)
    transform = reg.Execute(sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32))
    return linear_matrix(lambda p: transform.TransformPoint(p.tolist())), {"metric": reg.GetMetricValue()}


def _sitk_to_ants(image):
    import ants
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image).astype(np.float32).transpose(2, 1, 0).copy()
    return ants.from_numpy(array, origin=list(image.GetOrigin()), spacing=list(image.GetSpacing()),
                           direction=np.asarray(image.GetDirection()).reshape(3, 3))


def run_ants(fixed, moving, kind: str, seed: int, **_: Any) -> tuple[np.ndarray, dict]:
    """``ants.registration`` type ``Rigid`` or ``Affine``, defaults otherwise."""
    import ants
    import SimpleITK as sitk

    ants.config._random_seed = seed + 1
    with tempfile.TemporaryDirectory() as tmp:
        reg = ants.registration(_sitk_to_ants(fixed), _sitk_to_ants(moving), type_of_transform="Rigid" if kind == "rigid" else "Affine",
                                outprefix=os.path.join(tmp, "r_"))
        transforms = [sitk.ReadTransform(p) for p in reg["fwdtransforms"]]
    composite = sitk.CompositeTransform(3)
    for t in transforms:  # antsApplyTransforms order: the last is applied first to a fixed point
        composite.AddTransform(t)
    return linear_matrix(lambda p: composite.TransformPoint(p.tolist())), {}


def _sitk_to_itk(image):
    import itk
    import SimpleITK as sitk

    out = itk.image_from_array(sitk.GetArrayFromImage(image).astype(np.float32))
    out.SetOrigin(list(image.GetOrigin()))
    out.SetSpacing(list(image.GetSpacing()))
    out.SetDirection(itk.matrix_from_array(np.asarray(image.GetDirection()).reshape(3, 3).copy()))
    return out


def run_elastix(fixed, moving, kind: str, seed: int, threads: int = 2, **_: Any) -> tuple[np.ndarray, dict]:
    """elastix with its default ``rigid`` or ``affine`` parameter map."""
    import itk

    parameters = itk.ParameterObject.New()
    pmap = parameters.GetDefaultParameterMap(kind)
    pmap["RandomSeed"] = [str(seed + 1)]
    parameters.AddParameterMap(pmap)
    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(threads)
    _, result = itk.elastix_registration_method(_sitk_to_itk(fixed), _sitk_to_itk(moving), parameter_object=parameters,
                                                log_to_console=False)
    field = itk.array_from_image(itk.transformix_deformation_field(_sitk_to_itk(moving), result)).astype(np.float64)
    points = grid_points(fixed).reshape(-1, 3)
    mapped = points + field.reshape(-1, 3)
    pick = np.linspace(0, len(points) - 1, 2000).astype(int)
    design = np.c_[points[pick], np.ones(len(pick))]
    solution, *_ = np.linalg.lstsq(design, mapped[pick], rcond=None)
    m = np.eye(4)
    m[:3, :] = solution.T
    return m, {}


METHODS: dict[str, list[tuple[str, Callable, dict]]] = {
    "miregister": [("miregister", run_miregister, {})],
    "simpleitk": [("SimpleITK lean", run_simpleitk, {})],
    "ants": [("ANTsPy", run_ants, {})],
    "elastix": [("elastix", run_elastix, {})],
}


# ------------------------------------------------------------------------------ running
def timed(runner: Callable, fixed, moving, kind: str, seed: int, **kw: Any) -> tuple[np.ndarray, float, dict]:
    start = time.perf_counter()
    matrix, info = runner(fixed, moving, kind, seed, **kw)
    return np.asarray(matrix, dtype=np.float64), time.perf_counter() - start, info


def score_method(name: str, runner: Callable, case: Case, kind: str, consistency: bool, args, **kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"case": case.name, "method": name}
    try:
        matrix, elapsed, info = timed(runner, case.fixed, case.moving, kind, args.seed, **kw)
        row.update(time=elapsed, info=info)
        row["error"] = mapping_error(apply(matrix, case.points), case.true_points)
        row["mi"], row["overlap"] = common_mi(case, matrix)
        if consistency:
            points = overlap_points(case, matrix)
            means, maxes = [], []
            for p in perturbations(args.perturbations):
                moved = perturb_header(case.moving, p)
                second, _, _ = timed(runner, case.fixed, moved, kind, args.seed, **kw)
                d = np.linalg.norm(apply(second, points) - apply(p @ matrix, points), axis=1)
                means.append(float(d.mean()))
                maxes.append(float(d.max()))
            row["consistency"] = {"means": means, "max": max(maxes)}
    except Exception as exc:  # a tool failing is a result
        traceback.print_exc()
        row["failed"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
    print(_line(row), flush=True)
    return row


def _line(row: dict[str, Any]) -> str:
    if "failed" in row:
        return f"  {row['method']:<22} FAILED {row['failed']}"
    out = f"  {row['method']:<22} error {row['error']['mean']:7.3f} mm  MI {row['mi']:.4f}  overlap {row['overlap']:.3f}"
    if "consistency" in row:
        c = row["consistency"]
        out += f"  consistency mean {np.mean(c['means']):6.3f} ({min(c['means']):.2f}-{max(c['means']):.2f}) max {c['max']:6.2f} mm"
    out += f"  {row['time']:6.2f} s"
    info = row.get("info") or {}
    if info.get("doubtful") is not None:
        out += f"  doubtful={info['doubtful']}" + (f" ({'; '.join(info['reasons'])})" if info.get("reasons") else "")
    return out


def markdown(rows: list[dict], args) -> str:
    from results_file import machine_description

    lines = ["## Realistic cases: partial field of view, skull-stripped, bias field, header rotations", ""]
    lines.append(f"Machine: {machine_description()}." + (" **Accuracy run; times not valid, machine shared.**" if args.no_times else ""))
    lines.append("")
    command = rows[0].get("command") if rows else None
    lines.append("`" + (command or shlex.join(["python", "benchmarks/realistic.py", *sys.argv[1:]])) + "`. " + (__doc__.split("\n\n")[1]).replace("\n", " "))
    lines.append("")
    by_case: dict[str, list[dict]] = {}
    for r in rows:
        by_case.setdefault(r["case"], []).append(r)
    for name, rs in by_case.items():
        info = rs[0].get("case_info", {})
        description = re.sub(r"(\d+\.\d{2})\d+", r"\1", info.get("description", ""))
        lines.append(f"**{name}** ({info.get('kind', '')}; {description})")
        lines.append("")
        lines.append("| method | error vs truth, mean (mm) | max (mm) | reached MI (64 soft bins, nats) | brain overlap | "
                     "consistency mean (range of 4) (mm) | consistency max (mm) | time (s) | flagged doubtful |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for r in rs:
            if "failed" in r:
                lines.append(f"| {r['method']} | failed: {r['failed']} | | | | | | | |")
                continue
            c = r.get("consistency")
            cons = f"{np.mean(c['means']):.2f} ({min(c['means']):.2f}-{max(c['means']):.2f})" if c else ""
            cmax = f"{c['max']:.2f}" if c else ""
            t = "" if args.no_times or not np.isfinite(r.get("time", np.nan)) else f"{r['time']:.1f}"
            doubt = (r.get("info") or {}).get("doubtful")
            lines.append(f"| {r['method']} | {r['error']['mean']:.3f} | {r['error']['max']:.2f} | {r['mi']:.4f} | {r['overlap']:.3f} | "
                         f"{cons} | {cmax} | {t} | {'' if doubt is None else ('yes' if doubt else 'no')} |")
        lines.append("")
    lines.append("Notes:")
    lines.append("")
    lines.extend(f"- {n}" for n in NOTES)
    return "\n".join(lines)


NOTES = [
    "Cases are synthesised from the sample template (benchmarks/cases.py): there is no real EPI or whole-head scan "
    "in data/. slab = 20 oblique slices (tilt 35 deg) of the skull-stripped T2-like image, 2 x 2 x 2.2 mm, centred "
    "30 mm below the brain centre, box slice profile, 2 % noise, cubic B-spline resampling, known rigid (10 deg, 12 mm); "
    "slab-thick = 28 slices of 3.5 mm, tilt 20 deg, 25 mm above the centre, linear resampling, rigid 10 deg / 12 mm; skullstrip = masked T2-like (rigid 10 deg, 9 mm, linear) against the "
    "T1 with a synthetic skull and scalp; bias = the multimodal affine case (linear) times a smooth bias field, "
    "max/min 1.35; headerN = the T2-like image rotated N degrees in its header (voxels untouched).",
    "Peers: SimpleITK lean Mattes set-up (DESIGN.md anchors: 50 bins, 10 % random sampling, linear, regular-step GD "
    "lr 2, min step 1e-4, 300 it., physical-shift scales, shrink 4/2/1, sigmas 2/1/0 voxels, moments init); "
    "ANTsPy `ants.registration` `Rigid` / `Affine` defaults; elastix default `rigid` / `affine` maps. "
    "miregister: defaults (`register(fixed, moving, transform=...)`).",
    "elastix's default rigid map stops on the slab cases with 'Too many samples map outside moving image buffer' "
    "(1098 / 5440 samples, against its default RequiredRatioOfValidSamples of 0.25): a failure of the default "
    "set-up, reported as such (a fixed mask or a lower ratio would let it run).",
    "Bias field: elastix's result scores a higher common MI (0.8724) than the truth itself (0.8672) while 0.31 mm "
    "off: under a 35 % bias field the 64-bin MI of the linear-resampled pair does not peak at the truth, so on this "
    "case a higher reached MI is not a better alignment (miregister: 0.8591, 0.097 mm). Everywhere else "
    "miregister's reached MI is the highest of the tools and within 0.003 nats of the truth's.",
    "Existing cases (`benchmarks/registration.py --methods miregister --repeats 1`, seed 0, accuracy only) after "
    "these changes: affine T1 -> T1 0.031 mm, T2-like -> T1 0.061 mm, oblique 0.099 mm (unchanged: the searches "
    "do not fire there, so the results are those of the same code path); capture range 12/12 by default (was "
    "11/12: 45 deg about z with 40 mm now ends 0.038 mm off instead of 35.6 mm, through the orientation check's "
    "45-degree candidates), 12/12 with `rotation_search=True`. Deformable stages are untouched.",
    "What failed before, on the slab (moments start ~41 mm off, mostly along the slab normal): the coarsest level "
    "went from MI 0.4275 to 0.4418 in 32 evaluations and the result ended 38.6 mm off (common MI 0.075 vs 0.927 at "
    "the truth); `initialization='geometry'` 52.8 mm off; `rotation_search=True` the same 38.6 mm. Along the slab "
    "normal the coarsest level's MI at the true rotation is 1.29 at the truth, 0.75 / 0.56 at -10 / +10 mm and "
    "0.43-0.56 at 20-40 mm on either side: the metric peaks at the truth, but its basin is only ~10 mm wide, and a "
    "start 40 mm off sits in another one. So the fix is the start, not the metric: for a moving image that covers "
    "< 60 % of the fixed object along one of its axes, the start slides along that axis (10 coarse evaluations "
    "here) and keeps the best coarse MI (0.4275 -> 0.6086 at a 35.6 mm shift; the coarsest level then reaches "
    "1.3054 and the result 0.107 mm).",
    "Overlap: samples that map outside the moving image (or outside a moving mask) are dropped (weight 0), as in "
    "ITK's Mattes metric; MI is that of the overlap. A penalty on lost overlap was not added: at every offset of "
    "the profile above the truth's MI is the highest, and a penalty would pull a slab towards where it covers the "
    "most fixed voxels; the final overlap is one of the quality signals instead (doubtful below 10 % of the fixed "
    "sampled region).",
    "Header rotations of 90 / 180 deg: the coarsest level from the moments start ends in a wrong optimum (coarse MI "
    "0.21 / 0.38); one of its 29 re-orientations (axis swaps and flips, +-45 deg about each axis) scores higher "
    "(0.71 / 0.87), so the rotation search runs automatically: the original and the 2 best re-oriented starts each "
    "run the whole stage and the finest level's MI decides (the report's quality notes say so); the result ends "
    "within 0.04 mm. A coarse-level decision alone was wrong once (a 180-deg turn of a start still on its way "
    "scored 0.73 against 0.46 at 8 mm), hence the finest-level judge. The check costs 29 evaluations of the "
    "coarsest level when nothing fires; when it fires, up to 3 runs of the stage.",
    "The 'linear resampling and another synthetic T2' gap of issue 15 (SimpleITK lean 0.055 mm vs miregister "
    "0.136 mm, on cases not in this repository) was not reproduced with the two synthetic T2 contrasts here "
    "(`python benchmarks/registration.py --cases affine,t2inv --case-interpolation linear --methods "
    "miregister,simpleitk-lean`; single runs, seed 0 and 1 for SimpleITK): T2-like, linear-resampled: SimpleITK "
    "lean 0.248 / 0.245 mm, miregister 0.109 mm (0.182 with `interpolation='linear'`, 0.111 with 50 bins, 0.106 "
    "with 200k samples); `t2inv` (a decreasing function of the T1 plus noise, the other family), linear-resampled: "
    "SimpleITK lean 0.072 / 0.110 mm, miregister 0.071 mm (0.062 with `interpolation='linear'`). With linear "
    "resampling both the case and SimpleITK's linear metric interpolation share the same sub-voxel blur pattern, "
    "which is the one known way a linear-interpolating peer gains (`interpolation='linear'` is better for us too "
    "on `t2inv`); where a peer wins by a few hundredths of a mm on one family of cases it is within the seeds' spread.",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="slab,header90,skullstrip,bias,slab-thick,header180,header45",
                        help=f"comma list of {', '.join(CASES)}")
    parser.add_argument("--methods", default=",".join(ALL_METHODS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--perturbations", type=int, default=PERTURBATIONS)
    parser.add_argument("--no-consistency", action="store_true", help="skip the header-perturbation runs")
    parser.add_argument("--no-times", action="store_true", help="leave times out of the table (a shared machine)")
    parser.add_argument("--no-write", action="store_true", help="do not write benchmarks/RESULTS.md")
    parser.add_argument("--rows", help="also save the scored rows (JSON, rewritten after each tool) to this file")
    parser.add_argument("--render", help="only turn rows saved by --rows into the RESULTS.md section")
    args = parser.parse_args(argv)
    if args.render:
        rows = json.loads(Path(args.render).read_text())
        text = markdown(rows, args)
        print(text)
        if not args.no_write:
            from results_file import write_section

            write_section("realistic", text)
        return 0
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    methods = [m.strip().lower() for m in args.methods.split(",") if m.strip()]
    if set(names) - set(CASES) or set(methods) - set(ALL_METHODS):
        parser.error("unknown case or method")

    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)

    rows: list[dict] = []
    for name in names:
        factory, kind, consistency = CASES[name]
        case = factory()
        print(f"\n== {case.name} ({kind}): moving {case.moving.GetSize()} @ "
              f"{tuple(round(s, 2) for s in case.moving.GetSpacing())} mm, {len(case.points)} brain voxels scored", flush=True)
        truth_mi, truth_overlap = common_mi(case, case.matrix)
        rows.append({"case": case.name, "method": "truth", "error": {"mean": 0.0, "max": 0.0}, "mi": truth_mi,
                     "overlap": truth_overlap, "time": float("nan"),
                     "command": shlex.join(["python", "benchmarks/realistic.py", *sys.argv[1:]]),
                     "case_info": {"kind": kind, "description": ", ".join(f"{k} {v}" for k, v in case.info.items())}})
        print(_line(rows[-1]), flush=True)
        for m in methods:
            for label, runner, kw in METHODS[m]:
                row = score_method(label, runner, case, kind, consistency and not args.no_consistency, args,
                                   **({"threads": args.threads} if m == "elastix" else {}), **kw)
                rows.append(row)
                if args.rows:
                    Path(args.rows).write_text(json.dumps(rows, indent=1, default=str))
    text = markdown(rows, args)
    print("\n" + text)
    if not args.no_write:
        from results_file import write_section

        write_section("realistic", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
