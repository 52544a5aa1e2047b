"""``miregister mi``: MI between two images by soft bins, KDE and KNN, and NMI."""
from __future__ import annotations

import argparse
import json

from .common import EXIT_OK, add_command


def add_parser(commands) -> None:
    """Declare the ``mi`` sub-command and its options."""
    mi_cmd = add_command(commands, "mi", "print MI between two images by soft bins, KDE and KNN, and NMI")
    mi_cmd.add_argument("image1", help="first image (its grid is used)")
    mi_cmd.add_argument("image2", help="second image (resampled onto the first grid if needed, identity transform)")
    mi_cmd.add_argument("--mask", help="mask on the first image's grid")
    mi_cmd.add_argument("--bins", type=int, default=32, help="bins for the soft-bins MI and NMI (default 32)")
    mi_cmd.add_argument("--knn-samples", type=int, default=20000, help="voxels subsampled for KDE and KNN (default 20000)")
    mi_cmd.add_argument("--seed", type=int, default=0, help="seed of the subsample (default 0)")
    mi_cmd.add_argument("--json", action="store_true", help="print JSON instead of a table")
    mi_cmd.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..io import as_image, check_image
    from ..registration.validation import mi_measures
    from ..warp import warp
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
        from ..errors import InputError

        raise InputError(
            f"{args.image2} covers only {int(region.sum())} voxels of {args.image1} in physical space (at least 100 are "
            "needed): mi compares the images where they lie, without moving either; check their origins and "
            "directions, or register them first and measure the warped image"
        )
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
