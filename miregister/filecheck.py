"""Checks of an image file's own bytes, before SimpleITK reads (and sanitises) it.

SimpleITK reads a NIfTI file cut short as zero-filled, turns NaN/inf voxels into 0, reads a
pixdim of 0 or NaN as 1 mm and a negative one as a flipped axis, all without a word. So for
NIfTI-1/NIfTI-2 the header is parsed here (struct/numpy; nibabel is not a dependency), the
data bytes the header promises (``vox_offset + prod(dim) * bytes per voxel``) are compared
with the file (or with what decompresses from a ``.gz``, streamed, never held whole), the
spatial pixdims are checked, and float voxels are scanned for NaN/inf on the raw data. For
MetaImage and NRRD, whose readers keep NaN and fail on short data with cryptic words, the
header's promised size is compared with the file so that the message can say "truncated".
"""
from __future__ import annotations

import gzip
import math
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

__all__ = ["check_image_file", "describe_format", "nifti_version"]

#: Bytes read at a time when streaming voxel data.
_CHUNK = 1 << 23

# NIfTI datatype code -> (numpy dtype of one stored component, components per voxel).
_NIFTI_TYPES: dict[int, tuple[str, int]] = {
    2: ("u1", 1), 4: ("i2", 1), 8: ("i4", 1), 16: ("f4", 1), 32: ("f4", 2), 64: ("f8", 1),
    128: ("u1", 3), 256: ("i1", 1), 512: ("u2", 1), 768: ("u4", 1), 1024: ("i8", 1), 1280: ("u8", 1),
    1536: ("f16", 1), 1792: ("f8", 2), 2048: ("f16", 2), 2304: ("u1", 4),
}

_FORMATS = {
    ".nii": "NIfTI", ".nii.gz": "NIfTI", ".hdr": "NIfTI/Analyze header", ".img": "NIfTI/Analyze",
    ".mha": "MetaImage", ".mhd": "MetaImage header", ".nrrd": "NRRD", ".nhdr": "NRRD header",
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP",
    ".dcm": "DICOM", ".vtk": "VTK", ".gipl": "GIPL", ".mnc": "MINC",
}


def _extension(path: Path) -> str:
    name = path.name.lower()
    for double in (".nii.gz", ".img.gz"):
        if name.endswith(double):
            return double
    return path.suffix.lower()


def describe_format(path: str | Path) -> str:
    """A word for the kind of file ``path`` names, from its extension (e.g. ``"NIfTI"``)."""
    return _FORMATS.get(_extension(Path(path)), f"'{_extension(Path(path)) or 'no extension'}'")


def check_image_file(path: str | Path) -> None:
    """Refuse an image file whose bytes contradict its header, before SimpleITK reads it.

    Parameters
    ----------
    path : str or Path
        An existing image file. NIfTI-1/NIfTI-2 (``.nii``, ``.nii.gz``, ``.hdr``/``.img``),
        MetaImage (``.mha``, ``.mhd``) and NRRD (``.nrrd``, ``.nhdr``) are checked; other
        formats, and files whose header these checks do not recognise, are left to SimpleITK.

    Raises
    ------
    InputError
        Naming the file and the problem: the data are shorter than the header promises
        (a truncated or partly copied file), a ``.gz`` stream that ends early or is corrupt,
        a dimension < 1, a spatial pixdim that is 0, negative or not finite (SimpleITK would
        make it 1 mm or flip the axis), a NaN scl_inter, or NaN/infinite voxels.
    """
    path = Path(path)
    ext = _extension(path)
    if ext in (".nii", ".nii.gz", ".hdr"):
        _check_nifti(path)
    elif ext in (".mha", ".mhd"):
        _check_metaimage(path)
    elif ext in (".nrrd", ".nhdr"):
        _check_nrrd(path)


# ------------------------------------------------------------------------------------ NIfTI
def nifti_version(path: str | Path) -> int | None:
    """1 or 2 for a NIfTI-1 / NIfTI-2 header (plain or gzip), None otherwise."""
    try:
        with _open_maybe_gzip(Path(path)) as stream:
            raw = stream.read(12)
    except (OSError, EOFError, zlib.error):
        return None
    for endian in "<>":
        if len(raw) >= 4 and struct.unpack(endian + "i", raw[:4])[0] == 540 and raw[4:7] in (b"n+2", b"ni2"):
            return 2
        if len(raw) >= 4 and struct.unpack(endian + "i", raw[:4])[0] == 348:
            return 1
    return None


@dataclass
class _NiftiHeader:
    version: int
    endian: str  # "<" or ">"
    dims: tuple[int, ...]  # dim[1..dim[0]]
    datatype: int
    pixdim: tuple[float, ...]  # pixdim[1..dim[0]]
    vox_offset: int
    scl_slope: float
    scl_inter: float
    single_file: bool


def _open_maybe_gzip(path: Path):
    """A binary stream of ``path``, decompressed when it starts with the gzip magic (as znzlib does)."""
    with open(path, "rb") as probe:
        gz = probe.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def _read_exactly(stream, count: int, path: Path, what: str) -> bytes:
    try:
        data = stream.read(count)
    except (EOFError, OSError, zlib.error) as error:  # gzip: truncated or corrupt stream
        raise InputError(f"cannot read '{path}' {what}: its gzip data {_gzip_problem(error)}") from error
    return data


def _gzip_problem(error: Exception) -> str:
    if isinstance(error, EOFError):
        return "end early: the file was cut short (copy or download it again)"
    return f"are corrupt ({error})"


def _parse_nifti_header(raw: bytes, path: Path) -> _NiftiHeader | None:
    """The header fields the checks need, or None when ``raw`` is no NIfTI-1/2 header."""
    for endian in "<>":
        for size in (348, 540):
            if len(raw) >= 4 and struct.unpack(endian + "i", raw[:4])[0] == size and len(raw) < size:
                raise InputError(
                    f"'{path}' is truncated: it holds {len(raw)} bytes of a {size}-byte NIfTI header"
                    "; the file was cut short (copy or download it again)"
                )
        if len(raw) >= 4 and struct.unpack(endian + "i", raw[:4])[0] == 348:
            magic = raw[344:348]
            if magic not in (b"n+1\0", b"ni1\0"):
                return None  # Analyze 7.5: left to SimpleITK
            dim = struct.unpack(endian + "8h", raw[40:56])
            datatype = struct.unpack(endian + "h", raw[70:72])[0]
            pixdim = struct.unpack(endian + "8f", raw[76:108])
            vox_offset = struct.unpack(endian + "f", raw[108:112])[0]
            slope, inter = struct.unpack(endian + "2f", raw[112:120])
            return _header(1, endian, dim, datatype, pixdim, vox_offset, slope, inter, magic == b"n+1\0", path)
        if len(raw) >= 4 and struct.unpack(endian + "i", raw[:4])[0] == 540:
            magic = raw[4:12]
            if magic[:3] not in (b"n+2", b"ni2"):
                return None
            datatype = struct.unpack(endian + "h", raw[12:14])[0]
            dim = struct.unpack(endian + "8q", raw[16:80])
            pixdim = struct.unpack(endian + "8d", raw[104:168])
            vox_offset = struct.unpack(endian + "q", raw[168:176])[0]
            slope, inter = struct.unpack(endian + "2d", raw[176:192])
            return _header(2, endian, dim, datatype, pixdim, vox_offset, slope, inter, magic[:3] == b"n+2", path)
    return None


def _header(version, endian, dim, datatype, pixdim, vox_offset, slope, inter, single_file, path) -> _NiftiHeader:
    ndim = int(dim[0])
    if not 1 <= ndim <= 7:
        raise InputError(f"'{path}' is not a valid NIfTI-{version} file: its header gives {ndim} dimensions (dim[0] must be 1-7)")
    dims = tuple(int(d) for d in dim[1 : ndim + 1])
    if any(d < 1 for d in dims):
        raise InputError(
            f"'{path}' is not a valid NIfTI-{version} file: its header gives the image size {dims} "
            "(every dimension must be at least 1)"
        )
    if not math.isfinite(vox_offset) or vox_offset < 0:
        raise InputError(f"'{path}' is not a valid NIfTI-{version} file: its header gives the data offset (vox_offset) {vox_offset}")
    return _NiftiHeader(
        version, endian, dims, int(datatype), tuple(float(p) for p in pixdim[1 : ndim + 1]),
        int(vox_offset), float(slope), float(inter), single_file,
    )


def _check_nifti(path: Path) -> None:
    with _open_maybe_gzip(path) as stream:
        raw = _read_exactly(stream, 540, path, "(its header)")
    header = _parse_nifti_header(raw, path)
    if header is None:
        return  # not NIfTI-1/2 (Analyze, or not NIfTI at all): SimpleITK decides
    _check_pixdim(header, path)
    if header.datatype not in _NIFTI_TYPES:
        return  # SimpleITK names an unknown datatype itself
    component, count = _NIFTI_TYPES[header.datatype]
    itemsize = np.dtype(component).itemsize
    n_voxels = math.prod(header.dims)
    expected = n_voxels * itemsize * count
    data_path, offset = path, header.vox_offset
    if not header.single_file:  # a .hdr/.img pair: the voxels are in the .img file
        offset = header.vox_offset
        data_path = next((p for p in (path.with_suffix(".img"), path.with_suffix(".img.gz")) if p.exists()), None)
        if data_path is None:
            raise InputError(f"'{path}' is a NIfTI header whose data file ({path.with_suffix('.img').name}) is missing")
    elif offset < (352 if header.version == 1 else 544):
        raise InputError(
            f"'{path}' is not a valid NIfTI-{header.version} file: its data offset (vox_offset {offset}) "
            "lies inside the header"
        )
    scaled = header.scl_slope != 0 and math.isfinite(header.scl_slope)  # else no scaling (as SimpleITK, nibabel)
    if scaled and not math.isfinite(header.scl_inter):
        raise InputError(f"'{data_path}' has a scaling intercept (scl_inter) of {header.scl_inter}: the voxel values are undefined")
    floating = np.dtype(component).kind == "f" and itemsize <= 8
    scan = np.dtype(component).newbyteorder(header.endian) if floating else None
    got, n_nan, n_inf = _scan_data(data_path, offset, expected, scan)
    if got < expected:
        have = got
        shape = "x".join(str(d) for d in header.dims)
        raise InputError(
            f"'{data_path}' is truncated: its NIfTI header promises {shape} voxels of "
            f"{np.dtype(component).name}{'' if count == 1 else f' x{count}'} ({expected} bytes after a "
            f"{offset}-byte header), but only {have} bytes ({100 * have / expected:.1f}%) are there"
            f"{' once decompressed' if _is_gzip(data_path) else ''}; the file was cut short (copy or download it again)"
        )
    if n_nan or n_inf:
        raise InputError(
            f"'{data_path}' has {n_nan} NaN and {n_inf} infinite voxels out of {n_voxels * count} "
            "(SimpleITK would read them as 0); replace them (e.g. with 0) in the file first"
        )


def _scan_data(path: Path, offset: int, expected: int, dtype: np.dtype | None) -> tuple[int, int, int]:
    """Voxel bytes present after ``offset`` (at most ``expected``) and, for a float ``dtype``, the
    NaN and infinite values among them: streamed in chunks, so never a second copy of the image.
    An uncompressed file whose voxels need no scan is measured by its size alone."""
    if dtype is None and not _is_gzip(path):
        return min(expected, max(0, path.stat().st_size - offset)), 0, 0
    got = n_nan = n_inf = 0
    itemsize = 1 if dtype is None else dtype.itemsize
    with _open_maybe_gzip(path) as stream:
        skipped = 0
        while skipped < offset:  # in chunks: a corrupt vox_offset may be huge
            step = len(_read_exactly(stream, min(_CHUNK, offset - skipped), path, "(its header)"))
            skipped += step
            if step == 0:
                return 0, 0, 0
        while got < expected:
            want = min(_CHUNK - _CHUNK % itemsize, expected - got)
            chunk = _read_exactly(stream, want, path, f"(after {got} of its {expected} voxel bytes)")
            if dtype is not None and len(chunk) >= itemsize:
                values = np.frombuffer(chunk, dtype=dtype, count=len(chunk) // itemsize)
                if not np.isfinite(values).all():
                    nan = int(np.isnan(values).sum())
                    n_nan += nan
                    n_inf += int((~np.isfinite(values)).sum()) - nan
            got += len(chunk)
            if len(chunk) < want:
                break
    return got, n_nan, n_inf


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as probe:
        return probe.read(2) == b"\x1f\x8b"


def _check_pixdim(header: _NiftiHeader, path: Path) -> None:
    """Spatial voxel sizes must be finite and > 0 (on axes longer than one voxel, where they matter)."""
    axes = "xyz"
    for k, (size, spacing) in enumerate(zip(header.dims[:3], header.pixdim[:3])):
        if size > 1 and not (math.isfinite(spacing) and spacing > 0):
            consequence = "would flip the axis" if math.isfinite(spacing) and spacing < 0 else "would read it as 1 mm"
            raise InputError(
                f"'{path}' has a voxel size (pixdim[{k + 1}]) of {spacing} along {axes[k]}: voxel sizes must be "
                f"finite and > 0 mm (SimpleITK {consequence}); fix the file's header"
            )


# ------------------------------------------------------------------------- MetaImage / NRRD
_META_TYPES = {
    "MET_UCHAR": 1, "MET_CHAR": 1, "MET_USHORT": 2, "MET_SHORT": 2, "MET_UINT": 4, "MET_INT": 4,
    "MET_ULONG": 8, "MET_LONG": 8, "MET_ULONG_LONG": 8, "MET_LONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8,
}


def _text_header(path: Path, stop) -> tuple[list[str], int] | None:
    """Header lines of a text-header format up to the line where ``stop(line)`` is true, and the
    byte offset just after it; None when no such line is found in the first 64 KiB."""
    with open(path, "rb") as stream:
        head = stream.read(1 << 16)
    lines, offset = [], 0
    for raw in head.splitlines(keepends=True):
        offset += len(raw)
        line = raw.decode("latin-1").rstrip("\r\n")
        lines.append(line)
        if stop(line):
            return lines, offset
    return None


def _short_data(path: Path, kind: str, expected: int, have: int, header_bytes: int) -> InputError:
    return InputError(
        f"'{path}' is truncated: its {kind} header promises {expected} bytes of voxel data"
        f"{f' after a {header_bytes}-byte header' if header_bytes else ''}, but only {max(have, 0)} bytes "
        f"({100 * max(have, 0) / max(expected, 1):.1f}%) are there; the file was cut short (copy or download it again)"
    )


def _check_data_size(path: Path, kind: str, datafile: str | None, header_bytes: int, expected: int) -> None:
    """Refuse a text-header image whose voxel data (after the header in ``path``, or in the
    separate ``datafile`` beside it) is missing or shorter than the ``expected`` bytes."""
    if datafile is None:
        have, where = path.stat().st_size - header_bytes, path
    else:
        where = path.parent / datafile
        if not where.exists():
            raise InputError(f"'{path}' is a {kind} header whose data file '{where}' is missing")
        have, header_bytes = where.stat().st_size, 0
    if have < expected:
        raise _short_data(where, kind, expected, have, header_bytes)


def _check_metaimage(path: Path) -> None:
    found = _text_header(path, lambda line: line.replace(" ", "").lower().startswith("elementdatafile="))
    if found is None:
        return
    lines, header_bytes = found
    fields = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip().lower()] = value.strip()
    spacing = fields.get("elementspacing", "").split()
    for k, text in enumerate(spacing[:3]):
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            consequence = "would flip the axis" if math.isfinite(value) and value < 0 else "cannot place the voxels"
            raise InputError(
                f"'{path}' has a voxel size (ElementSpacing) of {text} along {'xyz'[k]}: voxel sizes must be "
                f"finite and > 0 mm (SimpleITK {consequence}); fix the file's header"
            )
    try:
        sizes = [int(v) for v in fields["dimsize"].split()]
        itemsize = _META_TYPES[fields["elementtype"].upper()]
        channels = int(fields.get("elementnumberofchannels", "1"))
    except (KeyError, ValueError):
        return  # SimpleITK says what is missing
    if fields.get("compresseddata", "false").lower() == "true":
        return  # the compressed size is unknown; SimpleITK's failure is translated by the reader
    datafile = fields["elementdatafile"]
    if datafile.upper().startswith("LIST") or "%" in datafile:
        return
    _check_data_size(path, "MetaImage", None if datafile.upper() == "LOCAL" else datafile, header_bytes,
                     math.prod(sizes) * itemsize * channels)


_NRRD_TYPES = {
    "uchar": 1, "unsigned char": 1, "uint8": 1, "uint8_t": 1, "signed char": 1, "int8": 1, "int8_t": 1, "char": 1,
    "short": 2, "short int": 2, "signed short": 2, "signed short int": 2, "int16": 2, "int16_t": 2,
    "ushort": 2, "unsigned short": 2, "unsigned short int": 2, "uint16": 2, "uint16_t": 2,
    "int": 4, "signed int": 4, "int32": 4, "int32_t": 4, "uint": 4, "unsigned int": 4, "uint32": 4, "uint32_t": 4,
    "longlong": 8, "long long": 8, "long long int": 8, "signed long long": 8, "signed long long int": 8,
    "int64": 8, "int64_t": 8, "ulonglong": 8, "unsigned long long": 8, "unsigned long long int": 8,
    "uint64": 8, "uint64_t": 8, "float": 4, "double": 8,
}


def _check_nrrd(path: Path) -> None:
    found = _text_header(path, lambda line: line == "")
    if found is None or not found[0][0].startswith("NRRD"):
        return
    lines, header_bytes = found
    fields = {}
    for line in lines[1:]:
        if line.startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip().lower()] = value.strip().lstrip("=").strip()
    try:
        sizes = [int(v) for v in fields["sizes"].split()]
        itemsize = _NRRD_TYPES[re.sub(r"\s+", " ", fields["type"].lower())]
    except (KeyError, ValueError):
        return
    if fields.get("encoding", "raw").lower() != "raw" or "line skip" in fields or "byte skip" in fields:
        return  # compressed or text data: SimpleITK's failure is translated by the reader
    datafile = fields.get("data file", fields.get("datafile"))
    if datafile is not None and (datafile.upper().startswith("LIST") or " " in datafile):
        return
    _check_data_size(path, "NRRD", datafile, header_bytes, math.prod(sizes) * itemsize)
