"""``miregister register``: register MOVING onto FIXED and write a run's output folder."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import EXIT_OK, add_command


def _bins_arg(text: str) -> int | str:
    """``--bins``: ``auto`` or an integer (its range is checked with the other options)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None


def _kernel_arg(text: str) -> str | tuple[str, str]:
    """``--kernel``: one kernel name, or ``FIXED,MOVING`` (names are checked with the other options)."""
    names = tuple(name.strip() for name in text.split(","))
    if len(names) == 1:
        return names[0]
    if len(names) == 2:
        return names
    raise argparse.ArgumentTypeError(f"expected a kernel name or FIXED,MOVING, got {text!r}")


def add_parser(commands) -> None:
    """Declare the ``register`` sub-command and its options."""
    reg = add_command(commands, "register", "register MOVING onto FIXED and write transform, warped image, report and QC picture")
    reg.add_argument("fixed", help="fixed image file or DICOM folder (defines the output grid)")
    reg.add_argument("moving", help="moving image file or DICOM folder")
    reg.add_argument("-o", "--output", required=True, help="output folder (created; existing files of the same name are replaced)")
    reg.add_argument("-t", "--transform", default="affine",
                     help="translation, rigid, similarity, affine, bspline, svf, or a chain such as rigid+affine+bspline (default: affine)")
    reg.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto = CUDA when available)")
    reg.add_argument("--fixed-mask", help="mask on the fixed grid: the metric uses only its non-zero voxels")
    reg.add_argument("--moving-mask", help="mask on the moving grid")
    reg.add_argument("--bins", type=_bins_arg,
                     help="histogram bins of the MI metric: an int >= 4, or auto (per level, from the images' "
                          "correlation, at least 64); default: auto for linear stages, 64 for deformable ones")
    reg.add_argument("--kernel", type=_kernel_arg, metavar="K[,K]",
                     help="Parzen kernels of the metric histogram at each stage's last level: FIXED,MOVING or one "
                          "name for both; names box, bspline, gaussian (default box,bspline, Mattes' pairing; "
                          "the moving kernel must not be box)")
    reg.add_argument("--seed", type=int, help="seed of every random choice (default 0)")
    reg.add_argument("--initialization", choices=("moments", "geometry", "none"), help="initial alignment (default moments)")
    reg.add_argument("--rotation-search", action="store_true", help="try coarse initial rotations first (large misalignment)")
    reg.add_argument("--no-auto-search", action="store_true",
                     help="skip the automatic start searches (slab translation search, orientation check after the coarsest level)")
    reg.add_argument("--strict", action="store_true",
                     help="exit with code 3 (outputs still written) when the quality check finds the result "
                          "doubtful (report.json 'quality')")
    reg.add_argument("--optimizer", choices=("lbfgs", "adam"), help="optimiser (default lbfgs)")
    reg.add_argument("--shrink-factors", type=int, nargs="+", metavar="F", help="pyramid shrink factors, coarse to fine (default 4 2 1)")
    reg.add_argument("--smoothing-sigmas", type=float, nargs="+", metavar="MM", help="Gaussian sigmas per level in mm, or one for all levels (default 2 1 0)")
    reg.add_argument("--iterations", type=int, nargs="+", metavar="N", help="maximum iterations per level, or one number for all levels")
    reg.add_argument("--samples", type=int, help="fixed-image samples per level")
    reg.add_argument("--control-spacing", type=float, metavar="MM", help="B-spline control spacing / SVF grid spacing in mm")
    reg.add_argument("--regularization", type=float, help="weight of the deformation penalty")
    reg.add_argument("--interpolation", choices=("linear", "bspline"),
                     help="how the metric samples the moving image: bspline (cubic, default) or linear "
                          "(trilinear: ~20%% faster, about twice the error of deformable stages)")
    reg.add_argument("--transform-format", choices=("tfm", "mat", "h5"), default=None,
                     help="linear: tfm (default) or mat; deformable: h5 (default), with the displacement field also as NIfTI")
    reg.add_argument("--no-qc", action="store_true", help="do not draw the QC picture")
    reg.add_argument("--no-validate", action="store_true", help="skip the KDE/KNN validation")
    reg.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary")
    reg.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..outputs import write_run
    from ..registration import register
    from ..registration.quality import EXIT_DOUBTFUL

    options = {
        "bins": args.bins, "kernel": args.kernel, "seed": args.seed, "initialization": args.initialization, "optimizer": args.optimizer,
        "shrink_factors": args.shrink_factors, "smoothing_sigmas": args.smoothing_sigmas,
        "iterations": args.iterations, "samples": args.samples, "control_spacing": args.control_spacing,
        "regularization": args.regularization, "interpolation": args.interpolation,
    }
    # One value given for a per-level option holds for every level (as in register()).
    options = {k: (v[0] if isinstance(v, list) and len(v) == 1 else v) for k, v in options.items() if v is not None}
    out = Path(args.output)
    _check_register_output(out, args.transform, args.transform_format)  # before minutes of work, not after
    result = register(
        args.fixed, args.moving, transform=args.transform, fixed_mask=args.fixed_mask, moving_mask=args.moving_mask,
        device=args.device, rotation_search=args.rotation_search, auto_search=not args.no_auto_search,
        validate=not args.no_validate, verbose=not args.quiet, **options,
    )
    final = write_run(result, out, transform_format=args.transform_format, qc=not args.no_qc)
    if not args.quiet:
        print(result.summary())
        print(f"wrote {', '.join(str(p) for p in final)}")
    if args.strict and result.quality.get("doubtful"):
        # A distinct code, after the outputs are written: scripts can stop a pipeline on a doubtful result.
        print(f"miregister register: doubtful result (--strict): {'; '.join(result.quality['reasons'])}", file=sys.stderr)
        return EXIT_DOUBTFUL
    return EXIT_OK


def _check_register_output(out: Path, transform: str, transform_format: str | None) -> None:
    """Refuse, before registering, an output that cannot be written: ``out`` is an existing
    file, or the transform format does not suit the transform chain."""
    from ..registration.options import DEFORMABLE_STAGES, parse_stages

    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {str(out)!r} exists and is not a folder")
    linear = not any(stage in DEFORMABLE_STAGES for stage in parse_stages(transform))
    if transform_format is not None and (linear and transform_format == "h5" or not linear and transform_format != "h5"):
        raise ValueError(
            f"--transform-format {transform_format} does not suit a {'linear' if linear else 'deformable'} transform "
            f"(use {'tfm or mat' if linear else 'h5'})"
        )


