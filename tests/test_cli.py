"""The miregister command line: outputs, exit codes, no half-written output."""
from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk

from miregister.cli import main

from registration_cases import slice_case


def _write_pair(tmp_path):
    fixed, moving, truth, points = slice_case()
    f, m = tmp_path / "fixed.nii.gz", tmp_path / "moving.nii.gz"
    sitk.WriteImage(fixed, str(f))
    sitk.WriteImage(moving, str(m))
    return f, m, truth, points


def test_register_writes_transform_warped_report_and_qc(tmp_path, capsys):
    f, m, truth, points = _write_pair(tmp_path)
    out = tmp_path / "out"
    assert main(["register", str(f), str(m), "-o", str(out), "--quiet"]) == 0
    for name in ("transform.tfm", "warped.nii.gz", "report.json", "qc.png"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["transform"] == "affine" and report["validation"]["after"]["knn"] > report["validation"]["before"]["knn"]
    found = sitk.ReadTransform(str(out / "transform.tfm"))
    errors = [np.linalg.norm(np.subtract(found.TransformPoint(p.tolist()), truth.TransformPoint(p.tolist()))) for p in points[::20]]
    assert np.mean(errors) < 0.3


def test_apply_resamples_label_map_with_nearest(tmp_path):
    f, m, _, _ = _write_pair(tmp_path)
    out = tmp_path / "out"
    assert main(["register", str(f), str(m), "-o", str(out), "--quiet", "--no-qc", "--no-validate", "-t", "rigid"]) == 0
    labels = sitk.Cast(sitk.ReadImage(str(m)) > 60, sitk.sitkUInt8)
    lab = tmp_path / "labels.nii.gz"
    sitk.WriteImage(labels, str(lab))
    target = tmp_path / "labels_on_fixed.nii.gz"
    code = main(["apply", str(lab), str(f), "-t", str(out / "transform.tfm"), "-o", str(target), "--interpolation", "nearest"])
    assert code == 0
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(target)))
    reference = sitk.GetArrayFromImage(sitk.Resample(labels, sitk.ReadImage(str(f)), sitk.ReadTransform(str(out / "transform.tfm")), sitk.sitkNearestNeighbor, 0))
    assert set(np.unique(ours)) <= {0, 1}
    assert (ours != reference).mean() < 0.01


def test_mi_command_prints_three_estimators(tmp_path, capsys):
    f, m, _, _ = _write_pair(tmp_path)
    assert main(["mi", str(f), str(f), "--json", "--knn-samples", "2000"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert main(["mi", str(f), str(m), "--json", "--knn-samples", "2000"]) == 0
    moved = json.loads(capsys.readouterr().out)
    for key in ("soft_bins", "kde", "knn", "nmi"):
        assert same[key] > moved[key]


def test_missing_file_exits_1_and_writes_nothing(tmp_path, capsys):
    f, _, _, _ = _write_pair(tmp_path)
    out = tmp_path / "out"
    assert main(["register", str(f), str(tmp_path / "nope.nii.gz"), "-o", str(out), "--quiet"]) == 1
    assert "nope.nii.gz" in capsys.readouterr().err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".miregister-")]


def test_unknown_transform_and_bad_flags_exit_2(tmp_path, capsys):
    f, m, _, _ = _write_pair(tmp_path)
    assert main(["register", str(f), str(m), "-o", str(tmp_path / "o"), "-t", "warp9", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: miregister register") and "argument -t/--transform: got 'warp9'" in err
    for bad in (["--no-such-flag"], ["--bins", "many"], ["--overwr"], ["--iter", "5"]):  # abbreviations are off
        assert main(["register", str(f), str(m), "-o", str(tmp_path / "o"), *bad]) == 2, bad
        assert "usage: miregister register" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_kernel_flag_reaches_the_metric_and_is_checked(tmp_path, capsys):
    f, m, _, _ = _write_pair(tmp_path)
    out = tmp_path / "out"
    flags = ["--quiet", "--no-qc", "--no-validate", "-t", "rigid"]
    assert main(["register", str(f), str(m), "-o", str(out), *flags, "--kernel", "gaussian,bspline"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["options"]["kernel"] == ["gaussian", "bspline"]
    assert report["history"][-1]["kernel"] == ["gaussian", "bspline"]
    assert report["history"][0]["kernel"] == ["bspline", "bspline"]  # coarse levels: the moving kernel on both axes
    assert main(["register", str(f), str(m), "-o", str(tmp_path / "bad"), *flags, "--kernel", "bspline,box"]) == 2
    assert "argument --kernel" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main(["register", str(f), str(m), "-o", str(tmp_path / "bad"), "--kernel", "box,bspline,box"]) == 2


def test_unwritable_output_and_bad_device_are_refused_before_registering(tmp_path, capsys, monkeypatch):
    import miregister.registration as registration

    f, m, _, _ = _write_pair(tmp_path)
    calls = []
    real = registration.register
    monkeypatch.setattr(registration, "register", lambda *a, **k: calls.append(1) or real(*a, **k))
    existing_file = tmp_path / "taken"
    existing_file.write_text("not a folder")
    assert main(["register", str(f), str(m), "-o", str(existing_file), "--quiet"]) == 1
    assert "exists and is not a folder" in capsys.readouterr().err and existing_file.read_text() == "not a folder"
    out = tmp_path / "out"
    assert main(["register", str(f), str(m), "-o", str(out), "-t", "affine+bspline", "--transform-format", "tfm", "-q"]) == 2
    assert "argument --transform-format: got 'tfm'; a deformable transform is written as h5" in capsys.readouterr().err
    assert not out.exists()
    assert main(["register", str(f), str(m), "-o", str(out), "--device", "tpu", "-q"]) == 2
    assert "argument --device: got 'tpu'; choose from 'cpu', 'cuda', 'cuda:N' or 'auto'" in capsys.readouterr().err
    assert not out.exists()
    assert calls == []  # none ran a registration


def test_console_entry_exits_fast_with_the_code_and_complete_outputs(tmp_path):
    """``python -m miregister`` (the console script's entry, which skips the interpreter's teardown
    after register/apply/mi): stdout through a pipe arrives whole, the exit codes are main()'s,
    and the files written are complete (SimpleITK reads them back)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": repo}

    def run(*words):
        return subprocess.run([sys.executable, "-m", "miregister", *words], capture_output=True, text=True, env=env, timeout=300)

    f, m, _, _ = _write_pair(tmp_path)
    out = tmp_path / "out"
    done = run("register", str(f), str(m), "-o", str(out), "-t", "rigid", "--no-qc")
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout.splitlines()[-1] and str(out) in done.stdout  # the last printed line arrived
    assert sitk.ReadImage(str(out / "warped.nii.gz")).GetSize() == sitk.ReadImage(str(f)).GetSize()
    assert json.loads((out / "report.json").read_text())["transform"] == "rigid"
    measured = run("mi", str(f), str(out / "warped.nii.gz"), "--json", "--knn-samples", "500")
    assert measured.returncode == 0 and json.loads(measured.stdout)["soft_bins"] > 0
    missing = run("register", str(f), str(tmp_path / "absent.nii.gz"), "-o", str(tmp_path / "o2"))
    assert missing.returncode == 1 and "absent.nii.gz" in missing.stderr and not (tmp_path / "o2").exists()
    usage = run("register", str(f), str(m), "-o", str(tmp_path / "o3"), "--no-such-flag")
    assert usage.returncode == 2 and "--no-such-flag" in usage.stderr
    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("miregister ")
