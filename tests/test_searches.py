"""The orientation check's batched scores against the level problem's own metric, one
re-orientation at a time (the unbatched path the check used before)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from miregister import read_image
from miregister.registration import searches
from miregister.registration.levels import LevelCache
from miregister.registration.objective import level_problem
from miregister.registration.options import build_options
from miregister.transforms import Affine


@pytest.fixture(scope="module")
def level():
    fixed = read_image("data/mni152_t1_2mm.nii.gz")
    moving = read_image("data/mni152_t2like_moved_2mm.nii.gz")
    mask = fixed.with_data((fixed.data > 0.2 * float(fixed.data.max())).to(torch.float32))
    moving_mask = moving.with_data((moving.data > 0.1 * float(moving.data.max())).to(torch.float32))
    return LevelCache(fixed, moving, mask, None).get(4, 2.0), LevelCache(fixed, moving, mask, moving_mask).get(4, 2.0)


def _reference(transform, problem):
    """Each re-orientation as its own transform through ``problem.metric``."""
    center = problem.points[0].mean(dim=0).double().numpy()
    value, _ = problem.metric(transform, check_overlap=False)
    out = []
    for rotation in searches._orientation_candidates(3):
        v, overlap = problem.metric(searches._rotated_about(transform, rotation, center), check_overlap=False)
        out.append((float(v[0]), float(overlap)))
    return float(value[0]), out


@pytest.mark.parametrize("interpolation", ["linear", "bspline"])
@pytest.mark.parametrize("masked", [False, True])
@torch.no_grad()
def test_batched_orientation_scores_match_one_at_a_time(level, interpolation, masked, monkeypatch):
    opts = build_options(["affine"])
    stage = replace(opts.stage("affine"), interpolation=interpolation)
    problem, _ = level_problem(level[int(masked)], stage, opts, seed=3, last_level=False)
    g = np.random.default_rng(0)
    matrix = np.eye(4)
    matrix[:3, :3] += 0.05 * g.standard_normal((3, 3))
    matrix[:3, 3] = [4.0, -6.0, 2.0]
    transform = Affine.from_matrix(matrix, center=problem.points[0].mean(dim=0).double().numpy())
    # a chunk of 7 candidates' points: the batch is split into 5 chunks, the last one short
    monkeypatch.setattr(searches, "ORIENTATION_CHUNK_POINTS", 7 * problem.points.shape[1])
    value, scores = searches._orientation_scores(transform, problem)
    ref_value, ref = _reference(transform, problem)
    assert value == pytest.approx(ref_value, rel=1e-5)
    key = lambda r: tuple(np.round(r, 6).ravel())  # noqa: E731
    expected = {key(r): v for (v, o), r in zip(ref, searches._orientation_candidates(3)) if o >= searches.MIN_OVERLAP}
    # the same rotations pass the overlap rule, with the same MI to float32 rounding of the
    # mapped points (the batch maps about the samples' centre, a transform about its own)
    assert {key(r) for _, r in scores} == set(expected) and len(expected) > 20
    for v, r in scores:
        assert v == pytest.approx(expected[key(r)], rel=1e-4, abs=1e-5)
    assert [v for v, _ in scores] == sorted((v for v, _ in scores), reverse=True)


def test_scoring_problem_caps_samples_and_interpolates_linearly(level):
    opts = build_options(["affine"])
    stage = replace(opts.stage("affine"), samples=50_000)
    problem = searches._scoring_problem(level[0], stage, opts, seed=1)
    full, _ = level_problem(level[0], stage, opts, seed=1, last_level=False)
    assert problem.interpolation == "linear"
    assert problem.points.shape[1] == min(full.points.shape[1], searches.ORIENTATION_SAMPLES)
    small = searches._scoring_problem(level[0], replace(stage, samples=1000), opts, seed=1)
    assert small.points.shape[1] == 1000


def test_orientation_candidates_are_the_axis_turns_and_45_degree_rotations():
    """Written out without scipy: checked against scipy's rotation vectors."""
    from scipy.spatial.transform import Rotation

    for ndim, count in ((2, 5), (3, 29)):
        candidates = searches._orientation_candidates(ndim)
        assert len(candidates) == count
        for r in candidates:
            np.testing.assert_allclose(r @ r.T, np.eye(ndim), atol=1e-12)
            assert np.linalg.det(r) == pytest.approx(1.0)
    turns = [Rotation.from_rotvec(sign * np.pi / 4 * axis).as_matrix() for axis in np.eye(3) for sign in (1.0, -1.0)]
    np.testing.assert_allclose(np.stack(searches._orientation_candidates(3)[-6:]), np.stack(turns), atol=1e-15)
    angles = [np.degrees(np.arctan2(r[1, 0], r[0, 0])) for r in searches._orientation_candidates(2)[-2:]]
    np.testing.assert_allclose(angles, [45.0, -45.0])
