"""``miregister apply``: resample an image through saved transforms onto a reference grid."""
from __future__ import annotations

import argparse
import os

from .common import EXIT_OK, add_command


def add_parser(commands) -> None:
    """Declare the ``apply`` sub-command and its options."""
    app = add_command(commands, "apply", "resample an image or label map through saved transforms onto a reference grid")
    app.add_argument("image", help="image to resample (the moving space)")
    app.add_argument("reference", help="image whose grid the output takes (the fixed space)")
    app.add_argument("-t", "--transform", action="append", required=True,
                     help="transform file (repeat to compose; applied as in ITK/ANTs: the last given acts first on fixed points)")
    app.add_argument("-o", "--output", required=True, help="output image file (replaced as a whole, never left half-written)")
    app.add_argument("--interpolation", choices=("linear", "nearest", "bspline"), default="linear",
                     help="linear for intensities, nearest for label maps (default linear)")
    app.add_argument("--default-value", type=float, default=0.0, help="value outside the moving image (default 0)")
    app.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..io import as_image, write_image
    from ..outputs import atomic_write, check_output_file
    from ..transforms import Composite
    from ..transforms.io import read_transform
    from ..warp import resample

    check_output_file(args.output)  # before reading anything
    image = as_image(args.image)
    reference = as_image(args.reference)
    transforms = [read_transform(path) for path in args.transform]
    for path, t in zip(args.transform, transforms):
        if t.ndim != reference.ndim:
            raise ValueError(f"transform {path} is {t.ndim}D but the reference image is {reference.ndim}D")
        _check_invertible(path, t)
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
    atomic_write(args.output, lambda staged: write_image(out, staged, dtype=cast))
    print(f"wrote {args.output}")
    return EXIT_OK


def _check_invertible(path: str, transform) -> None:
    """Refuse a transform whose linear part is singular or not finite: it maps the whole
    reference grid onto a plane, line or point of the moving image, i.e. a constant output."""
    import torch

    from ..errors import InputError
    from ..transforms.base import LinearTransform

    for part in (m for m in transform.modules() if isinstance(m, LinearTransform)):
        matrix = part.affine_matrix().detach().to(torch.float64)
        finite = bool(torch.isfinite(matrix).all())
        if not finite or float(torch.linalg.cond(matrix[:, :-1, :-1]).max()) > 1e12:
            raise InputError(
                f"transform file {path} holds a {'singular' if finite else 'non-finite'} matrix "
                f"{matrix[0, :-1, :-1].tolist()}: it would map the whole reference grid onto "
                "a plane, line or point of the image (a constant output); check the file"
            )
