"""Automatic foreground (head) region for sampling the fixed image.

Far background (air) carries no information about the alignment, yet it biases MI: where the
moving image was padded (a different constant than its noisy background), any transform
that maps more fixed background onto the padding gains entropy-free pairs and "wins". We
measured this on the sample T1->T2 pair: with every voxel sampled, MI peaks at a 1% larger
scale than the truth (0.4 mm error); restricted to the head plus a margin it peaks at the
truth. So by default the metric samples the fixed image's foreground, dilated by a margin in
mm so that the head's outline (the strongest edge) stays inside.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from ..image import Image

__all__ = ["foreground_mask"]


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D sample (maximises the between-class variance)."""
    hist, edges = np.histogram(values, bins=bins)
    centers = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(centers[int(np.argmax(between))])


def foreground_mask(image: Image, margin_mm: float = 10.0) -> torch.Tensor:
    """Boolean ``image.shape`` mask: the object (Otsu threshold of the smoothed image) dilated by ``margin_mm``.

    Parameters
    ----------
    image : Image
        Single-channel image (first channel used).
    margin_mm : float
        Dilation in mm (exact Euclidean distance, anisotropic spacing honoured).

    Returns
    -------
    Tensor
        Bool mask on the CPU; all True when no clear foreground is found (e.g. a test
        pattern that fills the field of view), so that the caller never samples nothing.
    """
    data = image.data[0].detach().cpu().double().numpy()
    spacing = np.asarray(image.grid.spacing)[::-1]  # array axis order ([z,] y, x)
    smoothed = ndimage.gaussian_filter(data, sigma=1.0 / spacing * spacing.min())
    threshold = _otsu(smoothed.ravel())
    inside = smoothed > threshold
    if inside.mean() > 0.9 or inside.sum() < 10:
        return torch.ones(image.shape, dtype=torch.bool)
    distance = ndimage.distance_transform_edt(~inside, sampling=spacing)
    return torch.from_numpy(distance <= margin_mm)
