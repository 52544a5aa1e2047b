"""``register_cohort(batch=B)`` / ``miregister cohort --batch B``: same-grid pairs registered
together write what ``batch=1`` writes (transforms within 0.01 mm over the fixed grid), a
failing pair fails alone, and pairs of another grid run on their own."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("distributed")

from miregister.cli import main  # noqa: E402
from miregister.cohort import read_manifest, register_cohort  # noqa: E402
from miregister.cohort.runner import _batches  # noqa: E402
from test_cohort import DATA, FAST, SHIFTS, T1_SLICE, T2_SLICE, _shifted, _write_manifest, local_client  # noqa: E402,F401


def _grid_points(image: sitk.Image) -> np.ndarray:
    size = image.GetSize()
    index = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), -1).reshape(-1, len(size))
    return np.array([image.TransformIndexToPhysicalPoint([int(i) for i in idx]) for idx in index[::7]])


def test_batch_2_writes_what_batch_1_writes(tmp_path, local_client):  # noqa: F811
    images = tmp_path / "images"
    images.mkdir()
    for name, shift in SHIFTS.items():
        _shifted(T2_SLICE, shift, images / f"{name}.nii.gz")
    _shifted(T2_SLICE, (1000.0, 0.0), images / "far.nii.gz")
    _shifted(DATA / "mni152_t1_2mm.nii.gz", (0.0, 0.0, 0.0), images / "t1_8mm.nii.gz", shrink=4)
    _shifted(DATA / "mni152_t2like_2mm.nii.gz", (4.0, -3.0, 2.0), images / "t2_8mm.nii.gz", shrink=4)
    manifest = _write_manifest(tmp_path / "m.csv", ["id", "moving", "fixed"], [
        ["a", "images/a.nii.gz", ""], ["b", "images/b.nii.gz", ""], ["far", "images/far.nii.gz", ""],
        ["vol", "images/t2_8mm.nii.gz", "images/t1_8mm.nii.gz"], ["c", "images/c.nii.gz", ""],
    ])
    pairs = read_manifest(manifest, T1_SLICE)
    # the 2D pairs share the template's grid; the 3D pair is alone; manifest order kept within a group
    assert _batches(pairs, list(range(5)), 2) == [[0, 1], [2, 4], [3]]
    assert _batches(pairs, [1, 3, 4], 1) == [[1], [3], [4]]

    options = dict(FAST, iterations=15, qc=False)
    one = register_cohort(manifest, tmp_path / "one", template=T1_SLICE, client=local_client, **options)
    two = register_cohort(manifest, tmp_path / "two", template=T1_SLICE, client=local_client, batch=2, **options)
    assert [r["status"] for r in two.rows] == [r["status"] for r in one.rows] == ["ok", "ok", "failed", "ok", "ok"]
    assert "do not overlap" in two.rows[2]["error"]
    for row_one, row_two in zip(one.rows, two.rows):
        if row_one["status"] == "failed":
            continue
        ident = row_one["id"]
        names = json.loads((tmp_path / "two" / ident / "cohort.json").read_text())["outputs"]
        assert names == json.loads((tmp_path / "one" / ident / "cohort.json").read_text())["outputs"]
        fixed = sitk.ReadImage(str(T1_SLICE if ident != "vol" else tmp_path / "images" / "t1_8mm.nii.gz"))
        points = _grid_points(fixed)
        t1, t2 = (sitk.ReadTransform(str(tmp_path / run / ident / "transform.tfm")) for run in ("one", "two"))
        moved1 = np.array([t1.TransformPoint(p.tolist()) for p in points])
        moved2 = np.array([t2.TransformPoint(p.tolist()) for p in points])
        assert np.linalg.norm(moved1 - moved2, axis=1).mean() < 0.01, ident
        assert row_two["mi_after_soft_bins"] == pytest.approx(row_one["mi_after_soft_bins"], abs=1e-4)
        # the header shift is being undone (independent of either run)
        shift = np.array(SHIFTS.get(ident, (4.0, -3.0, 2.0)))
        centre = np.asarray(fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()]))
        assert np.linalg.norm(np.subtract(t2.TransformPoint(centre.tolist()), centre) - shift) < 0.5 * np.linalg.norm(shift)
    # a rerun keeps every finished pair, whatever the batch size
    again = register_cohort(manifest, tmp_path / "two", template=T1_SLICE, client=local_client, batch=3, **options)
    assert [r["resumed"] for r in again.rows] == [True, True, False, True, True]


def test_cli_batch_option(tmp_path, monkeypatch):
    import miregister.cohort as cohort_package
    from miregister.cohort.runner import CohortResult

    seen = {}

    def fake(manifest, out, **kwargs):
        seen.update(kwargs)
        return CohortResult([{"id": "s", "status": "ok"}], tmp_path / "summary.csv", tmp_path / "summary.html")

    monkeypatch.setattr(cohort_package, "register_cohort", fake)
    assert main(["cohort", "m.csv", "-o", str(tmp_path / "o"), "--template", "t.nii.gz", "--batch", "4", "-q"]) == 0
    assert seen["batch"] == 4
    assert main(["cohort", "m.csv", "-o", str(tmp_path / "o"), "--template", "t.nii.gz", "-q"]) == 0
    assert seen["batch"] == 1
    try:  # argparse's exit, returned or raised depending on how main() wraps it
        code = main(["cohort", "m.csv", "-o", str(tmp_path / "o"), "--batch", "0"])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2


def test_batch_must_be_a_positive_integer(tmp_path):
    from miregister.errors import UsageError

    manifest = _write_manifest(tmp_path / "m.csv", ["id", "moving"], [["s", "x.nii.gz"]])
    with pytest.raises(UsageError, match="batch must be a positive integer"):
        register_cohort(manifest, tmp_path / "out", template=T1_SLICE, batch=0)


def test_unexpected_error_of_one_pair_keeps_the_batch_s_written_pairs(tmp_path, local_client, monkeypatch):  # noqa: F811
    """A pair dying of something other than its data (here a RuntimeError) makes its batch's task
    fail after the other pairs' folders are written: those keep their rows, it gets a failed row."""
    from miregister.registration import batch as batch_module

    real = batch_module.register_batch

    def one_dies(*args, **kwargs):
        outcomes = real(*args, **kwargs)
        outcomes[1] = RuntimeError("the disk went away")
        return outcomes

    monkeypatch.setattr(batch_module, "register_batch", one_dies)
    for name, shift in SHIFTS.items():
        _shifted(T2_SLICE, shift, tmp_path / f"{name}.nii.gz")
    manifest = _write_manifest(tmp_path / "m.csv", ["id", "moving"], [[n, f"{n}.nii.gz"] for n in SHIFTS])
    result = register_cohort(manifest, tmp_path / "out", template=T1_SLICE, client=local_client, batch=3, qc=False, **FAST)
    assert [r["status"] for r in result.rows] == ["ok", "failed", "ok"]
    assert "RuntimeError: the disk went away" in result.rows[1]["error"]
    assert not (tmp_path / "out" / "b" / "cohort.json").exists()
    assert all((tmp_path / "out" / n / "cohort.json").is_file() for n in ("a", "c"))
