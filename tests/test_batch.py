"""register_batch: B pairs registered together give each pair its single run's result (within
0.01 mm linear, 0.05 mm deformable, over the fixed grid's voxel centres) and the known truth;
pairs do not couple (one converging early, one failing); a template or a list of fixed images.

Images are small: the 2 mm sample brain averaged to 4 mm (49 x 58 x 47) and the 2D slices,
moved by known affine transforms (closed form, SimpleITK).
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import miregister
from miregister.errors import RegistrationError, UsageError
from miregister.registration import batch as batch_module
from miregister.registration.optimize import LevelProblem
from registration_cases import affine_about, moved, physical_points, read, read_4mm, rotation_2d, rotation_3d

# The equality contract is the CPU's (deterministic kernels); test_cuda_* below checks a GPU.
FAST_3D = dict(shrink_factors=(2, 1), smoothing_sigmas=(2.0, 0.0), iterations=40, samples=6000, knn_samples=1000, threads=1,
               device="cpu")
FAST_2D = dict(shrink_factors=(2, 1), smoothing_sigmas=(1.0, 0.0), iterations=40, samples=4000, knn_samples=1000, threads=1,
               device="cpu")


def _centre(image: sitk.Image) -> np.ndarray:
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()]))


def _mapped(result, points: np.ndarray) -> np.ndarray:
    p = torch.as_tensor(points, dtype=torch.float64)[None]
    with torch.no_grad():
        return result.transform.to(device="cpu", dtype=torch.float64)(p)[0].numpy()


def _distance(a, b, points: np.ndarray) -> float:
    """Mean |T_a(x) - T_b(x)| (mm) over ``points``; ``b`` a result or a SimpleITK transform."""
    other = (np.array([b.TransformPoint(x.tolist()) for x in points]) if isinstance(b, sitk.Transform) else _mapped(b, points))
    return float(np.linalg.norm(_mapped(a, points) - other, axis=1).mean())


def _start_error(truth: sitk.Transform, points: np.ndarray) -> float:
    """Mean |truth(x) - x| (mm): the error of the identity mapping."""
    return float(np.linalg.norm(np.array([truth.TransformPoint(x.tolist()) for x in points]) - points, axis=1).mean())


def _grid_points(image: sitk.Image) -> np.ndarray:
    return physical_points(image, np.ones(sitk.GetArrayViewFromImage(image).shape, dtype=bool))


@pytest.fixture
def recorded(monkeypatch):
    """The batchers register_batch makes, to read how many pairs each batched pass held."""
    made = []

    class Recording(batch_module.Batcher):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(batch_module, "Batcher", Recording)
    return made


@pytest.fixture(scope="module")
def brain():
    fixed = read_4mm("mni152_t1_2mm.nii.gz")
    source = read_4mm("mni152_t2like_2mm.nii.gz")
    c = _centre(fixed)
    truths = [
        affine_about(rotation_3d((1, 0, 0), 6) @ np.diag([1.03, 0.98, 1.0]), (4, -3, 2), c),
        affine_about(rotation_3d((0, 1, 1), -5), (-3, 2, 4), c),
        affine_about(np.diag([0.97, 1.02, 1.01]), (2, 5, -3), c),
    ]
    brain_points = physical_points(fixed, sitk.GetArrayFromImage(fixed) > 30)
    return fixed, [moved(source, t) for t in truths], truths, brain_points


def test_template_affine_batch_matches_single_runs_and_truth(brain, recorded):
    fixed, movings, truths, points = brain
    results = miregister.register_batch(fixed, movings, "affine", **FAST_3D)
    singles = [miregister.register(fixed, m, "affine", **FAST_3D) for m in movings]
    grid = _grid_points(fixed)
    for result, single, truth in zip(results, singles, truths):
        assert _distance(result, single, grid) < 0.01
        assert _distance(result, truth, points) < min(1.0, 0.25 * _start_error(truth, points))
        # the same pipeline: validation and quality as the single run's
        assert result.validation["after"]["soft_bins"] == pytest.approx(single.validation["after"]["soft_bins"], abs=1e-3)
        assert result.quality["doubtful"] == single.quality["doubtful"]
    # the metric was evaluated for all three pairs in one pass, most of the time
    sizes = recorded[0].sizes
    assert max(sizes) == 3 and sizes.count(3) > len(sizes) / 2


def test_list_of_fixed_images_rigid_affine(brain):
    """One fixed image per pair on one grid (different intensities and noise, so the foreground
    samples differ in number at coarse levels): each pair as its single run, and near the truth."""
    fixed, movings, truths, points = brain
    rng = np.random.default_rng(0)
    fixeds = []
    for i in range(3):
        array = sitk.GetArrayFromImage(fixed) * (1.0 + 0.3 * i) + rng.normal(0.0, 2.0 * i, fixed.GetSize()[::-1])
        image = sitk.GetImageFromArray(array.astype(np.float32))
        image.CopyInformation(fixed)
        fixeds.append(image)
    results = miregister.register_batch(fixeds, movings, "rigid+affine", **FAST_3D)
    grid = _grid_points(fixed)
    for f, m, result, truth in zip(fixeds, movings, results, truths):
        single = miregister.register(f, m, "rigid+affine", **FAST_3D)
        assert _distance(result, single, grid) < 0.01
        assert _distance(result, truth, points) < min(1.5, 0.25 * _start_error(truth, points))


def test_2d_affine_and_bspline():
    fixed = read("mni152_t1_slice.nii.gz")
    source = read("mni152_t2like_slice.nii.gz")
    c = _centre(fixed)
    truths = [affine_about(rotation_2d(8) @ np.diag([1.04, 0.97]), (5, -3), c),
              affine_about(rotation_2d(-6), (-4, 2), c)]
    movings = [moved(source, t) for t in truths]
    points = physical_points(fixed, sitk.GetArrayFromImage(fixed) > 30)
    grid = _grid_points(fixed)
    for kind, tolerance, truth_bound in (("affine", 0.01, 0.5), ("affine+bspline", 0.05, 1.0)):
        options = dict(FAST_2D, control_spacing=20.0) if "bspline" in kind else FAST_2D
        results = miregister.register_batch(fixed, movings, kind, **options)
        for m, result, truth in zip(movings, results, truths):
            single = miregister.register(fixed, m, kind, **options)
            assert _distance(result, single, grid) < tolerance, kind
            assert _distance(result, truth, points) < truth_bound, kind


def test_pair_converging_early_does_not_hold_back_or_change_the_other():
    """An aligned pair stops after few evaluations while the other goes on: each pair's
    optimiser takes exactly its single run's path."""
    fixed = read("mni152_t1_slice.nii.gz")
    truth = affine_about(rotation_2d(10) @ np.diag([1.05, 0.96]), (6, -4), _centre(fixed))
    movings = [fixed, moved(read("mni152_t2like_slice.nii.gz"), truth)]
    options = dict(FAST_2D, iterations=60)
    results = miregister.register_batch(fixed, movings, "affine", **options)
    singles = [miregister.register(fixed, m, "affine", **options) for m in movings]
    grid = _grid_points(fixed)
    counts = []
    for result, single in zip(results, singles):
        assert _distance(result, single, grid) < 0.01
        counts.append([h["evaluations"] for h in result.history])
        assert counts[-1] == [h["evaluations"] for h in single.history]
    assert sum(counts[0]) < sum(counts[1])
    assert _distance(results[0], sitk.Transform(2, sitk.sitkIdentity), grid) < 0.05


def test_failing_pairs_fail_alone(monkeypatch):
    """A pair whose moving image is 1000 mm away fails with its RegistrationError, and a pair
    whose metric raises mid-optimisation fails with its own error; the others finish as alone."""
    fixed = read("mni152_t1_slice.nii.gz")
    source = read("mni152_t2like_slice.nii.gz")
    c = _centre(fixed)
    truths = [affine_about(rotation_2d(5), (3, -2), c), affine_about(np.eye(2), (0, 0), c),
              affine_about(rotation_2d(-4), (-2, 3), c), affine_about(np.eye(2), (2, 2), c)]
    movings = [moved(source, t) for t in truths]
    # the far pair: its origin moved 1000 mm
    movings[1].SetOrigin([o + s for o, s in zip(source.GetOrigin(), (1000.0, 0.0))])
    movings[3] = movings[3] * 7.0  # recognisable by its intensity range below
    options = dict(FAST_2D, initialization="none")  # a centre initialisation would rescue the far pair

    real_map = LevelProblem.moving_index
    calls = {"marked": 0}

    def failing_map(self, transform):
        if float(self.moving_range[0, 1]) > 500:  # pair 3 only
            calls["marked"] += 1
            if calls["marked"] == 5:
                raise RuntimeError("boom in pair 3")
        return real_map(self, transform)

    monkeypatch.setattr(LevelProblem, "moving_index", failing_map)
    outcomes = miregister.register_batch(fixed, movings, "affine", return_exceptions=True, **options)
    assert isinstance(outcomes[1], RegistrationError) and "do not overlap" in str(outcomes[1])
    assert isinstance(outcomes[3], RuntimeError) and "boom in pair 3" in str(outcomes[3])
    grid = _grid_points(fixed)
    for index in (0, 2):
        single = miregister.register(fixed, movings[index], "affine", **options)
        assert _distance(outcomes[index], single, grid) < 0.01
    with pytest.raises(RegistrationError, match="do not overlap") as caught:
        miregister.register_batch(fixed, movings[:2], "affine", **options)
    assert caught.value.pair == 1


def test_bad_arguments_are_usage_errors():
    fixed = read("mni152_t1_slice.nii.gz")
    with pytest.raises(UsageError, match="2 entries for 3 moving images"):
        miregister.register_batch([fixed, fixed], [fixed] * 3)
    with pytest.raises(UsageError, match="verbose"):
        miregister.register_batch(fixed, [fixed], verbose=True)
    with pytest.raises(UsageError, match="one entry per moving image"):
        miregister.register_batch(fixed, [fixed], moving_masks=fixed)
    assert miregister.register_batch(fixed, []) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batch_matches_single_runs(brain, recorded):
    """On a GPU (whose scattered sums are not bit-reproducible, so single runs themselves vary at
    round-off level): each batched pair within 0.05 mm of its single run, and near the truth."""
    fixed, movings, truths, points = brain
    options = dict(FAST_3D, device="cuda")
    results = miregister.register_batch(fixed, movings, "affine", **options)
    grid = _grid_points(fixed)
    for m, result, truth in zip(movings, results, truths):
        assert result.device.startswith("cuda")
        single = miregister.register(fixed, m, "affine", **options)
        assert _distance(result, single, grid) < 0.05
        assert _distance(result, truth, points) < min(1.0, 0.25 * _start_error(truth, points))
    assert max(recorded[0].sizes) == 3
