"""The automatic sampling region: an Otsu object dilated by a margin in mm."""
from __future__ import annotations

import numpy as np
import pytest
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


# --------------------------------------------------- the hand-written pieces against their libraries
def test_otsu_threshold_is_scikit_images():
    from skimage.filters import threshold_otsu

    from miregister.registration.foreground import _otsu

    rng = np.random.default_rng(5)
    samples = [
        _ball_image(2.0)[0].data[0].numpy().ravel().astype(np.float64),
        np.concatenate([rng.normal(10, 2, 5000), rng.normal(60, 8, 2000)]),  # bimodal
        rng.lognormal(0, 1.5, 20000),  # heavy tail
        rng.integers(0, 255, 10000).astype(np.float64),  # quantised
        np.r_[np.zeros(100), np.ones(3)],  # two values
    ]
    for values in samples:
        for bins in (256, 64):
            assert _otsu(values, bins) == pytest.approx(float(threshold_otsu(values, nbins=bins)), rel=1e-12, abs=1e-12)
    assert _otsu(np.full(50, 7.0)) == 7.0  # constant: skimage returns the value


def _scipy_distance_to(inside, spacing, factor):
    """The coarse-grid distance as the previous implementation computed it, with scipy's exact transform."""
    import torch.nn.functional as F

    shape = inside.shape
    padded_shape = [-(-n // factor) * factor for n in shape]
    padded = np.zeros(padded_shape, dtype=bool)
    padded[tuple(slice(0, n) for n in shape)] = inside
    coarse = padded.reshape([v for n in padded_shape for v in (n // factor, factor)]).any(axis=tuple(range(1, 2 * len(shape), 2)))
    distance = ndimage.distance_transform_edt(~coarse, sampling=spacing * factor)
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    fine = F.interpolate(torch.from_numpy(distance)[None, None], size=padded_shape, mode=mode, align_corners=False)
    return fine[0, 0].numpy()[tuple(slice(0, n) for n in shape)]


@pytest.mark.parametrize("shape, spacing, factor", [
    ((50, 44, 38), (0.5, 0.5, 0.5), 4),
    ((40, 52, 36), (0.9, 0.7, 1.3), 2),
    ((24, 60, 60), (3.0, 0.6, 0.6), 3),
    ((90, 70), (1.0, 0.45), 4),
])
def test_coarse_grid_margin_decides_as_scipys_exact_transform(shape, spacing, factor):
    from miregister.registration.foreground import _distance_to

    rng = np.random.default_rng(sum(shape))
    inside = ndimage.binary_dilation(rng.random(shape) < 0.001, iterations=2)
    spacing = np.asarray(spacing)
    for margin in (10.0, 6.5):
        ours = _distance_to(inside, spacing, factor, margin) <= margin
        np.testing.assert_array_equal(ours, _scipy_distance_to(inside, spacing, factor) <= margin)


def test_windowed_squared_distance_is_the_exact_transform_within_its_window():
    from miregister.registration.foreground import _squared_distance

    rng = np.random.default_rng(11)
    for shape, spacing in (((30, 34, 28), (1.1, 0.8, 2.5)), ((60, 50), (0.7, 1.9))):
        inside = rng.random(shape) < 0.003
        spacing = np.asarray(spacing)
        reach = [6] * len(shape)
        exact = ndimage.distance_transform_edt(~inside, sampling=spacing) ** 2
        ours = _squared_distance(inside, spacing, reach).numpy()
        trusted = exact <= (6 * spacing.min()) ** 2
        np.testing.assert_allclose(ours[trusted], exact[trusted], rtol=1e-12, atol=1e-12)
        assert (ours[~trusted] >= exact[~trusted] - 1e-9).all()  # a window never finds a nearer voxel
