"""Checks of the sample images shipped in miregister/data/ (linked from data/; see data/README.md)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from miregister import data as sample_data

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"  # make_data.py and the links data/<file> -> miregister/data/<file>
PACKAGE_DATA = ROOT / "miregister" / "data"

T1 = "mni152_t1_2mm.nii.gz"
T2LIKE = "mni152_t2like_2mm.nii.gz"
LABELS = "mni152_labels_2mm.nii.gz"
BRAINMASK = "mni152_brainmask_2mm.nii.gz"
T1_SLICE = "mni152_t1_slice.nii.gz"
T2LIKE_SLICE = "mni152_t2like_slice.nii.gz"
VOLUMES = (T1, T2LIKE, LABELS, BRAINMASK)
SLICES = (T1_SLICE, T2LIKE_SLICE)

SIZE = (98, 116, 94)
ORIGIN = (97.5, 133.5, -71.5)  # LPS, mm
DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def read(name: str) -> sitk.Image:
    return sitk.ReadImage(str(sample_data.path(name)))


def arr(name: str) -> np.ndarray:
    return sitk.GetArrayFromImage(read(name))


def load_make_data():
    spec = importlib.util.spec_from_file_location("make_data", DATA / "make_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", VOLUMES + SLICES)
def test_file_exists_and_reads(name):
    assert sample_data.path(name).is_file()
    img = read(name)
    assert img.GetPixelID() == sitk.sitkUInt8
    assert sitk.GetArrayViewFromImage(img).max() > 0


def test_volumes_share_a_2mm_grid():
    for name in VOLUMES:
        img = read(name)
        assert img.GetDimension() == 3
        assert img.GetSize() == SIZE
        np.testing.assert_allclose(img.GetSpacing(), (2.0, 2.0, 2.0))
        np.testing.assert_allclose(img.GetOrigin(), ORIGIN, atol=1e-4)
        np.testing.assert_allclose(img.GetDirection(), DIRECTION, atol=1e-6)


def test_slices_are_2d_middle_axial_slices():
    k = SIZE[2] // 2
    for name, vol in ((T1_SLICE, T1), (T2LIKE_SLICE, T2LIKE)):
        img = read(name)
        assert img.GetDimension() == 2
        assert img.GetSize() == SIZE[:2]
        np.testing.assert_allclose(img.GetSpacing(), (2.0, 2.0))
        np.testing.assert_allclose(img.GetOrigin(), ORIGIN[:2], atol=1e-4)
        np.testing.assert_allclose(img.GetDirection(), (-1.0, 0.0, 0.0, -1.0), atol=1e-6)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(img), arr(vol)[k])


def test_labels_and_mask():
    labels, mask = arr(LABELS), arr(BRAINMASK)
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    assert set(np.unique(mask)) == {0, 1}
    assert 0.1 < mask.mean() < 0.5
    np.testing.assert_array_equal(mask, (labels > 0).astype(np.uint8))


def test_t2like_contrast_is_inverted_and_non_monotonic():
    t1, t2, labels = arr(T1).astype(float), arr(T2LIKE).astype(float), arr(LABELS)
    m1 = [t1[labels == k].mean() for k in range(4)]  # background, CSF, GM, WM
    m2 = [t2[labels == k].mean() for k in range(4)]
    assert m1[3] > m1[2] > m1[1] > m1[0]  # T1: WM > GM > CSF > background
    assert m2[1] > m2[2] > m2[3] > m2[0]  # T2-like: CSF > GM > WM > background
    # non-monotonic in T1: rises from background to CSF, then falls through GM to WM.
    # Over the whole image the two correlate positively (dark background in both),
    # inside the brain negatively: no monotonic map of T1 gives the T2-like image.
    brain = labels > 0
    assert np.corrcoef(t1.ravel(), t2.ravel())[0, 1] > 0.3
    assert np.corrcoef(t1[brain], t2[brain])[0, 1] < -0.5


def test_make_data_regenerates_shipped_files(tmp_path):
    pytest.importorskip("nilearn")
    md = load_make_data()
    source_dir = md.nilearn_data_dir()
    if not all((source_dir / f).is_file() for f in md.SOURCES.values()):
        pytest.skip("the installed nilearn does not ship the MNI152 template files")
    if md.check_sources(source_dir):
        pytest.skip("the installed nilearn ships other MNI152 files than those recorded")
    assert md.main(["--out", str(tmp_path)]) == 0
    assert set(md.OUTPUTS) == set(VOLUMES + SLICES)
    for name in md.OUTPUTS:
        new, old = sitk.ReadImage(str(tmp_path / name)), read(name)
        assert new.GetSize() == old.GetSize()
        assert new.GetPixelID() == old.GetPixelID()
        np.testing.assert_allclose(new.GetSpacing(), old.GetSpacing())
        np.testing.assert_allclose(new.GetOrigin(), old.GetOrigin(), atol=1e-6)
        np.testing.assert_allclose(new.GetDirection(), old.GetDirection(), atol=1e-9)
        a = sitk.GetArrayFromImage(new).astype(int)
        b = sitk.GetArrayFromImage(old).astype(int)
        if name in (T2LIKE, T2LIKE_SLICE):
            # noise + exp/sqrt: allow a rare off-by-one rounding on another platform
            d = np.abs(a - b)
            assert d.max() <= 1 and d.mean() < 1e-3
        else:
            np.testing.assert_array_equal(a, b)


def test_package_data_is_the_one_copy_and_data_links_to_it():
    """One copy of each image in git (miregister/data/, shipped in the wheel); data/<file> links there."""
    names = sample_data.list()
    assert set(VOLUMES + SLICES) | {"mni152_t2like_moved_2mm.nii.gz"} == {n + ".nii.gz" for n in names}
    for name in names:
        packaged = sample_data.path(name)
        assert packaged.parent.resolve() == PACKAGE_DATA.resolve()
        link = DATA / packaged.name
        assert link.is_symlink() and link.resolve() == packaged.resolve()
        assert not Path(link.readlink()).is_absolute()  # works wherever the checkout is


def test_unknown_sample_name_is_a_usage_error():
    from miregister.errors import UsageError

    with pytest.raises(UsageError, match="mni152_t1_2mm"):
        sample_data.path("mni152_t3_2mm")
    assert sample_data.path("mni152_t1_2mm.nii.gz") == sample_data.path("mni152_t1_2mm")
