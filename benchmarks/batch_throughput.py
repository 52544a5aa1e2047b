"""Batched registration throughput: affine pairs per minute of ``register_batch`` for B = 1, 4, 16.

16 affine pairs of the MNI152 T1 template (benchmarks/cases.py: ``make_affine_case`` with seeds
0..15, T1 -> T1 and T1 -> synthetic T2 alternately; each seed is another known affine), at 2 mm
(98 x 116 x 94) and at 1 mm (197 x 233 x 189, ``upsample_case``). For each batch size B the 16
pairs are registered B at a time: B = 1 with :func:`miregister.register` (one pair after the
other, today's path), B > 1 with :func:`miregister.register_batch` (the template broadcast).
The clock covers registration only (images are in memory; no reading or writing), default
options but ``validate=False`` (the KDE/KNN validation is per pair and not batched). One
untimed warm-up pair per resolution starts CUDA and its libraries.

Also reported per B: the pairs' mapping error against the known affine (median and max of the
mean distance over the fixed brain voxels, mm) and the largest mean distance between a pair's
batched result and its B = 1 result (mm, over the same voxels): batching must not change the
results (tests/test_batch.py checks 0.01 mm on the CPU).

Usage::

    python benchmarks/batch_throughput.py --device cuda            # writes its section of RESULTS.md
    python benchmarks/batch_throughput.py --device cpu --quick     # 4 mm, 4 pairs, B = 1, 2: a check that it runs (prints only)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def make_cases(pairs: int, resolution: float) -> list:
    """``pairs`` affine cases on the template, at ``resolution`` mm (2 = the data's own grid)."""
    from cases import make_affine_case, upsample_case

    cases = [make_affine_case("mono" if seed % 2 == 0 else "multi", seed=seed) for seed in range(pairs)]
    return cases if resolution == 2.0 else [upsample_case(case, resolution) for case in cases]


def mapped(result, points: np.ndarray) -> np.ndarray:
    import torch

    p = torch.as_tensor(points, dtype=torch.float64)[None]
    with torch.no_grad():
        return result.transform.to(device="cpu", dtype=torch.float64)(p)[0].numpy()


def run(cases: list, batch: int, options: dict) -> tuple[float, list]:
    """Register the cases ``batch`` at a time; return the wall-clock seconds and the results."""
    import torch

    import miregister

    synchronize = torch.cuda.synchronize if options["device"] == "cuda" else (lambda: None)
    synchronize()
    start = time.perf_counter()
    results = []
    for first in range(0, len(cases), batch):
        chunk = cases[first:first + batch]
        if batch == 1:
            results.append(miregister.register(chunk[0].fixed, chunk[0].moving, "affine", **options))
        else:
            results += miregister.register_batch(chunk[0].fixed, [c.moving for c in chunk], "affine", **options)
    synchronize()
    return time.perf_counter() - start, results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--batch-sizes", default="1,4,16", help="comma-separated batch sizes (default 1,4,16)")
    parser.add_argument("--resolutions", default="2,1", help="comma-separated voxel sizes in mm (default 2,1)")
    parser.add_argument("--pairs", type=int, default=16, help="pairs per resolution (default 16)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the available CPUs)")
    parser.add_argument("--quick", action="store_true", help="4 mm, 4 pairs, B = 1, 2; prints only")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.resolutions, args.pairs, args.no_write = "1,2", "4", 4, True
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    resolutions = [float(r) for r in args.resolutions.split(",")]

    import torch

    from results_file import machine_description, write_section

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (use --device cpu)")
    import miregister

    options = dict(device=args.device, validate=False, threads=args.threads)
    lines = [
        "| resolution | grid | B | pairs | seconds | pairs / minute | speed-up vs B = 1 | error vs truth, median / max (mm) | max distance to B = 1 (mm) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for resolution in resolutions:
        cases = make_cases(args.pairs, resolution)
        miregister.register(cases[0].fixed, cases[0].moving, "affine", **options)  # warm-up, untimed
        reference, base_rate = None, None
        for batch in sizes:
            seconds, results = run(cases, batch, options)
            found = [mapped(r, c.points) for r, c in zip(results, cases)]
            errors = [float(np.linalg.norm(f - c.true_points, axis=1).mean()) for f, c in zip(found, cases)]
            if reference is None:
                reference = found
            drift = max(float(np.linalg.norm(f - r, axis=1).mean()) for f, r in zip(found, reference))
            rate = 60.0 * len(cases) / seconds
            base_rate = base_rate or rate
            line = (f"| {resolution:g} mm | {'x'.join(map(str, cases[0].fixed.GetSize()))} | {batch} | {len(cases)} | "
                    f"{seconds:.1f} | {rate:.1f} | {rate / base_rate:.2f} | {np.median(errors):.3f} / {max(errors):.3f} | {drift:.4f} |")
            lines.append(line)
            print(line, flush=True)
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        write_section("batch_throughput", (
            "## Batched registration throughput (`benchmarks/batch_throughput.py`)\n\n"
            f"{machine_description()}; device {args.device}. {args.pairs} affine pairs of the T1 template (T1 and synthetic T2 "
            "alternately, known affines), registered B at a time (B = 1: `register` one after the other; B > 1: "
            "`register_batch`), default options but `validate=False`; registration only (images in memory).\n\n" + table
        ))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
