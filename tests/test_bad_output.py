"""Outputs, exit codes and signals: a run owns its folder, writes all or nothing, refuses an
unwritable output and a bad command line before any work, and cleans up when stopped."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import miregister.registration as registration
from miregister.cli import main
from miregister.errors import OutputError, UsageError
from miregister.outputs import STAGING_PREFIX, check_output_folder, write_run

DATA = Path(__file__).resolve().parents[1] / "data"
FIXED, MOVING = str(DATA / "mni152_t1_slice.nii.gz"), str(DATA / "mni152_t2like_slice.nii.gz")
# A few seconds of CPU: one level, a handful of iterations, no validation.
FAST = ["--shrink-factors", "2", "--iterations", "3", "--no-validate", "-q"]
LINEAR = ["-t", "translation", *FAST]
DEFORMABLE = ["-t", "bspline", "--samples", "1000", "--control-spacing", "30", *FAST]
REPO = str(Path(__file__).resolve().parents[1])


def _register(out, *flags) -> int:
    return main(["register", FIXED, MOVING, "-o", str(out), *flags])


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _staging(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(STAGING_PREFIX)] if folder.is_dir() else []


def _listed(folder: Path) -> set[str]:
    return set(json.loads((folder / "report.json").read_text())["outputs"])


@pytest.fixture
def no_register(monkeypatch):
    """Record calls of register() (the CLI looks it up at run time) and refuse to run it."""
    calls = []
    monkeypatch.setattr(registration, "register", lambda *a, **k: calls.append(1) or pytest.fail("registered"))
    return calls


# ------------------------------------------------------------------ the run owns its folder
def test_foreign_non_empty_folder_is_refused_unless_overwrite(tmp_path, capsys, no_register, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert _register(out, *LINEAR) == 1
    err = capsys.readouterr().err
    assert f"output folder {str(out)!r} is not empty (notes.txt)" in err and "--overwrite" in err
    assert no_register == [] and _contents(out) == {"notes.txt": b"mine"}
    monkeypatch.undo()
    assert _register(out, *LINEAR, "--no-qc", "--overwrite") == 0
    # The user's file stays; the run lists exactly the files it wrote, all of them present.
    assert (out / "notes.txt").read_text() == "mine"
    assert _listed(out) == {"transform.tfm", "inverse.tfm", "warped.nii.gz", "report.json"}
    assert set(_contents(out)) == _listed(out) | {"notes.txt"}


def test_rerun_is_refused_without_overwrite_and_overwrite_removes_previous_files(tmp_path, capsys):
    out = tmp_path / "out"
    assert _register(out, *DEFORMABLE) == 0
    assert set(_contents(out)) == _listed(out) == {"transform.h5", "displacement.nii.gz", "inverse.h5", "inverse_displacement.nii.gz", "warped.nii.gz", "report.json", "qc.png"}
    before = _contents(out)
    assert _register(out, *LINEAR) == 1
    err = capsys.readouterr().err
    assert "holds the result of an earlier miregister run" in err and "--overwrite" in err
    assert _contents(out) == before
    # A linear run replaces the deformable one: no transform.h5 or displacement beside transform.tfm.
    assert _register(out, *LINEAR, "--overwrite") == 0
    assert set(_contents(out)) == _listed(out) == {"transform.tfm", "inverse.tfm", "warped.nii.gz", "report.json", "qc.png"}
    # --no-qc: the old qc.png goes too.
    assert _register(out, *LINEAR, "--overwrite", "--no-qc") == 0
    assert set(_contents(out)) == _listed(out) == {"transform.tfm", "inverse.tfm", "warped.nii.gz", "report.json"}
    assert _staging(out) == []


def test_report_cannot_make_overwrite_delete_outside_the_folder(tmp_path):
    out = tmp_path / "out"
    assert _register(out, *LINEAR, "--no-qc") == 0
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    report = json.loads((out / "report.json").read_text())
    report["outputs"] += ["../victim.txt", str(victim)]
    (out / "report.json").write_text(json.dumps(report))
    assert _register(out, *LINEAR, "--no-qc", "--overwrite") == 0
    assert victim.read_text() == "keep"


# ------------------------------------------------------------------------ all or nothing
def test_staging_is_inside_the_output_folder(tmp_path, monkeypatch):
    # A mount point: every rename that leaves the output folder fails as across devices.
    out = tmp_path / "mount"
    out.mkdir()
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        inside = [Path(p).resolve().is_relative_to(out.resolve()) for p in (src, dst)]
        if not all(inside):
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(src))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    assert _register(out, *LINEAR) == 0
    assert set(_contents(out)) == _listed(out) and _staging(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mount"]  # nothing staged beside it


def test_unwritable_parent_of_an_existing_output_folder_is_fine(tmp_path, capsys):
    parent = tmp_path / "locked"
    out = parent / "out"
    out.mkdir(parents=True)
    with _locked(parent):
        code = _register(out, *LINEAR, "--no-qc")
    assert code == 0, capsys.readouterr().err
    assert set(_contents(out)) == _listed(out)


def test_a_failing_writer_leaves_the_previous_result_intact(tmp_path, capsys, monkeypatch):
    import miregister.registration.qc as qc

    out = tmp_path / "out"
    assert _register(out, *LINEAR) == 0
    before = _contents(out)

    def broken(result, path, helper=None):
        Path(path).write_bytes(b"half a picture")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(qc, "save_qc_figure", broken)
    assert _register(out, "-t", "rigid", *FAST, "--overwrite") == 1
    err = capsys.readouterr().err
    assert f"cannot write qc.png into output folder {str(out)!r}: no space left" in err and STAGING_PREFIX not in err
    assert _contents(out) == before and _staging(out) == []


def test_a_failing_move_restores_the_previous_result(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert _register(out, *DEFORMABLE) == 0
    before = _contents(out)
    real, moves_in = os.replace, []

    def replace(src, dst, *args, **kwargs):
        if Path(dst).parent == out:  # a new file moving into the folder
            moves_in.append(Path(dst).name)
            if len(moves_in) == 2:
                raise OSError(errno.EIO, "Input/output error", str(src))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    assert _register(out, *LINEAR, "--overwrite") == 1
    assert "the previous contents were restored" in capsys.readouterr().err
    assert _contents(out) == before and _staging(out) == []


def test_a_folder_named_like_an_output_changes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert _register(out, *LINEAR, "--no-qc") == 0
    (out / "qc.png").mkdir()
    before = _contents(out)
    assert _register(out, *LINEAR, "--overwrite") == 1
    err = capsys.readouterr().err
    assert f"cannot write qc.png into output folder {str(out)!r}: a folder of that name is in the way" in err
    assert _contents(out) == before and (out / "qc.png").is_dir() and _staging(out) == []


def test_write_run_refuses_a_foreign_folder_in_the_python_api(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "data.csv").write_text("1,2")
    result = registration.register(FIXED, MOVING, transform="translation", shrink_factors=2, iterations=2, validate=False)
    with pytest.raises(OutputError, match="not empty"):
        write_run(result, out)
    assert sorted(write_run(result, out, qc=False, overwrite=True)) == sorted(out / n for n in _listed(out))


# ------------------------------------------------------------------------------- staging
def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_staging_of_dead_runs_is_removed_and_live_ones_are_respected(tmp_path, capsys):
    out = tmp_path / "out"
    assert _register(out, *LINEAR, "--no-qc") == 0
    stale = out / f"{STAGING_PREFIX}{_dead_pid()}-abc123"
    stale.mkdir()
    (stale / "warped.nii.gz").write_bytes(b"\0" * 1000)  # a partial image of a killed run
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = out / f"{STAGING_PREFIX}{sleeper.pid}-def456"
        live.mkdir()
        assert _register(out, *LINEAR, "--no-qc", "--overwrite") == 1
        assert f"another miregister run (process {sleeper.pid}) is writing into output folder" in capsys.readouterr().err
        assert not stale.exists() and live.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert _register(out, *LINEAR, "--no-qc", "--overwrite") == 0
    assert _staging(out) == []


# --------------------------------------------------------------------- signals (subprocess)
_SCRIPT = textwrap.dedent("""
    import signal, sys, time
    from pathlib import Path
    # As in a terminal: a shell's background job inherits SIGINT ignored, and Python then keeps it so.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import miregister.registration as registration
    import miregister.registration.qc as qc
    from miregister.cli import main

    flag, where = Path(sys.argv[1]), sys.argv[2]
    real = registration.register

    def register(*args, **kwargs):
        flag.write_text("registering")
        return real(*args, **kwargs)

    def slow_qc(result, path, helper=None):
        Path(path).write_bytes(b"partial")
        flag.write_text("writing")
        time.sleep(120)

    registration.register = register
    qc.save_qc_figure = slow_qc
    sys.exit(main(sys.argv[3:]))
""")


def _run_and_signal(tmp_path, out, signum, when, flags):
    flag = tmp_path / "flag"
    child = subprocess.Popen(
        [sys.executable, "-c", _SCRIPT, str(flag), when, "register", FIXED, MOVING, "-o", str(out), *flags],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": REPO},
    )
    try:
        deadline = time.monotonic() + 300
        while not (flag.exists() and flag.read_text() == when):
            assert child.poll() is None, child.stderr.read()
            assert time.monotonic() < deadline, "the run never reached the point to signal"
            time.sleep(0.05)
        time.sleep(0.3)
        child.send_signal(signum)
        _, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return child.returncode, err


# A registration that is still running when the signal comes: Adam runs all its iterations.
_LONG = ["-t", "translation", "--optimizer", "adam", "--shrink-factors", "1", "--iterations", "100000",
         "--samples", "1000", "--no-validate", "-q"]


def test_sigterm_during_registration_exits_143_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    code, err = _run_and_signal(tmp_path, out, signal.SIGTERM, "registering", _LONG)
    assert code == 143 and err.strip().splitlines()[-1] == "miregister register: terminated"
    assert not out.exists()


def test_sigterm_while_writing_cleans_staging_and_keeps_the_previous_result(tmp_path):
    out = tmp_path / "out"
    assert _register(out, *LINEAR, "--no-qc") == 0
    before = _contents(out)
    code, err = _run_and_signal(tmp_path, out, signal.SIGTERM, "writing", [*LINEAR, "--overwrite"])
    assert code == 143 and "Traceback" not in err
    assert _contents(out) == before and _staging(out) == []


def test_sigint_prints_one_line_and_exits_130(tmp_path):
    out = tmp_path / "out"
    code, err = _run_and_signal(tmp_path, out, signal.SIGINT, "writing", LINEAR)
    assert code == 130 and err.strip().splitlines() == ["miregister register: interrupted"]
    assert not out.exists()  # the folder the run made is gone with its staging


# ---------------------------------------------------------------- unwritable outputs: exit 1
class _locked:
    """Make ``folder`` unwritable: read-only for a normal user, immutable for root."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __enter__(self):
        if os.geteuid() == 0:
            if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(self.folder)], capture_output=True).returncode:
                pytest.skip("root, and no chattr +i on this file system")
        else:
            self.folder.chmod(0o555)
        return self.folder

    def __exit__(self, *exc):
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(self.folder)], check=True)
        else:
            self.folder.chmod(0o755)


def test_unwritable_output_folder_exits_1_before_registering(tmp_path, capsys, no_register):
    out = tmp_path / "out"
    out.mkdir()
    with _locked(out):
        assert _register(out, *LINEAR) == 1
    err = capsys.readouterr().err
    assert f"cannot write into output folder {str(out)!r}" in err and STAGING_PREFIX not in err
    assert ("not writable" in err or "immutable" in err) and no_register == []


def test_output_folder_that_cannot_be_created_exits_1_before_registering(tmp_path, capsys, no_register):
    parent = tmp_path / "parent"
    parent.mkdir()
    out = parent / "new" / "out"
    with _locked(parent):
        assert _register(out, *LINEAR) == 1
    err = capsys.readouterr().err
    assert f"cannot create output folder {str(out)!r}" in err and STAGING_PREFIX not in err
    assert no_register == [] and list(parent.iterdir()) == []


def test_read_only_file_system_is_named(tmp_path, capsys, no_register, monkeypatch):
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    assert _register(tmp_path, *LINEAR) == 1
    assert f"cannot write into output folder {str(tmp_path)!r}: {str(tmp_path)!r} is on a read-only file system" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["empty name", "a file", "under a file", "dangling symlink", "symlink above"])
def test_impossible_output_paths_exit_1_before_registering(tmp_path, capsys, no_register, case):
    afile = tmp_path / "afile"
    afile.write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    out, expected = {
        "empty name": ("", "the output folder name is empty"),
        "a file": (afile, f"output folder {str(afile)!r} exists and is not a folder"),
        "under a file": (afile / "out", f"cannot create output folder {str(afile / 'out')!r}: {str(afile)!r} is a file"),
        "dangling symlink": (tmp_path / "link", f"output folder {str(tmp_path / 'link')!r} is a symbolic link to "),
        "symlink above": (tmp_path / "link" / "out", "which does not exist"),
    }[case]
    assert _register(out, *LINEAR) == 1
    err = capsys.readouterr().err
    assert expected in err and "Errno" not in err and no_register == []
    assert afile.read_text() == "x" and not (tmp_path / "nowhere").exists()


def test_apply_checks_its_output_before_reading_and_writes_atomically(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    missing = str(tmp_path / "no_such_image.nii.gz")
    assert main(["apply", missing, missing, "-t", missing, "-o", str(afile / "out.nii.gz")]) == 1
    err = capsys.readouterr().err
    assert f"{str(afile)!r} is a file, not a folder" in err and "no_such_image" not in err
    assert main(["apply", missing, missing, "-t", missing, "-o", str(tmp_path)]) == 1
    assert "is a folder" in capsys.readouterr().err
    out = tmp_path / "run"
    assert _register(out, *LINEAR, "--no-qc") == 0
    target = tmp_path / "applied" / "moved.nii.gz"
    assert main(["apply", MOVING, FIXED, "-t", str(out / "transform.tfm"), "-o", str(target)]) == 0
    assert target.is_file() and os.listdir(target.parent) == ["moved.nii.gz"]


# ------------------------------------------------------------------ bad command line: exit 2
@pytest.mark.parametrize(
    "flags, named",
    [
        (["--iterations", "-5"], "argument --iterations: got -5"),
        (["--iterations", "10", "-1", "3"], "argument --iterations: got [10, -1, 3]"),
        (["--bins", "1"], "argument --bins: got 1; must be a whole number >= 4 or 'auto'"),
        (["--shrink-factors", "0"], "argument --shrink-factors: got 0"),
        (["--smoothing-sigmas", "-1"], "argument --smoothing-sigmas: got -1.0; each value must be a finite number >= 0 mm"),
        (["--smoothing-sigmas", "nan"], "argument --smoothing-sigmas: got nan"),
        (["--regularization", "nan"], "argument --regularization: got nan; must be a finite number >= 0"),
        (["--control-spacing", "0"], "argument --control-spacing: got 0.0"),
        (["--samples", "5"], "argument --samples: got 5"),
        (["-t", "afine"], "argument -t/--transform: got 'afine'; unknown transform 'afine' (did you mean 'affine'?)"),
        (["-t", "rigid++affine"], "argument -t/--transform: got 'rigid++affine'; a stage name is missing"),
        (["-t", "bspline+affine"], "the deformable stage must come last"),
        (["--seed", "-1"], "argument --seed: got -1; must be a whole number from 0 to 4294967295"),
        (["--seed", str(2**64)], "argument --seed: got 18446744073709551616"),
        (["--iterations", "5", "5"], "shrink_factors [4, 2, 1] has 3 level(s), iterations has 2"),
        (["--device", "gpu"], "argument --device: got 'gpu'"),
        (["--kernel", "parzen"], "argument --kernel: got 'parzen'"),
        (["--no-such-option"], "unrecognized arguments: --no-such-option"),
        (["--iter", "5"], "unrecognized arguments: --iter"),  # no abbreviations
        (["--initialization", "centre"], "argument --initialization: invalid choice: 'centre'"),
    ],
)
def test_bad_values_exit_2_before_reading_images(tmp_path, capsys, no_register, flags, named):
    missing = str(tmp_path / "no_such_image.nii.gz")
    out = tmp_path / "out"
    assert main(["register", missing, missing, "-o", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: miregister register") and named in err
    assert "no_such_image" not in err and not out.exists() and no_register == []


def test_bad_values_of_other_commands_exit_2(tmp_path, capsys):
    missing = str(tmp_path / "no_such_image.nii.gz")
    for argv in (["mi", missing, missing, "--bins", "1"], ["mi", missing, missing, "--seed", "-3"],
                 ["apply", missing, missing, "-t", missing, "-o", "x.nii.gz", "--interpolation", "cubic"]):
        assert main(argv) == 2, argv
        assert "no_such_image" not in capsys.readouterr().err


def test_the_python_api_raises_usage_errors_that_are_value_errors():
    with pytest.raises(UsageError, match="iterations: got -5"):
        registration.register(FIXED, MOVING, iterations=-5)
    with pytest.raises(ValueError, match="unknown transform 'afine'"):
        registration.register(FIXED, MOVING, transform="afine")
    with pytest.raises(OutputError):  # an OSError too
        check_output_folder("")


# --------------------------------------------------------------------- the writers' threads
@pytest.mark.parametrize("threads", [1, 2])
def test_write_all_reports_the_first_failure_in_writer_order(tmp_path, threads):
    """Two threads write at once; the failure reported is the first in the writers' order (not
    in time), the QC picture starts first, and every write has ended when it returns."""
    import threading

    from miregister import outputs

    started, ended = [], []
    lock = threading.Lock()

    def writer(name, delay, error=None):
        def write(path):
            with lock:
                started.append(name)
            time.sleep(delay)
            with lock:
                ended.append(name)
            if error is not None:
                raise error
            path.write_text(name)
        return write

    writers = [
        ("a.txt", writer("a.txt", 0.3, OSError(28, "No space left on device"))),
        ("b.txt", writer("b.txt", 0.0, ValueError("late name, early failure"))),
        (outputs.QC_PICTURE, writer(outputs.QC_PICTURE, 0.1)),
    ]
    failure = outputs._write_all(writers, tmp_path, threads)
    assert failure is not None and failure[0] == "a.txt" and isinstance(failure[1], OSError)
    assert started[0] == outputs.QC_PICTURE
    assert sorted(ended) == sorted(started)  # nothing still writing
    assert (tmp_path / outputs.QC_PICTURE).read_text() == outputs.QC_PICTURE


def test_write_all_starts_the_named_writers_first_in_their_order(tmp_path):
    from miregister import outputs

    started = []

    def writer(name):
        def write(path):
            started.append(name)
            path.write_text(name)
        return write

    names = ["transform.h5", "warped.nii.gz", "inverse.h5", outputs.QC_PICTURE, "report.json"]
    assert outputs._write_all([(n, writer(n)) for n in names], tmp_path, 1, first=["inverse.h5", outputs.QC_PICTURE]) is None
    assert started == ["inverse.h5", outputs.QC_PICTURE, "transform.h5", "warped.nii.gz", "report.json"]


def test_a_deformable_run_starts_computing_its_inverse_first(tmp_path, monkeypatch):
    from miregister import outputs

    seen = []
    real = outputs._write_all

    def spy(writers_, staging, threads=outputs.WRITE_THREADS, first=()):
        seen.append(list(first))
        return real(writers_, staging, threads, first=first)

    monkeypatch.setattr(outputs, "_write_all", spy)
    assert _register(tmp_path / "out", *DEFORMABLE) == 0
    assert _register(tmp_path / "lin", *LINEAR) == 0
    assert seen == [["inverse.h5", outputs.QC_PICTURE], [outputs.QC_PICTURE]]


@pytest.mark.parametrize("flags, writers, torch_threads", [(["--threads", "1"], 1, 1), ([], 2, None)])
def test_threads_flag_bounds_the_writing_too(tmp_path, monkeypatch, flags, writers, torch_threads):
    """``--threads N`` holds for the whole command: the files are written on at most N threads,
    with torch on N threads meanwhile; without it the writing keeps WRITE_THREADS and torch's setting."""
    import torch

    from miregister import outputs

    seen = []
    real = outputs._write_all

    def spy(writers_, staging, threads=outputs.WRITE_THREADS, **kwargs):
        seen.append((threads, torch.get_num_threads()))
        return real(writers_, staging, threads, **kwargs)

    monkeypatch.setattr(outputs, "_write_all", spy)
    before = torch.get_num_threads()
    assert _register(tmp_path / "out", *DEFORMABLE, *flags) == 0
    assert len(seen) == 1 and seen[0][0] == writers
    assert seen[0][1] == (before if torch_threads is None else torch_threads)
    assert torch.get_num_threads() == before  # restored after the run
