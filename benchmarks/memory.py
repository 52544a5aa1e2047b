"""Memory: peak resident memory of a registration, per phase, on the sample brain at 2 mm and 1 mm.

Each case runs in a fresh Python process: it reads the fixed and moving images
(data/mni152_t1_2mm.nii.gz and data/mni152_t2like_moved_2mm.nii.gz, 2 mm, 98 x 116 x 94; or
both resampled onto a 1 mm grid of 196 x 232 x 188 over the same field of view), notes its
resident memory (RSS), then calls ``miregister.register`` with default options and finally
writes the run folder as ``miregister register --jacobian`` does (``write_run``: transform,
inverse, warped image, Jacobian image, QC picture, report). The figures are

* **MB above images**: the peak RSS of ``register`` (the highest of its phases' high-water
  marks, which is what ``getrusage(RUSAGE_SELF).ru_maxrss`` says without the resets below)
  minus the RSS after the images were read: what :mod:`miregister.registration.memory` estimates;
* **phase of peak**: the phase whose own high-water mark is the highest. Phases are marked by
  wrapping ``register``'s steps (foreground mask, pyramid levels, optimisation, final warp,
  validation and its parts, quality checks); at each phase boundary the kernel's high-water
  mark (``VmHWM``) is read and reset (``/proc/self/clear_refs`` 5), so each phase's peak is
  exact, not sampled;
* **write**: the peak while writing the run folder (not part of the estimate: the result,
  with its warped image, is alive then).

Memory figures are not timing: they may be measured on a busy machine. Fewer optimiser
iterations (``--iterations``) change no allocation size, only the time a case takes; the
table says which were used.

Usage::

    python benchmarks/memory.py                      # all cases, writes RESULTS.md's "memory" section
    python benchmarks/memory.py --cases affine-2mm bspline-2mm --no-write-results
    python benchmarks/memory.py --json new.json --baseline old.json   # with an earlier version's peaks
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FIXED = ROOT / "data" / "mni152_t1_2mm.nii.gz"
MOVING = ROOT / "data" / "mni152_t2like_moved_2mm.nii.gz"
CASES = [f"{stage}-{res}" for res in ("2mm", "1mm") for stage in ("affine", "bspline", "svf")]

#: The child process: marks phases, runs one case, prints one JSON line.
CHILD = r"""
import json, sys, tempfile, functools
stage, fixed_path, moving_path, iterations = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)

peaks, stack = {}, ["other"]
def boundary():
    # close the segment of the phase on top of the stack: its high-water mark, then reset
    hwm = status("VmHWM")
    peaks[stack[-1]] = max(peaks.get(stack[-1], 0), hwm)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

def phase(name, fn):
    @functools.wraps(fn)
    def wrapped(*a, **k):
        boundary(); stack.append(name)
        try:
            return fn(*a, **k)
        finally:
            boundary(); stack.pop()
    return wrapped

import importlib, torch, miregister
reg = importlib.import_module("miregister.registration.register")  # the package exports the function
from miregister.registration import validation as val, levels, qc
from miregister import outputs, regularizers
from miregister.transforms import displacement
for name, fn in [("input checks", "check_image"), ("initialisation", "_initial_transform"), ("foreground", "measurement_region"), ("optimisation", "_run_levels"),
                 ("optimisation", "_run_deformable"), ("search", "_translation_search"),
                 ("search", "_rotation_search"), ("final warp", "resample"), ("validation", "validate"),
                 ("quality", "assess"), ("quality", "_final_flip_check")]:
    if hasattr(reg, fn):
        setattr(reg, fn, phase(name, getattr(reg, fn)))
for name, fn in [("validation: warps", "on_fixed_grid"), ("validation: MI", "compare"),
                 ("validation: Jacobian", "jacobian_summary")]:
    if hasattr(val, fn):
        setattr(val, fn, phase(name, getattr(val, fn)))
if not hasattr(val, "jacobian_summary"):  # before the shared Jacobian function
    regularizers.jacobian_statistics = phase("validation: Jacobian", regularizers.jacobian_statistics)
levels.LevelCache._build = phase("pyramid level", levels.LevelCache._build)
levels.Level.moving_coefficients = phase("cubic coefficients", levels.Level.moving_coefficients)

fixed, moving = miregister.read_image(fixed_path), miregister.read_image(moving_path)
base = status("VmRSS")
options = {} if iterations == "default" else {"iterations": int(iterations)}
result = reg.register(fixed, moving, stage, **options)
boundary()
# ru_maxrss is the kernel's high-water mark too, which clear_refs resets: the peak of the run
# is the highest phase peak (ru_maxrss itself when no phase is marked)
register_phases = dict(peaks)
register_peak = max(register_phases.values())
peaks.clear(); stack[:] = ["write"]
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
qc.save_qc_figure = phase("write: QC", qc.save_qc_figure)
displacement.jacobian_determinant_image = phase("write: Jacobian image", displacement.jacobian_determinant_image)
with tempfile.TemporaryDirectory() as out:
    outputs.write_run(result, out + "/run", jacobian=True)
boundary()
print(json.dumps({"base": base, "register_peak": register_peak, "phases": register_phases,
                  "write_phases": dict(peaks), "voxels": fixed.grid.numel, "size": list(fixed.grid.size),
                  "jacobian": result.validation.get("jacobian")}))
"""


def one_mm_images(folder: Path) -> tuple[Path, Path]:
    """Both sample images resampled (linear) onto a 1 mm grid of twice the size, same field of view."""
    import SimpleITK as sitk

    paths = []
    for source in (FIXED, MOVING):
        image = sitk.ReadImage(str(source), sitk.sitkFloat32)
        size = [2 * n for n in image.GetSize()]
        origin = image.TransformContinuousIndexToPhysicalPoint([-0.25] * 3)  # 1 mm voxels tile the 2 mm ones
        reference = sitk.Image(size, sitk.sitkFloat32)
        reference.SetSpacing([s / 2 for s in image.GetSpacing()])
        reference.SetOrigin(origin)
        reference.SetDirection(image.GetDirection())
        finer = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 0.0)
        path = folder / source.name.replace("2mm", "1mm")
        sitk.WriteImage(finer, str(path))
        paths.append(path)
    return paths[0], paths[1]


def run_case(case: str, images: dict[str, tuple[Path, Path]], iterations: str) -> dict[str, Any]:
    stage, resolution = case.split("-")
    fixed, moving = images[resolution]
    env = dict(__import__("os").environ, PYTHONPATH=str(ROOT), MIREGISTER_MEMORY_CHECK="0")
    done = subprocess.run([sys.executable, "-c", CHILD, stage, str(fixed), str(moving), iterations],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{case} failed:\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["case"] = case
    return out


def estimate(row: dict[str, Any]) -> float:
    """What memory.estimate_peak_bytes says for the case (bytes above the images)."""
    import torch

    from miregister.grid import Grid
    from miregister.registration.memory import estimate_peak_bytes
    from miregister.registration.options import build_options

    stage = row["case"].split("-")[0]
    grid = Grid(tuple(row["size"]), (2.0 if row["case"].endswith("2mm") else 1.0,) * 3)
    return estimate_peak_bytes(grid, grid, [stage], build_options([stage]), torch.device("cpu")).host


def table(rows: list[dict[str, Any]], baseline: list[dict[str, Any]] | None = None) -> str:
    before = {row["case"]: row for row in baseline or []}
    head = "| case | voxels | phase of peak | MB above images | B/voxel | estimate MB | write peak MB above images (phase) |"
    rule = "|---|---|---|---|---|---|---|"
    if before:
        head, rule = head + " before: MB (B/voxel), phase of peak |", rule + "---|"
    lines = [head, rule]
    for row in rows:
        above = row["register_peak"] - row["base"]
        top = max(row["phases"], key=row["phases"].get)
        write_top = max(row["write_phases"], key=row["write_phases"].get)
        write = row["write_phases"][write_top] - row["base"]
        line = (
            f"| {row['case']} | {'x'.join(map(str, row['size']))} | {top} | {above / 1e6:.0f} | "
            f"{above / row['voxels']:.0f} | {estimate(row) / 1e6:.0f} | {write / 1e6:.0f} ({write_top}) |"
        )
        if before:
            old = before.get(row["case"])
            if old is None:
                line += " |"
            else:
                old_above = old["register_peak"] - old["base"]
                line += f" {old_above / 1e6:.0f} ({old_above / old['voxels']:.0f}), {max(old['phases'], key=old['phases'].get)} |"
        lines.append(line)
    return "\n".join(lines)


def phase_table(rows: list[dict[str, Any]]) -> str:
    names = list(dict.fromkeys(n for row in rows for n in (*row["phases"], *row["write_phases"])))
    lines = ["| phase | " + " | ".join(r["case"] for r in rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for name in names:
        cells = []
        for row in rows:
            value = row["phases"].get(name, row["write_phases"].get(name))
            cells.append("" if value is None else f"{(value - row['base']) / 1e6:.0f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    parser.add_argument("--iterations", default="default",
                        help="optimiser iterations per level (default: the registration's defaults)")
    parser.add_argument("--no-write-results", action="store_true", help="print only")
    parser.add_argument("--json", type=Path, help="also save the raw measurements here")
    parser.add_argument("--load", type=Path, help="measure nothing: tabulate the measurements saved by --json")
    parser.add_argument("--baseline", type=Path, help="measurements saved by --json from an earlier version: "
                        "add its peaks as a 'before' column")
    parser.add_argument("--baseline-label", default="an earlier version", help="what --baseline measured, for RESULTS.md")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))  # the estimate of this checkout's miregister, as the children use
    rows = []
    if args.load:
        rows = json.loads(args.load.read_text())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            images = {"2mm": (FIXED, MOVING)}
            if any(c.endswith("1mm") for c in args.cases):
                images["1mm"] = one_mm_images(Path(tmp))
            for case in args.cases:
                rows.append(run_case(case, images, args.iterations))
                print(f"{case}: {(rows[-1]['register_peak'] - rows[-1]['base']) / 1e6:.0f} MB above images", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    baseline = json.loads(args.baseline.read_text()) if args.baseline else None
    text = table(rows, baseline)
    phases = phase_table(rows)
    print(text + "\n\n" + phases)
    if not args.no_write_results:
        sys.path.insert(0, str(HERE))
        from results_file import machine_description, write_section

        iterations = "default iterations" if args.iterations == "default" else f"{args.iterations} iterations per level"
        write_section("memory", (
            "## Memory (benchmarks/memory.py)\n\n"
            f"{machine_description()}. Peak RSS of `register` (default options but {iterations}: iterations "
            "change no allocation size; CPU, float32) above the RSS after reading the two images, one fresh "
            "process per case; the phase whose own high-water mark is highest (a phase's mark includes what "
            "earlier phases still hold); `memory.estimate_peak_bytes` for comparison; and the peak while "
            "`write_run` writes the folder with `--jacobian` and the QC picture (not in the estimate). Sample "
            "brain at 2 mm and resampled to 1 mm."
            + (f" 'before': the same cases measured on {args.baseline_label}." if baseline else "")
            + "\n\n" + text + "\n\nPeak of each phase, MB above the images:\n\n" + phases
        ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
