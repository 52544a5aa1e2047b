"""Image <-> SimpleITK <-> numpy round trips keep voxels, channels and geometry."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy.spatial.transform import Rotation

from miregister.grid import Grid
from miregister.image import Image

DIRECTION = tuple(Rotation.from_euler("zyx", [30, 10, -45], degrees=True).as_matrix().ravel())


def _sitk(array: np.ndarray, is_vector: bool, spacing, origin, direction) -> sitk.Image:
    image = sitk.GetImageFromArray(array, isVector=is_vector)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


@pytest.mark.parametrize(
    "shape,is_vector,spacing,origin,direction",
    [
        ((6, 7), False, (0.3, 2.1), (-4.0, 9.5), (0.0, -1.0, 1.0, 0.0)),
        ((6, 7, 3), True, (0.3, 2.1), (-4.0, 9.5), (0.0, -1.0, 1.0, 0.0)),
        ((4, 6, 7), False, (0.7, 1.1, 3.3), (1.0, -2.0, 30.0), DIRECTION),
        ((4, 6, 7, 2), True, (0.7, 1.1, 3.3), (1.0, -2.0, 30.0), DIRECTION),
    ],
    ids=["2d-scalar", "2d-vector", "3d-scalar", "3d-vector"],
)
def test_sitk_round_trip(shape, is_vector, spacing, origin, direction):
    array = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    reference = _sitk(array, is_vector, spacing, origin, direction)
    image = Image.from_sitk(reference)
    channels = shape[-1] if is_vector else 1
    spatial = shape[:-1] if is_vector else shape
    assert image.data.shape == (channels, *spatial) and image.channels == channels
    assert image.grid.size == reference.GetSize() and image.shape == spatial
    assert image.grid == Grid.from_sitk(reference)
    expected = np.moveaxis(array, -1, 0) if is_vector else array[None]
    np.testing.assert_array_equal(image.to_numpy(), expected)

    back = image.to_sitk()
    assert back.GetSize() == reference.GetSize()
    assert back.GetNumberOfComponentsPerPixel() == reference.GetNumberOfComponentsPerPixel()
    assert back.GetSpacing() == reference.GetSpacing() and back.GetOrigin() == reference.GetOrigin()
    assert back.GetDirection() == reference.GetDirection()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), array)

    via_numpy = Image.from_numpy(array, spacing, origin, direction, channel_axis=-1 if is_vector else None)
    assert via_numpy.grid == image.grid
    assert torch.equal(via_numpy.data, image.data)


def test_integer_pixels_are_cast_to_the_requested_dtype():
    array = np.arange(-5, 7, dtype=np.int16).reshape(3, 4)
    reference = sitk.GetImageFromArray(array)
    image = Image.from_sitk(reference)
    assert image.dtype == torch.float32
    np.testing.assert_array_equal(image.to_numpy()[0], array)
    assert Image.from_sitk(reference, dtype=torch.int32).dtype == torch.int32
    assert Image.from_sitk(sitk.Cast(reference + 10, sitk.sitkUInt16), dtype=torch.float64).dtype == torch.float64


def test_to_sitk_picks_one_channel_and_handles_half_and_bool():
    image = Image(torch.arange(24.0).reshape(2, 3, 4), Grid((4, 3), (0.5, 2.0)))
    one = image.to_sitk(channel=1)
    assert one.GetNumberOfComponentsPerPixel() == 1 and one.GetSpacing() == (0.5, 2.0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(one), image.to_numpy()[1])
    half = image.to(torch.float16).to_sitk(channel=0)
    assert half.GetPixelID() == sitk.sitkFloat32
    mask = image.with_data(image.data[:1] > 5).to_sitk()
    assert mask.GetPixelID() == sitk.sitkUInt8


def test_from_numpy_defaults_and_numpy_geometry():
    image = Image.from_numpy(np.zeros((5, 6, 7)))
    assert image.grid == Grid((7, 6, 5)) and image.dtype == torch.float32
    spaced = Image.from_numpy(np.zeros((5, 6)), spacing=np.array([0.5, 2.0]), origin=np.array([1.0, 2.0]))
    assert spaced.grid.spacing == (0.5, 2.0) and spaced.grid.origin == (1.0, 2.0)


def test_shape_mismatch_and_4d_are_refused():
    with pytest.raises(ValueError, match="does not match"):
        Image(torch.zeros(1, 4, 5), Grid((4, 5)))  # tensor order is (C, Y, X) = (1, 5, 4)
    with pytest.raises(ValueError, match="does not match"):
        Image(torch.zeros(5, 4), Grid((4, 5)))  # no channel axis
    with pytest.raises(ValueError, match="only 2D and 3D"):
        Image.from_sitk(sitk.Image([2, 3, 4, 5], sitk.sitkFloat32))


def test_helpers_keep_the_grid():
    grid = Grid((4, 3), (0.5, 2.0), (1.0, -1.0))
    image = Image(torch.ones(1, 3, 4), grid)
    assert image.batch().shape == (1, 1, 3, 4)
    assert image.to(torch.float64).grid is grid and image.to(torch.float64).dtype == torch.float64
    assert image.with_data(torch.zeros(2, 3, 4)).channels == 2
    assert image.ndim == 2 and image.device.type == "cpu"
