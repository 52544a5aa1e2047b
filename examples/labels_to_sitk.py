"""Atlas label propagation, and the same result from SimpleITK with the saved ITK transform.

The atlas is the T1 template with its label map (``data/mni152_t1_2mm.nii.gz``,
``data/mni152_labels_2mm.nii.gz``: CSF, grey matter, white matter); the subject is
``data/mni152_t2like_moved_2mm.nii.gz`` (another contrast, moved by a known rigid transform).
The script

1. registers the atlas T1 (moving) onto the subject (fixed) with
   :func:`miregister.registration.register` (``rigid+affine`` by default);
2. brings the atlas labels onto the subject grid with nearest-neighbour interpolation, through
   the found transform (:func:`miregister.warp.resample`, ``mode="nearest"``) and through the
   saved file with ``miregister apply --interpolation nearest``;
3. saves the transform as an ITK file (``.tfm``; ``.h5`` for a deformable chain), reads it
   back with ``SimpleITK.ReadTransform`` and resamples the labels with ``sitk.Resample``
   (nearest neighbour);
4. prints the fraction of subject voxels where the label maps agree, and the Dice per label
   against the subject's true labels (the atlas labels moved by the known transform).

Figure ``labels_overlay.png`` in ``--out``: the propagated labels over the subject image in
three orthogonal slices, with the voxels where miregister and SimpleITK disagree marked.

Usage
-----
::

    python examples/labels_to_sitk.py                               # 2 mm subject grid
    python examples/labels_to_sitk.py --quick                       # subject and atlas shrunk to 4 mm
    python examples/labels_to_sitk.py --transform rigid+affine+bspline --out somewhere/

Runtime on 2 CPU cores: ``--quick`` about 2 s, full mode about 10 s (a B-spline stage adds 20 s or
more).
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import SimpleITK as sitk
import torch
from matplotlib.colors import ListedColormap

from miregister import cli
from miregister.io import as_image
from miregister.registration import register
from miregister.warp import resample

from _common import DATA, DEFAULT_OUT, LABELS, central_slices, dice_per_label

LABEL_COLORS = ListedColormap(["none", "gold", "tab:blue", "tab:green"])


def true_subject_labels(labels: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """The atlas labels moved like the subject image (``data/README.md``), on ``reference``."""
    center = labels.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in labels.GetSize()])
    moved = sitk.VersorRigid3DTransform()
    moved.SetCenter(center)
    moved.SetRotation((0.2, 0.3, 0.93), float(np.deg2rad(10.0)))
    moved.SetTranslation((8.0, -6.0, 4.0))
    return sitk.Resample(labels, reference, moved.GetInverse(), sitk.sitkNearestNeighbor, 0)


def plot(subject: np.ndarray, labels: np.ndarray, differ: np.ndarray, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.8))
    for ax, s, lab, bad, view in zip(axes, central_slices(subject), central_slices(labels), central_slices(differ),
                                     ("axial", "coronal", "sagittal")):
        ax.imshow(s, cmap="gray", origin="lower")
        ax.imshow(lab, cmap=LABEL_COLORS, vmin=-0.5, vmax=3.5, alpha=0.45, origin="lower", interpolation="nearest")
        rows, cols = np.nonzero(bad)
        ax.plot(cols, rows, "rs", ms=3, mfc="none", label="miregister != SimpleITK")
        ax.set(xticks=[], yticks=[], title=view)
    axes[0].legend(loc="lower left", fontsize=7)
    fig.suptitle("atlas labels on the subject: CSF (yellow), GM (blue), WM (green)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict:
    """Register, propagate, compare with SimpleITK; returns the key numbers (see the docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="images shrunk to 4 mm, two pyramid levels (a few seconds)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default examples/output/)")
    parser.add_argument("--transform", default="rigid+affine", help="transform chain for register (default rigid+affine)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    subject = sitk.ReadImage(str(DATA / "mni152_t2like_moved_2mm.nii.gz"), sitk.sitkFloat32)
    atlas = sitk.ReadImage(str(DATA / "mni152_t1_2mm.nii.gz"), sitk.sitkFloat32)
    atlas_labels_path = DATA / "mni152_labels_2mm.nii.gz"
    atlas_labels = sitk.ReadImage(str(atlas_labels_path))  # uint8, stays on its 2 mm grid
    options: dict = {}
    if args.quick:
        subject, atlas = sitk.BinShrink(subject, [2] * 3), sitk.BinShrink(atlas, [2] * 3)
        options = {"shrink_factors": (2, 1), "iterations": (40, 20), "samples": 10_000, "knn_samples": 5_000}

    result = register(subject, atlas, transform=args.transform, device=args.device, **options)
    print(result.summary())
    args.out.mkdir(parents=True, exist_ok=True)
    transform_path = result.save_transform(args.out / ("labels_transform.tfm" if result.transform.is_linear else "labels_transform.h5"))
    subject_path = args.out / "labels_subject.nii.gz"
    sitk.WriteImage(subject, str(subject_path))

    # miregister, in memory and through the command line's `apply`.
    subject_grid = as_image(subject).grid
    ours = resample(as_image(atlas_labels, dtype=torch.int64), result.transform, subject_grid, mode="nearest").data[0].numpy()
    applied_path = args.out / "labels_on_subject.nii.gz"
    cli.main(["apply", str(atlas_labels_path), str(subject_path), "-t", str(transform_path), "-o", str(applied_path),
              "--interpolation", "nearest"])
    applied = sitk.GetArrayFromImage(sitk.ReadImage(str(applied_path)))

    # SimpleITK with the transform read back from the file.
    tx = sitk.ReadTransform(str(transform_path))
    theirs = sitk.GetArrayFromImage(sitk.Resample(atlas_labels, subject, tx, sitk.sitkNearestNeighbor, 0))

    agreement = float(np.mean(ours == theirs))
    labelled = (ours > 0) | (theirs > 0)
    agreement_labelled = float(np.mean(ours[labelled] == theirs[labelled]))
    agreement_apply = float(np.mean(applied == theirs))
    truth = sitk.GetArrayFromImage(true_subject_labels(atlas_labels, subject))
    dice = dice_per_label(truth, ours)
    print(f"SimpleITK transform read back: {tx.GetName()}")
    print(f"label agreement miregister vs SimpleITK: {agreement:.5f} of all voxels ({np.sum(ours != theirs)} differ), "
          f"{agreement_labelled:.5f} of labelled voxels; `miregister apply` vs SimpleITK: {agreement_apply:.5f}")
    print("Dice vs the subject's true labels: " + ", ".join(f"{LABELS[k]} {v:.3f}" for k, v in dice.items()))

    figure = args.out / "labels_overlay.png"
    plot(sitk.GetArrayFromImage(subject), ours, ours != theirs, figure)
    seconds = time.perf_counter() - start
    print(f"wrote {transform_path}, {applied_path}, {figure} in {seconds:.1f} s")
    return {
        "agreement": agreement,
        "agreement_labelled": agreement_labelled,
        "agreement_apply": agreement_apply,
        "differing_voxels": int(np.sum(ours != theirs)),
        "dice_vs_truth": dice,
        "mi_before": result.validation["before"]["soft_bins"],
        "mi_after": result.validation["after"]["soft_bins"],
        "transform_path": transform_path,
        "labels_path": applied_path,
        "figures": [figure],
        "registration_seconds": result.timings["total"],
        "seconds": seconds,
    }


if __name__ == "__main__":
    main()
