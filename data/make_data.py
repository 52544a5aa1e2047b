#!/usr/bin/env python
"""Regenerate the sample images (``miregister/data/``, linked from ``data/``) from the MNI152 template in nilearn.

Run from the repository root::

    python data/make_data.py              # writes into miregister/data/ (data/<file> links there)
    python data/make_data.py --out DIR    # writes into DIR instead

Source: the MNI ICBM152 2009a nonlinear symmetric template (T1 and the grey- and
white-matter probability maps, 1 mm, 197x233x189) as shipped, 8-bit, inside the
nilearn wheel (``nilearn/datasets/data/mni_icbm152_*_tal_nlin_sym_09a_converted.nii.gz``).
Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal
Neurological Institute, McGill University; see data/README.md for the full notice.

Every output is a deterministic function of those three files (the noise of the
T2-like image comes from a fixed seed). Images are read and written through
SimpleITK, so geometry is in millimetres, ITK/LPS. The recipe of each file is in
data/README.md and in the functions below.

Needs numpy, scipy, SimpleITK and (to locate the source files) nilearn; pass
``--source-dir`` to point at a folder holding the three source files instead.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

#: Source files inside ``nilearn/datasets/data`` and their SHA-256 in nilearn 0.14.1.
SOURCES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
SOURCE_SHA256 = {
    "t1": "421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6",
    "gm": "97a5ca69bd24db37a9cb7b32525e1733a209af904129bf1cd36da06d24243bed",
    "wm": "382d92812de4744f9c86c7a0e4f680dc317a0a50e4da1f0153618a6798c7b7db",
}

#: Output file names (stable: code and docs refer to them).
T1 = "mni152_t1_2mm.nii.gz"
T2LIKE = "mni152_t2like_2mm.nii.gz"
LABELS = "mni152_labels_2mm.nii.gz"
BRAINMASK = "mni152_brainmask_2mm.nii.gz"
T1_SLICE = "mni152_t1_slice.nii.gz"
T2LIKE_SLICE = "mni152_t2like_slice.nii.gz"
T2LIKE_MOVED = "mni152_t2like_moved_2mm.nii.gz"
OUTPUTS = (T1, T2LIKE, LABELS, BRAINMASK, T1_SLICE, T2LIKE_SLICE)

# --- recipe constants (documented in data/README.md) ---------------------------
SHRINK = 2  # 1 mm -> 2 mm by averaging 2x2x2 blocks
MASK_THRESHOLD = 0.2  # brain mask: gm + wm > 0.2, closed, holes filled
MASK_CLOSING_ITERATIONS = 2  # 6-connected structuring element, 2 iterations
# T2-like intensity of pure tissue (relative; CSF bright, GM intermediate, WM dark)
T2_CSF, T2_GM, T2_WM = 1.00, 0.55, 0.30
CSF_EDGE_SIGMA = 0.5  # voxels: softening of the mask edge used for the CSF map
# smooth multiplicative bias field exp(poly(x, y, z)), coordinates in units of 100 mm
BIAS_COEFFS = {"x": 0.12, "y": -0.08, "z": 0.10, "xz": 0.06, "yy": -0.05}
NOISE_SIGMA = 0.02  # Rician noise, relative to T2_CSF
NOISE_SEED = 20090  # numpy.random.default_rng seed
T2_FULL_SCALE = 1.3  # relative intensity stored as 255 in the uint8 file


def nilearn_data_dir() -> Path:
    """The folder inside the installed nilearn package that holds the template files."""
    import nilearn

    return Path(nilearn.__file__).resolve().parent / "datasets" / "data"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_sources(source_dir: Path) -> list[str]:
    """Names of the source files whose SHA-256 differs from the recorded one."""
    return [
        SOURCES[k]
        for k in SOURCES
        if sha256(Path(source_dir) / SOURCES[k]) != SOURCE_SHA256[k]
    ]


def block_average(img: sitk.Image, factor: int = SHRINK) -> sitk.Image:
    """Average non-overlapping ``factor``^d blocks (a trailing odd voxel is dropped).

    The output voxel centre is the centre of its block, so the new origin is the
    physical point of continuous index ((factor - 1) / 2, ...) of the input; spacing
    is multiplied by ``factor``, direction is unchanged. Returns float64 data.
    """
    arr = sitk.GetArrayFromImage(img).astype(np.float64)  # (z, y, x)
    n = [s // factor for s in arr.shape]
    arr = arr[tuple(slice(0, k * factor) for k in n)]
    shape = []
    for k in n:
        shape += [k, factor]
    out = arr.reshape(shape).mean(axis=tuple(range(1, 2 * len(n), 2)))
    res = sitk.GetImageFromArray(out)
    res.SetSpacing([s * factor for s in img.GetSpacing()])
    res.SetDirection(img.GetDirection())
    res.SetOrigin(
        img.TransformContinuousIndexToPhysicalPoint([(factor - 1) / 2.0] * img.GetDimension())
    )
    return res


def like(arr: np.ndarray, ref: sitk.Image, pixel_type=None) -> sitk.Image:
    """A SimpleITK image with the data ``arr`` (z, y, x) and the geometry of ``ref``."""
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(ref)
    if pixel_type is not None:
        img = sitk.Cast(img, pixel_type)
    return img


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def bias_field(ref: sitk.Image) -> np.ndarray:
    """exp of a fixed low-order polynomial of the physical (LPS, mm) coordinates."""
    nz, ny, nx = sitk.GetArrayViewFromImage(ref).shape
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    idx = np.stack([i, j, k], axis=-1).reshape(-1, 3).astype(np.float64)
    d = np.array(ref.GetDirection()).reshape(3, 3)
    pts = np.array(ref.GetOrigin()) + (idx * np.array(ref.GetSpacing())) @ d.T
    x, y, z = (pts / 100.0).T
    c = BIAS_COEFFS
    poly = c["x"] * x + c["y"] * y + c["z"] * z + c["xz"] * x * z + c["yy"] * y * y
    return np.exp(poly).reshape(nz, ny, nx)


def make_images(source_dir: Path) -> dict[str, sitk.Image]:
    """All output images, keyed by file name."""
    src = {k: sitk.ReadImage(str(Path(source_dir) / f)) for k, f in SOURCES.items()}
    t1_img = block_average(src["t1"])
    ref = t1_img
    t1 = sitk.GetArrayViewFromImage(t1_img)
    gm = sitk.GetArrayFromImage(block_average(src["gm"])) / 255.0
    wm = sitk.GetArrayFromImage(block_average(src["wm"])) / 255.0

    # brain mask: tissue > threshold, closed, holes (ventricles) filled
    st = ndi.generate_binary_structure(3, 1)
    mask = (gm + wm) > MASK_THRESHOLD
    mask = ndi.binary_closing(mask, structure=st, iterations=MASK_CLOSING_ITERATIONS)
    mask = ndi.binary_fill_holes(mask)

    # CSF: what is inside the (edge-softened) brain mask and neither GM nor WM
    soft_mask = ndi.gaussian_filter(mask.astype(np.float64), CSF_EDGE_SIGMA)
    csf = np.clip(soft_mask - gm - wm, 0.0, 1.0)

    # labels: 0 background, 1 CSF, 2 GM, 3 WM (largest fraction inside the mask)
    labels = (np.argmax(np.stack([csf, gm, wm]), axis=0) + 1).astype(np.uint8)
    labels[~mask] = 0

    # T2-like: partial-volume mix of tissue intensities x bias field + Rician noise
    signal = T2_CSF * csf + T2_GM * gm + T2_WM * wm
    signal = signal * bias_field(ref)
    rng = np.random.default_rng(NOISE_SEED)
    n1 = rng.standard_normal(signal.shape) * NOISE_SIGMA
    n2 = rng.standard_normal(signal.shape) * NOISE_SIGMA
    t2 = np.sqrt((signal + n1) ** 2 + n2**2)
    t2 = to_uint8(t2 * (255.0 / T2_FULL_SCALE))

    out = {
        T1: like(to_uint8(t1), ref),
        T2LIKE: like(t2, ref),
        LABELS: like(labels, ref),
        BRAINMASK: like(mask.astype(np.uint8), ref),
    }
    # 2-D axial slices through the middle (2-D spacing, origin and direction)
    k = ref.GetSize()[2] // 2
    size = list(ref.GetSize()[:2]) + [0]
    out[T1_SLICE] = sitk.Extract(out[T1], size, [0, 0, k])
    out[T2LIKE_SLICE] = sitk.Extract(out[T2LIKE], size, [0, 0, k])
    out[T2LIKE_MOVED] = misaligned(out[T2LIKE])
    return out


#: The known fixed -> moving transform of the quick-start pair (ITK convention, mm, LPS):
#: rotation of MOVED_DEGREES about MOVED_AXIS through the grid centre, then MOVED_SHIFT_MM.
MOVED_DEGREES, MOVED_AXIS, MOVED_SHIFT_MM = 10.0, (0.2, 0.3, 0.93), (8.0, -6.0, 4.0)


def misaligned_transform(ref: sitk.Image) -> sitk.Euler3DTransform:
    """The known rigid fixed->moving transform of ``T2LIKE_MOVED`` (about the grid centre)."""
    center = ref.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in ref.GetSize()])
    versor = sitk.VersorRigid3DTransform()
    versor.SetCenter(center)
    versor.SetRotation(MOVED_AXIS, float(np.deg2rad(MOVED_DEGREES)))
    versor.SetTranslation(MOVED_SHIFT_MM)
    return versor


def misaligned(t2: sitk.Image) -> sitk.Image:
    """The T2-like image moved by :func:`misaligned_transform`: ``moving(T(x)) = t2(x)``."""
    transform = misaligned_transform(t2)
    return sitk.Resample(t2, t2, transform.GetInverse(), sitk.sitkLinear, 0.0, sitk.sitkUInt8)


def write_images(images: dict[str, sitk.Image], out_dir: Path) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, img in images.items():
        sitk.WriteImage(img, str(out_dir / name), True)


def main(argv: list[str] | None = None) -> int:
    # The images are package data (shipped in the wheel); data/<file> are links to them.
    package_data = Path(__file__).resolve().parents[1] / "miregister" / "data"
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=package_data, help="output folder (default: miregister/data/)")
    ap.add_argument(
        "--source-dir",
        type=Path,
        default=None,
        help="folder with the three source files (default: the installed nilearn's)",
    )
    args = ap.parse_args(argv)
    source_dir = args.source_dir or nilearn_data_dir()
    changed = check_sources(source_dir)
    if changed:
        print(
            "warning: source files differ from those recorded (nilearn 0.14.1): "
            + ", ".join(changed)
            + "; the outputs will differ from the shipped ones",
            file=sys.stderr,
        )
    images = make_images(source_dir)
    write_images(images, args.out)
    for name, img in images.items():
        path = Path(args.out) / name
        print(
            f"{name}: size {img.GetSize()} spacing {img.GetSpacing()} "
            f"origin {tuple(round(o, 3) for o in img.GetOrigin())} "
            f"{img.GetPixelIDTypeAsString()}, {path.stat().st_size / 1024:.0f} KiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
