"""Interchange with ANTs and SimpleITK: transform lists composed as antsApplyTransforms does,
every ITK transform type read exactly, inverses, a run's inverse and Jacobian files, and
``--initial-transform``. References: ANTsPy, SimpleITK's own TransformPoint, closed forms."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from miregister import Grid, InputError, register
from miregister.cli import main
from miregister.transforms import Affine, BSpline, Composite, DisplacementField, Rigid, Similarity, Translation, read_transform
from miregister.transforms.displacement import jacobian_determinant_image
from miregister.transforms.io import compose_ants_list, parse_transform_spec, write_inverse

DATA = Path(__file__).resolve().parents[1] / "data"


def sitk_points(tx: sitk.Transform, points: np.ndarray) -> np.ndarray:
    return np.array([tx.TransformPoint(tuple(float(v) for v in p)) for p in points])


def ours(t, points: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return t(torch.tensor(points, dtype=torch.float64)[None]).double().numpy()[0]


def array(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def brain_points(step: int = 7) -> np.ndarray:
    """Physical points (mm) of every ``step``-th voxel of the MNI brain mask (the fixed space)."""
    mask = sitk.ReadImage(str(DATA / "mni152_brainmask_2mm.nii.gz"))
    index = np.argwhere(sitk.GetArrayFromImage(mask) > 0)[::step][:, ::-1].astype(float)
    return np.array([mask.TransformContinuousIndexToPhysicalPoint(i.tolist()) for i in index])


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory):
    """The quick-start pair (T1 fixed, moved T2-like) smoothed and shrunk to 6 mm: fast to register."""
    folder = tmp_path_factory.mktemp("pair")
    paths = []
    for name in ("mni152_t1_2mm", "mni152_t2like_moved_2mm"):
        image = sitk.ReadImage(str(DATA / f"{name}.nii.gz"), sitk.sitkFloat32)
        small = sitk.Shrink(sitk.SmoothingRecursiveGaussian(image, 3.0), [3, 3, 3])
        paths.append(folder / f"{name}_6mm.nii.gz")
        sitk.WriteImage(small, str(paths[-1]))
    return paths[0], paths[1]


@pytest.fixture(scope="module")
def ants_run(small_pair, tmp_path_factory):
    """``ants.registration`` SyN (affine + warp) on the small pair, few iterations."""
    ants = pytest.importorskip("ants")
    prefix = str(tmp_path_factory.mktemp("ants") / "ants_")
    fixed, moving = ants.image_read(str(small_pair[0])), ants.image_read(str(small_pair[1]))
    result = ants.registration(
        fixed, moving, "SyN", aff_iterations=(20, 10), reg_iterations=(10, 5), aff_shrink_factors=(2, 1),
        aff_smoothing_sigmas=(1, 0), outprefix=prefix, random_seed=1,
    )
    return ants, fixed, moving, result


# ---------------------------------------------------------------------- apply vs antsApplyTransforms
def test_apply_composes_fwdtransforms_as_ants(ants_run, small_pair, tmp_path):
    ants, fixed, moving, result = ants_run
    fwd = result["fwdtransforms"]
    assert Path(fwd[0]).name.endswith("Warp.nii.gz") and Path(fwd[1]).name.endswith("GenericAffine.mat")
    expected = ants.apply_transforms(fixed, moving, fwd).numpy().transpose(2, 1, 0)  # ANTsPy arrays are (x, y, z)
    out = tmp_path / "fwd.nii.gz"
    assert main(["apply", str(small_pair[1]), str(small_pair[0]), "-t", fwd[0], "-t", fwd[1], "-o", str(out)]) == 0
    scale = float(np.abs(expected).max())
    assert np.abs(array(out) - expected).max() < 1e-4 * scale
    # the order matters: composing the list the other way round is far off
    assert main(["apply", str(small_pair[1]), str(small_pair[0]), "-t", fwd[1], "-t", fwd[0], "-o", str(out)]) == 0
    assert np.abs(array(out) - expected).max() > 0.02 * scale


def test_apply_composes_invtransforms_with_whichtoinvert_as_ants(ants_run, small_pair, tmp_path):
    ants, fixed, moving, result = ants_run
    inv = result["invtransforms"]  # [0GenericAffine.mat, 1InverseWarp.nii.gz]
    expected = ants.apply_transforms(moving, fixed, inv, whichtoinvert=[True, False]).numpy().transpose(2, 1, 0)
    out = tmp_path / "inv.nii.gz"
    assert main(["apply", str(small_pair[0]), str(small_pair[1]), "-t", f"[{inv[0]},1]", "-t", inv[1], "-o", str(out)]) == 0
    scale = float(np.abs(expected).max())
    assert np.abs(array(out) - expected).max() < 1e-4 * scale
    # --invert of the forward list (the warp inverted numerically) lands close to ANTs' own inverse warp
    fwd = result["fwdtransforms"]
    assert main(["apply", str(small_pair[0]), str(small_pair[1]), "-t", fwd[0], "-t", fwd[1], "--invert", "-o", str(out)]) == 0
    assert np.abs(array(out) - expected).mean() < 2e-3 * scale


def test_transform_spec_parsing(tmp_path):
    assert parse_transform_spec("a.mat") == ("a.mat", False)
    assert parse_transform_spec("[a.mat,1]") == ("a.mat", True)
    assert parse_transform_spec("[ dir/a b.mat , 0 ]") == ("dir/a b.mat", False)
    for bad in ("[a.mat,2]", "[a.mat]", "[a.mat,1"):
        with pytest.raises(ValueError, match="FILE,1"):
            parse_transform_spec(bad)
    rigid = sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.2, -0.1, 0.3, (4.0, -5.0, 6.0))
    affine = sitk.AffineTransform((1.1, 0.1, 0.0, -0.05, 0.9, 0.02, 0.0, 0.03, 1.05), (3.0, 2.0, 1.0), (0.0, 1.0, 2.0))
    paths = [tmp_path / "rigid.tfm", tmp_path / "affine.tfm"]
    sitk.WriteTransform(rigid, str(paths[0]))
    sitk.WriteTransform(affine, str(paths[1]))
    points = np.random.default_rng(0).normal(size=(20, 3)) * 40
    # -t rigid -t [affine,1]: x -> affine^-1(rigid(x))
    expected = sitk_points(affine.GetInverse(), sitk_points(rigid, points))
    np.testing.assert_allclose(ours(compose_ants_list(paths, [False, True], dtype=torch.float64), points), expected, atol=1e-9)


# ---------------------------------------------------------------------- every ITK transform type, exactly
def _versor(rng):
    q = rng.normal(size=4)
    q = q / np.linalg.norm(q) * np.sign(q[3])
    return tuple(q)


def _sitk_linear_transforms(rng):
    c3, c2 = tuple(rng.normal(size=3) * 20), tuple(rng.normal(size=2) * 20)
    t3, t2 = tuple(rng.normal(size=3) * 5), tuple(rng.normal(size=2) * 5)
    a3 = np.eye(3) + rng.normal(size=(3, 3)) * 0.1
    yield "Euler2D", sitk.Euler2DTransform(c2, 0.3, t2)
    yield "Similarity2D", sitk.Similarity2DTransform(1.2, -0.4, t2, c2)
    yield "Translation2D", sitk.TranslationTransform(2, t2)
    yield "Scale2D", sitk.ScaleTransform(2, (1.2, 0.8))
    yield "Affine2D", sitk.AffineTransform((1.1, 0.2, -0.1, 0.9), t2, c2)
    yield "Euler3D", sitk.Euler3DTransform(c3, 0.1, -0.2, 0.3, t3)
    euler_zyx = sitk.Euler3DTransform(c3, 0.1, -0.2, 0.3, t3)
    euler_zyx.SetComputeZYX(True)
    yield "Euler3D-ZYX", euler_zyx
    versor = sitk.VersorTransform(_versor(rng))
    versor.SetCenter(c3)
    yield "Versor", versor
    yield "VersorRigid3D", sitk.VersorRigid3DTransform(_versor(rng), t3, c3)
    yield "Similarity3D", sitk.Similarity3DTransform(0.9, _versor(rng), t3, c3)
    yield "Translation3D", sitk.TranslationTransform(3, t3)
    scale = sitk.ScaleTransform(3, (1.2, 0.9, 1.1))
    scale.SetCenter(c3)
    yield "Scale3D", scale
    yield "ScaleVersor3D", sitk.ScaleVersor3DTransform((1.2, 0.9, 1.1), _versor(rng), t3, c3)
    yield "ScaleSkewVersor3D", sitk.ScaleSkewVersor3DTransform(
        (1.2, 0.9, 1.1), (0.05, -0.1, 0.02, 0.03, 0.1, -0.04), _versor(rng), t3, c3
    )
    yield "ComposeScaleSkewVersor3D", sitk.ComposeScaleSkewVersor3DTransform(
        (1.2, 0.9, 1.1), (0.05, -0.1, 0.02), _versor(rng), t3, c3
    )
    yield "Affine3D", sitk.AffineTransform(tuple(a3.ravel()), t3, c3)


_ITK_TEXT_ONLY = {  # types SimpleITK reads (as a generic Transform) but has no class for
    "ScaleLogarithmicTransform_double_3_3": ("0.1 0.2 -0.1", "1 2 3"),
    "QuaternionRigidTransform_double_3_3": ("0.1 0 0.1 0.99 1 2 3", "1 2 3"),
    "IdentityTransform_double_3_3": ("", ""),
    "Rigid2DTransform_double_2_2": ("0.3 1 2", "4 5"),
}


@pytest.mark.parametrize("ext", [".tfm", ".h5"])
def test_every_sitk_linear_type_is_read_exactly(tmp_path, ext):
    rng = np.random.default_rng(3)
    transforms = list(_sitk_linear_transforms(rng))
    for name, (params, fixed) in _ITK_TEXT_ONLY.items():
        path = tmp_path / f"{name}.tfm"
        path.write_text(f"#Insight Transform File V1.0\n#Transform 0\nTransform: {name}\nParameters: {params}\nFixedParameters: {fixed}\n")
        transforms.append((name, sitk.ReadTransform(str(path))))
    for name, tx in transforms:
        path = tmp_path / f"{name}{ext}"
        sitk.WriteTransform(tx, str(path))
        reference = tx  # SimpleITK's Python ReadTransform fails on ComposeScaleSkewVersor3D: use the object written
        points = rng.uniform(-100, 100, size=(40, tx.GetDimension()))
        got = read_transform(path, dtype=torch.float64)
        error = np.abs(ours(got, points) - sitk_points(reference, points)).max()
        assert error < 1e-5, (name, error)
        # inverse: undoes SimpleITK's mapping (SimpleITK cannot invert every type itself, e.g. ScaleVersor3D)
        inverse_error = np.abs(ours(got.inverse(), sitk_points(reference, points)) - points).max()
        assert inverse_error < 1e-5, (name, inverse_error)


def test_scale_versor_keeps_its_scale(tmp_path):
    path = tmp_path / "scale.tfm"
    sitk.WriteTransform(sitk.ScaleVersor3DTransform((1.2, 1.0, 1.0), (0.0, 0.0, 0.0, 1.0)), str(path))
    np.testing.assert_allclose(ours(read_transform(path, dtype=torch.float64), np.array([[50.0, 0.0, 0.0]])), [[60.0, 0.0, 0.0]], atol=1e-9)


def test_unreadable_types_are_refused_by_name(tmp_path):
    unknown = tmp_path / "rigid3d.tfm"
    unknown.write_text("#Insight Transform File V1.0\n#Transform 0\nTransform: Rigid3DTransform_double_3_3\n"
                       "Parameters: 1 0 0 0 1 0 0 0 1 0 0 0\nFixedParameters: 0 0 0\n")
    with pytest.raises(InputError) as caught:
        read_transform(unknown)
    message = str(caught.value)
    assert f"{unknown} is not a transform file miregister can read" in message and "Rigid3DTransform_double_3_3" in message
    assert "VersorTransform_float_3_3" not in message and ".cxx" not in message and "0x" not in message
    quadratic = tmp_path / "quadratic.tfm"
    domain = sitk.Image([4, 4, 4], sitk.sitkFloat64)
    sitk.WriteTransform(sitk.BSplineTransform([domain] * 3, 2), str(quadratic))
    with pytest.raises(InputError, match="order 2"):
        read_transform(quadratic)


# ---------------------------------------------------------------------- inverses
@pytest.mark.parametrize("cls", [Translation, Rigid, Similarity, Affine])
@pytest.mark.parametrize("ndim", [2, 3])
def test_linear_inverse_matches_sitk(cls, ndim):
    from miregister.transforms.io import to_sitk

    rng = np.random.default_rng(ndim)
    t = cls(ndim, center=rng.normal(size=ndim) * 10, dtype=torch.float64)
    with torch.no_grad():
        for name, p in t.named_parameters():
            p.add_(torch.tensor(rng.normal(size=p.shape)) * {"translation": 5.0, "rotation": 0.3, "log_scale": 0.1, "matrix": 0.1}[name])
    points = rng.uniform(-80, 80, size=(30, ndim))
    np.testing.assert_allclose(ours(t.inverse(), points), sitk_points(to_sitk(t).GetInverse(), points), atol=1e-9)
    chain = Composite([t, Affine.from_matrix(np.diag([1.1] * ndim + [1.0]), dtype=torch.float64)])
    np.testing.assert_allclose(ours(chain.inverse(), ours(chain, points)), points, atol=1e-9)


def _smooth_field(grid: Grid, amplitude: float, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    x = grid.points(torch.float64)
    phases = torch.tensor(rng.uniform(0, 2 * np.pi, size=(grid.ndim, grid.ndim)))
    parts = [amplitude * torch.sin(x @ torch.ones(grid.ndim, dtype=torch.float64) / 17.0 + phases[k].sum()) * torch.cos(x[..., k] / 23.0)
             for k in range(grid.ndim)]
    return torch.stack(parts, -1)[None]


def test_displacement_field_inverse_matches_sitk_filter():
    grid = Grid((24, 22, 20), (2.0, 2.5, 2.2), (-20.0, 10.0, 5.0), tuple(np.eye(3).ravel()))
    field = _smooth_field(grid, 3.0)
    forward = DisplacementField(grid, field)
    inverse = forward.inverse()
    image = sitk.GetImageFromArray(field[0].numpy(), isVector=True)
    grid.copy_to_sitk(image)
    reference = sitk.GetArrayFromImage(sitk.InvertDisplacementField(image, maximumNumberOfIterations=100, maxErrorToleranceThreshold=1e-4,
                                                                    meanErrorToleranceThreshold=1e-5, enforceBoundaryCondition=False))
    interior = (slice(3, -3),) * 3
    assert np.abs(inverse.field[0].numpy()[interior] - reference[interior]).max() < 0.02
    # and it inverts: T(T^-1(y)) = y at interior voxel centres
    points = grid.points(torch.float64)[None][(slice(None),) + interior]
    assert float((forward(inverse(points)) - points).norm(dim=-1).max()) < 1e-3


@pytest.mark.slow
def test_run_inverse_files_invert_the_forward(tmp_path):
    """A fixed (MNI 2 mm) -> moving chain A(x + u(x)) as a registration writes it: the inverse files
    read by SimpleITK map brain points back (0.05 mm linear, 0.2 mm deformable where det >= 0.1)."""
    fixed = Grid.from_sitk(sitk.ReadImage(str(DATA / "mni152_brainmask_2mm.nii.gz")))
    # a moving grid of its own (coarser, shifted) that covers where the brain maps to
    moving = Grid(tuple(int(s * 0.95) for s in fixed.size), tuple(s * 1.15 for s in fixed.spacing),
                  tuple(np.subtract(fixed.origin, 12.0)), fixed.direction)
    affine = Affine.from_matrix(
        [[1.05, 0.08, 0.0, 3.0], [-0.06, 0.97, 0.05, -5.0], [0.02, -0.04, 1.02, 2.0], [0, 0, 0, 1]], center=fixed.center(), dtype=torch.float32
    )
    points = brain_points()
    linear_files = write_inverse(affine, tmp_path / "linear", fixed, moving)
    assert [p.name for p in linear_files] == ["inverse.tfm"]
    mat = write_inverse(affine, tmp_path / "linear-mat", fixed, moving, linear_format="mat")
    assert [p.name for p in mat] == ["inverse.mat"]
    for path in (linear_files[0], mat[0]):
        inverse = sitk.ReadTransform(str(path))
        assert np.linalg.norm(sitk_points(inverse, ours(affine, points)) - points, axis=1).max() < 0.05

    bspline = BSpline(fixed, 20.0)
    with torch.no_grad():
        coefficients = torch.randn(bspline.coefficients.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
        bspline.coefficients.copy_(coefficients * 2.5)
    chain = Composite([affine, bspline])
    files = write_inverse(chain, tmp_path / "deformable", fixed, moving)
    assert [p.name for p in files] == ["inverse.h5", "inverse_displacement.nii.gz"]
    field = sitk.ReadImage(str(files[1]))
    assert field.GetPixelID() == sitk.sitkVectorFloat32 and Grid.from_sitk(field).same_as(moving)
    det = array_at(jacobian_determinant_image(chain, fixed).to_sitk(), points)
    keep = det >= 0.1
    mapped = ours(chain, points)
    for inverse in (sitk.ReadTransform(str(files[0])),
                    sitk.DisplacementFieldTransform(sitk.ReadImage(str(files[1]), sitk.sitkVectorFloat64))):
        error = np.linalg.norm(sitk_points(inverse, mapped) - points, axis=1)[keep]
        assert error.max() < 0.2, error.max()


def array_at(image: sitk.Image, points: np.ndarray) -> np.ndarray:
    """Nearest-voxel values of ``image`` at physical points."""
    values = sitk.GetArrayFromImage(image)
    index = [image.TransformPhysicalPointToIndex(tuple(p)) for p in points]
    return np.array([values[k[::-1]] for k in index])


# ---------------------------------------------------------------------- register: inverse, jacobian, initial transform
def test_register_writes_inverse_and_jacobian(small_pair, tmp_path):
    out = tmp_path / "run"
    flags = ["-t", "affine+bspline", "--quiet", "--no-qc", "--no-validate", "--shrink-factors", "1",
             "--smoothing-sigmas", "0", "--iterations", "5", "--control-spacing", "30", "--jacobian"]
    assert main(["register", str(small_pair[0]), str(small_pair[1]), "-o", str(out), *flags]) == 0
    for name in ("transform.h5", "displacement.nii.gz", "inverse.h5", "inverse_displacement.nii.gz", "jacobian.nii.gz"):
        assert (out / name).is_file(), name
    displacement = sitk.ReadImage(str(out / "displacement.nii.gz"))
    assert displacement.GetPixelID() == sitk.sitkVectorFloat32  # float32 on disk ...
    as_transform = sitk.DisplacementFieldTransform(sitk.ReadImage(str(out / "displacement.nii.gz"), sitk.sitkVectorFloat64))
    forward = sitk.ReadTransform(str(out / "transform.h5"))
    centres = Grid.from_sitk(displacement).points(torch.float64).reshape(-1, 3).numpy()[::23]  # exact at voxel centres
    assert np.abs(sitk_points(as_transform, centres) - sitk_points(forward, centres)).max() < 1e-3  # ... and read as a warp
    points = brain_points(step=50)
    jacobian = sitk.ReadImage(str(out / "jacobian.nii.gz"))
    fixed = sitk.ReadImage(str(small_pair[0]))
    assert jacobian.GetPixelID() == sitk.sitkFloat32 and Grid.from_sitk(jacobian).same_as(Grid.from_sitk(fixed))
    # reference: central differences (h = 0.5 mm) of the transform.h5 mapping, by SimpleITK, at interior voxels
    values = sitk.GetArrayFromImage(jacobian)
    rng = np.random.default_rng(0)
    for index in rng.integers(3, np.array(jacobian.GetSize()) - 3, size=(25, 3)):
        x = np.array(jacobian.TransformIndexToPhysicalPoint(index.tolist()))
        columns = [(np.array(forward.TransformPoint((x + 0.5 * e).tolist())) - np.array(forward.TransformPoint((x - 0.5 * e).tolist())))
                   for e in np.eye(3)]
        assert abs(values[tuple(index[::-1])] - np.linalg.det(np.stack(columns, axis=1))) < 0.03
    try:  # ANTs reads the float32 field as its warp: same image as warped.nii.gz (exact transform) up to float32
        import ants
    except ImportError:
        ants = None
    if ants is not None:
        by_ants = ants.apply_transforms(ants.image_read(str(small_pair[0])), ants.image_read(str(small_pair[1])),
                                        [str(out / "displacement.nii.gz")]).numpy().transpose(2, 1, 0)
        warped = array(out / "warped.nii.gz")
        assert np.abs(by_ants - warped)[(slice(1, -1),) * 3].max() < 1e-3 * np.abs(warped).max()
    inverse = sitk.ReadTransform(str(out / "inverse.h5"))
    assert Grid.from_sitk(sitk.ReadImage(str(out / "inverse_displacement.nii.gz"))).same_as(Grid.from_sitk(sitk.ReadImage(str(small_pair[1]))))
    back = np.linalg.norm(sitk_points(inverse, sitk_points(forward, points)) - points, axis=1)
    assert np.median(back) < 0.05


def test_jacobian_of_a_known_affine_is_its_determinant(small_pair, tmp_path):
    grid = Grid.from_sitk(sitk.ReadImage(str(small_pair[0])))
    matrix = np.array([[1.1, 0.2, 0.0, 1.0], [0.0, 0.9, 0.1, 2.0], [0.05, 0.0, 1.2, 3.0], [0, 0, 0, 1]])
    det = jacobian_determinant_image(Affine.from_matrix(matrix), grid).data.numpy()
    np.testing.assert_allclose(det, np.linalg.det(matrix[:3, :3]), rtol=1e-5)
    out = tmp_path / "run"
    assert main(["register", str(small_pair[0]), str(small_pair[1]), "-o", str(out), "--quiet", "--no-qc", "--no-validate",
                 "--shrink-factors", "1", "--smoothing-sigmas", "0", "--iterations", "3", "--jacobian"]) == 0
    found = sitk.AffineTransform(sitk.ReadTransform(str(out / "transform.tfm")))
    np.testing.assert_allclose(array(out / "jacobian.nii.gz"), np.linalg.det(np.reshape(found.GetMatrix(), (3, 3))), rtol=1e-5)
    inverse = sitk.ReadTransform(str(out / "inverse.tfm"))
    points = brain_points(step=50)
    assert np.linalg.norm(sitk_points(inverse, sitk_points(found, points)) - points, axis=1).max() < 0.05


def test_initial_transform_from_files(ants_run, small_pair, tmp_path):
    _, _, _, result = ants_run
    ants_affine = result["fwdtransforms"][1]
    options = dict(validate=False, shrink_factors=(1,), smoothing_sigmas=(0.0,), iterations=(3,))
    points = brain_points(step=50)
    reference = sitk.ReadTransform(ants_affine)
    # from an ANTs .mat: a short run stays near the ANTs affine; without it, it starts elsewhere
    started = register(str(small_pair[0]), str(small_pair[1]), "affine", initial_transform=ants_affine, **options)
    unstarted = register(str(small_pair[0]), str(small_pair[1]), "affine", initialization="none", **options)
    near = np.linalg.norm(ours(started.transform, points) - sitk_points(reference, points), axis=1).mean()
    far = np.linalg.norm(ours(unstarted.transform, points) - sitk_points(reference, points), axis=1).mean()
    # ANTs' own affine varies from run to run (threads, sampling): 0.7-1.2 mm here, the unstarted run ~12 mm
    assert near < 2.0 and far > 5 * near
    # from a SimpleITK-written .tfm (a scale-versor): the same run as from the transform object
    tfm = tmp_path / "start.tfm"
    sitk.WriteTransform(sitk.ScaleVersor3DTransform((1.02, 0.98, 1.01), (0.02, 0.0, 0.05, float(np.sqrt(1 - 0.0029))), (1.0, -2.0, 3.0), (0.0, 0.0, 10.0)), str(tfm))
    from_file = register(str(small_pair[0]), str(small_pair[1]), "affine", initial_transform=str(tfm), **options)
    from_object = register(str(small_pair[0]), str(small_pair[1]), "affine", initial_transform=sitk.ReadTransform(str(tfm)), **options)
    np.testing.assert_allclose(from_file.matrix, from_object.matrix, atol=1e-6)
    out = tmp_path / "cli"
    assert main(["register", str(small_pair[0]), str(small_pair[1]), "-o", str(out), "--quiet", "--no-qc", "--no-validate",
                 "--shrink-factors", "1", "--iterations", "3", "--initial-transform", ants_affine]) == 0
    # a deformable start is refused, saying why
    with pytest.raises(InputError, match="deformable"):
        register(str(small_pair[0]), str(small_pair[1]), "affine", initial_transform=result["fwdtransforms"][0], **options)
