"""Reading/writing images: every format keeps voxels and geometry; clear errors otherwise."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy.spatial.transform import Rotation
from skimage.color import rgb2gray

from miregister.errors import InputError
from miregister.grid import Grid
from miregister.image import Image
from miregister.io import as_image, check_image, read_image, write_image

# Values exactly representable in float32: NIfTI stores the geometry in single precision.
SPACING_3D = (0.75, 1.25, 2.5)
ORIGIN_3D = (-12.5, 30.25, 7.0)
DIRECTION_3D = tuple(Rotation.from_euler("xyz", [20, -35, 50], degrees=True).as_matrix().ravel())
SPACING_2D = (0.5, 1.75)
ORIGIN_2D = (3.5, -8.0)
DIRECTION_2D = (np.cos(0.4), -np.sin(0.4), np.sin(0.4), np.cos(0.4))


def _image_3d(channels: int = 1) -> Image:
    data = torch.from_numpy(np.random.default_rng(0).normal(size=(channels, 5, 6, 7)).astype(np.float32))
    return Image(data, Grid((7, 6, 5), SPACING_3D, ORIGIN_3D, DIRECTION_3D))


def _image_2d(channels: int = 1) -> Image:
    data = torch.from_numpy(np.random.default_rng(1).normal(size=(channels, 9, 8)).astype(np.float32))
    return Image(data, Grid((8, 9), SPACING_2D, ORIGIN_2D, DIRECTION_2D))


def _assert_same(read: Image, written: Image, direction_atol: float = 0.0) -> None:
    assert read.grid.size == written.grid.size
    assert read.grid.spacing == written.grid.spacing
    assert read.grid.origin == written.grid.origin
    np.testing.assert_allclose(read.grid.direction, written.grid.direction, rtol=0, atol=direction_atol)
    assert torch.equal(read.data, written.data)


# NIfTI stores the direction as a float32 quaternion/sform: ~4e-8 off; the others are exact.
FORMATS = [(".nii", 1e-7), (".nii.gz", 1e-7), (".mha", 0.0), (".mhd", 0.0), (".nrrd", 1e-15), (".nhdr", 1e-15)]


@pytest.mark.parametrize("ext,direction_atol", FORMATS)
@pytest.mark.parametrize("make", [_image_2d, _image_3d], ids=["2d", "3d"])
def test_round_trip_keeps_voxels_and_geometry(tmp_path, ext, direction_atol, make):
    image = make()
    path = write_image(image, tmp_path / f"img{ext}")
    assert path.exists()
    _assert_same(read_image(path), image, direction_atol)


@pytest.mark.parametrize("ext", [".nii.gz", ".mha", ".nrrd"])
def test_round_trip_vector_pixels(tmp_path, ext):
    image = _image_3d(channels=3)
    out = read_image(write_image(image, tmp_path / f"vec{ext}"))
    _assert_same(out, image, 1e-7)


def test_mhd_header_and_data_file_end_up_together(tmp_path):
    write_image(_image_3d(), tmp_path / "a.mhd")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mhd", "a.raw"]


def test_nii_gz_is_standard_gzip_of_the_nifti_itk_writes(tmp_path):
    """Our run-length gzip of ITK's uncompressed NIfTI: Python's gzip (any reader's zlib) gives
    back exactly the bytes ITK writes as .nii, and ITK reads the .nii.gz to the same image."""
    import gzip

    from miregister.io import write_sitk_image

    for channels in (1, 3):
        image = _image_3d(channels)
        written = write_image(image, tmp_path / f"c{channels}.nii.gz")
        write_image(image, tmp_path / f"c{channels}.nii")
        assert gzip.decompress(written.read_bytes()) == (tmp_path / f"c{channels}.nii").read_bytes()
        _assert_same(read_image(written), image, 1e-7)
        reference = sitk.ReadImage(str(tmp_path / f"c{channels}.nii"))
        write_sitk_image(reference, tmp_path / f"direct{channels}.nii.gz")
        sitk.WriteImage(reference, str(tmp_path / f"itk{channels}.nii.gz"))  # ITK's own deflate
        again, itk = (sitk.ReadImage(str(tmp_path / f"{name}{channels}.nii.gz")) for name in ("direct", "itk"))
        assert np.array_equal(sitk.GetArrayFromImage(again), sitk.GetArrayFromImage(itk))
        assert (again.GetDirection(), again.GetOrigin(), again.GetSpacing()) == (itk.GetDirection(), itk.GetOrigin(), itk.GetSpacing())


def test_failed_nii_gz_compression_leaves_no_uncompressed_file(tmp_path, monkeypatch):
    import zlib

    from miregister.errors import OutputError

    class Broken:
        def compress(self, data):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(zlib, "compressobj", lambda *args: Broken())
    with pytest.raises(OutputError, match="no space left"):
        write_image(_image_3d(), tmp_path / "out" / "img.nii.gz")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_write_creates_parent_folders_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "deep" / "er" / "img.nii.gz"
    write_image(_image_3d(), target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["img.nii.gz"]


def test_write_casts_label_maps_by_rounding_and_clipping(tmp_path):
    data = torch.tensor([[[0.2, 2.9999, 3.5e3], [-7.0, 255.4, 300.0]]])
    image = Image(data, Grid((3, 2)))
    as_int16 = sitk.ReadImage(str(write_image(image, tmp_path / "l16.nrrd", dtype="int16")))
    assert as_int16.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(as_int16), [[0, 3, 3500], [-7, 255, 300]])
    as_uint8 = sitk.ReadImage(str(write_image(image, tmp_path / "l8.nii", dtype=torch.uint8)))
    assert as_uint8.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(as_uint8), [[0, 3, 255], [0, 255, 255]])


def test_write_accepts_simpleitk_pixel_ids_and_refuses_odd_types(tmp_path):
    image = Image(torch.tensor([[[1.4, 70000.0]]]), Grid((2, 1)))
    out = sitk.ReadImage(str(write_image(image, tmp_path / "u16.mha", dtype=sitk.sitkUInt16)))
    assert out.GetPixelID() == sitk.sitkUInt16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), [[1, 65535]])
    for bad in (sitk.sitkLabelUInt8, sitk.sitkComplexFloat32, "nonsense", object):
        with pytest.raises(ValueError):
            write_image(image, tmp_path / "bad.mha", dtype=bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u16.mha"]


def test_read_png_rgb_as_channels_or_grey(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, size=(7, 9, 3), dtype=np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "c.png"))
    image = read_image(tmp_path / "c.png")
    assert image.channels == 3 and image.grid.size == (9, 7)
    np.testing.assert_array_equal(image.to_numpy(), np.moveaxis(rgb, -1, 0).astype(np.float32))
    grey = read_image(tmp_path / "c.png", grayscale=True)
    assert grey.channels == 1
    np.testing.assert_allclose(grey.to_numpy()[0], rgb2gray(rgb) * 255, atol=1e-3)


def test_png_write_read_uint8(tmp_path):
    data = torch.randint(0, 256, (1, 7, 9)).to(torch.float32)
    image = Image(data, Grid((9, 7)))
    out = read_image(write_image(image, tmp_path / "g.png", dtype=torch.uint8))
    assert torch.equal(out.data, data)


def test_failed_write_leaves_existing_file_untouched(tmp_path):
    target = tmp_path / "keep.png"
    sitk.WriteImage(sitk.Image([4, 4], sitk.sitkUInt8) + 7, str(target))
    before = target.read_bytes()
    with pytest.raises(ValueError, match="keep.png"):
        write_image(_image_2d(), target)  # float pixels: PNG refuses them
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]


def test_write_refuses_unknown_extension_and_3d_png_before_writing(tmp_path):
    with pytest.raises(ValueError, match="unknown extension '.xyz'"):
        write_image(_image_3d(), tmp_path / "new" / "img.xyz")
    with pytest.raises(ValueError, match="2D images only"):
        write_image(_image_3d(), tmp_path / "new" / "img.png", dtype=torch.uint8)
    assert not (tmp_path / "new").exists()


def test_missing_and_unreadable_files(tmp_path):
    missing = tmp_path / "nope.nii.gz"
    with pytest.raises(InputError, match="file not found: .*nope.nii.gz"):
        read_image(missing)
    junk = tmp_path / "junk.nii"
    junk.write_text("not an image")
    with pytest.raises(InputError, match="junk.nii.*not a valid NIfTI file"):
        read_image(junk)
    with pytest.raises(ValueError, match="no DICOM series"):
        read_image(tmp_path)


def test_4d_images_are_refused_unless_the_4th_axis_is_singleton(tmp_path):
    sitk.WriteImage(sitk.Image([4, 5, 6, 2], sitk.sitkFloat32), str(tmp_path / "t.nii.gz"))
    with pytest.raises(ValueError, match="only 2D and 3D"):
        read_image(tmp_path / "t.nii.gz")
    single = sitk.GetImageFromArray(np.full((1, 6, 5, 4), 2.0, dtype=np.float32), isVector=False)
    sitk.WriteImage(single, str(tmp_path / "s.mha"))
    assert sitk.ReadImage(str(tmp_path / "s.mha")).GetDimension() == 4
    image = read_image(tmp_path / "s.mha")
    assert image.grid.size == (4, 5, 6) and float(image.data.min()) == 2.0


def _write_dicom_series(image: sitk.Image, folder: Path, series_uid: str) -> None:
    """Slices with the tags of SimpleITK's 'Dicom Series From Array' example. GDCM's writer
    sets the C library's character locale to "C" (ASCII), which later tests' text-mode
    subprocess pipes would decode with: it is put back."""
    import locale

    kept = locale.setlocale(locale.LC_CTYPE)
    try:
        _write_dicom_slices(image, folder, series_uid)
    finally:
        locale.setlocale(locale.LC_CTYPE, kept)


def _write_dicom_slices(image: sitk.Image, folder: Path, series_uid: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = image.GetDirection()
    tags = [
        ("0008|0031", "120000"),  # series time
        ("0008|0021", "20240101"),  # series date
        ("0008|0008", "DERIVED\\SECONDARY"),  # image type
        ("0020|000e", series_uid),  # series instance UID
        ("0020|0037", "\\".join(map(str, (d[0], d[3], d[6], d[1], d[4], d[7])))),  # orientation
        ("0008|103e", "miregister test"),  # series description
        ("0008|0060", "CT"),  # modality
    ]
    for i in range(image.GetDepth()):
        slice_i = image[:, :, i]
        for tag, value in tags:
            slice_i.SetMetaData(tag, value)
        slice_i.SetMetaData("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, i)))))
        slice_i.SetMetaData("0020|0013", str(i))  # instance number
        writer.SetFileName(str(folder / f"{series_uid[-1]}_{i}.dcm"))
        writer.Execute(slice_i)


def test_dicom_series_folder(tmp_path):
    values = np.random.default_rng(3).integers(-1000, 2000, size=(6, 8, 9)).astype(np.int16)
    direction = Rotation.from_euler("xyz", [10, -15, 20], degrees=True).as_matrix().ravel()
    volume = sitk.GetImageFromArray(values)
    volume.SetSpacing(SPACING_3D)
    volume.SetOrigin(ORIGIN_3D)
    volume.SetDirection(direction)
    _write_dicom_series(volume, tmp_path / "dcm", "1.2.826.0.1.3680043.2.1125.1.1")
    _write_dicom_series(volume[:, :, :3], tmp_path / "dcm", "1.2.826.0.1.3680043.2.1125.1.2")

    image = read_image(tmp_path / "dcm", series_id="1.2.826.0.1.3680043.2.1125.1.1")
    assert image.grid.size == (9, 8, 6)
    np.testing.assert_allclose(image.grid.spacing, SPACING_3D, atol=1e-6)
    np.testing.assert_allclose(image.grid.origin, ORIGIN_3D, atol=1e-6)
    np.testing.assert_allclose(image.grid.direction, direction, atol=1e-6)
    np.testing.assert_array_equal(image.to_numpy()[0], values)
    other = read_image(tmp_path / "dcm", series_id="1.2.826.0.1.3680043.2.1125.1.2")
    assert other.grid.size == (9, 8, 3)
    assert read_image(tmp_path / "dcm").grid.size in {(9, 8, 6), (9, 8, 3)}
    with pytest.raises(ValueError, match="no series '1.2.3'"):
        read_image(tmp_path / "dcm", series_id="1.2.3")


def test_as_image_accepts_every_input_kind(tmp_path):
    image = _image_3d()
    path = write_image(image, tmp_path / "a.mha")
    for obj in (path, str(path), image.to_sitk(), image):
        out = as_image(obj)
        _assert_same(out, image)
    assert as_image(image) is image
    assert as_image(image, dtype=torch.float64).dtype == torch.float64
    array = np.arange(12.0).reshape(3, 4)
    for obj in (array, torch.from_numpy(array)):
        out = as_image(obj)
        assert out.grid.same_as(Grid((4, 3))) and out.dtype == torch.float32
        np.testing.assert_array_equal(out.to_numpy()[0], array)


def test_as_image_refuses_other_types():
    with pytest.raises(InputError, match="list"):
        as_image([[1.0, 2.0]])
    with pytest.raises(InputError, match="int"):
        as_image(3)


def test_check_image_names_the_problem():
    grid = Grid((4, 3))
    check_image(Image(torch.arange(12.0).reshape(1, 3, 4), grid), "fixed image")
    with pytest.raises(ValueError, match=r"fixed image is constant \(all voxels = 3.0\)"):
        check_image(Image(torch.full((1, 3, 4), 3.0), grid), "fixed image")
    bad = torch.arange(12.0).reshape(1, 3, 4)
    bad[0, 0, 0], bad[0, 1, 1] = float("nan"), float("inf")
    with pytest.raises(ValueError, match="moving image has 1 NaN and 1 infinite"):
        check_image(Image(bad, grid), "moving image")
    masked = torch.zeros(1, 3, 4)
    masked[0, 0, 0] = 1.0
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[1:] = True
    with pytest.raises(ValueError, match="constant inside the mask"):
        check_image(Image(masked, grid), "fixed image", mask=mask)


def test_paths_may_be_pathlike(tmp_path):
    image = _image_2d()
    write_image(image, os.fspath(tmp_path / "p.mha"))
    _assert_same(read_image(os.fspath(tmp_path / "p.mha")), image)
