"""Speed, end to end: the ``miregister`` command against the scripts a SimpleITK or ANTsPy user writes.

Run it on an idle machine (every figure is wall clock; another busy process on the same cores
makes them meaningless). Each row is the median of ``--repeats`` runs (default 3), every run a
fresh Python process, on the quick-start pair (data/mni152_t1_2mm.nii.gz fixed,
data/mni152_t2like_moved_2mm.nii.gz moving; 2 mm, 98 x 116 x 94):

(a) end to end, process start to exit: ``miregister register -t affine`` with and without the
    QC picture, against a Python script that reads both images, runs SimpleITK's lean Mattes
    affine (/work/shared/DESIGN.md "Anchors": 50 bins, random 10 % sampling, linear
    interpolation, regular-step gradient descent, learning rate 2, min step 1e-4, 300
    iterations, scales from physical shift, shrink 4/2/1, smoothing 2/1/0 voxels, moments
    initialisation) and writes the warped image and the transform;
(b) the registration alone: report.json ``timings_seconds.total`` against the SimpleITK
    script's own timer around its registration (initialiser + ``Execute``), from the same runs;
(c) deformable: ``-t rigid+affine+bspline`` against an ANTsPy ``SyN`` script (reads, registers,
    writes the warped image; its registration timed the same way);
(d) two runs started together on the same CPUs against one alone, for both tools: wall time of
    each and the CPU seconds (user + sys) of both together (threads that spin while waiting
    show up as extra CPU seconds); miregister also with torch's default OpenMP waiting
    (``GOMP_SPINCOUNT=300000``) instead of the command line's ``OMP_WAIT_POLICY=PASSIVE``, to
    show what passive waiting costs alone and saves together, and with ``--threads 1`` (no
    parallel region to wait for), affine and deformable, to weigh a single-threaded default;
and the import time of ``import miregister`` and ``miregister --help``.

miregister runs from this checkout with its bytecode compiled first (``compileall``), as an
installed package has it (pip compiles the peers' packages at install). Without it, a machine
with ``PYTHONDONTWRITEBYTECODE`` set (this project's sandbox) compiles miregister's ~60 modules
in every run, about 0.1 s that no installed copy pays.

Thread counts are each tool's default (miregister: the CPUs this process may use; SimpleITK
and ANTs: ITK's default); ``--threads N`` sets all three.

Usage::

    python benchmarks/speed.py                 # all rows, 3 repeats, writes RESULTS.md's "speed" section
    python benchmarks/speed.py --quick         # one repeat, a few iterations: checks that it runs; writes nothing
    python benchmarks/speed.py --skip-deformable --repeats 5
"""
from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FIXED = ROOT / "data" / "mni152_t1_2mm.nii.gz"
MOVING = ROOT / "data" / "mni152_t2like_moved_2mm.nii.gz"

#: The miregister command as its console script runs it (``miregister.cli:console_main``, which
#: ``python -m miregister`` calls too).
MIREGISTER = [sys.executable, "-m", "miregister"]

#: The lean SimpleITK user script: read, register (timed), write warped image and transform.
#: argv: fixed moving outdir iterations; prints {"registration_s": ...} as its last line.
SITK_SCRIPT = r"""
import json, sys, time
import SimpleITK as sitk
fixed_path, moving_path, out, iterations = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
fixed = sitk.ReadImage(fixed_path, sitk.sitkFloat32)
moving = sitk.ReadImage(moving_path, sitk.sitkFloat32)
start = time.perf_counter()
initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(3),
                                            sitk.CenteredTransformInitializerFilter.MOMENTS)
reg = sitk.ImageRegistrationMethod()
reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
reg.SetMetricSamplingStrategy(reg.RANDOM)
reg.SetMetricSamplingPercentage(0.1, 1)
reg.SetInterpolator(sitk.sitkLinear)
reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-4, numberOfIterations=iterations)
reg.SetOptimizerScalesFromPhysicalShift()
reg.SetShrinkFactorsPerLevel([4, 2, 1])
reg.SetSmoothingSigmasPerLevel([2, 1, 0])
reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
reg.SetInitialTransform(initial, inPlace=False)
transform = reg.Execute(fixed, moving)
elapsed = time.perf_counter() - start
sitk.WriteImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0), out + "/warped.nii.gz")
sitk.WriteTransform(transform, out + "/transform.tfm")
print(json.dumps({"registration_s": elapsed}))
"""

#: The ANTsPy user script: read, SyN (timed), write the warped image (transforms stay in outdir).
#: argv: fixed moving outdir quick(0/1).
ANTS_SCRIPT = r"""
import json, os, sys, time
import ants
fixed_path, moving_path, out, quick = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
fixed, moving = ants.image_read(fixed_path), ants.image_read(moving_path)
extra = {"reg_iterations": (4, 2, 0), "aff_iterations": (20, 10, 0, 0)} if quick else {}
start = time.perf_counter()
reg = ants.registration(fixed, moving, type_of_transform="SyN", outprefix=os.path.join(out, "r_"), **extra)
elapsed = time.perf_counter() - start
ants.image_write(reg["warpedmovout"], os.path.join(out, "warped.nii.gz"))
print(json.dumps({"registration_s": elapsed}))
"""


#: Row name of the miregister run with OpenMP threads that spin between parallel regions.
SPINNING = "miregister affine --no-qc, GOMP_SPINCOUNT=300000 (torch's default waiting)"
SPINNING_DEFORMABLE = "miregister rigid+affine+bspline, GOMP_SPINCOUNT=300000"
#: Row names of the single-threaded runs (``--threads 1``).
SERIAL = "miregister affine --no-qc --threads 1"
SERIAL_DEFORMABLE = "miregister rigid+affine+bspline --threads 1"


# ------------------------------------------------------------------------------ running
def _environment(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    if threads is not None:
        env["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    return env


def _start(command: Sequence[str], env: dict[str, str]) -> tuple[subprocess.Popen, float]:
    return subprocess.Popen(list(command), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), time.perf_counter()


def _finish(process: subprocess.Popen, started: float) -> dict[str, Any]:
    """Wait for ``process``; its wall seconds, CPU seconds (user + sys, from wait4) and stdout."""
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    out, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{process.args[:3]} ... failed ({process.returncode}):\n{err[-3000:]}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "stdout": out}


def run_together(commands: Sequence[Sequence[str]], env: dict[str, str]) -> list[dict[str, Any]]:
    """Start every command at once; wall and CPU seconds of each."""
    started = [_start(c, env) for c in commands]
    return [_finish(p, t) for p, t in started]


def _last_json(stdout: str) -> dict[str, Any]:
    return json.loads(stdout.strip().splitlines()[-1])


class Tools:
    """The command lines of one benchmark run (each writes into its own fresh folder)."""

    def __init__(self, work: Path, quick: bool, threads: int | None) -> None:
        self.work, self.quick, self.threads = work, quick, threads
        self.count = 0

    def _folder(self) -> Path:
        self.count += 1
        folder = self.work / f"run{self.count}"
        folder.mkdir()
        return folder

    def miregister(self, transform: str, qc: bool, threads: int | None = None) -> tuple[list[str], Path]:
        """The command line; ``threads`` overrides the run's ``--threads`` for this row."""
        out = self._folder()
        command = [*MIREGISTER, "register", str(FIXED), str(MOVING), "-t", transform, "-o", str(out), "-q"]
        if not qc:
            command.append("--no-qc")
        if self.quick:
            command += ["--iterations", "3"]
        threads = self.threads if threads is None else threads
        if threads is not None:
            command += ["--threads", str(threads)]
        return command, out

    def simpleitk(self) -> tuple[list[str], Path]:
        out = self._folder()
        return [sys.executable, "-c", SITK_SCRIPT, str(FIXED), str(MOVING), str(out), "5" if self.quick else "300"], out

    def ants(self) -> tuple[list[str], Path]:
        out = self._folder()
        return [sys.executable, "-c", ANTS_SCRIPT, str(FIXED), str(MOVING), str(out), "1" if self.quick else "0"], out


def _registration_seconds(result: dict[str, Any], out: Path) -> float:
    """The registration's own time: report.json's total (miregister) or the script's timer."""
    report = out / "report.json"
    if report.exists():
        return float(json.loads(report.read_text())["timings_seconds"]["total"])
    return float(_last_json(result["stdout"])["registration_s"])


def measure_alone(rows: dict[str, tuple[Callable[[], tuple[list[str], Path]], dict[str, str]]],
                  repeats: int) -> dict[str, dict[str, Any]]:
    """Each row's median wall, CPU and registration seconds over ``repeats`` runs, one at a time.

    The rows take turns (one run of each row per round, ``repeats`` rounds) rather than one
    row's runs in a row: on a machine whose speed drifts over minutes (a shared VM) the drift
    then slows every row alike instead of whichever rows ran in a slow minute. ``walls`` keeps
    every round's wall seconds, so ratios can be taken within a round.
    """
    samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in rows}
    for _ in range(repeats):
        for name, (make, env) in rows.items():
            command, out = make()
            (result,) = run_together([command], env)
            samples[name].append((result["wall"], result["cpu"], _registration_seconds(result, out)))
    return {
        name: {**{key: statistics.median(r[i] for r in runs) for i, key in enumerate(("wall", "cpu", "registration"))},
               "walls": [r[0] for r in runs]}
        for name, runs in samples.items()
    }


def measure_pair(make, repeats: int, env: dict[str, str]) -> dict[str, float]:
    """Two runs of ``make()`` started together: median over repeats of the slower one's wall
    seconds and of the CPU seconds of both."""
    walls, cpus = [], []
    for _ in range(repeats):
        results = run_together([make()[0], make()[0]], env)
        walls.append(max(r["wall"] for r in results))
        cpus.append(sum(r["cpu"] for r in results))
    return {"wall": statistics.median(walls), "cpu": statistics.median(cpus)}


def import_times(repeats: int, env: dict[str, str]) -> dict[str, float]:
    """Median wall seconds of a process that only imports miregister, or prints --help."""
    commands = {
        "python -c pass (interpreter start)": [sys.executable, "-c", "pass"],
        "import miregister": [sys.executable, "-c", "import miregister"],
        "miregister --help": [*MIREGISTER, "--help"],
        "import miregister + torch (first use)": [sys.executable, "-c", "import miregister; miregister.register"],
    }
    return {
        name: statistics.median(run_together([c], env)[0]["wall"] for _ in range(repeats))
        for name, c in commands.items()
    }


# ------------------------------------------------------------------------------ report
def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per row; the median is reported (default 3)")
    parser.add_argument("--quick", action="store_true", help="1 repeat and a few iterations; checks that it runs, writes nothing")
    parser.add_argument("--threads", type=int, help="threads of every tool (default: each tool's own default)")
    parser.add_argument("--skip-deformable", action="store_true", help="no rigid+affine+bspline / SyN rows")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    env = _environment(args.threads)
    compileall.compile_dir(str(ROOT / "miregister"), quiet=1)  # as installed (see the notes above)

    with tempfile.TemporaryDirectory(prefix="miregister-speed-") as tmp:
        tools = Tools(Path(tmp), args.quick, args.threads)
        # torch's own OpenMP waiting (libgomp spins 300 000 polls before sleeping; the command
        # line asks for passive waiting unless the user set one of these), to weigh that choice;
        # and one thread: no parallel region wakes a sleeping thread (the cost of passive waiting
        # on the B-spline stage's many mid-sized ops), at the price of the parallel kernels.
        spinning = {**env, "GOMP_SPINCOUNT": "300000"}
        rows: dict[str, tuple[Callable[[], tuple[list[str], Path]], dict[str, str]]] = {
            "miregister affine": (lambda: tools.miregister("affine", qc=True), env),
            "miregister affine --no-qc": (lambda: tools.miregister("affine", qc=False), env),
            "SimpleITK affine script": (tools.simpleitk, env),
        }
        if not args.skip_deformable:
            rows["miregister rigid+affine+bspline"] = (lambda: tools.miregister("rigid+affine+bspline", qc=True), env)
            rows["ANTsPy SyN script"] = (tools.ants, env)
        rows[SPINNING] = (lambda: tools.miregister("affine", qc=False), spinning)
        rows[SERIAL] = (lambda: tools.miregister("affine", qc=False, threads=1), env)
        if not args.skip_deformable:
            rows[SPINNING_DEFORMABLE] = (lambda: tools.miregister("rigid+affine+bspline", qc=True), spinning)
            rows[SERIAL_DEFORMABLE] = (lambda: tools.miregister("rigid+affine+bspline", qc=True, threads=1), env)
        runs = measure_alone(rows, repeats)
        pairs = {
            "miregister affine --no-qc": measure_pair(lambda: tools.miregister("affine", qc=False), repeats, env),
            SPINNING: measure_pair(lambda: tools.miregister("affine", qc=False), repeats, spinning),
            SERIAL: measure_pair(lambda: tools.miregister("affine", qc=False, threads=1), repeats, env),
            "SimpleITK affine script": measure_pair(tools.simpleitk, repeats, env),
        }
        imports = import_times(max(repeats, 3), env)

    sitk = runs["SimpleITK affine script"]

    def peer_of(name: str) -> str:
        """The peer script a row is compared with: ANTsPy's SyN for the deformable chain, else SimpleITK's."""
        deformable = "rigid+affine+bspline" in name or name == "ANTsPy SyN script"
        return "ANTsPy SyN script" if deformable and "ANTsPy SyN script" in runs else "SimpleITK affine script"

    def per_round(name: str) -> str:
        """Median (range) over the rounds of this row's wall time over its peer's in the same round."""
        ratios = [w / s for w, s in zip(runs[name]["walls"], runs[peer_of(name)]["walls"])]
        return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"

    end_to_end = _table(
        ["run", "end to end s", "registration s", "CPU s (user+sys)", "end to end / SimpleITK script",
         "same round / peer: median (range)"],
        [[name, r["wall"], r["registration"], r["cpu"], r["wall"] / sitk["wall"], per_round(name)] for name, r in runs.items()],
    )
    concurrent = _table(
        ["run", "alone: end to end s", "two together: slower one s", "slowdown", "CPU s, 2 alone", "CPU s, 2 together"],
        [[name, runs[name]["wall"], p["wall"], p["wall"] / runs[name]["wall"], 2 * runs[name]["cpu"], p["cpu"]]
         for name, p in pairs.items()],
    )
    startup = _table(["process", "wall s"], [[name, s] for name, s in imports.items()])
    threads = "each tool's default" if args.threads is None else f"{args.threads} for every tool"
    markdown = "\n\n".join([
        "## Speed, end to end (benchmarks/speed.py)",
        f"Quick-start pair (2 mm, 98 x 116 x 94), affine and deformable; median of {repeats} fresh processes per row, "
        "the rows taking turns (one run of each per round), miregister's bytecode compiled as an installed copy has it; "
        f"threads: {threads}; wall clock on an idle machine. \"registration s\" is report.json's "
        "`timings_seconds.total` for miregister and the scripts' own timer around the registration call for the "
        "peers. The SimpleITK script is the lean set-up of DESIGN.md's anchors; the ANTsPy script runs `SyN` "
        "(rigid + affine + SyN) with its defaults. The last column is each round's ratio to its peer's run of the same "
        "round (median and range over the rounds): the ANTsPy SyN script for the rigid+affine+bspline rows, the "
        "SimpleITK script for the others.",
        end_to_end,
        "Two runs started together on the same CPUs; spinning threads show as extra CPU seconds. The "
        "GOMP_SPINCOUNT rows are miregister with torch's default OpenMP waiting (spin, then sleep), which the command "
        "line replaces by OMP_WAIT_POLICY=PASSIVE unless the user sets either variable; the --threads 1 rows "
        "run one thread (no parallel region, so nothing to wait for):",
        concurrent,
        "Start-up:",
        startup,
    ])
    print(markdown)
    if args.quick or args.no_write:
        print("\n(--quick/--no-write: RESULTS.md not written)")
        return 0
    sys.path.insert(0, str(HERE))
    from results_file import machine_description, write_section

    write_section("speed", markdown + f"\n\nMachine: {machine_description()}")
    print("\nwrote the 'speed' section of benchmarks/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
