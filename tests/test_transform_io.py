"""Transform files: what SimpleITK reads from ours maps and resamples exactly as our transforms do."""
from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation

from miregister import Grid, Image, InputError
from miregister.transforms import (
    Affine,
    Composite,
    DisplacementField,
    Rigid,
    Similarity,
    SpatialTransform,
    Translation,
    read_transform,
    write_transform,
)
from miregister.warp import resample


def oblique_grid(rng: np.random.Generator, size: tuple[int, ...]) -> Grid:
    """Anisotropic spacing, non-zero origin, non-identity direction."""
    d = len(size)
    direction = Rotation.from_rotvec([0.0, 0.0, 0.35] if d == 2 else rng.normal(size=3) * 0.4).as_matrix()[:d, :d]
    return Grid(size, tuple(rng.uniform(0.6, 1.8, size=d)), tuple(rng.normal(size=d) * 10), tuple(direction.ravel()))


def random_linear(cls, rng: np.random.Generator, grid: Grid, dtype=torch.float64):
    t = cls(grid.ndim, center=grid.center(), dtype=dtype)
    with torch.no_grad():
        for name, p in t.named_parameters():
            noise = torch.tensor(rng.normal(size=p.shape), dtype=dtype)
            p.add_({"translation": 3.0, "rotation": 0.3, "log_scale": 0.05, "matrix": 0.05}[name] * noise)
    return t


class Wavy(SpatialTransform):
    """A smooth non-linear test transform: x + amplitude * sin(x / wavelength) (mm)."""

    def __init__(self, ndim: int, amplitude: float = 2.0) -> None:
        super().__init__()
        self.ndim, self.batch_size, self.amplitude = ndim, 1, amplitude

    def forward(self, points):
        return points + self.amplitude * torch.sin(points.flip(-1) / 6.0)


def sitk_points(tx: sitk.Transform, points: np.ndarray) -> np.ndarray:
    return np.array([tx.TransformPoint(tuple(float(v) for v in x)) for x in points])


def ours_points(t: SpatialTransform, points: np.ndarray) -> np.ndarray:
    return t(torch.tensor(points)[None]).detach().double().numpy()[0]


def smooth_image(rng: np.random.Generator, grid: Grid) -> Image:
    return Image(torch.tensor(ndimage.gaussian_filter(rng.normal(size=grid.shape), 1.2) * 10)[None], grid)


def sitk_resample(moving: Image, reference: Grid, tx: sitk.Transform) -> np.ndarray:
    ref = Image(torch.zeros(1, *reference.shape), reference).to_sitk()
    return sitk.GetArrayFromImage(sitk.Resample(moving.to_sitk(), ref, tx, sitk.sitkLinear, 0.0))


# ---------------------------------------------------------------------- linear files
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("ext", [".tfm", ".txt", ".mat", ".h5"])
def test_linear_file_parity_with_sitk(tmp_path, ndim, ext):
    rng = np.random.default_rng(ndim)
    grid = oblique_grid(rng, (15, 13) if ndim == 2 else (11, 10, 9))
    transform = random_linear(Affine, rng, grid)
    path = write_transform(transform, tmp_path / f"affine{ext}")

    tx = sitk.ReadTransform(str(path))
    points = grid.index_to_physical_np(rng.uniform(-2, 12, size=(30, ndim)))
    expected = ours_points(transform, points)
    np.testing.assert_allclose(sitk_points(tx, points), expected, atol=1e-9)
    back = read_transform(path, ndim=ndim, dtype=torch.float64)
    assert isinstance(back, Affine) and back.batch_size == 1
    np.testing.assert_allclose(ours_points(back, points), expected, atol=1e-9)
    np.testing.assert_allclose(back.center.numpy()[0], grid.center(), atol=1e-9)
    # (b) resampling through the file equals our resampling (different fixed grid)
    moving = smooth_image(rng, grid)
    fixed = Grid(grid.size, tuple(np.asarray(grid.spacing) * 0.9), grid.origin, grid.direction)
    ours = resample(moving, transform, fixed).data[0].numpy()
    np.testing.assert_allclose(ours, sitk_resample(moving, fixed, tx), atol=1e-6)
    assert sorted(os.listdir(tmp_path)) == [path.name]  # the temporary file was moved into place


def test_tfm_text_is_what_sitk_writes(tmp_path):
    t = Rigid(3, center=[1.5, -2.0, 3.25], dtype=torch.float64)
    with torch.no_grad():
        t.rotation.copy_(torch.tensor([[0.1, 0.2, -0.3]]))
        t.translation.copy_(torch.tensor([[4.0, 5.0, 6.0]]))
    text = write_transform(t, tmp_path / "rigid.tfm").read_text()
    assert "Transform: AffineTransform_double_3_3" in text
    params = [float(v) for v in text.split("Parameters: ")[1].split("\n")[0].split()]
    fixed = [float(v) for v in text.split("FixedParameters: ")[1].split()]
    matrix = Rotation.from_rotvec([0.1, 0.2, -0.3]).as_matrix()
    np.testing.assert_allclose(params[:9], matrix.ravel(), atol=1e-12)  # row-major A
    np.testing.assert_allclose(params[9:], [4.0, 5.0, 6.0], atol=1e-12)  # t (relative to the centre)
    np.testing.assert_allclose(fixed, [1.5, -2.0, 3.25])


@pytest.mark.parametrize(
    "make,cls",
    [
        (lambda: sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.1, -0.2, 0.3, (4.0, 5.0, 6.0)), Rigid),
        (lambda: sitk.VersorRigid3DTransform((0.1, 0.2, 0.3, np.sqrt(1 - 0.14)), (1.0, 2.0, 3.0), (0.5, 0.0, 1.0)), Rigid),
        (lambda: sitk.Similarity2DTransform(1.1, 0.4, (1.0, 2.0), (3.0, 4.0)), Similarity),
        (lambda: sitk.TranslationTransform(3, (1.0, -2.0, 3.0)), Translation),
        (lambda: sitk.ScaleTransform(2, (1.2, 0.8)), Affine),
    ],
)
def test_reading_other_itk_linear_kinds(tmp_path, make, cls):
    tx = make()
    path = tmp_path / "other.tfm"
    sitk.WriteTransform(tx, str(path))
    ours = read_transform(path, dtype=torch.float64)
    assert type(ours) is cls
    points = np.random.default_rng(0).normal(size=(20, tx.GetDimension())) * 30
    np.testing.assert_allclose(ours_points(ours, points), sitk_points(tx, points), atol=1e-9)


def test_float32_linear_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    grid = oblique_grid(rng, (20, 20, 20))
    t = random_linear(Similarity, rng, grid, dtype=torch.float32)
    path = write_transform(t, tmp_path / "sim.tfm")
    back = read_transform(path)  # float32 by default, written in float64 as an ITK affine
    assert type(back) is Affine and back.translation.dtype == torch.float32
    back = Similarity.from_transform(back)  # a similarity again, e.g. to continue a staged registration
    assert type(back) is Similarity
    points = grid.index_to_physical_np(rng.uniform(0, 19, size=(10, 3)))
    np.testing.assert_allclose(ours_points(back, points), sitk_points(sitk.ReadTransform(str(path)), points), atol=1e-4)


# ---------------------------------------------------------------------- displacement fields
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha"])
def test_displacement_field_image_parity_with_sitk(tmp_path, ndim, ext):
    rng = np.random.default_rng(10 + ndim)
    grid = oblique_grid(rng, (16, 14) if ndim == 2 else (10, 9, 8))
    transform = Composite([random_linear(Affine, rng, grid), Wavy(ndim)])
    path = write_transform(transform, tmp_path / f"warp{ext}", reference=grid)

    image = sitk.ReadImage(str(path))
    assert image.GetNumberOfComponentsPerPixel() == ndim and image.GetDimension() == ndim
    dft = sitk.DisplacementFieldTransform(sitk.Cast(image, sitk.sitkVectorFloat64))
    # the displacements are stored in float32 (as ANTs does), NIfTI's geometry too
    tol = 1e-4
    points = grid.points(dtype=torch.float64).reshape(-1, ndim).numpy()[::7]
    np.testing.assert_allclose(sitk_points(dft, points), ours_points(transform, points), atol=tol)
    # (c) resampling with the written field equals our warp on the reference grid
    moving = smooth_image(rng, oblique_grid(rng, grid.size))
    moving = Image(moving.data, Grid(grid.size, moving.grid.spacing, grid.origin, moving.grid.direction))
    ours = resample(moving, transform, grid).data[0].numpy()
    theirs = sitk_resample(moving, grid, dft)
    interior = np.zeros_like(ours, dtype=bool)
    interior[(slice(1, -1),) * ndim] = True  # NIfTI's float32 geometry may flip the inside test at the rim
    np.testing.assert_allclose(ours[interior], theirs[interior], atol=1e-3 if ext == ".nii.gz" else 1e-4)
    # reading back gives a DisplacementField that maps like the original at the grid points
    back = read_transform(path, ndim=ndim, dtype=torch.float64)
    assert isinstance(back, DisplacementField) and back.grid.same_as(grid, tolerance=1e-4)
    np.testing.assert_allclose(ours_points(back, points), ours_points(transform, points), atol=tol)


def test_displacement_field_transform_matches_itk_between_and_outside_voxels(tmp_path):
    rng = np.random.default_rng(5)
    grid = oblique_grid(rng, (9, 8, 7))
    field = DisplacementField(grid, torch.tensor(rng.normal(size=(*grid.shape, 3))))
    path = write_transform(field, tmp_path / "field.mha", reference=grid)
    dft = sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkVectorFloat64))
    index = rng.uniform(-2.0, np.array(grid.size) + 1.0, size=(300, 3))  # inside, rim and outside
    index = index[np.all(np.abs(np.abs(index - (np.array(grid.size) - 1) / 2) - np.array(grid.size) / 2) > 1e-6, 1)]
    points = grid.index_to_physical_np(index)
    np.testing.assert_allclose(ours_points(field, points), sitk_points(dft, points), atol=1e-5)  # float32 pixels on disk


# ---------------------------------------------------------------------- composites
@pytest.mark.parametrize("ndim", [2, 3])
def test_composite_h5_round_trip(tmp_path, ndim):
    rng = np.random.default_rng(20 + ndim)
    grid = oblique_grid(rng, (12, 11) if ndim == 2 else (9, 8, 7))
    field = torch.tensor(ndimage.gaussian_filter(rng.normal(size=(*grid.shape, ndim)), 1.0) * 4)
    composite = Composite([random_linear(Affine, rng, grid), DisplacementField(grid, field), random_linear(Rigid, rng, grid)])
    path = write_transform(composite, tmp_path / "composite.h5", reference=grid)

    tx = sitk.ReadTransform(str(path))
    assert tx.GetName() == "CompositeTransform" and sitk.CompositeTransform(tx).GetNumberOfTransforms() == 3
    points = grid.index_to_physical_np(rng.uniform(0, 6, size=(40, ndim)))
    expected = ours_points(composite, points)
    np.testing.assert_allclose(sitk_points(tx, points), expected, atol=1e-9)
    back = read_transform(path, dtype=torch.float64)
    assert isinstance(back, Composite) and [type(t) for t in back.transforms] == [Affine, DisplacementField, Affine]
    np.testing.assert_allclose(ours_points(back, points), expected, atol=1e-9)
    # (d) and it resamples as ours
    moving = smooth_image(rng, grid)
    np.testing.assert_allclose(resample(moving, back).data[0].numpy(), resample(moving, composite).data[0].numpy(), atol=1e-9)
    np.testing.assert_allclose(resample(moving, composite).data[0].numpy(), sitk_resample(moving, grid, tx), atol=1e-6)


def test_linear_composite_collapses_into_one_affine(tmp_path):
    rng = np.random.default_rng(3)
    grid = oblique_grid(rng, (8, 8, 8))
    composite = Composite([random_linear(Rigid, rng, grid), random_linear(Affine, rng, grid)])
    path = write_transform(composite, tmp_path / "collapsed.tfm")
    assert "AffineTransform_double_3_3" in path.read_text()
    points = rng.normal(size=(10, 3)) * 20
    np.testing.assert_allclose(sitk_points(sitk.ReadTransform(str(path)), points), ours_points(composite, points), atol=1e-9)


# ---------------------------------------------------------------------- batches and errors
def test_batched_transform_needs_an_index(tmp_path):
    rng = np.random.default_rng(4)
    t = Affine(3, batch_size=2, dtype=torch.float64)
    with torch.no_grad():
        t.translation.copy_(torch.tensor(rng.normal(size=(2, 3))))
    with pytest.raises(ValueError, match="batch_size > 1"):
        write_transform(t, tmp_path / "batch.tfm")
    assert not os.listdir(tmp_path)
    for i in range(2):
        back = read_transform(write_transform(t, tmp_path / f"pair{i}.tfm", index=i), dtype=torch.float64)
        np.testing.assert_allclose(back.translation.detach().numpy()[0], t.translation.detach().numpy()[i])
    with pytest.raises(ValueError, match="out of range"):
        write_transform(t, tmp_path / "pair.tfm", index=2)


def test_read_errors(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_transform(tmp_path / "missing.tfm")
    three = write_transform(Affine(3), tmp_path / "three.tfm")
    with pytest.raises(ValueError, match="3D transform, expected 2D"):
        read_transform(three, ndim=2)
    garbage = tmp_path / "garbage.tfm"
    garbage.write_text("this is not a transform\n")
    with pytest.raises(InputError, match="is not a transform file miregister can read: not an ITK transform file"):
        read_transform(garbage)
    scalar = tmp_path / "scalar.nii.gz"
    sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkFloat32), str(scalar))
    with pytest.raises(ValueError, match="not a displacement field"):
        read_transform(scalar)
    four = tmp_path / "four.tfm"  # SimpleITK cannot even make a 4D affine: write the ITK text by hand
    identity4 = " ".join(str(v) for v in np.eye(4).ravel().tolist() + [0.0] * 4)
    four.write_text(
        f"#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_4_4\n"
        f"Parameters: {identity4}\nFixedParameters: 0 0 0 0\n"
    )
    with pytest.raises(ValueError):
        read_transform(four)
    with pytest.raises(ValueError, match="format"):
        read_transform(garbage.rename(tmp_path / "garbage.xyz"))


def test_write_errors(tmp_path):
    grid = Grid((5, 5))
    with pytest.raises(ValueError, match="linear transforms only"):
        write_transform(Wavy(2), tmp_path / "wavy.tfm", reference=grid)
    with pytest.raises(ValueError, match="reference"):
        write_transform(Wavy(2), tmp_path / "wavy.nii.gz")
    with pytest.raises(ValueError, match="reference"):
        write_transform(Composite([Affine(2), Wavy(2)]), tmp_path / "wavy.h5")
    with pytest.raises(ValueError, match="3D"):
        write_transform(Wavy(2), tmp_path / "wavy.mha", reference=Grid((4, 4, 4)))
    with pytest.raises(ValueError, match="format"):
        write_transform(Affine(2), tmp_path / "affine.json")
    assert not os.listdir(tmp_path)
    # a non-linear transform alone in .h5 becomes a displacement-field transform
    path = write_transform(Wavy(2), tmp_path / "wavy.h5", reference=grid)
    assert sitk.ReadTransform(str(path)).GetName() == "DisplacementFieldTransform"
    assert isinstance(read_transform(path), DisplacementField)


@pytest.mark.parametrize("ext", [".h5", ".tfm"])
def test_bspline_written_natively_and_inside_composites(tmp_path, ext):
    from miregister.transforms import BSpline

    rng = np.random.default_rng(30)
    grid = oblique_grid(rng, (12, 10, 9))
    bspline = BSpline(grid, control_spacing=4.0, dtype=torch.float64)
    with torch.no_grad():
        bspline.coefficients.copy_(torch.tensor(rng.normal(size=bspline.coefficients.shape)))
    path = write_transform(bspline, tmp_path / f"ffd{ext}")  # no reference needed: exact ITK form
    tx = sitk.ReadTransform(str(path))
    assert tx.GetName() == "BSplineTransform"
    points = grid.index_to_physical_np(rng.uniform(0, 8, size=(30, 3)))
    np.testing.assert_allclose(sitk_points(tx, points), ours_points(bspline, points), atol=1e-8)
    back = read_transform(path, dtype=torch.float64)
    assert isinstance(back, BSpline)
    np.testing.assert_allclose(ours_points(back, points), ours_points(bspline, points), atol=1e-8)
    if ext == ".h5":
        composite = Composite([random_linear(Affine, rng, grid), bspline])
        path = write_transform(composite, tmp_path / "affine_ffd.h5")
        tx = sitk.ReadTransform(str(path))
        np.testing.assert_allclose(sitk_points(tx, points), ours_points(composite, points), atol=1e-8)
        assert [type(t) for t in read_transform(path).transforms] == [Affine, BSpline]


def test_written_transform_files_follow_the_umask(tmp_path):
    import os

    from miregister.transforms import Affine, write_transform

    old = os.umask(0o022)
    try:
        path = write_transform(Affine(3), tmp_path / "t.tfm")
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.tfm"]  # no staging left behind
