"""The ``miregister`` command line: ``register``, ``apply`` and ``mi``.

Exit codes: 0 success; 1 bad input or a registration that cannot proceed (the message names
the problem, nothing is written); 2 a malformed command line (argparse's convention).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Sequence

EXIT_OK, EXIT_INPUT, EXIT_USAGE = 0, 1, 2

CONVENTIONS = """\
conventions:
  Physical space in millimetres, ITK/LPS, as SimpleITK reads the files (spacing, origin and
  direction of every image are honoured). A transform maps points of the FIXED image's space
  to the MOVING image's space (the ITK convention): warped(x) = moving(T(x)) on the fixed grid.
  Transforms are written as ITK files that SimpleITK (sitk.ReadTransform) and ANTs apply to the
  same effect. Mutual information is reported in nats.

exit codes:
  0 success; 1 bad input or failed registration (nothing is written); 2 bad command line.
"""


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


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="miregister",
        description="Image registration driven by mutual information (PyTorch, CPU or CUDA).",
        epilog=CONVENTIONS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"miregister {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    reg = commands.add_parser(
        "register", help="register MOVING onto FIXED and write transform, warped image, report and QC picture",
        epilog=CONVENTIONS, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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

    app = commands.add_parser("apply", help="resample an image or label map through saved transforms onto a reference grid",
                              epilog=CONVENTIONS, formatter_class=argparse.RawDescriptionHelpFormatter)
    app.add_argument("image", help="image to resample (the moving space)")
    app.add_argument("reference", help="image whose grid the output takes (the fixed space)")
    app.add_argument("-t", "--transform", action="append", required=True,
                     help="transform file (repeat to compose; applied as in ITK/ANTs: the last given acts first on fixed points)")
    app.add_argument("-o", "--output", required=True, help="output image file")
    app.add_argument("--interpolation", choices=("linear", "nearest", "bspline"), default="linear",
                     help="linear for intensities, nearest for label maps (default linear)")
    app.add_argument("--default-value", type=float, default=0.0, help="value outside the moving image (default 0)")

    mi_cmd = commands.add_parser("mi", help="print MI between two images by soft bins, KDE and KNN, and NMI")
    mi_cmd.add_argument("image1", help="first image (its grid is used)")
    mi_cmd.add_argument("image2", help="second image (resampled onto the first grid if needed, identity transform)")
    mi_cmd.add_argument("--mask", help="mask on the first image's grid")
    mi_cmd.add_argument("--bins", type=int, default=32, help="bins for the soft-bins MI and NMI (default 32)")
    mi_cmd.add_argument("--knn-samples", type=int, default=20000, help="voxels subsampled for KDE and KNN (default 20000)")
    mi_cmd.add_argument("--seed", type=int, default=0, help="seed of the subsample (default 0)")
    mi_cmd.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0, 1 or 2)."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "register":
            return _register(args)
        if args.command == "apply":
            return _apply(args)
        return _mi(args)
    except (ValueError, TypeError, OSError, RuntimeError) as error:
        print(f"miregister {args.command}: error: {error}", file=sys.stderr)
        return EXIT_INPUT


def _register(args: argparse.Namespace) -> int:
    from .registration import register
    from .registration.qc import save_qc_figure

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
        device=args.device, rotation_search=args.rotation_search, validate=not args.no_validate,
        verbose=not args.quiet, **options,
    )
    from .io import write_image

    out.parent.mkdir(parents=True, exist_ok=True)
    # Everything is written to a staging folder first, then moved into place, so a failure
    # leaves no half-written output.
    staging = Path(tempfile.mkdtemp(prefix=".miregister-", dir=out.parent))
    try:
        written = []
        linear = result.transform.is_linear
        fmt = args.transform_format or ("tfm" if linear else "h5")
        written.append(result.save_transform(staging / f"transform.{fmt}"))
        if not linear:
            written.append(result.save_transform(staging / "displacement.nii.gz"))
        written.append(write_image(result.warped, staging / "warped.nii.gz"))
        written.append(result.save_report(staging / "report.json"))
        if not args.no_qc:
            written.append(save_qc_figure(result, staging / "qc.png"))
        out.mkdir(parents=True, exist_ok=True)
        final = []
        for path in written:
            target = out / Path(path).name
            os.replace(path, target)
            final.append(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not args.quiet:
        print(result.summary())
        print(f"wrote {', '.join(str(p) for p in final)}")
    return EXIT_OK


def _check_register_output(out: Path, transform: str, transform_format: str | None) -> None:
    """Refuse, before registering, an output that cannot be written: ``out`` is an existing
    file, or the transform format does not suit the transform chain."""
    from .registration.options import DEFORMABLE_STAGES, parse_stages

    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {str(out)!r} exists and is not a folder")
    linear = not any(stage in DEFORMABLE_STAGES for stage in parse_stages(transform))
    if transform_format is not None and (linear and transform_format == "h5" or not linear and transform_format != "h5"):
        raise ValueError(
            f"--transform-format {transform_format} does not suit a {'linear' if linear else 'deformable'} transform "
            f"(use {'tfm or mat' if linear else 'h5'})"
        )


def _apply(args: argparse.Namespace) -> int:
    from .io import as_image, write_image
    from .transforms import Composite
    from .transforms.io import read_transform
    from .warp import resample

    image = as_image(args.image)
    reference = as_image(args.reference)
    transforms = [read_transform(path) for path in args.transform]
    for path, t in zip(args.transform, transforms):
        if t.ndim != reference.ndim:
            raise ValueError(f"transform {path} is {t.ndim}D but the reference image is {reference.ndim}D")
    transform = transforms[0] if len(transforms) == 1 else Composite(transforms)
    out = resample(image, transform, reference.grid, mode=args.interpolation, default_value=args.default_value)
    cast = None
    if args.interpolation == "nearest" and os.path.isfile(args.image):
        # Label maps keep their pixel type (uint8 labels stay uint8).
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(args.image)
        reader.ReadImageInformation()
        cast = reader.GetPixelID()
    write_image(out, args.output, dtype=cast)
    print(f"wrote {args.output}")
    return EXIT_OK


def _mi(args: argparse.Namespace) -> int:
    from .io import as_image, check_image
    from .registration.validation import mi_measures
    from .warp import warp
    import torch

    a, b = as_image(args.image1), as_image(args.image2)
    if a.ndim != b.ndim:
        raise ValueError(f"{args.image1} is {a.ndim}D but {args.image2} is {b.ndim}D")
    check_image(a, args.image1)
    check_image(b, args.image2)
    region = torch.ones(a.shape, dtype=torch.bool)
    if args.mask:
        mask = as_image(args.mask)
        if not mask.grid.same_as(a.grid, tolerance=1e-3):
            raise ValueError(f"the mask {args.mask} is not on the grid of {args.image1}")
        region &= mask.data[0] != 0
        if not bool(region.any()):
            raise ValueError(f"the mask {args.mask} is empty")
    values_b, inside = warp(b.batch(), b.grid, None, a.grid, return_inside=True)
    region &= inside[0]
    if int(region.sum()) < 100:
        raise ValueError("the images barely overlap in physical space (fewer than 100 common voxels)")
    stats = mi_measures(a.data[0][region], values_b[0, 0][region], args.bins, args.knn_samples, args.seed)
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print(f"voxels compared: {stats['samples']}")
        print(f"MI soft bins ({args.bins} bins): {stats['soft_bins']:.4f} nats")
        print(f"MI KDE:                 {stats['kde']:.4f} nats")
        print(f"MI KNN (k=3):           {stats['knn']:.4f} nats")
        print(f"NMI (Studholme):        {stats['nmi']:.4f}")
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
