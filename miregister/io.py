"""Reading, writing and validating images (SimpleITK underneath, geometry kept exactly).

Supported on read: NIfTI (``.nii``, ``.nii.gz``), MetaImage (``.mha``, ``.mhd``), NRRD
(``.nrrd``, ``.nhdr``), a folder holding a DICOM series, and 2D PNG/JPEG/TIFF/BMP (colour
components become channels, or grey luminance on request); any other file SimpleITK can read
is accepted too. Images come back as :class:`~miregister.image.Image` with size, spacing (mm),
origin (mm) and direction in ITK/LPS conventions, exactly as SimpleITK reports them.

Writing picks the format from the extension, creates missing parent folders and is atomic
(:func:`miregister.outputs.atomic_write`): the file is written in a staging folder beside the
target and moved into place with ``os.replace``, so a failure never leaves a half-written output.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
import zlib
from pathlib import Path
from typing import Any, Union

import numpy as np
import SimpleITK as sitk
import torch
from torch import Tensor

from .errors import InputError, UsageError
from .filecheck import check_image_file, describe_format, nifti_version
from .image import Image
from .outputs import atomic_write

__all__ = ["read_image", "write_image", "write_sitk_image", "as_image", "check_image", "WRITE_EXTENSIONS"]

PathLike = Union[str, os.PathLike]

#: Extensions ``write_image`` accepts, and whether the format holds only 2D images.
WRITE_EXTENSIONS: dict[str, bool] = {
    ".nii": False,
    ".nii.gz": False,
    ".mha": False,
    ".mhd": False,
    ".nrrd": False,
    ".nhdr": False,
    ".tif": False,
    ".tiff": False,
    ".png": True,
    ".jpg": True,
    ".jpeg": True,
    ".bmp": True,
}

# ITU-R BT.709 luma weights (as skimage.color.rgb2gray) for RGB -> grey.
_LUMA = (0.2125, 0.7154, 0.0721)


def _extension(path: PathLike) -> str:
    """Lower-case extension, with ``.nii.gz`` kept whole."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


# ---------------------------------------------------------------------------------- reading
def read_image(
    path: PathLike,
    dtype: torch.dtype = torch.float32,
    grayscale: bool = False,
    series_id: str | None = None,
) -> Image:
    """Read a 2D or 3D image file, or a DICOM series folder, into an :class:`Image`.

    Parameters
    ----------
    path : str or PathLike
        An image file, or a folder holding a DICOM series.
    dtype : torch.dtype, optional
        Dtype of the returned voxels (default float32); integer files are cast.
    grayscale : bool, optional
        Convert a colour image (RGB or RGBA; alpha is dropped) to one channel of luminance
        ``0.2125 R + 0.7154 G + 0.0721 B`` (ITU-R BT.709, as ``skimage.color.rgb2gray``);
        grey + alpha keeps the grey. By default each component becomes a channel.
    series_id : str, optional
        For a DICOM folder, the Series Instance UID to read; the first series found otherwise.

    Returns
    -------
    Image
        Data ``(C, [Z,] Y, X)`` with the file's size, spacing (mm), origin (mm) and direction.
        A 4D file whose 4th axis has length 1 is read as 3D.

    Raises
    ------
    InputError
        (a ``ValueError``) naming the file and the problem: the file does not exist or is
        empty; its bytes contradict its header (a NIfTI, MetaImage or NRRD file cut short, a
        corrupt ``.gz``); a NIfTI or MetaImage voxel size that is 0, negative or not finite;
        NaN/infinite voxels in a NIfTI file (SimpleITK would read them as 0; see
        :func:`miregister.filecheck.check_image_file`); a file SimpleITK cannot read (what
        the file is and what was expected is said, SimpleITK's words are in the chained
        exception); a folder with no DICOM series or not ``series_id``; an image that is not 2D
        or 3D.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"file not found: '{path}'")
    if path.is_dir():
        image = _read_dicom_series(path, series_id)
    else:
        if path.stat().st_size == 0:
            raise InputError(f"cannot read '{path}': the file is empty (0 bytes)")
        try:
            check_image_file(path)
        except OSError as error:  # e.g. permission denied
            raise InputError(f"cannot read '{path}': {error.strerror or error}") from error
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as error:
            raise InputError(_unreadable(path, error)) from error
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        # e.g. NIfTI volumes stored with a singleton time axis
        image = sitk.Extract(image, list(image.GetSize()[:3]) + [0], [0, 0, 0, 0])
    if image.GetDimension() not in (2, 3):
        raise InputError(
            f"image '{path}' is {image.GetDimension()}D (size {image.GetSize()}): "
            "only 2D and 3D images are supported"
        )
    out = Image.from_sitk(image, dtype=torch.float64 if grayscale else dtype)
    if grayscale and out.channels in (3, 4):
        weights = torch.tensor(_LUMA, dtype=torch.float64).view(3, *([1] * out.ndim))
        out = out.with_data((out.data[:3] * weights).sum(dim=0, keepdim=True))
    elif grayscale and out.channels == 2:  # grey + alpha
        out = out.with_data(out.data[:1])
    return out.to(dtype) if out.dtype != dtype else out


def _read_dicom_series(folder: Path, series_id: str | None) -> sitk.Image:
    """Read one DICOM series of ``folder`` (the first found, or ``series_id``)."""
    ids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    if not ids:
        raise InputError(f"cannot read '{folder}': the folder holds no DICOM series")
    if series_id is None:
        series_id = ids[0]
    elif series_id not in ids:
        raise InputError(f"DICOM folder '{folder}' has no series '{series_id}'; it has {ids}")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_id)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise InputError(
            f"cannot read DICOM series '{series_id}' in '{folder}': a file of the series is damaged or not "
            f"DICOM ({_sitk_reason(error)})"
        ) from error


def _sitk_reason(error: Exception) -> str:
    """The useful last line of a SimpleITK exception message, without ITK's class/address prefix."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return re.sub(r"^(ITK ERROR|sitk::ERROR):\s*(\w+\(0x[0-9a-fA-F]+\):\s*)?", "", lines[-1])


def _unreadable(path: Path, error: Exception) -> str:
    """What ``path`` is and what was expected, for a file SimpleITK failed to read (its own
    words, file-and-line fragments such as "1 1" or "set the suffix to an unsupported type.",
    stay in the chained exception)."""
    kind = describe_format(path)
    text = str(error)
    if kind == "NIfTI" and nifti_version(path) == 2:
        return f"cannot read '{path}': it is a NIfTI-2 file, which this SimpleITK cannot read; save it as NIfTI-1"
    if "Unable to determine ImageIO reader" in text or "Could not create IO object" in text:
        if _extension(path) in _READABLE:
            return (
                f"cannot read '{path}': it is not a valid {kind} file (its first bytes are not a {kind} header); "
                "the file is damaged or has the wrong extension"
            )
        return (
            f"cannot read '{path}': no image reader accepts this {kind} file; expected NIfTI (.nii, .nii.gz), "
            "MetaImage (.mha, .mhd), NRRD (.nrrd, .nhdr), PNG/JPEG/TIFF/BMP or a DICOM folder"
        )
    if "not recognized as a NIFTI file" in text or "dimensions, and is not supported" in text:
        return f"cannot read '{path}': it is not a valid NIfTI file (its header is damaged)"
    return (
        f"cannot read '{path}': it is not a valid {kind} image (the file is damaged, truncated or has the wrong "
        "extension)"
    )


#: Extensions of the formats read_image names in its docstring.
_READABLE = {".nii", ".nii.gz", ".hdr", ".img", ".mha", ".mhd", ".nrrd", ".nhdr", ".png", ".jpg", ".jpeg",
             ".tif", ".tiff", ".bmp", ".dcm"}


# ---------------------------------------------------------------------------------- writing
def write_image(image: Image, path: PathLike, dtype: Any = None) -> Path:
    """Write an :class:`Image` to a file, format chosen by the extension, atomically.

    Parameters
    ----------
    image : Image
        2D or 3D, one channel (scalar pixels) or several (vector pixels).
    path : str or PathLike
        Target file; one of the extensions in :data:`WRITE_EXTENSIONS`. Parent folders are
        created. PNG/JPEG/BMP hold 2D images only and no geometry (spacing, origin, direction
        are lost); JPEG is lossy.
    dtype : torch.dtype, numpy dtype, str or SimpleITK pixel ID, optional
        Pixel type written, e.g. ``torch.uint8``, ``"int16"`` or ``sitk.sitkUInt16`` for label
        maps (a vector pixel ID means its component type). Casting to an
        integer type rounds to the nearest integer and clips to the type's range. By default
        the voxels keep their dtype (float16/bfloat16 are written as float32, bool as uint8).

    Returns
    -------
    Path
        The path written.

    Raises
    ------
    UsageError
        (a ``ValueError``) before anything is written, for an unknown extension or a 3D image in a 2D-only
        format; after a failed write (e.g. float pixels to PNG), with SimpleITK's reason. No
        partial file is left behind in either case.
    """
    path = Path(path)
    ext = _extension(path)
    if ext not in WRITE_EXTENSIONS:
        raise UsageError(
            f"cannot write '{path}': unknown extension '{ext}'; use one of {sorted(WRITE_EXTENSIONS)}"
        )
    if WRITE_EXTENSIONS[ext] and image.ndim != 2:
        raise UsageError(f"cannot write '{path}': {ext} holds 2D images only, this image is {image.ndim}D")
    out = _to_sitk(image, dtype)

    def write(staged: Path) -> None:
        try:
            write_sitk_image(out, staged)
        except RuntimeError as error:
            raise UsageError(f"cannot write '{path}': {_sitk_reason(error)}") from error

    # Under the final name in a private folder beside the target, so that formats with a
    # separate data file (.mhd + .raw, .nhdr + .raw) reference the right name, then moved.
    atomic_write(path, write)
    return path


#: Bytes of an uncompressed NIfTI file read and compressed at a time by :func:`write_sitk_image`.
_GZIP_CHUNK = 1 << 22


def write_sitk_image(image: sitk.Image, path: PathLike) -> None:
    """Write a SimpleITK image to ``path`` as it is (no staging: callers wrap it in
    :func:`~miregister.outputs.atomic_write`); the format follows the extension.

    ``.nii.gz`` is written by ITK as an uncompressed NIfTI file beside ``path`` and then
    gzipped here, with zlib's run-length strategy (``Z_RLE``): a standard gzip file that every
    NIfTI reader takes, several times faster than ITK's own deflate (which ignores a
    compression level), about as small on images and displacement fields and somewhat larger on
    masks and label maps (benchmarks/RESULTS.md, speed notes). zlib runs without the GIL, so
    the files of a run compress on several threads.

    Raises
    ------
    RuntimeError
        SimpleITK's, when it cannot write the image (e.g. float pixels to PNG).
    OSError
        When the file cannot be written.
    """
    path = Path(path)
    if _extension(path) != ".nii.gz":
        sitk.WriteImage(image, str(path))
        return
    handle, plain = tempfile.mkstemp(prefix=".", suffix=".nii", dir=path.parent)
    os.close(handle)
    try:
        sitk.WriteImage(image, plain)
        compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 16 + zlib.MAX_WBITS, 8, zlib.Z_RLE)
        with open(plain, "rb") as source, open(path, "wb") as target:
            while chunk := source.read(_GZIP_CHUNK):
                target.write(compressor.compress(chunk))
            target.write(compressor.flush())
    finally:
        with contextlib.suppress(OSError):
            os.unlink(plain)


# SimpleITK scalar and vector pixel IDs -> numpy (component) dtype.
_SITK_PIXEL_DTYPES = {
    getattr(sitk, f"sitk{prefix}{name}"): np.dtype(name.lower())
    for name in ("UInt8", "Int8", "UInt16", "Int16", "UInt32", "Int32", "UInt64", "Int64", "Float32", "Float64")
    for prefix in ("", "Vector")
}


def _numpy_dtype(dtype: Any) -> np.dtype:
    """numpy dtype of a torch dtype, numpy dtype / name, or SimpleITK pixel ID (e.g. sitk.sitkUInt8)."""
    if isinstance(dtype, torch.dtype):
        return torch.empty((), dtype=dtype).numpy().dtype
    if isinstance(dtype, (int, np.integer)) and not isinstance(dtype, bool):
        if int(dtype) not in _SITK_PIXEL_DTYPES:
            raise UsageError(f"unsupported SimpleITK pixel type {sitk.GetPixelIDValueAsString(int(dtype))!r}")
        return np.dtype(_SITK_PIXEL_DTYPES[int(dtype)])
    try:
        return np.dtype(dtype)
    except TypeError as error:
        raise UsageError(f"unknown pixel dtype {dtype!r}") from error


def _to_sitk(image: Image, dtype: Any = None) -> sitk.Image:
    """SimpleITK copy of ``image`` with pixels cast to ``dtype`` (rounded and clipped for ints)."""
    if dtype is None:
        return image.to_sitk()
    target = _numpy_dtype(dtype)
    if target.kind not in "biuf":
        raise UsageError(f"cannot write pixels of dtype {target}; use an integer or float type")
    array = image.data.detach().cpu().to(torch.float64).numpy()
    if np.issubdtype(target, np.integer):
        info = np.iinfo(target)
        array = np.clip(np.rint(array), info.min, info.max)
    elif target == np.bool_:
        target = np.dtype(np.uint8)
        array = array != 0
    return image.with_data(torch.from_numpy(np.ascontiguousarray(array.astype(target)))).to_sitk()


# ---------------------------------------------------------------------------------- coercion
def as_image(obj: Any, dtype: torch.dtype | None = None) -> Image:
    """Turn any supported image-like input into an :class:`Image`.

    Parameters
    ----------
    obj : str, PathLike, SimpleITK.Image, Image, ndarray or Tensor
        A file or DICOM folder (read with :func:`read_image`), a SimpleITK image, an Image
        (returned as is), or a 2D/3D array in ``([Z,] Y, X)`` order given identity geometry
        (1 mm spacing, zero origin, identity direction).
    dtype : torch.dtype, optional
        Voxel dtype wanted. By default float32 for new images; Images keep theirs.

    Raises
    ------
    InputError
        (a ``ValueError``) for any other type (the type is named), an array or SimpleITK image
        that is not 2D or 3D, and every problem :func:`read_image` reports for a file.
    """
    if isinstance(obj, Image):
        return obj if dtype is None or obj.dtype == dtype else obj.to(dtype)
    dtype = torch.float32 if dtype is None else dtype
    if isinstance(obj, (str, os.PathLike)):
        return read_image(obj, dtype=dtype)
    if isinstance(obj, sitk.Image):
        if obj.GetDimension() not in (2, 3):
            raise InputError(f"only 2D and 3D images are supported, got a {obj.GetDimension()}D SimpleITK image")
        return Image.from_sitk(obj, dtype=dtype)
    if isinstance(obj, (np.ndarray, Tensor)):
        array = obj.detach().cpu().numpy() if isinstance(obj, Tensor) else obj
        if array.ndim not in (2, 3):
            raise InputError(f"an array image must be 2D or 3D ([Z,] Y, X), got shape {array.shape}")
        if not np.issubdtype(array.dtype, np.number) and array.dtype != np.bool_:
            raise InputError(f"an array image must hold numbers, got dtype {array.dtype}")
        return Image.from_numpy(array, dtype=dtype)
    raise InputError(
        f"cannot make an image from a {type(obj).__module__}.{type(obj).__qualname__}; expected a path, "
        "a SimpleITK.Image, a miregister Image or a numpy array"
    )


# ---------------------------------------------------------------------------------- checks
def check_image(image: Image, name: str = "image", mask: Tensor | None = None) -> None:
    """Refuse an image that registration cannot use.

    Parameters
    ----------
    image : Image
        The image to check.
    name : str
        How to call it in messages, e.g. ``"fixed image"``.
    mask : Tensor, optional
        Boolean ``(*shape)`` or ``(C, *shape)``: only these voxels need to vary.

    Raises
    ------
    InputError
        (a ``ValueError``) if any voxel is NaN or infinite, or all (masked) voxels hold the same value (mutual
        information is then zero whatever the transform).
    """
    data = image.data.detach()
    if not data.is_floating_point():
        data = data.to(torch.float64)
    finite = torch.isfinite(data)
    if not bool(finite.all()):
        n_nan = int(torch.isnan(data).sum())
        n_inf = int((~finite).sum()) - n_nan
        raise InputError(
            f"{name} has {n_nan} NaN and {n_inf} infinite voxels out of {data.numel()}; "
            "replace them (e.g. with 0) first"
        )
    values = data
    if mask is not None:
        mask = mask.to(device=data.device, dtype=torch.bool)
        values = data[mask.expand_as(data)] if mask.dim() == data.dim() - 1 else data[mask]
        if values.numel() == 0:
            raise InputError(f"{name}: the mask selects no voxels")
    low, high = float(values.min()), float(values.max())
    if low == high:
        where = " inside the mask" if mask is not None else ""
        raise InputError(
            f"{name} is constant{where} (all voxels = {low}); mutual information needs intensity "
            "variation"
        )
