"""End-to-end registration on sample data with known transforms (closed-form ground truth)."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from miregister import Image, UsageError
from miregister.registration import RegistrationError, register
from miregister.transforms import read_transform

from registration_cases import affine_about, mapping_error, moved, physical_points, read, slice_case


def _found(result):
    def apply(points: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return result.transform(torch.as_tensor(points, dtype=torch.float64)[None].float())[0].double().numpy()
    return apply


@pytest.fixture(scope="module")
def slice_pair():
    return slice_case()


def test_affine_2d_multimodal_recovers_known_transform(slice_pair):
    fixed, moving, truth, points = slice_pair
    before = mapping_error(lambda p: p, truth, points)
    result = register(fixed, moving, "affine", knn_samples=2000)
    error = mapping_error(_found(result), truth, points)
    assert before > 5.0
    assert error < 0.3, f"mean error {error:.3f} mm (before {before:.2f} mm)"
    # three independent estimators agree that the alignment improved
    assert all(result.validation["improved"].values()), result.validation
    assert result.warped.grid.same_as(Image.from_sitk(fixed).grid)


def test_rigid_then_affine_chain_and_saved_transform_matches_simpleitk(slice_pair, tmp_path):
    fixed, moving, truth, points = slice_pair
    result = register(fixed, moving, "rigid+affine", validate=False)
    assert [h["stage"] for h in result.history][0] == "rigid"
    assert mapping_error(_found(result), truth, points) < 0.3
    path = result.save_transform(tmp_path / "t.tfm")
    loaded = sitk.ReadTransform(str(path))
    reference = sitk.Resample(moving, fixed, loaded, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    ours = result.warped.data[0].numpy()
    theirs = sitk.GetArrayFromImage(reference)
    interior = np.zeros_like(ours, dtype=bool)
    interior[3:-3, 3:-3] = True
    assert np.abs(ours - theirs)[interior].max() < 1e-2 * theirs.max()
    assert read_transform(path).is_linear


def test_same_seed_same_result(slice_pair):
    fixed, moving, _, _ = slice_pair
    a = register(fixed, moving, "rigid", validate=False, seed=3)
    b = register(fixed, moving, "rigid", validate=False, seed=3)
    assert np.array_equal(a.matrix, b.matrix)


def test_affine_3d_multimodal_oblique_anisotropic_fixed():
    """Fixed on an oblique 2.5 x 2.5 x 4 mm grid, moving T2-like at 4 mm: recovered to < 1 mm.

    A geometry mistake (direction, spacing or origin mishandled) costs several mm here; the
    residual ~0.6 mm is the multimodal bias of this synthetic pair (the peers in
    benchmarks/RESULTS.md land at 0.2-2 mm on the 2 mm version of the case)."""
    t1 = read("mni152_t1_2mm.nii.gz")
    t2 = read("mni152_t2like_2mm.nii.gz")
    center = np.asarray(t1.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in t1.GetSize()]))
    rotation = sitk.VersorTransform([0.2, 0.3, 0.9], np.deg2rad(12.0))
    linear = np.asarray(rotation.GetMatrix()).reshape(3, 3) @ np.diag([1.04, 0.97, 1.02])
    truth = affine_about(linear, (7.0, -5.0, 4.0), center)
    moving = moved(t2, truth)
    moving = sitk.Resample(moving, [s // 2 for s in moving.GetSize()], sitk.Transform(), sitk.sitkLinear,
                           moving.GetOrigin(), [4.0, 4.0, 4.0], moving.GetDirection())
    oblique = sitk.VersorTransform([1.0, 0.5, 0.2], np.deg2rad(15.0)).GetMatrix()
    spacing = (2.5, 2.5, 4.0)
    size = [int(98 * 2 / spacing[0]), int(116 * 2 / spacing[1]), int(94 * 2 / spacing[2])]
    reference = sitk.Image(size, sitk.sitkFloat32)
    reference.SetSpacing(spacing)
    reference.SetDirection(oblique)
    extent = np.asarray(oblique).reshape(3, 3) @ (np.asarray(size) - 1) * np.asarray(spacing) / 2
    reference.SetOrigin((center - extent).tolist())
    fixed = sitk.Resample(t1, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    brain = sitk.GetArrayFromImage(fixed) > 60
    points = physical_points(fixed, brain)[::5]
    result = register(fixed, moving, "affine", validate=False, shrink_factors=(2, 1), iterations=(60, 40))
    error = mapping_error(_found(result), truth, points)
    assert error < 1.0, f"mean error {error:.3f} mm"


def test_bspline_2d_recovers_smooth_warp():
    fixed = read("mni152_t1_slice.nii.gz")
    source = read("mni152_t2like_slice.nii.gz")
    shape = sitk.GetArrayFromImage(fixed).shape
    yy, xx = np.meshgrid(np.linspace(0, np.pi, shape[0]), np.linspace(0, np.pi, shape[1]), indexing="ij")
    u = np.stack([3.0 * np.sin(xx) * np.sin(2 * yy), 2.5 * np.sin(2 * xx) * np.sin(yy)], axis=-1)
    field = sitk.GetImageFromArray(u.astype(np.float64), isVector=True)
    field.CopyInformation(fixed)
    inverse = sitk.InvertDisplacementField(field, maximumNumberOfIterations=50)
    moving = sitk.Resample(source, fixed, sitk.DisplacementFieldTransform(inverse), sitk.sitkLinear, 0.0)
    truth = sitk.DisplacementFieldTransform(sitk.Image(field))
    brain = sitk.GetArrayFromImage(fixed) > 30
    points = physical_points(fixed, brain)
    before = mapping_error(lambda p: p, truth, points)
    result = register(fixed, moving, "bspline", control_spacing=16.0, knn_samples=2000)
    error = mapping_error(_found(result), truth, points)
    # Measured 2.50 -> 0.75 mm (2D multimodal slice, a 3 mm warp): at least a 60 % cut; the
    # 3D accuracy targets are shown by benchmarks/registration.py against ANTs and elastix.
    assert error < 0.4 * before, f"error {error:.2f} mm, before {before:.2f} mm"
    jac = result.validation["jacobian"]
    assert jac["folded_fraction"] == 0.0 and jac["min"] > 0


@pytest.mark.parametrize("transform", ["svf"])
def test_svf_2d_improves_alignment(transform):
    fixed = read("mni152_t1_slice.nii.gz")
    source = read("mni152_t1_slice.nii.gz")
    shape = sitk.GetArrayFromImage(fixed).shape
    yy, xx = np.meshgrid(np.linspace(0, np.pi, shape[0]), np.linspace(0, np.pi, shape[1]), indexing="ij")
    u = np.stack([3.0 * np.sin(xx) * np.sin(yy), -2.0 * np.sin(xx) * np.sin(yy)], axis=-1)
    field = sitk.GetImageFromArray(u.astype(np.float64), isVector=True)
    field.CopyInformation(fixed)
    inverse = sitk.InvertDisplacementField(field, maximumNumberOfIterations=50)
    moving = sitk.Resample(source, fixed, sitk.DisplacementFieldTransform(inverse), sitk.sitkLinear, 0.0)
    truth = sitk.DisplacementFieldTransform(sitk.Image(field))
    points = physical_points(fixed, sitk.GetArrayFromImage(fixed) > 30)
    before = mapping_error(lambda p: p, truth, points)
    result = register(fixed, moving, transform, validate=False)
    assert mapping_error(_found(result), truth, points) < 0.6 * before


# ------------------------------------------------------------------------------ bad input
def _pair():
    fixed = read("mni152_t1_slice.nii.gz")
    return fixed, sitk.Image(fixed)


def test_nan_input_is_refused():
    fixed, moving = _pair()
    array = sitk.GetArrayFromImage(moving)
    array[10, 10] = np.nan
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(moving)
    with pytest.raises(ValueError, match="NaN"):
        register(fixed, bad)


def test_constant_image_is_refused():
    fixed, _ = _pair()
    constant = sitk.Image(fixed.GetSize(), sitk.sitkFloat32) + 3.0
    constant.CopyInformation(fixed)
    with pytest.raises(ValueError, match="constant"):
        register(fixed, constant)


def test_empty_mask_is_refused():
    fixed, moving = _pair()
    empty = sitk.Image(fixed.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(fixed)
    with pytest.raises(ValueError, match="empty"):
        register(fixed, moving, fixed_mask=empty)


def test_dimension_mismatch_is_refused():
    fixed, _ = _pair()
    with pytest.raises(ValueError, match="2D but the moving image is 3D"):
        register(fixed, read("mni152_t1_2mm.nii.gz"))


def test_no_overlap_is_reported():
    fixed, moving = _pair()
    far = sitk.Image(moving)
    far.SetOrigin([o + 5000.0 for o in moving.GetOrigin()])
    with pytest.raises(RegistrationError, match="do not overlap"):
        register(fixed, far, initialization="none")


def test_unknown_option_and_transform_are_refused():
    fixed, moving = _pair()
    with pytest.raises(UsageError, match="unknown registration option"):
        register(fixed, moving, learning_rat=0.1)
    with pytest.raises(ValueError, match="unknown transform"):
        register(fixed, moving, "rigidd")
    with pytest.raises(ValueError, match="deformable stage must come last"):
        register(fixed, moving, "bspline+affine")


def test_metric_kernels_per_level_are_recorded():
    fixed, moving = _pair()
    result = register(fixed, moving, "affine", validate=False, iterations=(5, 5, 5))
    kernels = [h["kernel"] for h in result.history]
    assert kernels == [["bspline", "bspline"]] * 2 + [["box", "bspline"]]  # soft coarse levels, Mattes pairing last
    result = register(fixed, moving, "affine", validate=False, iterations=(5, 5), kernel=("gaussian", "gaussian"),
                      shrink_factors=(2, 1), smoothing_sigmas=(1.0, 0.0))
    assert [h["kernel"] for h in result.history] == [["gaussian", "gaussian"]] * 2
    result = register(fixed, moving, "affine", validate=False, iterations=(5,), kernel="gaussian",
                      shrink_factors=(1,), smoothing_sigmas=(0.0,))
    assert [h["kernel"] for h in result.history] == [["gaussian", "gaussian"]]  # one name: both axes, as in mi


def test_auto_bins_grow_with_the_images_correlation_and_an_int_fixes_them():
    """bins="auto": the Hacine-Gharbi rule gives an aligned mono-modal pair (correlation ~1)
    more bins than a multimodal one, never below 64 unless a level has too few samples."""
    import math

    mono = register(*slice_case(modality="t1")[:2], "affine", validate=False)
    multi = register(*slice_case()[:2], "affine", validate=False)
    for result in (mono, multi):
        for level in result.history:
            assert level["bins"] >= min(64, math.isqrt(level["samples"])), level
    assert mono.history[-1]["bins"] > multi.history[-1]["bins"]
    # Deformable stages default to a fixed 64 (a finer histogram's noise is fitted by their many parameters).
    chain = register(*slice_case(modality="t1")[:2], "affine+bspline", validate=False, iterations=(5, 5, 5))
    assert [h["bins"] for h in chain.history if h["stage"] == "bspline"] == [
        min(64, math.isqrt(h["samples"])) for h in chain.history if h["stage"] == "bspline"
    ]
    fixed = register(*slice_case()[:2], "affine", validate=False, bins=40)
    assert [h["bins"] for h in fixed.history] == [min(40, math.isqrt(h["samples"])) for h in fixed.history]
    for bad in ("many", 3, 2.5, True):
        with pytest.raises(ValueError, match="bins"):
            register(*slice_case()[:2], "affine", bins=bad)


def test_metric_kernel_option_is_checked_by_name():
    fixed, moving = _pair()
    for bad in ("box", "triangle", ("bspline", "box"), ("bspline", "triangle"), ("box",)):
        with pytest.raises(ValueError, match="kernel"):
            register(fixed, moving, kernel=bad)


def test_top_level_api_exposes_register_and_io():
    import miregister
    from miregister.registration import register as inner

    assert miregister.register is inner
    for name in ("read_image", "write_image", "read_transform", "write_transform", "mi", "io", "Grid", "Image"):
        assert hasattr(miregister, name), name


def test_unknown_interpolation_is_rejected_by_name():
    import pytest as _pytest

    from miregister.registration.options import build_options

    with _pytest.raises(ValueError, match="interpolation"):
        build_options(["affine"], interpolation="cubic")


def test_per_level_options_take_one_number_for_every_level():
    from miregister.registration.options import build_options

    options = build_options(["rigid", "bspline"], iterations=7, smoothing_sigmas=0)
    assert options.stage("rigid").iterations == (7, 7, 7) and options.stage("bspline").iterations == (7, 7, 7)
    assert options.stage("rigid").smoothing_sigmas == (0.0, 0.0, 0.0)
    single = build_options(["affine"], shrink_factors=1, iterations={"affine": 9}).stage("affine")
    assert (single.shrink_factors, single.smoothing_sigmas, single.iterations) == ((1,), (0.0,), (9,))
    two = build_options(["affine"], shrink_factors=(2, 1), iterations=(5, 3)).stage("affine")
    assert (two.shrink_factors, two.iterations) == ((2, 1), (5, 3))
    with pytest.raises(ValueError, match="same non-zero length"):
        build_options(["affine"], shrink_factors=(2, 1), iterations=(5, 3, 1))


def test_per_stage_dict_naming_a_stage_outside_the_chain_is_refused():
    from miregister.registration.options import build_options

    with pytest.raises(ValueError, match=r"iterations: stage\(s\) \['bspline'\] are not in the chain 'rigid\+affine'"):
        build_options(["rigid", "affine"], iterations={"bspline": (1, 1, 1)})
    assert build_options(["rigid", "affine"], iterations={"affine": 4}).stage("rigid").iterations == (100, 60, 30)


@pytest.mark.parametrize("seed", [4, 29, 41, 46, 51])
def test_2d_affine_is_not_thrown_off_by_tiny_input_changes(seed):
    """Seeded 2D cases (rotation <= 15 deg, shift <= 8 mm, scale +-5 %) with a 1e-5 relative
    perturbation of the moving image. Before the per-level bin cap these five (of 60 seeds)
    ended 2-10 mm off, or raised a false "no overlap" from a line-search trial step: the
    coarsest level (~400 samples, 64 bins) had a chaotic landscape."""
    rng = np.random.default_rng(seed)
    degrees = float(rng.uniform(-15, 15))
    shift = tuple(rng.uniform(-8, 8, 2))
    scale = tuple(rng.uniform(0.95, 1.05, 2))
    fixed, moving, truth, points = slice_case(degrees, shift, scale)
    values = sitk.GetArrayFromImage(moving)
    perturbed = sitk.GetImageFromArray((values * (1 + 1e-5 * rng.standard_normal(values.shape))).astype(np.float32))
    perturbed.CopyInformation(moving)
    result = register(fixed, perturbed, "affine", validate=False)
    assert mapping_error(_found(result), truth, points) < 0.3
    coarsest = result.history[0]
    assert coarsest["bins"] <= int(np.sqrt(coarsest["samples"])), coarsest


def test_line_search_step_outside_the_moving_image_is_a_bad_value_not_an_error():
    from miregister.image import Image as Img
    from miregister.registration.levels import LevelCache
    from miregister.registration.options import build_options
    from miregister.registration.objective import level_problem as _problem
    from miregister.transforms import Translation

    fixed, moving = _pair()
    cache = LevelCache(Img.from_sitk(fixed), Img.from_sitk(moving), None, None)
    options = build_options(["affine"])
    problem, _ = _problem(cache.get(1, 0.0), options.stage("affine"), options, seed=0, last_level=True)
    far = Translation(2)
    with torch.no_grad():
        far.translation.fill_(5000.0)
    assert float(problem.loss(far).detach()) == 0.0  # worse than any alignment (-MI < 0), no exception
    assert float(problem.loss(Translation(2)).detach()) < 0.0
    with pytest.raises(RegistrationError, match="do not overlap"):
        problem.metric(far)


@pytest.mark.parametrize("transform", ["rigid", "affine+bspline"])
def test_warped_and_validation_are_those_of_resample_and_of_the_validation_s_own_overlap(slice_pair, transform):
    """The run keeps its final warp's inside mask for the validation's "after" overlap: the
    same warped image as resample, the same mask as the validation finds slab by slab, and so
    the same report."""
    from miregister.registration.validation import measurement_region, on_fixed_grid, validate
    from miregister.warp import resample, warp

    fixed, moving = slice_pair[0], slice_pair[1]
    extra = {"control_spacing": 20.0} if "bspline" in transform else {}
    result = register(fixed, moving, transform=transform, shrink_factors=[2, 1], iterations=5, **extra)
    fixed_img, moving_img = result.fixed, result.moving
    again = resample(moving_img, result.transform, fixed_img.grid)
    torch.testing.assert_close(result.warped.data, again.data, rtol=0, atol=0)
    _, inside = on_fixed_grid(moving_img, fixed_img, result.transform, values=False)
    _, kept = warp(moving_img.batch(), moving_img.grid, result.transform, fixed_img.grid, return_inside=True, margin=0.5)
    torch.testing.assert_close(kept[0], inside)
    region, name = measurement_region(fixed_img)
    expected = validate(fixed_img, moving_img, result.warped, result.transform, None, region, name,
                        result.options.knn_samples, result.options.seed)
    # (a second Jacobian summary of the same transform is taken from the remembered float32 determinant)
    jacobian, expected_jacobian = result.validation.pop("jacobian", {}), expected.pop("jacobian", {})
    assert result.validation == expected
    assert jacobian == pytest.approx(expected_jacobian, rel=1e-6) and (("bspline" in transform) == bool(jacobian))
    assert int(inside.sum()) > 0
