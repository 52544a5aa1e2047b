"""Realistic cases (issue 15) at 4 mm: a partial field of view, a bias field, header rotations,
and the quality flag / ``--strict`` exit code when a registration fails.

References are the known transforms the cases are built with (closed form): errors are mean
distances (mm) between the found and the true fixed->moving mapping over the fixed brain.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from miregister.registration import register
from miregister.registration.quality import DoubtfulRegistrationError, assess
from registration_cases import (
    apply_matrix,
    bias_case_4mm,
    header_rotation_case_4mm,
    inside,
    perturb_header,
    rigid_matrix,
    slab_case_4mm,
)


def _error(matrix: np.ndarray, truth: np.ndarray, points: np.ndarray) -> float:
    return float(np.linalg.norm(apply_matrix(matrix, points) - apply_matrix(truth, points), axis=1).mean())


@pytest.mark.slow
def test_slab_recovered_and_consistent_under_header_perturbation():
    """A 10-slice oblique slab low in the brain: the moments start is ~40 mm off along the slab
    normal; the result must be within 1 mm of the truth, and registering again after a known
    10 deg / 10 mm header move P must give P o T within 1 mm over the overlapping brain."""
    fixed, moving, truth, points = slab_case_4mm()
    first = register(fixed, moving, transform="rigid", device="cpu")
    assert _error(first.matrix, truth, points) < 1.0
    assert not first.quality["doubtful"], first.quality["reasons"]
    assert any("partial field of view" in note for note in first.quality["notes"])

    p = rigid_matrix((0.2, 1.0, 0.4), 10.0, (6.0, -8.0, 0.0), points.mean(axis=0))
    second = register(fixed, perturb_header(moving, p), transform="rigid", device="cpu")
    d = np.linalg.norm(apply_matrix(second.matrix, points) - apply_matrix(p @ first.matrix, points), axis=1)
    assert d.mean() < 1.0 and d.max() < 2.0


def test_bias_field_affine():
    """A 35 % smooth multiplicative bias field on the moving image: affine within a quarter voxel
    (1 mm at 4 mm; without the field this 4 mm case ends 0.46 mm off, SimpleITK's lean set-up
    0.54 mm; with it 0.73 and 0.69 mm; the 2 mm benchmark is in benchmarks/RESULTS.md)."""
    fixed, moving, truth, points = bias_case_4mm()
    result = register(fixed, moving, transform="affine", device="cpu")
    assert _error(result.matrix, truth, points) < 1.0
    assert not result.quality["doubtful"], result.quality["reasons"]


@pytest.mark.slow
@pytest.mark.parametrize("degrees, axis", [(90.0, (1.0, 0.0, 0.0)), (180.0, (0.0, 0.0, 1.0))])
def test_header_rotation_recovered_or_flagged(degrees, axis):
    """A header rotated by 90 / 180 degrees: recovered within 1 mm (by the automatic
    orientation check, said in the notes), or else flagged doubtful; never silently far off."""
    fixed, moving, truth, points = header_rotation_case_4mm(degrees, axis)
    result = register(fixed, moving, transform="rigid", device="cpu")
    error = _error(result.matrix, truth, points)
    assert error < 1.0 or result.quality["doubtful"], (error, result.quality)
    if error < 1.0:
        assert any("rotation search run automatically" in note for note in result.quality["notes"])
    assert "quality: " in result.summary()


def test_failed_registration_is_flagged_and_strict_raises():
    """No optimisation (iterations=0) and no automatic search from a 90-degree header rotation:
    the result is ~70 mm off, and the quality check must say so (the re-oriented result scores a
    higher MI); strict=True raises, carrying the result."""
    fixed, moving, truth, points = header_rotation_case_4mm(90.0)
    options = dict(transform="rigid", device="cpu", iterations=0, auto_search=False)
    result = register(fixed, moving, **options)
    assert _error(result.matrix, truth, points) > 20.0
    assert result.quality["doubtful"]
    assert any("re-oriented by 90 deg" in reason for reason in result.quality["reasons"])
    assert "DOUBTFUL" in result.summary()
    with pytest.raises(DoubtfulRegistrationError) as caught:
        register(fixed, moving, strict=True, **options)
    assert caught.value.result.quality["doubtful"]


def test_cli_strict_exits_3_and_writes_report(tmp_path):
    from miregister.cli import main

    fixed, moving, _, _ = header_rotation_case_4mm(90.0)
    sitk.WriteImage(fixed, str(tmp_path / "fixed.nii.gz"))
    sitk.WriteImage(moving, str(tmp_path / "moving.nii.gz"))
    args = ["register", str(tmp_path / "fixed.nii.gz"), str(tmp_path / "moving.nii.gz"), "-t", "rigid", "--device", "cpu",
            "--iterations", "0", "--no-auto-search", "--no-qc", "-q"]
    assert main(args + ["-o", str(tmp_path / "strict"), "--strict"]) == 3
    report = json.loads((tmp_path / "strict" / "report.json").read_text())
    assert report["quality"]["doubtful"] and report["quality"]["reasons"]
    assert main(args + ["-o", str(tmp_path / "lenient")]) == 0


def test_assess_signals():
    """Each cheap signal alone makes a result doubtful; none, not."""
    history = [{"overlap": 0.8}]
    good = {"before": {"soft_bins": 0.2, "kde": 0.3, "knn": 0.2}, "after": {"soft_bins": 0.5, "kde": 0.6, "knn": 0.5}}
    assert not assess(history, good, [], {"mi": 1.0, "best_other": 0.5, "best_other_rotation_deg": 90.0})["doubtful"]
    assert assess([{"overlap": 0.05}], good, [], None)["doubtful"]
    assert assess(history, good, [], {"mi": 1.0, "best_other": 1.2, "best_other_rotation_deg": 180.0})["doubtful"]
    disagree = {"before": good["before"], "after": {"soft_bins": 0.5, "kde": 0.25, "knn": 0.5}}
    assert "KDE" in assess(history, disagree, [], None)["reasons"][0]
    unchanged = {"before": good["after"], "after": {"soft_bins": 0.5, "kde": 0.599, "knn": 0.499}}  # aligned inputs: noise
    assert not assess(history, unchanged, [], None)["doubtful"]
    worse = {"before": good["after"], "after": good["before"]}
    assert "soft-bins MI fell" in assess(history, worse, [], None)["reasons"][0]
    folded = dict(good, jacobian={"folded_fraction": 0.01})
    assert assess(history, folded, [], None)["doubtful"]
    note = assess(history, good, [{"note": "rotation search run automatically because x"}], None)["notes"]
    assert note == ["rotation search run automatically because x"]


def test_inside_helper_matches_sitk():
    """The test helper's field-of-view test agrees with SimpleITK's index conversion."""
    _, moving, truth, points = slab_case_4mm()
    mapped = apply_matrix(truth, points[:200])
    ours = inside(moving, mapped)
    theirs = []
    for p in mapped:
        index = np.asarray(moving.TransformPhysicalPointToContinuousIndex(p.tolist()))
        theirs.append(bool(np.all(index >= -0.5) and np.all(index <= np.asarray(moving.GetSize()) - 0.5)))
    assert ours.tolist() == theirs


def test_axis_rotations_are_the_proper_cube_rotations():
    """The orientation check's candidates: the 23 non-identity rotations of the cube group in 3D
    (3 in 2D), each orthogonal with det +1, all distinct, closed under composition with the identity."""
    from miregister.registration.searches import axis_rotations as _axis_rotations

    for ndim, count in ((3, 23), (2, 3)):
        rotations = _axis_rotations(ndim)
        assert len(rotations) == count
        for r in rotations:
            assert np.allclose(r @ r.T, np.eye(ndim)) and np.isclose(np.linalg.det(r), 1.0)
        assert len({tuple(r.ravel()) for r in rotations}) == count
        group = {tuple(np.eye(ndim).ravel())} | {tuple(r.ravel()) for r in rotations}
        assert all(tuple((a @ b).ravel()) in group for a in rotations for b in rotations)


@pytest.mark.slow
def test_thick_slab_under_header_perturbation_keeps_its_overlap():
    """The benchmark's 28-slice slab (2 x 2 x 3.5 mm, 20 deg tilt) under its first header
    perturbation: its coarsest level once stepped from 68 % to 5 % overlap, where the MI of a
    few hundred samples beat the MI reached, and ended 140 mm off (on the development machine,
    with the floor at the absolute minimum; whether it does so elsewhere depends on rounding).
    With the level's overlap floor (optimize.OVERLAP_KEEP) the second run must equal P o T."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import realistic

    factory, kind, _ = realistic.CASES["slab-thick"]
    case = factory()
    p = realistic.perturbations(4)[0]
    first = register(case.fixed, case.moving, transform=kind, seed=0, device="cpu", validate=False)
    points = realistic.overlap_points(case, first.matrix)
    second = register(case.fixed, realistic.perturb_header(case.moving, p), transform=kind, seed=0, device="cpu", validate=False)
    d = np.linalg.norm(realistic.apply(second.matrix, points) - realistic.apply(p @ first.matrix, points), axis=1)
    assert d.mean() < 0.1 and d.max() < 0.5 and not second.quality["doubtful"]
