"""The QC picture's fast paths give what the slow ones gave (numpy references)."""
import numpy as np
import pytest

from miregister.registration.qc import _joint_histogram


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
def test_joint_histogram_is_numpys_histogram2d(dtype):
    rng = np.random.default_rng(1)
    a = (rng.gamma(2.0, 20.0, (30, 40, 50))).astype(dtype)
    b = (rng.normal(100.0, 30.0, (30, 40, 50)).clip(0, 255)).astype(dtype)
    reference, _, _ = np.histogram2d(a.ravel().astype(np.float64), b.ravel().astype(np.float64), bins=64)
    np.testing.assert_array_equal(_joint_histogram(a, b), np.log1p(reference.T))


def test_joint_histogram_of_a_constant_image_is_numpys():
    a = np.full((10, 12), 7.0)
    b = np.linspace(0, 1, 120).reshape(10, 12)
    reference, _, _ = np.histogram2d(a.ravel(), b.ravel(), bins=16)
    np.testing.assert_array_equal(_joint_histogram(a, b, bins=16), np.log1p(reference.T))
