"""``miregister register``: register MOVING onto FIXED and write a run's output folder."""
from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from typing import TYPE_CHECKING

from .common import EXIT_OK, add_command, int_at_least

if TYPE_CHECKING:
    from ..helper_process import HelperProcess


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


def _config_arg(text: str) -> dict:
    """``--config``: the file's ``register`` keywords (:func:`miregister.config.load_config`); a
    bad file or an unknown key is a command-line error (exit 2) naming the problem."""
    from ..config import load_config
    from ..errors import UsageError

    try:
        return load_config(text)
    except UsageError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_registration_options(parser: argparse.ArgumentParser) -> None:
    """Declare the options of one registration (transform chain, device, metric, pyramid,
    optimiser, output format, QC, verbosity, --config): shared by ``register`` and ``cohort``.
    ``-t`` and ``--device`` stay unset (None) so that a --config file can fill them in."""
    parser.add_argument("-t", "--transform", default=None,
                        help="translation, rigid, similarity, affine, bspline, svf, or a chain such as rigid+affine+bspline (default: affine)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: auto = CUDA when available)")
    parser.add_argument("--bins", type=_bins_arg,
                        help="histogram bins of the MI metric: an int >= 4, or auto (per level, from the images' "
                             "correlation, at least 64); default: auto for linear stages, 64 for deformable ones")
    parser.add_argument("--kernel", type=_kernel_arg, metavar="K[,K]",
                        help="Parzen kernels of the metric histogram at each stage's last level: FIXED,MOVING or one "
                             "name for both; names box, bspline, gaussian (default box,bspline, Mattes' pairing; "
                             "the moving kernel must not be box)")
    parser.add_argument("--seed", type=int, help="seed of every random choice, 0 to 2**32-1 (default 0)")
    parser.add_argument("--initialization", choices=("moments", "geometry", "none"), help="initial alignment (default moments)")
    parser.add_argument("--rotation-search", action="store_true", help="try coarse initial rotations first (large misalignment)")
    parser.add_argument("--optimizer", choices=("lbfgs", "adam"), help="optimiser (default lbfgs)")
    parser.add_argument("--shrink-factors", type=int, nargs="+", metavar="F", help="pyramid shrink factors, coarse to fine (default 4 2 1)")
    parser.add_argument("--smoothing-sigmas", type=float, nargs="+", metavar="MM", help="Gaussian sigmas per level in mm, or one for all levels (default 2 1 0)")
    parser.add_argument("--iterations", type=int, nargs="+", metavar="N", help="maximum iterations per level, or one number for all levels")
    parser.add_argument("--samples", type=int, help="fixed-image samples per level")
    parser.add_argument("--control-spacing", type=float, metavar="MM", help="B-spline control spacing / SVF grid spacing in mm")
    parser.add_argument("--regularization", type=float, help="weight of the deformation penalty")
    parser.add_argument("--interpolation", choices=("linear", "bspline"),
                        help="how the metric samples the moving image: bspline (cubic, default) or linear "
                             "(trilinear: ~20%% faster, about twice the error of deformable stages)")
    parser.add_argument("--transform-format", choices=("tfm", "mat", "h5"), default=None,
                        help="linear: tfm (default) or mat; deformable: h5 (default), with the displacement field also as NIfTI")
    parser.add_argument("--no-qc", action="store_true", help="do not draw the QC picture")
    parser.add_argument("--no-validate", action="store_true", help="skip the KDE/KNN validation")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary")
    parser.add_argument("--config", type=_config_arg, metavar="FILE",
                        help="JSON or TOML file of register() keywords (transform, masks and any option; see "
                             "miregister.config), or a report.json to rerun its registration; flags given here override it")


def registration_options(args: argparse.Namespace) -> dict:
    """The :func:`miregister.register` keywords of :func:`add_registration_options`'s options
    (and ``--threads`` where the command has it), over those of ``--config``; the file's
    ``transform``, ``device``, ``rotation_search`` and ``validate`` fill in ``args`` where the
    command line left them unset. Options set nowhere keep register's defaults."""
    options = {
        "bins": args.bins, "kernel": args.kernel, "seed": args.seed, "initialization": args.initialization, "optimizer": args.optimizer,
        "shrink_factors": args.shrink_factors, "smoothing_sigmas": args.smoothing_sigmas,
        "iterations": args.iterations, "samples": args.samples, "control_spacing": args.control_spacing,
        "regularization": args.regularization, "interpolation": args.interpolation, "threads": getattr(args, "threads", None),
    }
    # One value given for a per-level option holds for every level (as in register()).
    options = {k: (v[0] if isinstance(v, list) and len(v) == 1 else v) for k, v in options.items() if v is not None}
    # --config: the file's keywords under the flags given on the command line; -q alone decides verbosity.
    config = dict(args.config or {})
    config.pop("verbose", None)
    for name, default in (("transform", "affine"), ("device", "auto")):
        from_file = config.pop(name, default)
        setattr(args, name, getattr(args, name) or from_file)
    args.rotation_search = bool(config.pop("rotation_search", False)) or args.rotation_search
    args.no_validate = not config.pop("validate", True) or args.no_validate
    return {**config, **options}


def add_parser(commands) -> None:
    """Declare the ``register`` sub-command and its options."""
    reg = add_command(commands, "register", "register MOVING onto FIXED and write transform, warped image, report and QC picture")
    reg.add_argument("fixed", help="fixed image file or DICOM folder (defines the output grid)")
    reg.add_argument("moving", help="moving image file or DICOM folder")
    reg.add_argument("-o", "--output", required=True,
                     help="output folder (created); the run owns it: it must be new or empty unless --overwrite")
    reg.add_argument("--overwrite", action="store_true",
                     help="replace an earlier run's result in the output folder (the files its report.json lists "
                          "are removed first), or write into a non-empty folder miregister did not write")
    reg.add_argument("--fixed-mask", help="mask on the fixed grid: the metric uses only its non-zero voxels")
    reg.add_argument("--moving-mask", help="mask on the moving grid")
    reg.add_argument("--initial-transform", metavar="FILE",
                     help="start from this linear fixed->moving transform (.tfm/.mat/.h5 from ITK, ANTs or miregister; "
                          "as ANTs -r) instead of --initialization")
    reg.add_argument("--jacobian", action="store_true",
                     help="also write jacobian.nii.gz: the Jacobian determinant of the fixed->moving mapping on the fixed grid")
    reg.add_argument("--threads", type=int_at_least(1), metavar="N",
                     help="CPU threads (default: the CPUs this process may use, e.g. as limited by taskset)")
    reg.add_argument("--no-auto-search", action="store_true",
                     help="skip the automatic start searches (slab translation search, orientation check after the coarsest level)")
    reg.add_argument("--strict", action="store_true",
                     help="exit with code 3 (outputs still written) when the quality check finds the result "
                          "doubtful (report.json 'quality')")
    add_registration_options(reg)
    reg.set_defaults(run=run)


def _start_helper(args: argparse.Namespace, threads: object) -> HelperProcess | None:
    """A :class:`~miregister.helper_process.HelperProcess` for this run, started now (before
    torch loads) so that its imports overlap the run: it draws the QC picture and answers the
    validation's neighbour searches. None when it has neither to do, or when the run may use
    only one CPU (``--threads 1``, or the affinity mask): it would then compete with the run."""
    from ..threads import available_cpus

    cpus = available_cpus()
    if isinstance(threads, int) and not isinstance(threads, bool):  # a bad value is refused later, with the others
        cpus = min(cpus, threads)
    draw, neighbours = not args.no_qc, not args.no_validate
    if cpus < 2 or not (draw or neighbours):
        return None
    from ..helper_process import HelperProcess

    return HelperProcess.start(draw=draw, neighbours=neighbours)


def run(args: argparse.Namespace) -> int:
    config = dict(args.config or {})
    for name in ("fixed_mask", "moving_mask"):
        from_file = config.pop(name, None)
        setattr(args, name, getattr(args, name) or from_file)
    args.config = config
    options = registration_options(args)
    helper = _start_helper(args, options.get("threads"))
    with helper or contextlib.nullcontext():
        return _run(args, options, helper)


def _start_picture(partial: object, helper: HelperProcess) -> None:
    """``register``'s ``on_warped``: the helper starts drawing the QC picture, and the
    validation that follows leaves it a CPU (one torch thread fewer; on two CPUs, two busy
    threads beside the drawing validated more slowly than one). ``register`` restores the
    thread count when it returns."""
    import torch

    from ..registration.qc import start_qc_picture

    try:
        start_qc_picture(partial, helper)
    except Exception:  # only a head start: the picture is then drawn at the end, where an error is reported
        return
    if helper.prepared is not None:
        torch.set_num_threads(max(1, torch.get_num_threads() - 1))


def _run(args: argparse.Namespace, options: dict, helper: HelperProcess | None) -> int:
    from ..neighbours import delegated_to
    from ..outputs import check_output_folder, check_transform_format, write_run
    from ..registration import register
    from ..registration.options import DEFORMABLE_STAGES, build_options, parse_stages
    from ..registration.quality import EXIT_DOUBTFUL

    # A report.json's auto_search/strict meet the flags: strict is the CLI's (exit 3 after writing).
    args.no_auto_search = args.no_auto_search or not options.pop("auto_search", True)
    args.strict = args.strict or bool(options.pop("strict", False))
    # The command line first (UsageError: exit 2), then the output folder (OutputError: exit 1),
    # both before any image is read and minutes of work are spent.
    stages = parse_stages(args.transform)
    build_options(stages, device=args.device, **options)
    check_transform_format(not any(stage in DEFORMABLE_STAGES for stage in stages), args.transform_format)
    check_output_folder(args.output, overwrite=args.overwrite)
    on_warped = None
    if helper is not None and not args.no_qc:
        on_warped = functools.partial(_start_picture, helper=helper)
    with delegated_to(helper.neighbour_distance if helper is not None else None):
        result = register(
            args.fixed, args.moving, transform=args.transform, fixed_mask=args.fixed_mask, moving_mask=args.moving_mask,
            initial_transform=args.initial_transform, device=args.device, rotation_search=args.rotation_search,
            auto_search=not args.no_auto_search, validate=not args.no_validate, verbose=not args.quiet,
            on_warped=on_warped, **options,
        )
    result.command_line = list(sys.argv)  # provenance: report.json "command_line"
    final = write_run(result, args.output, transform_format=args.transform_format, qc=not args.no_qc, overwrite=args.overwrite,
                      jacobian=args.jacobian, threads=options.get("threads"), qc_helper=helper)
    if not args.quiet:
        print(result.summary())
        print(f"wrote {', '.join(str(p) for p in final)}")
    if args.strict and result.quality.get("doubtful"):
        # A distinct code, after the outputs are written: scripts can stop a pipeline on a doubtful result.
        print(f"miregister register: doubtful result (--strict): {'; '.join(result.quality['reasons'])}", file=sys.stderr)
        return EXIT_DOUBTFUL
    return EXIT_OK
