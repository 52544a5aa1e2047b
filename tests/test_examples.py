"""The scripts in examples/ run in quick mode and produce correct numbers and real figures.

Each example runs once per session (module-scoped fixture, in this process), with its figures
going to a temporary folder; the tests then check its returned numbers against references
computed here independently (closed-form MI, the known transform of the sample data read with
SimpleITK, SimpleITK's own resampling).
"""
from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
DATA = ROOT / "data"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
sys.path.insert(0, str(EXAMPLES))  # as when a script runs: its folder (with _common.py) is importable


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(name: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp(name)
    result = _load(name).main(["--quick", "--out", str(out)])
    result["out"] = out
    return result


def _check_figures(result: dict) -> None:
    assert result["figures"]
    for path in result["figures"]:
        path = Path(path)
        assert path.parent == result["out"] and path.is_file()
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000, f"{path} is not a real PNG figure"


@pytest.fixture(scope="module")
def gaussian(tmp_path_factory):
    return _run("gaussian_mi", tmp_path_factory)


@pytest.fixture(scope="module")
def affine(tmp_path_factory):
    return _run("multimodal_affine", tmp_path_factory)


@pytest.fixture(scope="module")
def deformable(tmp_path_factory):
    return _run("deformable", tmp_path_factory)


@pytest.fixture(scope="module")
def labels(tmp_path_factory):
    return _run("labels_to_sitk", tmp_path_factory)


# ---------------------------------------------------------------------------- gaussian_mi
def test_gaussian_figures(gaussian):
    _check_figures(gaussian)


def test_gaussian_knn_and_kde_match_closed_form(gaussian):
    truth = np.array([-0.5 * math.log(1 - r * r) for r in gaussian["rhos"]])
    assert gaussian["rhos"][0] == 0 and gaussian["rhos"][-1] == pytest.approx(0.99)
    estimates = gaussian["mean_estimate_at_n_ref"]
    assert gaussian["n_ref"] == 4096
    np.testing.assert_allclose(estimates["KNN"], truth, atol=0.05)
    np.testing.assert_allclose(estimates["KDE"], truth, atol=0.05)
    # The binned estimators are biased low at strong dependence, but not wildly off.
    for name in ("soft bins", "discrete bins"):
        np.testing.assert_allclose(estimates[name], truth, atol=0.2, err_msg=name)
        assert np.all(np.diff(estimates[name]) > 0), f"{name} does not grow with rho"


def test_gaussian_error_shrinks_with_n(gaussian):
    for name, errors in gaussian["mean_abs_error_by_n"].items():
        assert len(errors) == len(gaussian["ns"])
        assert errors[-1] < errors[0], f"{name}: error at N={gaussian['ns'][-1]} not below N={gaussian['ns'][0]}"


# ---------------------------------------------------------------------- multimodal_affine
def test_affine_figures_and_mi(affine):
    _check_figures(affine)
    for key in ("soft_bins", "kde", "knn", "nmi"):
        assert affine["mi_after"][key] > affine["mi_before"][key] + 0.1 * (key != "nmi"), key


def test_affine_transform_file_matches_known_motion(affine):
    """The saved .tfm, read by SimpleITK, maps brain points like the known rigid motion."""
    fixed = sitk.ReadImage(str(DATA / "mni152_t1_2mm.nii.gz"))
    center = fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in fixed.GetSize()])
    known = sitk.VersorRigid3DTransform()
    known.SetCenter(center)
    known.SetRotation((0.2, 0.3, 0.93), math.radians(10.0))
    known.SetTranslation((8.0, -6.0, 4.0))
    found = sitk.ReadTransform(str(affine["transform_path"]))
    brain = np.argwhere(sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / "mni152_brainmask_2mm.nii.gz"))) > 0)
    points = [fixed.TransformIndexToPhysicalPoint([int(i) for i in idx[::-1]]) for idx in brain[::400]]
    errors = [np.linalg.norm(np.subtract(found.TransformPoint(p), known.TransformPoint(p))) for p in points]
    assert np.mean(errors) < 1.5 and np.max(errors) < 3.0
    assert affine["mapping_error_mean_mm"] == pytest.approx(np.mean(errors), abs=0.3)


# ---------------------------------------------------------------------------- deformable
def test_deformable_figures_dice_and_folds(deformable):
    _check_figures(deformable)
    before, after = deformable["dice_before"], deformable["dice_after"]
    assert set(before) == set(after) == {1, 2, 3}
    for k in before:
        assert after[k] > before[k] + 0.1, f"label {k}: Dice {before[k]:.3f} -> {after[k]:.3f}"
    assert after[2] > 0.85 and after[3] > 0.85
    assert deformable["folded_fraction"] == 0.0 and deformable["det_min"] > 0
    assert deformable["mi_after"] > deformable["mi_before"]


def test_deformable_recovers_known_warp(deformable):
    assert deformable["true_det_min"] > 0  # the synthetic warp itself does not fold
    assert deformable["mapping_error_mean_mm"] < 0.5 * deformable["displacement_mean_mm"]
    assert deformable["det_correlation"] > 0.5


# ------------------------------------------------------------------------ labels_to_sitk
def test_labels_agree_with_simpleitk(labels):
    _check_figures(labels)
    assert labels["transform_path"].suffix == ".tfm"
    assert labels["agreement"] >= 0.99 and labels["agreement_labelled"] >= 0.99
    assert labels["agreement_apply"] >= 0.99


def test_labels_written_by_apply_match_independent_resampling(labels):
    """Re-check from the files alone: SimpleITK resampling vs the label map `miregister apply` wrote."""
    written = sitk.ReadImage(str(labels["labels_path"]))
    assert written.GetPixelID() == sitk.sitkUInt8
    atlas_labels = sitk.ReadImage(str(DATA / "mni152_labels_2mm.nii.gz"))
    reference = sitk.ReadImage(str(labels["out"] / "labels_subject.nii.gz"))
    expected = sitk.Resample(atlas_labels, reference, sitk.ReadTransform(str(labels["transform_path"])),
                             sitk.sitkNearestNeighbor, 0)
    got, want = sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(expected)
    assert np.mean(got == want) >= 0.99
    assert set(np.unique(got)) == {0, 1, 2, 3}
    assert min(labels["dice_vs_truth"].values()) > 0.7
