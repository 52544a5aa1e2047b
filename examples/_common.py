"""Pieces the example scripts share: data paths, tissue labels, slices for figures, Dice.

The scripts import this module by name; Python puts the script's folder on ``sys.path`` when a
script runs, so ``python examples/<name>.py`` finds it.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Iterable

import numpy as np
import SimpleITK as sitk

DATA = Path(__file__).resolve().parents[1] / "data"
DEFAULT_OUT = Path(__file__).resolve().parent / "output"
#: Tissue labels of data/mni152_labels_2mm.nii.gz.
LABELS = {1: "CSF", 2: "GM", 3: "WM"}


def known_motion(reference: sitk.Image) -> sitk.Transform:
    """The fixed -> moving transform that made data/mni152_t2like_moved_2mm.nii.gz.

    Taken from data/make_data.py, the script that made the file, so the two cannot disagree.
    """
    spec = importlib.util.spec_from_file_location("make_data", DATA / "make_data.py")
    make_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_data)
    return make_data.misaligned_transform(reference)


def central_slices(volume: np.ndarray) -> list[np.ndarray]:
    """The 2D image itself, or axial, coronal and sagittal slices through a ``(Z, Y, X)`` volume's centre."""
    if volume.ndim == 2:
        return [volume]
    z, y, x = (n // 2 for n in volume.shape)
    return [volume[z], volume[:, y, :], volume[:, :, x]]


def dice_per_label(a: np.ndarray, b: np.ndarray, labels: Iterable[int] = LABELS) -> dict[int, float]:
    """Dice overlap ``2 |A n B| / (|A| + |B|)`` of each label between two label maps."""
    return {k: float(2 * np.sum((a == k) & (b == k)) / (np.sum(a == k) + np.sum(b == k))) for k in labels}
