"""Cohort throughput: pairs per hour of ``miregister cohort`` against process pools of SimpleITK and ANTsPy.

16 affine pairs at 2 mm (benchmarks/cases.py: ``make_affine_case`` with seeds 0..15, T1 -> T1
and T1 -> synthetic T2 alternately; each seed is another known affine), registered to the
T1 template:

- miregister: :func:`miregister.register_cohort` on a local Dask cluster, 1 worker x 2 threads
  and 2 workers x 1 thread; the wall clock covers the whole call (cluster start, reading,
  registering, writing transform, warped image and report per pair; no QC picture and no
  KDE/KNN validation, which the peers do not compute either);
- SimpleITK (the lean Mattes affine of ``benchmarks/registration.py``'s ``run_simpleitk``) and
  ANTsPy (``ants.registration`` ``Affine``, ``run_ants``) in a pool of 2 processes with 1 ITK
  thread each. A peer's task also evaluates its mapping on the fixed grid (the runners return
  it); that time is measured per task and taken off the pool's wall clock (divided by the 2
  processes), so the peers are timed on reading and registering only.

Accuracy per pair: the mean distance (mm) between the found and the true fixed->moving mapping
over the fixed brain voxels, as in benchmarks/registration.py.

Usage::

    python benchmarks/cohort.py            # 16 pairs, writes its section of benchmarks/RESULTS.md
    python benchmarks/cohort.py --quick    # 2 pairs, prints only (a check that it runs)
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

TEMPLATE = HERE.parent / "data" / "mni152_t1_2mm.nii.gz"
PEERS = ("simpleitk", "ants")
MIREGISTER_LAYOUTS = ((1, 2), (2, 1))  # (workers, threads per worker)


# ------------------------------------------------------------------------------ the pairs
def make_pairs(n: int, folder: Path) -> list[dict[str, Any]]:
    """Write ``n`` moving images of known affines into ``folder``; return their descriptions."""
    import SimpleITK as sitk

    from cases import make_affine_case

    pairs = []
    for seed in range(n):
        modality = "mono" if seed % 2 == 0 else "multi"
        case = make_affine_case(modality, seed=seed)
        path = folder / f"moving_{seed:02d}.nii.gz"
        sitk.WriteImage(case.moving, str(path))
        pairs.append({"id": f"{modality}-{seed:02d}", "moving": str(path), "matrix": case.matrix,
                      "points": case.points, "true_points": case.true_points})
    return pairs


def _error(mapped_brain: np.ndarray, true_points: np.ndarray) -> float:
    from cases import mapping_error

    return mapping_error(mapped_brain, true_points)["mean"]


# ------------------------------------------------------------------------------ miregister
def run_miregister(pairs: list[dict], folder: Path, workers: int, threads: int) -> dict[str, Any]:
    """One ``register_cohort`` call; wall clock of the call, error per pair from its transform files."""
    import SimpleITK as sitk

    import miregister
    from registration import sitk_mapping

    manifest = folder / "manifest.csv"
    manifest.write_text("id,moving\n" + "".join(f"{p['id']},{p['moving']}\n" for p in pairs))
    out = folder / f"miregister-{workers}x{threads}"
    start = time.perf_counter()
    result = miregister.register_cohort(
        manifest, out, template=TEMPLATE, transform="affine", workers=workers, threads_per_worker=threads,
        qc=False, validate=False, device="cpu",
    )
    wall = time.perf_counter() - start
    fixed = sitk.ReadImage(str(TEMPLATE))
    from cases import load_source

    brain = sitk.GetArrayFromImage(load_source("mask")) > 0  # the cases' own mask (uint8), as their true points
    errors = {}
    for pair, row in zip(pairs, result.rows):
        if row["status"] == "failed":
            errors[pair["id"]] = None
            continue
        mapped = sitk_mapping(sitk.ReadTransform(str(out / pair["id"] / "transform.tfm")), fixed)
        errors[pair["id"]] = _error(mapped[brain], pair["true_points"])
    seconds = [r["seconds"] for r in result.rows if r.get("seconds")]
    return {"method": f"miregister cohort, {workers} worker{'s' if workers > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}",
            "wall": wall, "evaluation": 0.0, "errors": errors, "task_seconds": seconds}


# ------------------------------------------------------------------------------ peers
def _init_worker(threads: int) -> None:
    # ITK reads this when the library loads (ANTs); SimpleITK is set per run by run_simpleitk.
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent))


def _peer_task(method: str, moving: str, true_points: np.ndarray, seed: int, threads: int) -> tuple[float, float, float]:
    """Read the pair, register it with the peer's runner, evaluate; returns (task seconds,
    evaluation seconds, mean error mm)."""
    start = time.perf_counter()
    import SimpleITK as sitk

    from cases import Case, load_source
    from registration import run_ants, run_simpleitk

    fixed = sitk.Cast(sitk.ReadImage(str(TEMPLATE)), sitk.sitkFloat32)
    mask = load_source("mask")
    case = Case("cohort", fixed, sitk.ReadImage(moving), mask, np.empty((0, 3)), true_points)
    runner = run_simpleitk if method == "simpleitk" else run_ants
    before_runner = time.perf_counter()
    mapped, elapsed, _ = runner(case, "affine", seed, threads)
    after_runner = time.perf_counter()
    error = _error(mapped[sitk.GetArrayFromImage(mask) > 0], true_points)
    end = time.perf_counter()
    # Everything the runner did besides registering (evaluating its mapping), and the error check.
    evaluation = (after_runner - before_runner - elapsed) + (end - after_runner)
    return end - start, evaluation, error


def run_peer(method: str, pairs: list[dict], processes: int, threads: int, seed: int) -> dict[str, Any]:
    """The pairs in a pool of ``processes`` processes (spawned, ``threads`` ITK threads each)."""
    with ProcessPoolExecutor(processes, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(threads,)) as pool:
        # One untimed task per process: imports and ITK start-up are not per-pair work.
        list(pool.map(_warm, [method] * processes))
        start = time.perf_counter()
        futures = [pool.submit(_peer_task, method, p["moving"], p["true_points"], seed, threads) for p in pairs]
        results = [f.result() for f in futures]
        wall = time.perf_counter() - start
    name = {"simpleitk": "SimpleITK Mattes affine", "ants": "ANTsPy Affine"}[method]
    return {"method": f"{name}, pool of {processes} x {threads} thread", "wall": wall,
            "evaluation": sum(r[1] for r in results) / processes,
            "errors": {p["id"]: r[2] for p, r in zip(pairs, results)}, "task_seconds": [r[0] - r[1] for r in results]}


def _warm(method: str) -> None:
    import SimpleITK  # noqa: F401

    if method == "ants":
        import ants  # noqa: F401
    time.sleep(0.5)  # keep each process busy so that every one of them gets a warm-up task


# ------------------------------------------------------------------------------ report
def markdown(runs: list[dict], pairs: list[dict], args) -> str:
    from results_file import machine_description

    lines = ["## Cohort throughput: miregister cohort against SimpleITK and ANTsPy process pools", ""]
    lines.append(f"Machine: {machine_description()}. `" + shlex.join(["python", "benchmarks/cohort.py", *sys.argv[1:]]) + "`.")
    lines.append("")
    lines.append(
        f"{len(pairs)} affine pairs at 2 mm (benchmarks/cases.py `make_affine_case`, seeds 0..{len(pairs) - 1}, T1 -> T1 "
        "and T1 -> T2-like alternately) to the T1 template, 2 cores' worth of workers per method. Pairs per hour = "
        "pairs x 3600 / wall clock. Error = mean distance (mm) between found and true mapping over the brain, per pair."
    )
    lines.append("")
    lines.append("| method | pairs per hour | wall clock (s) | median s per pair in a task | mean error (mm) | worst pair (mm) | failed |")
    lines.append("|---|---|---|---|---|---|---|")
    for run in runs:
        wall = run["wall"] - run["evaluation"]
        errors = [e for e in run["errors"].values() if e is not None]
        failed = sum(1 for e in run["errors"].values() if e is None)
        lines.append(
            f"| {run['method']} | {len(pairs) * 3600 / wall:.0f} | {wall:.1f} | {np.median(run['task_seconds']):.2f} | "
            f"{np.mean(errors):.3f} | {max(errors):.3f} | {failed} |"
        )
    lines.append("")
    lines.append("Per pair (mean error, mm):")
    lines.append("")
    lines.append("| pair | " + " | ".join(r["method"] for r in runs) + " |")
    lines.append("|---|" + "---|" * len(runs))
    for pair in pairs:
        cells = ["failed" if r["errors"][pair["id"]] is None else f"{r['errors'][pair['id']]:.3f}" for r in runs]
        lines.append(f"| {pair['id']} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Notes:")
    lines.append("")
    lines.append(
        "- miregister: `register_cohort(..., workers=W, threads_per_worker=K, qc=False, validate=False, device='cpu')`, "
        "defaults otherwise; its wall clock includes starting the local Dask cluster and writing each pair's "
        "transform, warped image, report and resume record."
    )
    lines.append(
        "- Peers: `benchmarks/registration.py` runners (`run_simpleitk`: Mattes MI 50 bins, 20 % random sampling, "
        "regular-step gradient descent, shrink 4/2/1; `run_ants`: `ants.registration` `Affine`) in a "
        "`ProcessPoolExecutor` of 2 spawned processes, ITK threads 1, one untimed warm-up task per process; "
        "the time each task spent evaluating its mapping (not user work) is taken off the wall clock, divided by 2."
    )
    if args.quick:
        lines.append(f"- Quick run (`--quick`): {len(pairs)} pairs; not written to RESULTS.md.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 pairs; prints the table, does not write RESULTS.md")
    parser.add_argument("--pairs", type=int, default=None, help="number of pairs (default 16; 2 with --quick)")
    parser.add_argument("--methods", default="miregister,simpleitk,ants", help="comma list of miregister, simpleitk, ants")
    parser.add_argument("--seed", type=int, default=0, help="peers' sampling seed")
    args = parser.parse_args(argv)
    n = args.pairs or (2 if args.quick else 16)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    runs = []
    with tempfile.TemporaryDirectory(prefix="miregister-cohort-bench-") as tmp:
        folder = Path(tmp)
        print(f"making {n} pairs ...", flush=True)
        pairs = make_pairs(n, folder)
        if "miregister" in methods:
            for workers, threads in MIREGISTER_LAYOUTS:
                runs.append(run_miregister(pairs, folder, workers, threads))
                print(f"  {runs[-1]['method']}: {runs[-1]['wall']:.1f} s", flush=True)
        for method in PEERS:
            if method in methods:
                runs.append(run_peer(method, pairs, processes=2, threads=1, seed=args.seed))
                print(f"  {runs[-1]['method']}: {runs[-1]['wall']:.1f} s", flush=True)
        text = markdown(runs, pairs, args)
    print("\n" + text)
    if not args.quick:
        from results_file import write_section

        write_section("cohort", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
