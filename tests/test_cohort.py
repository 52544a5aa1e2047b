"""Cohorts: manifest checks, a two-worker local Dask cluster, resume (also after killing the
runner), a failing pair among good ones, and the summary files.

Pairs are tiny: the 2D sample slices with the moving image shifted in its header (a few mm),
one 3D pair shrunk to 8 mm, and few iterations on one pyramid level.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("distributed")

from miregister.cli import main  # noqa: E402
from miregister.cohort import read_manifest, register_cohort  # noqa: E402
from miregister.cohort.runner import fit_workers  # noqa: E402
from miregister.cohort.summary import COLUMNS  # noqa: E402
from miregister.errors import InputError, UsageError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
T1_SLICE = DATA / "mni152_t1_slice.nii.gz"
T2_SLICE = DATA / "mni152_t2like_slice.nii.gz"
# initialization="none": the far pair must fail for no overlap (a centre initialisation would rescue it).
FAST = dict(iterations=5, shrink_factors=1, smoothing_sigmas=0, samples=4000, knn_samples=2000, initialization="none")
SHIFTS = {"a": (3.0, -2.0), "b": (-4.0, 1.0), "c": (2.0, 4.0)}


def _shifted(source: Path, shift, path: Path, shrink: int = 1) -> Path:
    image = sitk.ReadImage(str(source))
    if shrink > 1:
        image = sitk.Shrink(image, [shrink] * image.GetDimension())
    image.SetOrigin([o + s for o, s in zip(image.GetOrigin(), shift)])
    sitk.WriteImage(image, str(path))
    return path


def _labels_like(image_path: Path, path: Path) -> Path:
    """A uint8 label map (4 intensity classes) on the grid of ``image_path``."""
    image = sitk.ReadImage(str(image_path))
    values = sitk.GetArrayFromImage(image).astype(float)
    labels = sitk.GetImageFromArray(np.digitize(values, np.percentile(values, [40, 70, 90])).astype(np.uint8))
    labels.CopyInformation(image)
    sitk.WriteImage(labels, str(path))
    return path


def _write_manifest(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """One cohort on a two-worker local cluster (worker processes): three 2D pairs against the
    template (one with labels), one 3D pair with its own fixed image, one pair that cannot
    overlap, and an extra 'site' column."""
    root = tmp_path_factory.mktemp("cohort")
    images = root / "images"
    images.mkdir()
    for name, shift in SHIFTS.items():
        _shifted(T2_SLICE, shift, images / f"{name}.nii.gz")
    _labels_like(images / "a.nii.gz", images / "a_labels.nii.gz")
    _shifted(T2_SLICE, (1000.0, 0.0), images / "far.nii.gz")
    _shifted(DATA / "mni152_t1_2mm.nii.gz", (0.0, 0.0, 0.0), images / "t1_8mm.nii.gz", shrink=4)
    _shifted(DATA / "mni152_t2like_2mm.nii.gz", (4.0, -3.0, 2.0), images / "t2_8mm.nii.gz", shrink=4)
    manifest = _write_manifest(root / "manifest.csv", ["id", "moving", "fixed", "labels", "site"], [
        ["a", "images/a.nii.gz", "", "images/a_labels.nii.gz", "north"],
        ["b", "images/b.nii.gz", "", "", "south"],
        ["far", "images/far.nii.gz", "", "", "south"],
        ["c", "images/c.nii.gz", "", "", "north"],
        ["vol", "images/t2_8mm.nii.gz", "images/t1_8mm.nii.gz", "", "east"],
    ])
    out = root / "out"
    result = register_cohort(manifest, out, template=T1_SLICE, workers=2, threads_per_worker=1, **FAST)
    return {"root": root, "manifest": manifest, "out": out, "result": result}


# ------------------------------------------------------------------------------ manifest
def test_manifest_problems_are_all_reported_before_any_work(tmp_path):
    good = _shifted(T2_SLICE, (1.0, 1.0), tmp_path / "good.nii.gz")
    (tmp_path / "corrupt.nii.gz").write_bytes(b"this is not an image" * 10)
    manifest = _write_manifest(tmp_path / "m.csv", ["id", "moving", "fixed"], [
        ["p1", good.name, ""],
        ["p2", "missing.nii.gz", ""],
        ["p3", "corrupt.nii.gz", ""],
        ["P1", good.name, ""],          # duplicate of p1 ignoring case
        ["../up", good.name, ""],       # unsafe id
        ["", good.name, ""],            # empty id
        ["p4", good.name, ""],          # no fixed and no template
    ])
    out = tmp_path / "out"
    with pytest.raises(InputError) as caught:
        register_cohort(manifest, out, **FAST)
    message = str(caught.value)
    for expected in ("missing.nii.gz' does not exist", "corrupt.nii.gz' cannot be read", "also used on row 2",
                     "'../up' is not a plain folder name", "id is empty", "no fixed image"):
        assert expected in message, (expected, message)
    assert re.search(r"row 8 \(id 'p4'\)", message)
    assert not out.exists()  # nothing was done
    # Given a template, the good rows pass and keep their order; paths resolve against the manifest's folder.
    ok = _write_manifest(tmp_path / "ok.csv", ["id", "moving", "note"], [["x", good.name, "n1"], ["y", str(good), ""]])
    pairs = read_manifest(ok, template=T1_SLICE)
    assert [p.id for p in pairs] == ["x", "y"]
    assert pairs[0].moving == pairs[1].moving == str(good.resolve()) and pairs[0].fixed == str(T1_SLICE.resolve())
    assert pairs[0].extra == {"note": "n1"} and pairs[1].extra == {"note": ""}


def test_manifest_needs_id_and_moving_columns(tmp_path):
    manifest = _write_manifest(tmp_path / "m.csv", ["subject", "moving"], [["s", "x.nii.gz"]])
    with pytest.raises(InputError, match="no 'id' column"):
        read_manifest(manifest, template=T1_SLICE)


def test_fit_workers_fills_the_cpus():
    assert fit_workers(None, None, cpus=8) == (8, 1)
    assert fit_workers(None, 4, cpus=8) == (2, 4)
    assert fit_workers(3, None, cpus=8) == (3, 2)
    assert fit_workers(None, None, cpus=1) == (1, 1)
    with pytest.raises(UsageError):
        fit_workers(0, None, cpus=8)


def test_slurm_without_dask_jobqueue_names_the_package(tmp_path, monkeypatch):
    _shifted(T2_SLICE, (1.0, 1.0), tmp_path / "m.nii.gz")
    manifest = _write_manifest(tmp_path / "m.csv", ["id", "moving"], [["s", "m.nii.gz"]])
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # import fails as if not installed
    with pytest.raises(UsageError, match="pip install dask-jobqueue"):
        register_cohort(manifest, tmp_path / "out", template=T1_SLICE, scheduler="slurm", **FAST)


# ------------------------------------------------------------------------------ a cohort on two workers
def test_two_worker_cluster_registers_every_good_pair(cohort):
    rows = {r["id"]: r for r in cohort["result"].rows}
    assert [r["id"] for r in cohort["result"].rows] == ["a", "b", "far", "c", "vol"]
    for ident in ("a", "b", "c", "vol"):
        assert rows[ident]["status"] == "ok", rows[ident]
        folder = cohort["out"] / ident
        for name in ("transform.tfm", "warped.nii.gz", "report.json", "qc.png", "cohort.json"):
            assert (folder / name).is_file(), (ident, name)
        # Five iterations on one level: not converged, but on its way to undo the header shift.
        transform = sitk.ReadTransform(str(folder / "transform.tfm"))
        shift = np.array(SHIFTS.get(ident, (4.0, -3.0, 2.0)))
        centre = sitk.ReadImage(str(T1_SLICE if ident != "vol" else cohort["root"] / "images" / "t1_8mm.nii.gz"))
        centre = centre.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in centre.GetSize()])
        moved = np.subtract(transform.TransformPoint(centre), centre)
        assert np.linalg.norm(moved - shift) < 0.5 * np.linalg.norm(shift), (ident, moved, shift)
        assert rows[ident]["mi_after_soft_bins"] > rows[ident]["mi_before_soft_bins"]
    # Two worker processes shared the pairs.
    assert len({rows[i]["worker"] for i in ("a", "b", "c", "vol")}) == 2
    assert cohort["result"].failed == ["far"] and not cohort["result"].ok


def test_failing_pair_is_a_row_with_its_error(cohort):
    far = next(r for r in cohort["result"].rows if r["id"] == "far")
    assert far["status"] == "failed"
    assert "do not overlap" in far["error"]
    assert not (cohort["out"] / "far").exists()


def test_labels_are_warped_with_nearest_neighbour_keeping_their_type(cohort):
    out = cohort["out"] / "a"
    warped = sitk.ReadImage(str(out / "labels_warped.nii.gz"))
    assert warped.GetPixelID() == sitk.sitkUInt8
    labels = sitk.ReadImage(str(cohort["root"] / "images" / "a_labels.nii.gz"))
    fixed = sitk.ReadImage(str(T1_SLICE))
    expected = sitk.Resample(labels, fixed, sitk.ReadTransform(str(out / "transform.tfm")), sitk.sitkNearestNeighbor, 0)
    same = sitk.GetArrayFromImage(warped) == sitk.GetArrayFromImage(expected)
    assert same.mean() > 0.999
    assert not (cohort["out"] / "b" / "labels_warped.nii.gz").exists()


def test_summary_csv_matches_each_report(cohort):
    with open(cohort["out"] / "summary.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == list(COLUMNS) + ["site"]
        rows = list(reader)
    assert [r["id"] for r in rows] == ["a", "b", "far", "c", "vol"]
    assert [r["site"] for r in rows] == ["north", "south", "south", "north", "east"]
    for row in rows:
        if row["status"] == "failed":
            assert "do not overlap" in row["error"] and row["mi_after_soft_bins"] == ""
            continue
        report = json.loads((cohort["out"] / row["id"] / "report.json").read_text())
        validation = report["validation"]
        for when in ("before", "after"):
            assert float(row[f"mi_{when}_soft_bins"]) == validation[when]["soft_bins"]
            assert float(row[f"mi_{when}_kde"]) == validation[when]["kde"]
            assert float(row[f"mi_{when}_knn"]) == validation[when]["knn"]
            assert float(row[f"nmi_{when}"]) == validation[when]["nmi"]
        assert float(row["overlap"]) == validation["after"]["overlap_fraction"]
        assert row["device"] == report["device"]
        assert row["doubtful"] == str(bool((report.get("quality") or {}).get("doubtful", False)))
        assert float(row["seconds"]) > 0 and row["worker"].startswith("tcp://")


def test_summary_html_lists_pairs_by_outlier_score_with_thumbnails(cohort):
    page = (cohort["out"] / "summary.html").read_text()
    rows = cohort["result"].rows
    # Independent ranking: failed first, then decreasing max(|robust z|) of MI after and of the gain.
    done = [r for r in rows if r["status"] == "ok"]
    after = np.array([r["mi_after_soft_bins"] for r in done])
    gain = after - np.array([r["mi_before_soft_bins"] for r in done])

    def z(x):
        mad = 1.4826 * np.median(np.abs(x - np.median(x)))
        return np.abs(x - np.median(x)) / (mad if mad > 0 else (x.std() or 1.0))

    score = np.maximum(z(after), z(gain))
    expected = ["far"] + [done[i]["id"] for i in np.argsort(-score, kind="stable")]
    listed = re.findall(r'<tr class="\w+" id="pair-([^"]+)"', page)
    assert listed == expected
    for row in done:
        assert f'<a href="{row["id"]}/qc.png"><img src="{row["id"]}/qc.png"' in page
        assert f'href="{row["id"]}/report.json"' in page
    assert "do not overlap" in page


# ------------------------------------------------------------------------------ resume
@pytest.fixture(scope="module")
def local_client():
    from distributed import Client

    client = Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0")
    yield client
    client.close()


def _mtimes(out: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/report.json")}


def test_resume_redoes_only_missing_or_changed_pairs(tmp_path, local_client):
    for name, shift in SHIFTS.items():
        _shifted(T2_SLICE, shift, tmp_path / f"{name}.nii.gz")
    manifest = _write_manifest(tmp_path / "m.csv", ["id", "moving"], [[n, f"{n}.nii.gz"] for n in SHIFTS])
    out = tmp_path / "out"
    first = register_cohort(manifest, out, template=T1_SLICE, client=local_client, qc=False, **FAST)
    assert first.ok and not any(r["resumed"] for r in first.rows)
    before = _mtimes(out)
    # Unchanged: nothing is redone.
    again = register_cohort(manifest, out, template=T1_SLICE, client=local_client, qc=False, **FAST)
    assert all(r["resumed"] for r in again.rows) and _mtimes(out) == before
    assert [r["mi_after_soft_bins"] for r in again.rows] == [r["mi_after_soft_bins"] for r in first.rows]
    # One folder deleted, one input changed (new bytes, so a new SHA-256): those two only.
    import shutil

    shutil.rmtree(out / "a")
    _shifted(T2_SLICE, (-3.0, 2.5), tmp_path / "b.nii.gz")
    third = register_cohort(manifest, out, template=T1_SLICE, client=local_client, qc=False, **FAST)
    after = _mtimes(out)
    assert {r["id"]: r["resumed"] for r in third.rows} == {"a": False, "b": False, "c": True}
    assert after["c"] == before["c"] and after["b"] != before["b"] and "a" in after
    # Other options: every pair is redone (here joining the running cluster by its scheduler's address).
    fourth = register_cohort(manifest, out, template=T1_SLICE, scheduler=local_client.scheduler.address, qc=False,
                             **{**FAST, "seed": 3})
    assert fourth.ok and not any(r["resumed"] for r in fourth.rows)


def test_cli_exit_codes(tmp_path, capsys):
    good = _shifted(T2_SLICE, (1.0, 1.0), tmp_path / "m.nii.gz")
    manifest = _write_manifest(tmp_path / "m.csv", ["id", "moving"], [["s", good.name], ["t", "missing.nii.gz"]])
    try:  # argparse's exit, returned or raised depending on how main() wraps it
        code = main(["cohort", str(manifest), "-o", str(tmp_path / "out"), "--workers", "0"])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    assert main(["cohort", str(manifest), "-o", str(tmp_path / "out"), "--template", str(T1_SLICE), "-q"]) == 1
    assert "missing.nii.gz' does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_resume_after_killing_the_runner(tmp_path):
    """SIGKILL the command once a first pair is complete: the rerun keeps the finished pairs and
    completes the others."""
    names = [f"p{i}" for i in range(6)]
    for i, name in enumerate(names):
        _shifted(T2_SLICE, (1.0 + 0.5 * i, -1.0), tmp_path / f"{name}.nii.gz")
    manifest = _write_manifest(tmp_path / "m.csv", ["id", "moving"], [[n, f"{n}.nii.gz"] for n in names])
    out = tmp_path / "out"
    command = [sys.executable, "-c", "import sys; from miregister.cli import main; sys.exit(main(sys.argv[1:]))",
               "cohort", str(manifest), "-o", str(out), "--template", str(T1_SLICE), "--workers", "1",
               "--threads-per-worker", "1", "--iterations", "10", "--shrink-factors", "1",
               "--smoothing-sigmas", "0", "--samples", "4000", "--no-qc", "-q"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    runner = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 600
        while not list(out.glob("*/cohort.json")) and runner.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert runner.poll() is None, runner.stderr.read().decode()[-2000:]
        runner.send_signal(signal.SIGKILL)
        done_at_kill = {p.parent.name for p in out.glob("*/cohort.json")}
        runner.wait(timeout=60)
    finally:
        # Make sure no worker outlives the test (they also exit on their own when the runner dies).
        try:
            os.killpg(runner.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    done_after_kill = {p.parent.name for p in out.glob("*/cohort.json")}  # a worker may finish its pair meanwhile
    assert 1 <= len(done_at_kill) < len(names)
    kept = {name: (out / name / "report.json").stat().st_mtime_ns for name in done_at_kill}
    rerun = subprocess.run(command, env=env, capture_output=True, timeout=600, start_new_session=True)
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    with open(out / "summary.csv", newline="") as handle:
        rows = {r["id"]: r for r in csv.DictReader(handle)}
    assert set(rows) == set(names) and all(r["status"] == "ok" for r in rows.values())
    resumed = {name for name, row in rows.items() if row["resumed"] == "True"}
    assert done_at_kill <= resumed <= done_after_kill and resumed != set(names)
    assert all((out / name / "cohort.json").is_file() for name in names)
    assert all((out / name / "report.json").stat().st_mtime_ns == mtime for name, mtime in kept.items())
    assert not math.isnan(float(rows[names[-1]]["mi_after_soft_bins"]))


def test_cli_passes_its_options_to_register_cohort(tmp_path, monkeypatch):
    import miregister.cohort as cohort_package
    from miregister.cohort.runner import CohortResult

    seen = {}

    def fake(manifest, out, **kwargs):
        seen.update(kwargs, manifest=manifest, out=out)
        return CohortResult([{"id": "s", "status": "ok"}], Path(out) / "summary.csv", Path(out) / "summary.html")

    monkeypatch.setattr(cohort_package, "register_cohort", fake)
    argv = ["cohort", "m.csv", "-o", str(tmp_path / "o"), "--template", "t.nii.gz", "-t", "rigid", "--workers", "3",
            "--threads-per-worker", "2", "--scheduler", "tcp://host:8786", "--retries", "2", "--iterations", "7",
            "--shrink-factors", "2", "1", "--smoothing-sigmas", "1", "0", "--seed", "4", "--no-qc", "-q"]
    assert main(argv) == 0
    assert seen["transform"] == "rigid" and seen["template"] == "t.nii.gz" and seen["manifest"] == "m.csv"
    assert (seen["workers"], seen["threads_per_worker"], seen["scheduler"], seen["retries"]) == (3, 2, "tcp://host:8786", 2)
    assert seen["iterations"] == 7 and seen["shrink_factors"] == [2, 1] and seen["smoothing_sigmas"] == [1.0, 0.0]
    assert seen["seed"] == 4 and seen["qc"] is False and seen["verbose"] is False and seen["device"] == "auto"
    if importlib.util.find_spec("miregister.config") is not None:
        config = tmp_path / "params.json"
        config.write_text(json.dumps({"transform": "rigid+affine", "iterations": 9, "bins": 32}))
        assert main(["cohort", "m.csv", "-o", str(tmp_path / "o"), "--config", str(config), "--iterations", "5", "-q"]) == 0
        # The file fills what the command line leaves unset; flags win.
        assert seen["transform"] == "rigid+affine" and seen["bins"] == 32 and seen["iterations"] == 5


def test_retries_rerun_a_pair_whose_task_died(tmp_path, local_client, monkeypatch):
    """A task dying of something other than its data (here an OSError on the first try) is run
    again with retries=1, and is a failed row with its message with retries=0."""
    from miregister.cohort import runner

    real = runner.run_pair
    tries = tmp_path / "tries"

    def flaky(pair, folder, *args):
        with open(tries, "a") as handle:
            handle.write(pair.id + "\n")
        if tries.read_text().splitlines().count(pair.id) == 1:
            raise OSError("the file server went away")
        return real(pair, folder, *args)

    monkeypatch.setattr(runner, "run_pair", flaky)
    _shifted(T2_SLICE, (2.0, 1.0), tmp_path / "m.nii.gz")
    manifest = _write_manifest(tmp_path / "m.csv", ["id", "moving"], [["s", "m.nii.gz"]])
    once = register_cohort(manifest, tmp_path / "out0", template=T1_SLICE, client=local_client, qc=False, **FAST)
    assert once.rows[0]["status"] == "failed" and "the file server went away" in once.rows[0]["error"]
    tries.unlink()
    again = register_cohort(manifest, tmp_path / "out1", template=T1_SLICE, client=local_client, retries=1, qc=False, **FAST)
    assert again.rows[0]["status"] == "ok" and tries.read_text().split() == ["s", "s"]


def test_doubtful_report_gives_a_doubtful_row_listed_after_failed_ones(tmp_path):
    from miregister.cohort import Pair
    from miregister.cohort.summary import failed_row, review_order, row_from_report

    def report(before, after, quality=None):
        out = {"device": "cpu", "validation": {
            "before": {"soft_bins": before, "kde": before, "knn": before, "nmi": 1.0},
            "after": {"soft_bins": after, "kde": after, "knn": after, "nmi": 1.1, "overlap_fraction": 0.9}}}
        if quality is not None:
            out["quality"] = quality
        return out

    pair = lambda ident: Pair(ident, "f.nii.gz", f"{ident}.nii.gz")  # noqa: E731
    rows = [row_from_report(pair(f"ok{i}"), report(0.5, 1.0 + 0.01 * i), {"seconds": 1.0}) for i in range(5)]
    rows.append(row_from_report(pair("odd"), report(0.5, 0.6), {}))  # MI after far below the cohort's
    rows.append(row_from_report(pair("flag"), report(0.5, 1.0, {"doubtful": True, "reasons": ["overlap 5 %"]}), {}))
    rows.append(failed_row(pair("bad"), "no overlap", {}))
    assert rows[-2]["status"] == "doubtful" and rows[-2]["doubtful"] is True and "overlap 5 %" in rows[-2]["error"]
    assert rows[0]["status"] == "ok" and rows[0]["doubtful"] is False and rows[0]["overlap"] == 0.9
    order = [rows[i]["id"] for i in review_order(rows)]
    assert order[:3] == ["bad", "flag", "odd"]
