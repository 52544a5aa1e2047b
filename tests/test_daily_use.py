"""Daily use (issue 13): report provenance, one MI measurement for `mi` and `register`, --config
and reruns from a report, the iteration callback, progress output, the QC picture, sample data
in the package, and the declared dependencies."""
from __future__ import annotations

import ast
import hashlib
import json
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import miregister
from miregister import data
from miregister.cli import main
from miregister.config import load_config
from miregister.errors import UsageError
from miregister.registration import IterationInfo, register

from registration_cases import slice_case

ROOT = Path(__file__).resolve().parents[1]


def _write_pair(folder: Path) -> tuple[Path, Path]:
    fixed, moving, _, _ = slice_case()
    f, m = folder / "fixed.nii.gz", folder / "moving.nii.gz"
    sitk.WriteImage(fixed, str(f))
    sitk.WriteImage(moving, str(m))
    return f, m


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One CLI registration of the 2-D multimodal pair: (fixed, moving, out folder, report)."""
    folder = tmp_path_factory.mktemp("daily")
    f, m = _write_pair(folder)
    out = folder / "out"
    assert main(["register", str(f), str(m), "-o", str(out), "-q", "-t", "rigid+affine", "--seed", "3", "--no-qc",
                 "--shrink-factors", "2", "1", "--iterations", "30", "15"]) == 0
    return f, m, out, json.loads((out / "report.json").read_text())


def _mi_json(capsys, *args) -> dict:
    capsys.readouterr()
    assert main(["mi", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# ----------------------------------------------------------------------------- 1. provenance
def test_report_records_inputs_command_line_software_device_threads_and_bins(run):
    f, m, _, report = run
    for key, path in (("fixed", f), ("moving", m)):  # hashlib/os as the independent reference
        blob = path.read_bytes()
        assert report["inputs"][key] == {"path": str(path.resolve()), "size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    assert report["inputs"]["fixed_mask"] is None and report["inputs"]["moving_mask"] is None
    assert report["command_line"] == sys.argv  # set by the command line
    assert report["software"]["miregister"] == miregister.__version__
    assert report["software"]["torch"] == torch.__version__
    assert report["software"]["SimpleITK"] == sitk.Version_VersionString()
    assert report["device"] == "cpu" and report["threads"] == torch.get_num_threads()
    levels = report["bins"]["levels"]
    assert [(b["stage"], b["level"], b["bins"]) for b in levels] == [(h["stage"], h["level"], h["bins"]) for h in report["history"]]
    assert report["bins"]["reported_mi"] == report["validation"]["bins"] == 64
    assert "options" in report and "validation" in report and "history" in report  # existing keys kept


def test_api_report_has_no_file_records_or_command_line_for_in_memory_images():
    fixed, moving, _, _ = slice_case()
    result = register(fixed, moving, "rigid", validate=False, iterations=3, shrink_factors=1)
    report = result.report()
    assert report["inputs"] == {"fixed": None, "moving": None, "fixed_mask": None, "moving_mask": None}
    assert report["command_line"] is None


# ------------------------------------------------------------- 2. one MI measurement, two callers
def test_mi_command_gives_the_reports_before_and_after_values(run, capsys):
    f, m, out, report = run
    before, after = report["validation"]["before"], report["validation"]["after"]
    assert after["overlap_fraction"] == 1.0, "precondition: the moving image covers the fixed foreground"
    warped = _mi_json(capsys, f, out / "warped.nii.gz", "--seed", "3")
    moving = _mi_json(capsys, f, m, "--seed", "3")
    for ours, reported in ((warped, after), (moving, before)):
        assert ours["bins"] == reported["bins"] == 64 and ours["region"] == reported["region"]
        assert ours["samples"] == reported["samples"]
        for key in ("soft_bins", "nmi", "kde", "knn"):
            assert ours[key] == pytest.approx(reported[key], abs=1e-6), key
    assert "foreground" in after["region"] and "overlap" in after["region"]
    # The region is the fixed image's foreground: fewer voxels than the grid, more than the brain.
    fixed = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
    assert (fixed > 30).sum() < after["samples"] < fixed.size


def test_mi_command_table_names_bins_and_region(run, capsys):
    f, m, _, _ = run
    capsys.readouterr()
    assert main(["mi", str(f), str(m), "--region", "all", "--bins", "32", "--knn-samples", "500"]) == 0
    text = capsys.readouterr().out
    assert "all fixed voxels ∩ overlap" in text and "(32 bins)" in text


def test_summary_prints_bins_and_region(run):
    f, m, _, _ = run
    result = register(str(f), str(m), "rigid", iterations=3, shrink_factors=1, knn_samples=500)
    summary = result.summary()
    assert "64 bins" in summary and result.validation["region"] in summary


# --------------------------------------------------------------------------- 3. configuration
def test_config_unknown_key_is_a_usage_error_naming_it(tmp_path, capsys):
    f, m = _write_pair(tmp_path)
    bad = tmp_path / "params.json"
    bad.write_text(json.dumps({"transform": "rigid", "learning_rate": 0.1}))
    assert main(["register", str(f), str(m), "-o", str(tmp_path / "o"), "--config", str(bad)]) == 2
    assert "'learning_rate'" in capsys.readouterr().err
    with pytest.raises(UsageError, match="learning_rate"):
        load_config(bad)
    assert not (tmp_path / "o").exists()


def test_config_json_and_toml_agree_and_mask_paths_are_relative_to_the_file(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps(
        {"transform": "rigid+affine", "seed": 5, "iterations": {"rigid": [4, 3], "affine": [5, 2]},
         "shrink_factors": [2, 1], "kernel": ["box", "bspline"], "fixed_mask": "mask.nii.gz"}))
    (tmp_path / "p.toml").write_text(
        'transform = "rigid+affine"\nseed = 5\nshrink_factors = [2, 1]\nkernel = ["box", "bspline"]\n'
        'fixed_mask = "mask.nii.gz"\n[iterations]\nrigid = [4, 3]\naffine = [5, 2]\n')
    from_json, from_toml = load_config(tmp_path / "p.json"), load_config(tmp_path / "p.toml")
    assert from_json == from_toml
    assert from_json["fixed_mask"] == str(tmp_path / "mask.nii.gz")


def test_command_line_flags_override_the_config_file_and_the_cli_is_not_quiet(tmp_path, capsys):
    f, m = _write_pair(tmp_path)
    config = tmp_path / "params.toml"
    config.write_text('transform = "rigid"\ndevice = "auto"\nseed = 5\niterations = 4\nshrink_factors = [2, 1]\nbins = 40\n')
    out = tmp_path / "out"
    assert main(["register", str(f), str(m), "-o", str(out), "--config", str(config), "--iterations", "2", "--no-qc",
                 "--no-validate", "-t", "translation", "--device", "cpu"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["transform"] == "translation" and report["options"]["seed"] == 5 and report["options"]["device"] == "cpu"
    stage = report["stage_options"]["translation"]
    assert stage["iterations"] == [2, 2]  # the flag
    assert stage["shrink_factors"] == [2, 1] and stage["bins"] == 40  # the file
    err = capsys.readouterr().err
    assert "translation level 1/2" in err and "translation level 2/2" in err  # the CLI reports progress unless -q


def test_rerun_from_report_json_gives_the_same_transform(run, tmp_path):
    f, m, out, report = run
    again = tmp_path / "again"
    assert main(["register", str(f), str(m), "-o", str(again), "-q", "--no-qc", "--config", str(out / "report.json")]) == 0
    first, second = sitk.ReadTransform(str(out / "transform.tfm")), sitk.ReadTransform(str(again / "transform.tfm"))
    assert first.GetParameters() == second.GetParameters()  # bit-identical
    assert first.GetFixedParameters() == second.GetFixedParameters()
    rerun = json.loads((again / "report.json").read_text())
    assert rerun["options"] == report["options"] and rerun["stage_options"] == report["stage_options"]
    assert rerun["transform"] == report["transform"] == "rigid+affine"


# ------------------------------------------------------------------------------ 4. callback
def test_callback_sees_every_evaluation_with_the_historys_objective():
    fixed, moving, _, _ = slice_case()
    seen: list[IterationInfo] = []
    result = register(fixed, moving, "rigid+affine", validate=False, iterations=(6, 4), shrink_factors=(2, 1), callback=seen.append)
    for entry in result.history:
        infos = [i for i in seen if (i.stage, i.level) == (entry["stage"], entry["level"])]
        assert [i.iteration for i in infos] == list(range(1, entry["evaluations"] + 1))
        assert [i.mi for i in infos] == entry["objective"]
    assert [(i.stage, i.level) for i in seen] == sorted(((i.stage, i.level) for i in seen), key=lambda k: (["rigid", "affine"].index(k[0]), k[1]))
    assert seen[-1].transform is result.transform


def test_callback_exception_stops_the_registration():
    fixed, moving, _, _ = slice_case()

    class Enough(Exception):
        pass

    def stop(info: IterationInfo) -> None:
        if info.iteration == 3:
            raise Enough

    with pytest.raises(Enough):
        register(fixed, moving, "rigid", validate=False, callback=stop)


# ------------------------------------------------------------------------------ 5. progress
def test_api_is_quiet_by_default(capsys):
    from miregister.registration.options import RegistrationOptions

    assert RegistrationOptions().verbose is False
    fixed, moving, _, _ = slice_case()
    register(fixed, moving, "rigid", iterations=3, shrink_factors=1, knn_samples=500)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_progress_prints_one_line_per_level_off_a_terminal(capsys):
    fixed, moving, _, _ = slice_case()
    result = register(fixed, moving, "rigid", validate=False, iterations=(3, 30), shrink_factors=(2, 1), verbose=True)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == len(result.history) == 2
    for line, entry in zip(lines, result.history):
        grid = "x".join(map(str, entry["grid_size"]))
        assert line.startswith(f"rigid level {entry['level'] + 1}/2: grid {grid}, ")
        assert f"MI {entry['mi_start']:.4f} -> {entry['mi_end']:.4f} nats, {entry['evaluations']} evaluations" in line


def test_progress_bar_on_a_terminal_counts_the_evaluations_it_runs(capsys, monkeypatch):
    """L-BFGS may evaluate more often than a level's iteration budget (line search) or converge
    early: the bar counts every evaluation and its total shrinks to what ran, ending at N/N."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    fixed, moving, _, _ = slice_case()
    result = register(fixed, moving, "rigid", validate=False, iterations=(3, 30), shrink_factors=(2, 1), verbose=True)
    evaluations = [h["evaluations"] for h in result.history]
    assert evaluations[0] > 3 or evaluations[1] < 30  # the case exercises an overrun or an early stop
    evaluations = sum(evaluations)
    bars = capsys.readouterr().err.replace("\r", "\n").splitlines()
    counts = [line.split("|")[-1].split()[0] for line in bars if "rigid" in line and "|" in line]
    assert counts and counts[-1] == f"{evaluations}/{evaluations}"
    done = [tuple(map(int, c.split("/"))) for c in counts]
    assert all(n <= total for n, total in done)


# ------------------------------------------------------------------------------------ 6. QC
@pytest.mark.parametrize("direction", [
    np.eye(3),
    np.diag([-1.0, -1.0, 1.0]),                               # the sample MNI grid (RAS-like)
    np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float),     # a sagittally acquired volume
    sitk.Euler3DTransform((0, 0, 0), 0.3, -0.2, 0.35).GetMatrix(),  # oblique, < 45 deg per axis
])
def test_plane_views_are_named_like_simpleitks_orientation(direction):
    from miregister import Grid
    from miregister.registration.qc import plane_views

    direction = np.asarray(direction, float).reshape(3, 3)
    grid = Grid(size=(20, 22, 24), spacing=(1.0, 1.5, 2.0), direction=direction.ravel().tolist())
    letters = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(direction.ravel().tolist())
    view_of = {**dict.fromkeys("LR", "sagittal"), **dict.fromkeys("PA", "coronal"), **dict.fromkeys("SI", "axial")}
    planes = plane_views(grid)
    assert sorted(p["view"] for p in planes) == ["axial", "coronal", "sagittal"]
    for plane in planes:
        index_axis = 2 - plane["axis"]  # array axis 0 is index axis z
        shown = [k for k in (2, 1, 0) if k != index_axis]
        assert plane["view"] == view_of[letters[index_axis]]
        assert (plane["up"], plane["right"]) == (letters[shown[0]], letters[shown[1]])


def _deformable_result():
    """A RegistrationResult with an affine + B-spline chain on a small 3-D grid (no optimisation)."""
    from miregister import Grid, Image
    from miregister.registration.options import build_options
    from miregister.registration.result import RegistrationResult
    from miregister.transforms import Affine, BSpline, Composite
    from miregister.warp import resample

    rng = np.random.default_rng(0)
    grid = Grid(size=(24, 26, 22), spacing=(2.0, 2.0, 2.0), origin=(10.0, -5.0, 3.0))
    z, y, x = np.indices(grid.shape)
    volume = np.exp(-(((x - 11) / 6.0) ** 2 + ((y - 13) / 7.0) ** 2 + ((z - 11) / 5.0) ** 2)) * 100 + rng.normal(0, 1, grid.shape)
    fixed = Image(torch.from_numpy(volume)[None].float(), grid)
    bspline = BSpline(grid, 12.0)
    with torch.no_grad():
        bspline.coefficients.copy_(torch.from_numpy(rng.normal(0, 1.5, tuple(bspline.coefficients.shape))))
    transform = Composite([Affine(3), bspline])
    warped = resample(fixed, transform, grid)
    return RegistrationResult(transform=transform, warped=warped, fixed=fixed, moving=fixed,
                              stages=["affine", "bspline"], options=build_options(["affine", "bspline"]))


def test_qc_deformable_picture_names_views_and_tiles_and_shows_the_jacobian(tmp_path):
    import matplotlib.pyplot as plt

    from miregister.registration.qc import qc_figure, save_qc_figure

    result = _deformable_result()
    fig = qc_figure(result)
    axes = np.asarray(fig.axes[:12]).reshape(3, 4)
    titles = [ax.get_title() for ax in axes.ravel()]
    for row, label in enumerate(("before", "after")):
        for col, view in enumerate(("axial", "coronal", "sagittal")):
            assert titles[4 * row + col].startswith(f"{label}: {view}") and "F fixed / M moving" in titles[4 * row + col]
    assert [t.split("\n")[0] for t in titles[8:11]] == ["Jacobian det: axial", "Jacobian det: coronal", "Jacobian det: sagittal"]
    # The panel's values against SimpleITK's Jacobian determinant of the same displacement field.
    field = result.transform.transforms[-1].displacement_field(result.fixed.grid, dtype=torch.float64)[0].detach().numpy()
    field_image = sitk.GetImageFromArray(field, isVector=True)
    field_image.SetSpacing(result.fixed.grid.spacing)
    field_image.SetOrigin(result.fixed.grid.origin)
    reference = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(field_image))
    axial = np.asarray(axes[2, 0].images[0].get_array())
    k = result.fixed.grid.shape[0] // 2
    np.testing.assert_allclose(axial[1:-1, 1:-1], reference[k, 1:-1, 1:-1], atol=1e-6)  # interior: central differences
    assert abs(axes[2, 0].images[0].norm.vcenter - 1.0) < 1e-12  # colour map centred at det J = 1
    plt.close(fig)
    assert save_qc_figure(result, tmp_path / "qc.png").stat().st_size > 10_000


# ------------------------------------------------------------------------------ 7. sample data
def test_sample_images_are_package_data_found_by_importlib_resources():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["miregister.data"]
    assert "*.nii.gz" in patterns and "NOTICE.md" in patterns
    assert (ROOT / "miregister" / "data" / "NOTICE.md").is_file()
    names = data.list()
    assert "mni152_t1_2mm" in names and "mni152_t2like_moved_2mm" in names
    for name in names:
        path = data.path(name)
        assert path.is_file() and path.parent == ROOT / "miregister" / "data"
    image = sitk.ReadImage(str(data.path("mni152_t1_2mm")))
    assert image.GetSize() == (98, 116, 94)


def test_data_module_prints_paths_for_shells(capsys):
    from miregister.data.__main__ import main as data_main

    assert data_main(["mni152_t1_2mm"]) == 0
    assert capsys.readouterr().out.strip() == str(data.path("mni152_t1_2mm"))
    assert data_main(["no_such_image"]) == 2


# ---------------------------------------------------------------------------- 8. dependencies
def _otsu_reference(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold written out (between-class variance over bin centres), as numpy."""
    hist, edges = np.histogram(values, bins=bins)
    centers = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    return float(centers[int(np.argmax(w0 * w1 * (mean0 - mean1) ** 2))])


def test_foreground_otsu_is_scikit_images_and_matches_the_written_out_rule():
    from miregister.registration.foreground import _otsu

    for name in ("mni152_t1_2mm", "mni152_t2like_2mm", "mni152_t1_slice"):
        values = sitk.GetArrayFromImage(sitk.ReadImage(str(data.path(name)), sitk.sitkFloat64)).ravel()
        assert _otsu(values) == _otsu_reference(values)


def _imported_modules() -> set[str]:
    found = set()
    for path in (ROOT / "miregister").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def test_every_declared_dependency_is_used_and_explained():
    import re

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = [re.split(r"[<>=;\s]", spec, maxsplit=1)[0] for spec in config["project"]["dependencies"]]
    import_name = {"scikit-image": "skimage", "SimpleITK": "SimpleITK", "tomli": "tomli"}
    imported = _imported_modules()
    assert "kornia" not in declared and "h5py" not in declared
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Dependencies"):]
    section = section[: section.index("\n## ", 4)]
    for name in declared:
        assert import_name.get(name, name) in imported, f"{name} is declared but never imported"
        assert name in section, f"README's Dependencies section does not say why {name} is needed"
