"""CPU threads (the ``threads`` option, ``--threads``), OpenMP wait defaults and lazy imports."""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import miregister
from miregister.cli import main
from miregister.threads import available_cpus, set_openmp_defaults, torch_threads

from registration_cases import mapping_error, slice_case

ROOT = Path(__file__).resolve().parents[1]
# The module (``miregister.registration.register`` as an attribute is the function).
register_module = importlib.import_module("miregister.registration.register")
# A short 2D registration: the point is the thread count, not accuracy.
FAST = {"transform": "affine", "iterations": (20, 10), "shrink_factors": (2, 1), "validate": False, "device": "cpu"}


def _threads_seen_by_validate(monkeypatch) -> list[int]:
    """Record torch's thread count while the registration validates its result (mid-call)."""
    seen: list[int] = []
    original = register_module.validate

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(register_module, "validate", spy)
    return seen


def test_available_cpus_is_the_affinity_mask():
    assert available_cpus() == len(os.sched_getaffinity(0))


def test_threads_option_sets_torch_threads_for_the_call_and_restores_them(monkeypatch):
    fixed, moving, _, _ = slice_case()
    seen = _threads_seen_by_validate(monkeypatch)
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    result = miregister.register(fixed, moving, **{**FAST, "validate": True}, threads=wanted)
    assert seen == [wanted]
    assert torch.get_num_threads() == before
    assert result.options.threads == wanted and result.report()["threads"] == wanted


def test_threads_default_to_the_cpus_this_process_may_use(monkeypatch):
    fixed, moving, _, _ = slice_case()
    seen = _threads_seen_by_validate(monkeypatch)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # a caller's own setting, which the default must not inherit
    try:
        result = miregister.register(fixed, moving, **{**FAST, "validate": True})
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(previous)
    assert seen == [len(os.sched_getaffinity(0))]
    assert result.report()["threads"] == len(os.sched_getaffinity(0))


def test_threads_restored_when_the_registration_fails():
    fixed, moving, _, _ = slice_case()
    before = torch.get_num_threads()
    with pytest.raises(ValueError, match="iterations"):
        miregister.register(fixed, moving, **{**FAST, "iterations": -1}, threads=before + 1)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("bad", [0, -2, 1.5, "2", True])
def test_bad_thread_counts_are_usage_errors(bad):
    fixed, moving, _, _ = slice_case()
    with pytest.raises(miregister.UsageError, match="threads"):
        miregister.register(fixed, moving, **FAST, threads=bad)


def test_torch_threads_context_restores_on_error():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        with torch_threads(before + 1):
            assert torch.get_num_threads() == before + 1
            raise RuntimeError("inside")
    assert torch.get_num_threads() == before


def test_one_and_two_threads_give_the_same_registration():
    """Thread count changes only the order of parallel float sums: same result to rounding,
    and both near the known transform."""
    fixed, moving, truth, points = slice_case()
    one = miregister.register(fixed, moving, transform="affine", threads=1, validate=False, device="cpu")
    two = miregister.register(fixed, moving, transform="affine", threads=2, validate=False, device="cpu")
    np.testing.assert_allclose(one.matrix, two.matrix, rtol=0, atol=2e-3)

    def mapped(result):
        return lambda p: result.transform(torch.as_tensor(p, dtype=torch.float64)[None])[0].detach().numpy()

    assert mapping_error(mapped(one), truth, points[::20]) < 0.3
    assert mapping_error(mapped(two), truth, points[::20]) < 0.3


def test_cli_threads_flag_reaches_the_report(tmp_path):
    fixed, moving, _, _ = slice_case()
    f, m = tmp_path / "fixed.nii.gz", tmp_path / "moving.nii.gz"
    sitk.WriteImage(fixed, str(f))
    sitk.WriteImage(moving, str(m))
    out = tmp_path / "out"
    args = ["register", str(f), str(m), "-o", str(out), "-q", "--no-qc", "--no-validate", "--iterations", "10",
            "--shrink-factors", "2", "1"]
    assert main([*args, "--threads", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["threads"] == 1 and report["options"]["threads"] == 1
    for bad in ("0", "two"):
        assert main([*args, "--threads", bad]) == 2


def test_openmp_defaults_respect_the_users_choice():
    env: dict[str, str] = {}
    set_openmp_defaults(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
    for name, value in (("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "300000"), ("KMP_BLOCKTIME", "200")):
        env = {name: value}
        set_openmp_defaults(env)
        assert env == {name: value}


def _python(code: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), environ.get("PYTHONPATH", "")])
    environ.update(env)
    done = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_cli_sets_passive_waiting_before_torch_loads():
    code = "import os, sys, miregister.cli; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    assert _python(code) == "PASSIVE False"
    assert _python(code, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE False"


def test_import_and_help_load_no_heavy_dependency():
    heavy = ("torch", "numpy", "scipy", "matplotlib", "SimpleITK", "sklearn", "tqdm")
    code = (
        "import sys, miregister\n"
        "from miregister.cli import main\n"
        "try:\n    main(['register', '--help'])\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    assert _python(code).splitlines()[-1] == "[]"
    # The names still resolve on first use.
    code = "import miregister; print(miregister.register.__name__, miregister.Grid.__name__, miregister.mi.__name__)"
    assert _python(code) == "register Grid miregister.mi"
