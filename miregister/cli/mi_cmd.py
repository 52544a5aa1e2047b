"""``miregister mi``: MI between two images by soft bins, KDE and KNN, and NMI.

It measures exactly what ``register`` reports as MI before/after
(:func:`miregister.registration.validation.compare`): the same region (the mask, else the first
image's foreground, intersected with the overlap) and the same bins, so
``miregister mi FIXED OUT/warped.nii.gz`` prints the report's ``after`` values and
``miregister mi FIXED MOVING`` its ``before`` values.
"""
from __future__ import annotations

import argparse
import json

from .common import EXIT_OK, add_command, int_at_least


def add_parser(commands) -> None:
    """Declare the ``mi`` sub-command and its options."""
    mi_cmd = add_command(commands, "mi", "print MI between two images by soft bins, KDE and KNN, and NMI")
    mi_cmd.add_argument("image1", help="first image, the fixed one (its grid is used)")
    mi_cmd.add_argument("image2", help="second image (resampled onto the first grid if needed, identity transform)")
    mi_cmd.add_argument("--mask", help="mask on the first image's grid: measure only its non-zero voxels")
    mi_cmd.add_argument("--region", choices=("foreground", "all"), default="foreground",
                        help="without --mask: the first image's foreground (Otsu threshold + 10 mm, the region "
                             "register samples and reports) or all voxels; always intersected with the overlap "
                             "(default foreground)")
    mi_cmd.add_argument("--bins", type=int_at_least(4), default=None,
                        help="bins for the soft-bins MI and NMI (default: the bins of register's report, 64)")
    mi_cmd.add_argument("--knn-samples", type=int_at_least(100), default=20000, help="voxels subsampled for KDE and KNN (default 20000)")
    mi_cmd.add_argument("--seed", type=_seed, default=0, help="seed of the subsample (default 0, as register's)")
    mi_cmd.add_argument("--json", action="store_true", help="print JSON instead of a table")
    mi_cmd.set_defaults(run=run)


def _seed(text: str) -> int:
    from ..registration.options import SEED_MAX

    value = int_at_least(0)(text)
    if value > SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to {SEED_MAX}, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..io import as_image, check_image
    from ..registration.validation import REPORT_BINS, compare, measurement_region, on_fixed_grid

    a, b = as_image(args.image1), as_image(args.image2)
    if a.ndim != b.ndim:
        raise InputError(f"{args.image1} is {a.ndim}D but {args.image2} is {b.ndim}D")
    check_image(a, args.image1)
    check_image(b, args.image2)
    mask = None
    if args.mask:
        mask = as_image(args.mask)
        if not mask.grid.same_as(a.grid, tolerance=1e-3):
            raise InputError(f"the mask {args.mask} is not on the grid of {args.image1}")
        if not bool((mask.data[0] != 0).any()):
            raise InputError(f"the mask {args.mask} is empty")
    region, description = measurement_region(a, mask, args.region)
    values_b, inside = on_fixed_grid(b, a)
    stats = compare(a, values_b, inside, region, description, args.bins or REPORT_BINS, args.knn_samples, args.seed)
    if stats is None:
        raise InputError(
            f"{args.image2} covers only {int((region.to(inside.device) & inside).sum())} voxels of {args.image1}'s "
            f"{description} in physical space (at least 100 are needed): mi compares "
            "the images where they lie, without moving either; check their origins and directions, or register "
            "them first and measure the warped image"
        )
    if args.json:
        print(json.dumps(stats, indent=2, ensure_ascii=False))
    else:
        print(f"region: {stats['region']}, {stats['samples']} voxels ({stats['overlap_fraction']:.1%} of the region)")
        print(f"MI soft bins ({stats['bins']} bins): {stats['soft_bins']:.4f} nats")
        print(f"MI KDE:                 {stats['kde']:.4f} nats")
        print(f"MI KNN (k=3):           {stats['knn']:.4f} nats")
        print(f"NMI (Studholme, {stats['bins']} bins): {stats['nmi']:.4f}")
    return EXIT_OK
