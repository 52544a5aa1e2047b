"""Automatic foreground (head) region for sampling the fixed image.

Far background (air) carries no information about the alignment, yet it biases MI: where the
moving image was padded (a different constant than its noisy background), any transform
that maps more fixed background onto the padding gains entropy-free pairs and "wins". We
measured this on the sample T1->T2 pair: with every voxel sampled, MI peaks at a 1% larger
scale than the truth (0.4 mm error); restricted to the head plus a margin it peaks at the
truth. So by default the metric samples the fixed image's foreground, dilated by a margin in
mm so that the head's outline (the strongest edge) stays inside.

Otsu's threshold and the distance test are written here with numpy and torch rather than taken
from scikit-image and scipy.ndimage: importing those costs about 0.25 s, a tenth of a 2 mm
affine run, and they are only needed for these few lines (tests compare both with them).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..image import Image
from ..pyramid import MIN_SIGMA_VOXELS, gaussian_smooth

__all__ = ["foreground_mask"]


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D sample: the bin centre (``bins`` equal bins over its range)
    that maximises the between-class variance, as scikit-image's ``threshold_otsu``."""
    low, high = float(values.min()), float(values.max())
    if low == high:
        return low
    hist, edges = np.histogram(values, bins=bins, range=(low, high))
    centers = (edges[:-1] + edges[1:]) / 2.0
    weight_low = np.cumsum(hist)
    weight_high = np.cumsum(hist[::-1])[::-1]
    mean_low = np.cumsum(hist * centers) / weight_low.clip(min=1)
    mean_high = (np.cumsum((hist * centers)[::-1]) / weight_high[::-1].clip(min=1))[::-1]
    between = weight_low[:-1] * weight_high[1:] * (mean_low[:-1] - mean_high[1:]) ** 2
    return float(centers[int(np.argmax(between))])


def foreground_mask(image: Image, margin_mm: float = 10.0) -> torch.Tensor:
    """Boolean ``image.shape`` mask: the object (Otsu threshold of the smoothed image) dilated by ``margin_mm``.

    Parameters
    ----------
    image : Image
        Single-channel image (first channel used).
    margin_mm : float
        Dilation in mm (Euclidean distance, anisotropic spacing honoured). The distance is
        computed on a grid of about ``margin_mm / 5`` mm (the image's own grid when that is
        finer, e.g. 2 mm images), so the margin holds to within about that spacing: a 1 mm
        brain's mask costs 0.2 s instead of 1.8 s.

    Returns
    -------
    Tensor
        Bool mask on the CPU; all True when no clear foreground is found (e.g. a test
        pattern that fills the field of view), so that the caller never samples nothing.
    """
    spacing = np.asarray(image.grid.spacing)[::-1]  # array axis order ([z,] y, x)
    smoothed = _smoothed(image, float(spacing.min()))
    low, high = float(smoothed.min()), float(smoothed.max())
    if high - low <= 1e-9 * max(1.0, abs(low), abs(high)):  # (nearly) constant: no object
        return torch.ones(image.shape, dtype=torch.bool)
    threshold = _otsu(smoothed.ravel())
    inside = smoothed > threshold
    del smoothed  # the distance step below needs only the object
    if inside.mean() > 0.9 or inside.sum() < 10:
        return torch.ones(image.shape, dtype=torch.bool)
    factor = max(1, int(margin_mm / 5.0 / spacing.min()))
    if factor == 1:
        # Only the object's bounding box plus the margin can be within the margin of it.
        reach = np.floor(margin_mm / spacing).astype(int) + 1
        box = []
        for axis in range(inside.ndim):
            occupied = np.flatnonzero(inside.any(axis=tuple(k for k in range(inside.ndim) if k != axis)))
            box.append(slice(max(0, int(occupied[0]) - reach[axis]), int(occupied[-1]) + reach[axis] + 1))
        box = tuple(box)
        out = np.zeros(inside.shape, dtype=bool)
        out[box] = _within(np.ascontiguousarray(inside[box]), spacing, margin_mm)
        return torch.from_numpy(out)
    return torch.from_numpy(_distance_to(inside, spacing, factor, margin_mm) <= margin_mm)


def _smoothed(image: Image, sigma_mm: float) -> np.ndarray:
    """The first channel smoothed by ``sigma_mm`` (float64, contiguous), slab by slab along the
    first array axis with a halo of the kernel's radius: each slab's inner planes get the
    values of the whole-image filter, but the float64 work (the input copy, each separable
    pass's output and transposed copy, ~32 B a voxel) is bounded by :data:`SLAB_VOXELS`."""
    data = image.data[0].detach().cpu()
    n = data.shape[0]
    sigma_voxels = sigma_mm / image.grid.spacing[-1]  # array axis 0 is the last ITK axis
    radius = int(4.0 * sigma_voxels + 0.5) if sigma_voxels >= MIN_SIGMA_VOXELS else 0  # gaussian_kernel1d's, truncate 4
    step = max(1, SLAB_VOXELS // max(1, data[0].numel()) - 2 * radius)
    out = np.empty(data.shape, dtype=np.float64)
    for start in range(0, n, step):
        stop = min(n, start + step)
        lo, hi = max(0, start - radius), min(n, stop + radius)
        block = gaussian_smooth(data[None, None, lo:hi].to(torch.float64), sigma_mm, image.grid)
        out[start:stop] = block[0, 0, start - lo: stop - lo].numpy()
    return out


#: Voxels per slab of :func:`_within` and :func:`_smoothed` (halo included): bounds the distance transform's ~50 bytes
#: per voxel (int32 feature indices, their float64 offsets) to ~25 MB whatever the image size.
SLAB_VOXELS = 1 << 19


def _within(inside: np.ndarray, spacing: np.ndarray, margin_mm: float) -> np.ndarray:
    """``distance_transform_edt(~inside, spacing) <= margin_mm``, computed slab by slab along the
    first axis, each slab with a halo of ``margin_mm``: an object voxel within the margin of a
    slab voxel lies in its halo, so every slab voxel gets the same distance (and the same
    answer) as from the whole image, and one further away is > margin either way."""
    reach = _window(margin_mm, spacing)
    halo = reach[0]
    plane = int(np.prod(inside.shape[1:]))
    step = max(1, SLAB_VOXELS // max(plane, 1) - 2 * halo)
    out = np.zeros(inside.shape, dtype=bool)
    for start in range(0, inside.shape[0], step):
        stop = min(start + step, inside.shape[0])
        lo, hi = max(0, start - halo), min(inside.shape[0], stop + halo)
        block = inside[lo:hi]
        if block.any():  # no object near: the slab stays outside (the transform of no object is undefined)
            near = _squared_distance(block, spacing, reach) <= margin_mm ** 2
            out[start:stop] = near[start - lo : stop - lo].numpy()
    return out


def _window(distance_mm: float, spacing: np.ndarray) -> list[int]:
    """Voxels along each axis that cover ``distance_mm`` (one more than ``distance_mm / spacing``
    rounded down, so that rounding never leaves a voxel at exactly that distance out)."""
    return [int(np.floor(distance_mm / s)) + 1 for s in spacing]


def _squared_distance(inside: np.ndarray, spacing: np.ndarray, reach: list[int]) -> torch.Tensor:
    """Squared Euclidean distance (mm², float64) of every voxel to the nearest ``inside`` voxel
    among those at most ``reach[k]`` voxels away along every axis ``k``; inf where there is none.

    The minimum over object voxels of a sum of per-axis terms is taken one axis at a time (the
    separable decomposition of exact distance transforms), each pass a minimum over the
    ``2 reach + 1`` shifts along its axis: exact for every voxel whose nearest object voxel lies
    within the window, so a distance up to ``min(reach * spacing)`` is exactly the Euclidean
    distance transform's (its square).
    """
    distance = torch.where(torch.from_numpy(np.ascontiguousarray(inside)), 0.0, math.inf).to(torch.float64)
    for axis, (step, far) in enumerate(zip(spacing, reach)):
        n = distance.shape[axis]
        passed = distance.clone()
        for shift in range(1, min(far, n - 1) + 1):
            cost = float(shift * step) ** 2
            ahead = passed.narrow(axis, 0, n - shift)
            torch.minimum(ahead, distance.narrow(axis, shift, n - shift) + cost, out=ahead)
            behind = passed.narrow(axis, shift, n - shift)
            torch.minimum(behind, distance.narrow(axis, 0, n - shift) + cost, out=behind)
        distance = passed
    return distance


def _distance_to(inside: np.ndarray, spacing: np.ndarray, factor: int, margin_mm: float) -> np.ndarray:
    """Euclidean distance (mm) of every voxel to the nearest ``inside`` voxel, computed on a grid
    ``factor`` times coarser (max-pooled object, trilinear distance back), exact wherever it
    decides ``<= margin_mm``: beyond ``margin_mm`` plus a coarse cell's diagonal a coarse
    voxel gets a larger stand-in, which leaves every interpolated value that could come out
    ``<= margin_mm`` (all of its cell's corners are within that bound) as the exact transform's."""
    shape = inside.shape
    padded_shape = [-(-n // factor) * factor for n in shape]  # whole coarse voxels
    padded = np.zeros(padded_shape, dtype=bool)
    padded[tuple(slice(0, n) for n in shape)] = inside
    coarse = padded.reshape([v for n in padded_shape for v in (n // factor, factor)]).any(axis=tuple(range(1, 2 * len(shape), 2)))
    coarse_spacing = spacing * factor
    bound = margin_mm + float(np.linalg.norm(coarse_spacing))
    reach = _window(bound, coarse_spacing)
    distance = _squared_distance(coarse, coarse_spacing, reach).clamp_(max=(2.0 * bound) ** 2).sqrt_()
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    # align_corners=False with an integer factor puts each fine centre at its place in the coarse grid
    fine = F.interpolate(distance[None, None], size=padded_shape, mode=mode, align_corners=False)
    return fine[0, 0].numpy()[tuple(slice(0, n) for n in shape)]
