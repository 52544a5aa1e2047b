"""The automatic sampling region: an Otsu object dilated by a margin in mm."""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from miregister import Grid, Image
from miregister.registration.foreground import foreground_mask


def _ball_image(spacing: float, shape=(60, 64, 56)) -> tuple[Image, np.ndarray]:
    """A bright ellipsoid on a dark noisy background; returns the image and each voxel's exact
    distance (mm) to the object."""
    rng = np.random.default_rng(0)
    z, y, x = np.indices(shape, dtype=float)
    c = (np.asarray(shape) - 1) / 2
    r = ((z - c[0]) / (0.25 * shape[0])) ** 2 + ((y - c[1]) / (0.3 * shape[1])) ** 2 + ((x - c[2]) / (0.2 * shape[2])) ** 2
    data = np.where(r < 1, 100.0, 5.0) + rng.normal(0, 2.0, shape)
    grid = Grid(size=shape[::-1], spacing=(spacing,) * 3)
    distance = ndimage.distance_transform_edt(r >= 1, sampling=(spacing,) * 3)
    return Image(torch.from_numpy(data)[None].float(), grid), distance


def test_margin_on_the_image_grid_is_exact_at_2mm():
    image, distance = _ball_image(2.0)
    mask = foreground_mask(image, margin_mm=10.0).numpy()
    assert mask[distance <= 8.0].all() and not mask[distance > 12.0].any()
    assert 0.9 < mask.sum() / (distance <= 10.0).sum() < 1.1


def test_margin_computed_on_a_coarser_grid_stays_within_its_spacing():
    # 0.5 mm voxels: the distance is computed on a 2 mm grid, so the margin holds to ~2 mm
    image, distance = _ball_image(0.5, shape=(120, 128, 112))
    mask = foreground_mask(image, margin_mm=10.0).numpy()
    assert mask[distance <= 8.0].all(), "a voxel within margin - 2 mm was left out"
    assert not mask[distance > 12.0].any(), "a voxel beyond margin + 2 mm was put in"
    assert mask.shape == distance.shape


def test_uniform_image_is_all_foreground():
    grid = Grid(size=(20, 20, 20), spacing=(1.0, 1.0, 1.0))
    assert foreground_mask(Image(torch.full((1, 20, 20, 20), 3.0), grid)).all()
