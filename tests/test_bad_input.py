"""Bad inputs are refused with a message that names the file and the problem (issue 12).

Every bad file is made here, in a temporary folder, with SimpleITK/numpy and raw byte edits
of the header (nibabel is not a dependency): the good file each one comes from is read back
equal to its numpy voxels, so the refusals are of the defect, not of the format.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

import miregister
from miregister.cli import main
from miregister.errors import InputError, MiregisterError, RegistrationError, UsageError
from miregister.io import read_image
from miregister.registration import foreground, memory

DATA = Path(__file__).resolve().parents[1] / "data"
ITK_FRAGMENTS = ("ITK ERROR", "sitk::ERROR", "0x", ".cxx", "set the suffix")


def _array(ndim: int) -> np.ndarray:
    shape = (6, 7, 8) if ndim == 3 else (9, 11)
    return np.random.default_rng(ndim).normal(size=shape).astype(np.float32)


def _write(array: np.ndarray, path: Path, spacing=None) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing or tuple(1.0 + 0.5 * k for k in range(array.ndim)))
    sitk.WriteImage(image, str(path))
    return path


def _nifti_bytes(path: Path) -> bytearray:
    raw = path.read_bytes()
    return bytearray(gzip.decompress(raw) if path.name.endswith(".gz") else raw)


def _save(raw: bytes, path: Path) -> Path:
    path.write_bytes(gzip.compress(bytes(raw)) if path.name.endswith(".gz") else bytes(raw))
    return path


def _clean(message: str) -> None:
    assert not any(fragment in message for fragment in ITK_FRAGMENTS), message


# ------------------------------------------------------------------------------------ NIfTI
@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_truncated_nifti_is_refused(tmp_path, ext, ndim):
    array = _array(ndim)
    good = _write(array, tmp_path / f"good{ext}")
    np.testing.assert_array_equal(read_image(good).to_numpy()[0], array)  # the reference reads back exactly
    raw = _nifti_bytes(good)
    bad = _save(raw[: 352 + array.nbytes // 2], tmp_path / f"half{ext}")  # the header and half the voxels
    with pytest.raises(InputError, match=rf"half{ext}' is truncated: .*{array.nbytes} bytes.* only {array.nbytes // 2} bytes") as info:
        read_image(bad)
    _clean(str(info.value))


def test_nifti_gz_stream_cut_short_is_refused(tmp_path):
    good = _write(_array(3), tmp_path / "good.nii.gz")
    compressed = good.read_bytes()
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(InputError, match="cut.nii.gz.*gzip data end early"):
        read_image(bad)


def test_nifti_header_cut_short_and_empty_file(tmp_path):
    good = _write(_array(3), tmp_path / "good.nii")
    (tmp_path / "head.nii").write_bytes(good.read_bytes()[:200])
    with pytest.raises(InputError, match="holds 200 bytes of a 348-byte NIfTI header"):
        read_image(tmp_path / "head.nii")
    (tmp_path / "empty.nii").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty.nii': the file is empty"):
        read_image(tmp_path / "empty.nii")


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_nan_and_inf_voxels_in_nifti_are_refused(tmp_path, ext):
    array = _array(3)
    array[1, 2, 3], array[0, 0, 0], array[5, 6, 7] = np.nan, np.inf, -np.inf
    path = _write(array, tmp_path / f"nan{ext}")
    expected = f"{int(np.isnan(array).sum())} NaN and {int(np.isinf(array).sum())} infinite voxels out of {array.size}"
    with pytest.raises(InputError, match=expected):
        read_image(path)


def test_nan_voxels_found_through_the_scaling(tmp_path):
    """float voxels with scl_slope 2: NaN stays NaN; integer voxels with a slope are fine."""
    array = _array(3)
    array[2, 2, 2] = np.nan
    raw = _nifti_bytes(_write(array, tmp_path / "f.nii"))
    struct.pack_into("<2f", raw, 112, 2.0, 1.0)
    with pytest.raises(InputError, match="1 NaN and 0 infinite"):
        read_image(_save(raw, tmp_path / "scaled.nii"))
    ints = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    raw = _nifti_bytes(_write(ints, tmp_path / "i.nii"))
    struct.pack_into("<2f", raw, 112, 0.5, -3.0)
    np.testing.assert_allclose(read_image(_save(raw, tmp_path / "iscaled.nii")).to_numpy()[0], ints * 0.5 - 3.0)
    struct.pack_into("<2f", raw, 112, 0.5, float("nan"))
    with pytest.raises(InputError, match=r"scl_inter\) of nan"):
        read_image(_save(raw, tmp_path / "inter.nii"))


@pytest.mark.parametrize("value,words", [(0.0, "read it as 1 mm"), (float("nan"), "read it as 1 mm"), (-2.0, "flip the axis")])
@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_bad_pixdim_is_refused(tmp_path, ext, value, words):
    raw = _nifti_bytes(_write(_array(3), tmp_path / f"good{ext}"))
    assert struct.unpack_from("<3f", raw, 80) == (1.0, 1.5, 2.0)  # pixdim[1..3] = the spacing written
    struct.pack_into("<f", raw, 84, value)  # pixdim[2]: y
    with pytest.raises(InputError, match=rf"pixdim\[2\]\) of {value} along y.*{words}"):
        read_image(_save(raw, tmp_path / f"bad{ext}"))


def test_bad_dimensions_are_refused(tmp_path):
    raw = _nifti_bytes(_write(_array(3), tmp_path / "good.nii"))
    struct.pack_into("<h", raw, 46, 0)  # dim[3] = 0
    with pytest.raises(InputError, match=r"image size \(8, 7, 0\)"):
        read_image(_save(raw, tmp_path / "dim.nii"))


def _nifti2(array: np.ndarray, spacing) -> bytes:
    """A NIfTI-2 file made by hand from the standard's layout (540-byte header, 4 extension bytes)."""
    header = bytearray(540)
    struct.pack_into("<i8s", header, 0, 540, b"n+2\0\r\n\x1a\n")
    struct.pack_into("<2h", header, 12, 16, 32)
    struct.pack_into("<8q", header, 16, array.ndim, *array.shape[::-1], *([1] * (7 - array.ndim)))
    struct.pack_into("<8d", header, 104, 1.0, *spacing, *([1.0] * (7 - len(spacing))))
    struct.pack_into("<q2d", header, 168, 544, 1.0, 0.0)
    return bytes(header) + b"\0" * 4 + array.astype("<f4").tobytes()


def test_nifti2_headers_are_checked(tmp_path):
    array = _array(3)
    (tmp_path / "short.nii").write_bytes(_nifti2(array, (1.0, 1.5, 2.0))[:-100])
    with pytest.raises(InputError, match=f"short.nii' is truncated: .*{array.nbytes} bytes after a 544-byte header"):
        read_image(tmp_path / "short.nii")
    (tmp_path / "zero.nii").write_bytes(_nifti2(array, (1.0, 0.0, 2.0)))
    with pytest.raises(InputError, match=r"pixdim\[2\]\) of 0.0"):
        read_image(tmp_path / "zero.nii")
    (tmp_path / "nan.nii").write_bytes(_nifti2(np.where(array > 1.5, np.nan, array), (1.0, 1.5, 2.0)))
    with pytest.raises(InputError, match=f"{int((array > 1.5).sum())} NaN"):
        read_image(tmp_path / "nan.nii")


# ------------------------------------------------------------------------ MetaImage / NRRD
@pytest.mark.parametrize("ext", [".mha", ".nrrd"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_truncated_mha_and_nrrd_are_refused(tmp_path, ext, ndim):
    array = _array(ndim)
    good = _write(array, tmp_path / f"good{ext}")
    np.testing.assert_array_equal(read_image(good).to_numpy()[0], array)
    raw = good.read_bytes()
    header = len(raw) - array.nbytes
    (tmp_path / f"half{ext}").write_bytes(raw[: header + array.nbytes // 2])
    with pytest.raises(InputError, match=rf"half{ext}' is truncated: .*{array.nbytes} bytes.*only {array.nbytes // 2} bytes") as info:
        read_image(tmp_path / f"half{ext}")
    _clean(str(info.value))


def test_mhd_without_its_data_file_and_bad_element_spacing(tmp_path):
    _write(_array(3), tmp_path / "a.mhd")
    (tmp_path / "a.raw").unlink()
    with pytest.raises(InputError, match="data file .*a.raw' is missing"):
        read_image(tmp_path / "a.mhd")
    raw = _write(_array(3), tmp_path / "b.mha").read_bytes()
    (tmp_path / "neg.mha").write_bytes(raw.replace(b"ElementSpacing = 1 1.5 2", b"ElementSpacing = 1 -1.5 2"))
    with pytest.raises(InputError, match=r"ElementSpacing\) of -1.5 along y"):
        read_image(tmp_path / "neg.mha")


@pytest.mark.parametrize("name,words", [
    ("junk.nii", "not a valid NIfTI file"), ("junk.nii.gz", "not a valid NIfTI file"),
    ("junk.mha", "not a valid MetaImage"), ("junk.nrrd", "not a valid NRRD file"),
    ("junk.png", "not a valid PNG file"), ("junk.xyz", "no image reader accepts this '.xyz' file"),
])
def test_unreadable_files_are_described_without_itk_fragments(tmp_path, name, words):
    (tmp_path / name).write_text("not an image\n" * 40)
    with pytest.raises(InputError, match=f"{name}': .*{words}") as info:
        read_image(tmp_path / name)
    _clean(str(info.value))
    assert isinstance(info.value.__cause__, RuntimeError)  # SimpleITK's words kept, chained


# ------------------------------------------------------------------------------------ apply
def test_apply_refuses_a_singular_matrix(tmp_path, capsys):
    image = _write(_array(3), tmp_path / "img.nii.gz")
    for name, matrix in (("flat.tfm", [1, 0, 0, 0, 1, 0, 0, 0, 0]), ("rank1.tfm", [1, 2, 3, 2, 4, 6, 1, 2, 3])):
        transform = sitk.AffineTransform(3)
        transform.SetMatrix(matrix)
        sitk.WriteTransform(transform, str(tmp_path / name))
        assert np.linalg.matrix_rank(np.reshape(matrix, (3, 3))) < 3  # the reference: numpy calls it singular
        out = tmp_path / f"out_{name}.nii.gz"
        assert main(["apply", str(image), str(image), "-t", str(tmp_path / name), "-o", str(out)]) == 1
        assert not out.exists()
        assert f"transform file {tmp_path / name} holds a singular matrix" in capsys.readouterr().err


# ------------------------------------------------------------------------------- messages
def _brain_pair():
    fixed = sitk.ReadImage(str(DATA / "mni152_t1_2mm.nii.gz"))
    return fixed[::2, ::2, ::2], sitk.ReadImage(str(DATA / "mni152_t2like_moved_2mm.nii.gz"))[::2, ::2, ::2]


def test_huge_shrink_factor_says_the_level_is_too_small():
    fixed, moving = _brain_pair()
    size = "x".join(str(n) for n in fixed.GetSize())
    with pytest.raises(UsageError, match=rf"shrink factor 1000 leaves a 1x1x1-voxel level of the {size} fixed image: use smaller"):
        miregister.register(fixed, moving, "affine", shrink_factors=1000)


def test_one_voxel_thick_moving_image_says_so():
    fixed, moving = _brain_pair()
    thin = moving[:, :, 20:21]
    with pytest.raises(InputError, match=r"moving image is 1 voxel thick along z .*needs at least 2 voxels per axis"):
        miregister.register(fixed, thin, "affine")


def test_mi_on_images_that_do_not_overlap_says_so(tmp_path, capsys):
    fixed, _ = _brain_pair()
    far = sitk.Image(fixed)
    far.SetOrigin([o + 1000.0 for o in fixed.GetOrigin()])
    sitk.WriteImage(fixed, str(tmp_path / "a.nii.gz"))
    sitk.WriteImage(far, str(tmp_path / "b.nii.gz"))
    assert main(["mi", str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz")]) == 1
    err = capsys.readouterr().err
    assert "covers only 0 voxels" in err and "without moving either" in err and "before registering" not in err


# ---------------------------------------------------------------------------- Python API
def test_api_errors_are_miregister_errors(tmp_path):
    fixed, moving = _brain_pair()
    with pytest.raises(InputError, match=r"file not found: .*nope.nii.gz"):
        miregister.register(tmp_path / "nope.nii.gz", moving)
    with pytest.raises(InputError, match="cannot make an image from a builtins.int"):
        miregister.register(42, moving)
    with pytest.raises(InputError, match="2D but the moving image is 3D"):
        miregister.register(fixed[:, :, 10], moving)
    empty = sitk.Image(fixed.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(fixed)
    with pytest.raises(InputError, match="fixed mask is empty"):
        miregister.register(fixed, moving, fixed_mask=empty)
    for error in (InputError, UsageError, RegistrationError):  # what the README promises
        assert issubclass(error, MiregisterError) and issubclass(error, ValueError)


# -------------------------------------------------------------------------------- memory
def test_memory_refusal_says_how_much_and_what_to_change(tmp_path, monkeypatch):
    fixed, moving = _brain_pair()
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemAvailable:       2048 kB\n")
    monkeypatch.setattr(memory, "MEMINFO", meminfo)
    monkeypatch.setattr(memory, "_cgroup_free", lambda: None)
    assert memory.available_bytes() == 2048 * 1024
    with pytest.raises(RegistrationError, match=r"needs about \d+\.\d GB of host memory but only 0\.0 GB are free.*coarser grid"):
        miregister.register(fixed, moving, "affine")
    monkeypatch.setenv(memory.ENV_SWITCH, "0")  # the way around it, for who knows better
    grid = miregister.Image.from_sitk(fixed).grid
    options = miregister.registration.options.build_options(["affine"])
    memory.check_memory(grid, grid, ["affine"], options, torch.device("cpu"))


def test_memory_estimate_scales_with_voxels_and_stages():
    from miregister.grid import Grid
    from miregister.registration.options import build_options

    cpu = torch.device("cpu")
    small, large = Grid((98, 116, 94), (2.0,) * 3), Grid((196, 232, 188), (1.0,) * 3)
    affine, bspline = build_options(["affine"]), build_options(["bspline"])
    est = {(g, s): memory.estimate_peak_bytes(g, g, [s], o, cpu).host
           for g in (small, large) for s, o in (("affine", affine), ("bspline", bspline))}
    # per-voxel slope of the model = the module's constants (8x the voxels, same fixed overhead)
    slope = (est[large, "affine"] - est[small, "affine"]) / (large.numel - small.numel)
    assert slope == pytest.approx(memory.LINEAR_FIXED_BYTES + memory.MOVING_BYTES)
    assert est[large, "bspline"] > est[large, "affine"]  # a deformable run holds more
    cuda = memory.estimate_peak_bytes(large, large, ["affine"], affine, torch.device("cuda"))
    assert cuda.host == memory.FOREGROUND_BYTES * large.numel and cuda.device == est[large, "affine"]


def test_foreground_distance_in_slabs_equals_the_whole_image_transform(monkeypatch):
    rng = np.random.default_rng(3)
    for shape, spacing in (((40, 30, 20), (0.7, 1.3, 2.0)), ((70, 90), (1.0, 2.0))):
        inside = rng.random(shape) < 0.002
        reference = ndimage.distance_transform_edt(~inside, sampling=spacing) <= 10.0
        for slab in (300, 5000):
            monkeypatch.setattr(foreground, "SLAB_VOXELS", slab)
            np.testing.assert_array_equal(foreground._within(inside, np.asarray(spacing), 10.0), reference)


def test_memory_check_of_a_batch_counts_every_pair(tmp_path, monkeypatch):
    from miregister.grid import Grid
    from miregister.registration.batch import Batcher, _using
    from miregister.registration.options import build_options

    grid = Grid((98, 116, 94), (2.0, 2.0, 2.0))
    options = build_options(["affine"])
    one = memory.estimate_peak_bytes(grid, grid, ["affine"], options, torch.device("cpu")).host
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal:       16000000 kB\nMemAvailable:       {int(2.5 * one / 1024)} kB\n")
    monkeypatch.setattr(memory, "MEMINFO", meminfo)
    monkeypatch.setattr(memory, "_cgroup_free", lambda: None)
    memory.check_memory(grid, grid, ["affine"], options, torch.device("cpu"))  # one pair fits
    with _using(Batcher(pairs=2)):
        assert memory.check_memory(grid, grid, ["affine"], options, torch.device("cpu")).host == pytest.approx(2 * one)
    with _using(Batcher(pairs=3)), pytest.raises(RegistrationError, match="3 pairs of a batch at once"):
        memory.check_memory(grid, grid, ["affine"], options, torch.device("cpu"))
