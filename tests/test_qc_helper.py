"""The QC picture's helper process: same pixels as drawing in-process, a fallback on every
failure, no process left behind, and the command line starts it only when it can help."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

import miregister.qc_draw as qc_draw
from miregister.cli import main
from miregister.qc_draw import DrawingHelper, save_panels

DATA = Path(__file__).resolve().parents[1] / "data"
FIXED, MOVING = str(DATA / "mni152_t1_slice.nii.gz"), str(DATA / "mni152_t2like_slice.nii.gz")
FAST = ["-t", "translation", "--shrink-factors", "2", "--iterations", "3", "--no-validate", "-q"]


def _panels(jacobian: bool = True) -> dict:
    """Panels of the shape qc_panels returns: three views, two rows, a Jacobian row."""
    rng = np.random.default_rng(0)
    planes = [{"view": view, "right": "L", "up": "S"} for view in ("axial", "coronal", "sagittal")]
    rows = [{"label": label, "checkerboards": [rng.random((40, 30)) for _ in planes],
             "histogram": np.log1p(rng.integers(0, 50, (64, 64)).astype(float)),
             "histogram_title": f"joint histogram {label}\nMI 0.500 nats, NMI 1.100"} for label in ("before", "after")]
    panels = {"title": "miregister affine: moving on the fixed grid", "planes": planes, "tiles": 8, "rows": rows, "jacobian": None}
    if jacobian:
        values = 1.0 + 0.2 * rng.standard_normal((40, 30))
        counts, edges = np.histogram(values, bins=100)
        panels["jacobian"] = {"planes": [values for _ in planes], "vmin": 0.4, "vmax": 1.6, "counts": counts,
                              "edges": edges, "title": "det J over the fixed grid\nmin 0.40, max 1.60, folded 0.0e+00"}
    return panels


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(PILImage.open(path))


@pytest.mark.parametrize("jacobian", [False, True])
def test_the_helper_draws_the_same_pixels_as_this_process_and_then_ends(tmp_path, jacobian):
    panels = _panels(jacobian)
    helper = DrawingHelper.start()
    process = helper._process
    assert process is not None
    assert helper.save(panels, tmp_path / "helper.png")
    assert process.poll() is not None  # the helper ended after its one picture
    save_panels(panels, tmp_path / "here.png")
    drawn, reference = _pixels(tmp_path / "helper.png"), _pixels(tmp_path / "here.png")
    assert drawn.shape == reference.shape and drawn.shape[0] > 500
    np.testing.assert_array_equal(drawn, reference)
    assert not helper.save(panels, tmp_path / "again.png")  # one picture per helper
    assert not (tmp_path / "again.png").exists()


def test_a_helper_that_fails_leaves_nothing_and_says_so(tmp_path):
    helper = DrawingHelper.start()
    process = helper._process
    bad = _panels()
    del bad["rows"]  # the helper's drawing raises KeyError: it answers with an error
    assert not helper.save(bad, tmp_path / "qc.png")
    assert not (tmp_path / "qc.png").exists() and process.poll() is not None


def test_a_dead_or_missing_helper_falls_back_to_drawing_here(tmp_path, monkeypatch):
    from miregister.registration import qc

    dead = DrawingHelper.start()
    dead._process.kill()
    dead._process.wait()
    assert not dead.save(_panels(), tmp_path / "x.png")
    assert DrawingHelper(None).save(_panels(), tmp_path / "y.png") is False

    # save_qc_figure draws in-process when the helper fails: the picture is still written
    monkeypatch.setattr(qc, "qc_panels", lambda result: _panels())
    dead = DrawingHelper.start()
    dead.close()
    path = qc.save_qc_figure(object(), tmp_path / "qc.png", dead)
    save_panels(_panels(), tmp_path / "reference.png")
    np.testing.assert_array_equal(_pixels(path), _pixels(tmp_path / "reference.png"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qc.png", "reference.png"]  # no temporary left


def test_a_helper_that_cannot_start_is_inactive(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("cannot fork")

    monkeypatch.setattr(qc_draw.subprocess, "Popen", refuse)
    helper = DrawingHelper.start()
    assert helper._process is None and helper.save(_panels(), "unused.png") is False
    helper.close()


def test_the_helper_reads_its_request_as_sent(tmp_path, monkeypatch):
    """The request is one pickled (panels, path): a helper fed by hand draws it."""
    import io
    import sys
    import types

    panels = _panels(False)
    request = pickle.dumps((panels, str(tmp_path / "qc.png")))
    out = io.BytesIO()
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BytesIO(request)))
    monkeypatch.setattr(sys, "stdout", types.SimpleNamespace(buffer=out))
    qc_draw._serve()
    assert out.getvalue() == qc_draw._READY + qc_draw._DONE
    save_panels(panels, tmp_path / "reference.png")
    np.testing.assert_array_equal(_pixels(tmp_path / "qc.png"), _pixels(tmp_path / "reference.png"))


@pytest.mark.parametrize("flags, started", [([], True), (["--threads", "1"], False), (["--no-qc"], False)])
def test_the_command_line_starts_a_helper_only_when_it_can_help(tmp_path, monkeypatch, flags, started):
    monkeypatch.setattr("miregister.threads.available_cpus", lambda: 2)
    calls = []
    real = DrawingHelper.start

    def start():
        helper = real()
        calls.append(helper)
        return helper

    monkeypatch.setattr(DrawingHelper, "start", staticmethod(start))
    assert main(["register", FIXED, MOVING, "-o", str(tmp_path / "out"), *FAST, *flags]) == 0
    assert len(calls) == int(started)
    assert all(helper._process is None for helper in calls)  # used or ended: none left running
    assert (tmp_path / "out" / "qc.png").exists() == ("--no-qc" not in flags)


def test_a_refused_command_line_ends_the_helper(tmp_path, monkeypatch):
    monkeypatch.setattr("miregister.threads.available_cpus", lambda: 2)
    processes = []
    real = DrawingHelper.start

    def start():
        helper = real()
        processes.append(helper._process)
        return helper

    monkeypatch.setattr(DrawingHelper, "start", staticmethod(start))
    assert main(["register", FIXED, MOVING, "-o", str(tmp_path / "out"), *FAST, "--iterations", "-5"]) == 2
    assert len(processes) == 1 and processes[0].poll() is not None
