"""The command line's helper process: the same QC pixels and neighbour distances as this
process computes, a fallback on every failure, no process left behind, and the command line
starts it only when it can help."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

import miregister.helper_process as helper_process
from miregister.cli import main
from miregister.helper_process import HelperProcess
from miregister.qc_draw import save_panels

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
    helper = HelperProcess.start()
    process = helper._process
    assert process is not None
    assert helper.save_picture(panels, tmp_path / "helper.png")
    assert process.poll() is not None  # the helper ended after its one picture
    save_panels(panels, tmp_path / "here.png")
    drawn, reference = _pixels(tmp_path / "helper.png"), _pixels(tmp_path / "here.png")
    assert drawn.shape == reference.shape and drawn.shape[0] > 500
    np.testing.assert_array_equal(drawn, reference)
    assert not helper.save_picture(panels, tmp_path / "again.png")  # one picture per helper
    assert not (tmp_path / "again.png").exists()


def test_a_helper_that_fails_leaves_nothing_and_says_so(tmp_path):
    helper = HelperProcess.start()
    process = helper._process
    bad = _panels()
    del bad["rows"]  # the helper's drawing raises KeyError: it answers with an error
    assert not helper.save_picture(bad, tmp_path / "qc.png")
    assert not (tmp_path / "qc.png").exists() and process.poll() is not None


def test_a_dead_or_missing_helper_falls_back_to_drawing_here(tmp_path, monkeypatch):
    from miregister.registration import qc

    dead = HelperProcess.start()
    dead._process.kill()
    dead._process.wait()
    assert not dead.save_picture(_panels(), tmp_path / "x.png")
    assert HelperProcess(None).save_picture(_panels(), tmp_path / "y.png") is False

    # save_qc_figure draws in-process when the helper fails: the picture is still written
    monkeypatch.setattr(qc, "qc_panels", lambda result: _panels())
    dead = HelperProcess.start()
    dead.close()
    path = qc.save_qc_figure(object(), tmp_path / "qc.png", dead)
    save_panels(_panels(), tmp_path / "reference.png")
    np.testing.assert_array_equal(_pixels(path), _pixels(tmp_path / "reference.png"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qc.png", "reference.png"]  # no temporary left


def test_a_helper_that_cannot_start_is_inactive(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("cannot fork")

    monkeypatch.setattr(helper_process.subprocess, "Popen", refuse)
    helper = HelperProcess.start()
    assert helper._process is None and helper.save_picture(_panels(), "unused.png") is False
    helper.close()


def test_the_helper_reads_its_requests_as_sent(tmp_path, monkeypatch):
    """Length-prefixed pickles: a helper fed by hand answers ready, a neighbour search and a
    drawing, and stops after the drawing."""
    import io
    import sys
    import types

    from miregister.neighbours import local_kth_neighbour_distance

    panels = _panels(False)
    points = np.random.default_rng(1).standard_normal((200, 2))
    requests = io.BytesIO()
    for message in (("neighbours", points, 3), ("draw", panels, str(tmp_path / "qc.png")), ("neighbours", points, 1)):
        helper_process._send(requests, message)
    requests.seek(0)
    out = io.BytesIO()
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=requests))
    monkeypatch.setattr(sys, "stdout", types.SimpleNamespace(buffer=out))
    helper_process._serve(draw=True, neighbours=True)
    out.seek(0)
    answers = []
    while (message := helper_process._receive(out)) is not None:
        answers.append(message)
    assert [a[0] for a in answers] == ["ready", "ok", "ok"]  # the last request is never read
    np.testing.assert_array_equal(answers[1][1], local_kth_neighbour_distance(points, 3))
    save_panels(panels, tmp_path / "reference.png")
    np.testing.assert_array_equal(_pixels(tmp_path / "qc.png"), _pixels(tmp_path / "reference.png"))


def _ready(helper: HelperProcess, points: np.ndarray, timeout: float = 60.0) -> np.ndarray:
    """The helper's first neighbour answer, asked until it has warmed up (it answers None before)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = helper.neighbour_distance(points, 3)
        if answer is not None:
            return answer
        assert helper._process is not None, "the helper ended instead of answering"
        time.sleep(0.05)
    raise AssertionError("the helper did not warm up in time")


def test_the_helper_answers_neighbour_searches_as_this_process_does(monkeypatch):
    import torch

    import miregister.neighbours as neighbours
    from miregister.mi import knn_mutual_information

    rng = np.random.default_rng(2)
    x = rng.standard_normal(3000)
    points = np.stack([x, 0.6 * x + 0.8 * rng.standard_normal(3000)], axis=1)
    reference = neighbours.local_kth_neighbour_distance(points, 3)
    xt, yt = torch.from_numpy(points[:, 0])[None], torch.from_numpy(points[:, 1])[None]
    expected = knn_mutual_information(xt, yt, k=3, jitter=0.01, seed=4)
    with HelperProcess.start(draw=False, neighbours=True) as helper:
        np.testing.assert_array_equal(_ready(helper, points), reference)

        def refuse(points, k):
            raise AssertionError("searched in this process although the helper is warm")

        monkeypatch.setattr(neighbours, "local_kth_neighbour_distance", refuse)
        with neighbours.delegated_to(helper.neighbour_distance):
            delegated = knn_mutual_information(xt, yt, k=3, jitter=0.01, seed=4)
        assert helper._process is not None  # a search does not end the helper
    assert float(delegated[0]) == float(expected[0])


def test_a_helper_that_fails_a_search_leaves_it_to_this_process():
    import torch

    import miregister.neighbours as neighbours
    from miregister.mi import knn_mutual_information

    rng = np.random.default_rng(3)
    points = rng.standard_normal((500, 2))
    xt, yt = torch.from_numpy(points[:, 0])[None], torch.from_numpy(points[:, 1])[None]
    expected = float(knn_mutual_information(xt, yt, k=3)[0])
    helper = HelperProcess.start(draw=False, neighbours=True)
    _ready(helper, points)
    process = helper._process
    process.kill()
    process.wait()
    with neighbours.delegated_to(helper.neighbour_distance):
        assert float(knn_mutual_information(xt, yt, k=3)[0]) == expected
    assert helper._process is None  # the failure ended (and reaped) it
    assert helper.neighbour_distance(points, 3) is None
    # a delegate's answer of the wrong shape or type is not used
    for wrong in (lambda p, k: np.zeros(3), lambda p, k: [0.0] * len(p), lambda p, k: None):
        with neighbours.delegated_to(wrong):
            assert float(knn_mutual_information(xt, yt, k=3)[0]) == expected


@pytest.mark.parametrize("flags, started", [
    (["--no-validate"], (True, False)), (["--no-validate", "--threads", "1"], None),
    (["--no-validate", "--no-qc"], None), (["--no-qc"], (False, True)), ([], (True, True)),
])
def test_the_command_line_starts_a_helper_only_when_it_can_help(tmp_path, monkeypatch, flags, started):
    monkeypatch.setattr("miregister.threads.available_cpus", lambda: 2)
    calls = []
    real = HelperProcess.start

    def start(**kwargs):
        helper = real(**kwargs)
        calls.append((helper, (kwargs["draw"], kwargs["neighbours"])))
        return helper

    monkeypatch.setattr(HelperProcess, "start", staticmethod(start))
    quick = [flag for flag in FAST if flag != "--no-validate"]
    assert main(["register", FIXED, MOVING, "-o", str(tmp_path / "out"), *quick, *flags]) == 0
    assert [work for _, work in calls] == ([started] if started else [])
    assert all(helper._process is None for helper, _ in calls)  # used or ended: none left running
    assert (tmp_path / "out" / "qc.png").exists() == ("--no-qc" not in flags)


def test_the_command_line_s_validation_uses_the_helper_and_reports_the_same(tmp_path, monkeypatch):
    """A warm helper answers the run's neighbour searches (this process's own search is made
    to fail), and report.json's KNN MI equals the Python API's."""
    import json

    import miregister.neighbours as neighbours
    from miregister.registration import register

    api = register(FIXED, MOVING, transform="translation", shrink_factors=[2], iterations=3)
    monkeypatch.setattr("miregister.threads.available_cpus", lambda: 2)
    real = HelperProcess.start

    def start(**kwargs):
        helper = real(**kwargs)
        _ready(helper, np.random.default_rng(0).standard_normal((50, 2)))
        return helper

    def refuse(points, k):
        raise AssertionError("searched in this process although the helper is warm")

    monkeypatch.setattr(HelperProcess, "start", staticmethod(start))
    monkeypatch.setattr(neighbours, "local_kth_neighbour_distance", refuse)
    flags = [flag for flag in FAST if flag != "--no-validate"]
    assert main(["register", FIXED, MOVING, "-o", str(tmp_path / "out"), *flags]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["validation"]["after"]["knn"] == api.validation["after"]["knn"]
    assert report["validation"]["before"]["knn"] == api.validation["before"]["knn"]


def test_a_refused_command_line_ends_the_helper(tmp_path, monkeypatch):
    monkeypatch.setattr("miregister.threads.available_cpus", lambda: 2)
    processes = []
    real = HelperProcess.start

    def start(**kwargs):
        helper = real(**kwargs)
        processes.append(helper._process)
        return helper

    monkeypatch.setattr(HelperProcess, "start", staticmethod(start))
    assert main(["register", FIXED, MOVING, "-o", str(tmp_path / "out"), *FAST, "--iterations", "-5"]) == 2
    assert len(processes) == 1 and processes[0].poll() is not None


def _titled(panels: dict, suffix: str) -> dict:
    return dict(panels, rows=[dict(row, histogram_title=f"joint histogram {row['label']}{suffix}") for row in panels["rows"]])


@pytest.mark.parametrize("jacobian", [False, True])
def test_a_prepared_picture_finished_with_its_titles_has_the_pixels_of_a_whole_drawing(tmp_path, jacobian):
    from miregister.qc_draw import PreparedPicture

    final = _titled(_panels(jacobian), "\nMI 0.123 nats, NMI 1.045")
    picture = PreparedPicture(_titled(_panels(jacobian), ""))  # drawn before the MI is known
    picture.finish([row["histogram_title"] for row in final["rows"]], tmp_path / "prepared.png")
    save_panels(final, tmp_path / "whole.png")
    np.testing.assert_array_equal(_pixels(tmp_path / "prepared.png"), _pixels(tmp_path / "whole.png"))
    with pytest.raises(ValueError, match="histogram titles"):
        PreparedPicture(final).finish(["only one"], tmp_path / "bad.png")


def test_the_helper_draws_a_prepared_picture_while_it_answers_searches(tmp_path):
    from miregister.neighbours import local_kth_neighbour_distance

    final = _titled(_panels(), "\nMI 0.500 nats, NMI 1.100")
    points = np.random.default_rng(6).standard_normal((2000, 2))
    helper = HelperProcess.start()
    process = helper._process
    _ready(helper, points)
    helper.prepare_picture(_titled(_panels(), ""), key="this run")
    assert helper.prepared[0] == "this run"
    # a search sent while the helper draws is answered (by its other thread), and correctly
    np.testing.assert_array_equal(helper.neighbour_distance(points, 3), local_kth_neighbour_distance(points, 3))
    assert helper.finish_picture([row["histogram_title"] for row in final["rows"]], tmp_path / "helper.png")
    assert process.poll() is not None and helper._process is None
    save_panels(final, tmp_path / "here.png")
    np.testing.assert_array_equal(_pixels(tmp_path / "helper.png"), _pixels(tmp_path / "here.png"))


def test_a_prepared_picture_that_fails_is_drawn_here(tmp_path, monkeypatch):
    from miregister.registration import qc

    bad = _panels()
    del bad["planes"]  # the helper's drawing fails: finish answers the error
    warm = np.random.default_rng(0).standard_normal((50, 2))
    helper = HelperProcess.start()
    _ready(helper, warm)
    helper.prepare_picture(bad)
    assert helper.prepared is not None
    assert not helper.finish_picture(["a", "b"], tmp_path / "qc.png")
    assert not (tmp_path / "qc.png").exists() and helper._process is None

    # save_qc_figure: a helper prepared for another result is not asked to finish it; a dead
    # helper leaves the drawing here; the picture is the same either way
    import types

    monkeypatch.setattr(qc, "qc_panels", lambda result: _panels())
    monkeypatch.setattr(qc, "_histogram_title", lambda result, label: f"joint histogram {label}unused")
    result = types.SimpleNamespace(warped=object())
    for key in (object(), result.warped):
        helper = HelperProcess.start()
        _ready(helper, warm)
        helper.prepare_picture(_panels(), key=key)
        assert helper.prepared[0] is key
        helper._process.kill()
        path = qc.save_qc_figure(result, tmp_path / "qc.png", helper)
        # another result's preparation: qc_panels(result); this result's: its panels, titles renewed
        expected = _panels() if key is not result.warped else _titled(_panels(), "unused")
        save_panels(expected, tmp_path / "expected.png")
        np.testing.assert_array_equal(_pixels(path), _pixels(tmp_path / "expected.png"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["expected.png", "qc.png"]  # no temporary left


def test_on_warped_sees_the_final_transform_and_image_before_the_validation(monkeypatch):
    import time
    import types

    from miregister.registration import register

    # The register module's clock, advanced by an hour while the hook runs: the hook's time
    # must be left out of timings["total"] (no wall-clock figure is asserted).
    offset = [0.0]
    module = sys.modules["miregister.registration.register"]
    monkeypatch.setattr(module, "time", types.SimpleNamespace(perf_counter=lambda: time.perf_counter() + offset[0]))
    seen = []

    def on_warped(partial):
        seen.append(partial)
        assert partial.validation == {} and partial.quality == {}
        offset[0] += 3600.0  # the caller's work: not the registration's time

    result = register(FIXED, MOVING, transform="translation", shrink_factors=[2], iterations=3, on_warped=on_warped)
    assert len(seen) == 1
    partial = seen[0]
    assert partial.transform is result.transform and partial.warped is result.warped
    assert partial.fixed is result.fixed and partial.history is result.history
    assert result.validation["after"] is not None
    assert 0 < result.timings["total"] < 3600.0


def test_the_command_line_s_picture_drawn_ahead_is_the_api_s_picture(tmp_path, monkeypatch):
    """A linear run has the helper draw its picture while it validates (prepare, then finish
    with the validation's MI in the titles): the same pixels as save_qc_figure in-process."""
    from miregister.registration import register
    from miregister.registration.qc import save_qc_figure

    flags = ["-t", "rigid", "--shrink-factors", "2", "--iterations", "3", "-q"]
    api = register(FIXED, MOVING, transform="rigid", shrink_factors=[2], iterations=3)
    save_qc_figure(api, tmp_path / "api.png")
    monkeypatch.setattr("miregister.threads.available_cpus", lambda: 2)
    prepared = []
    real = HelperProcess.prepare_picture

    def prepare(self, panels, key=None):
        prepared.append(key)
        return real(self, panels, key)

    monkeypatch.setattr(HelperProcess, "prepare_picture", prepare)
    real_start = HelperProcess.start

    def start(**kwargs):  # warm before the run reaches its warp (a 2-D run gets there fast)
        helper = real_start(**kwargs)
        _ready(helper, np.random.default_rng(0).standard_normal((50, 2)))
        return helper

    monkeypatch.setattr(HelperProcess, "start", staticmethod(start))
    import torch

    module = sys.modules["miregister.registration.register"]  # the module (the package's attribute is the function)
    threads = []
    real_validate = module.validate

    def validate(*args, **kwargs):
        threads.append(torch.get_num_threads())
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(module, "validate", validate)
    before = torch.get_num_threads()
    assert main(["register", FIXED, MOVING, "-o", str(tmp_path / "out"), *flags]) == 0
    assert len(prepared) == 1 and prepared[0] is not None
    assert threads == [1] and torch.get_num_threads() == before  # one CPU left to the drawing, then restored
    np.testing.assert_array_equal(_pixels(tmp_path / "out" / "qc.png"), _pixels(tmp_path / "api.png"))


def test_a_picture_that_cannot_be_prepared_is_drawn_at_the_end(tmp_path, monkeypatch):
    """The head start is an optimisation: its failure neither stops the run nor loses the picture."""
    from miregister.registration import qc

    def fail(result, helper):
        raise RuntimeError("no head start")

    monkeypatch.setattr(qc, "start_qc_picture", fail)
    monkeypatch.setattr("miregister.threads.available_cpus", lambda: 2)
    flags = [flag for flag in FAST if flag != "--no-validate"]
    assert main(["register", FIXED, MOVING, "-o", str(tmp_path / "out"), *flags]) == 0
    assert (tmp_path / "out" / "qc.png").is_file()
