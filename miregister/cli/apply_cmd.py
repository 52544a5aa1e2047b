"""``miregister apply``: resample an image through saved transforms onto a reference grid."""
from __future__ import annotations

import argparse
import os

from .common import EXIT_OK, add_command

TRANSFORM_HELP = (
    "transform file; repeat to compose, exactly as antsApplyTransforms: the first -t acts first on "
    "reference points and the last one lands in the image's space (ANTs: 'the last is applied first' "
    "to the image), so ants.registration's fwdtransforms [1Warp.nii.gz, 0GenericAffine.mat] works as "
    "given. [FILE,1] uses FILE's inverse (linear exactly, a displacement field numerically)"
)


def add_parser(commands) -> None:
    """Declare the ``apply`` sub-command and its options."""
    app = add_command(commands, "apply", "resample an image or label map through saved transforms onto a reference grid")
    app.add_argument("image", help="image to resample (the moving space of the transforms, or the fixed space with --invert)")
    app.add_argument("reference", help="image whose grid the output takes")
    app.add_argument("-t", "--transform", action="append", required=True, metavar="FILE|[FILE,1]", help=TRANSFORM_HELP)
    app.add_argument("--invert", action="store_true",
                     help="use the inverse of the whole mapping the -t list composes (the same as listing the files "
                          "in reverse order, each as [FILE,1]): with a register run's transform, carries a FIXED-space "
                          "image (e.g. atlas labels) onto the MOVING image's grid")
    app.add_argument("-o", "--output", required=True, help="output image file (replaced as a whole, never left half-written)")
    app.add_argument("--interpolation", choices=("linear", "nearest", "bspline"), default="linear",
                     help="linear for intensities, nearest for label maps (default linear)")
    app.add_argument("--default-value", type=float, default=0.0, help="value outside the moving image (default 0)")
    app.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..io import as_image, write_image
    from ..outputs import check_output_file
    from ..transforms.io import compose_ants_list, parse_transform_spec
    from ..warp import resample

    specs = [parse_transform_spec(text) for text in args.transform]
    check_output_file(args.output)  # before reading anything
    image = as_image(args.image)
    reference = as_image(args.reference)
    # ndim: a transform of another dimension than the reference image is refused by name
    transform = compose_ants_list([path for path, _ in specs], [flag for _, flag in specs], ndim=reference.ndim)
    if args.invert:
        transform = transform.inverse()
    out = resample(image, transform, reference.grid, mode=args.interpolation, default_value=args.default_value)
    cast = None
    if args.interpolation == "nearest" and os.path.isfile(args.image):
        # Label maps keep their pixel type (uint8 labels stay uint8).
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(args.image)
        reader.ReadImageInformation()
        cast = reader.GetPixelID()
    write_image(out, args.output, dtype=cast)  # atomic: staged next to the target, then renamed
    print(f"wrote {args.output}")
    return EXIT_OK
