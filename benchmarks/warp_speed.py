"""Warping speed: miregister.warp vs SimpleITK's Resample, affine and cubic B-spline transforms.

A ``size**3`` volume (1 mm voxels, float32) is resampled onto its own grid through

* an affine transform (small rotation, scaling, shear, translation);
* a cubic B-spline FFD (``--control-spacing`` mm, random 2 mm coefficients),

with trilinear interpolation and SimpleITK's inside rule (``margin=0.5``), measured side by
side in one run:

* ``warp`` forward, and forward + backward (gradient of the mean warped intensity with
  respect to the transform parameters) with this library;
* for the B-spline also the *dense path*: ``transform.displacement_field(grid)`` (separable
  evaluation) followed by :func:`miregister.warp.sample`, which is what a registration loop
  can do instead of evaluating the spline point by point;
* ``sitk.Resample`` with the equivalent ITK transform (``BSpline.to_sitk``) on all the threads
  SimpleITK is allowed (printed).

The largest difference between the library's and SimpleITK's warped volumes (interior voxels)
is reported as a consistency check. The table is written into benchmarks/RESULTS.md.

Usage::

    python benchmarks/warp_speed.py [--size 256] [--device cpu|cuda] [--repeats 1] [--threads N]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import machine_description, write_section  # noqa: E402

from miregister.grid import Grid  # noqa: E402
from miregister.image import Image  # noqa: E402
from miregister.transforms import Affine, BSpline  # noqa: E402
from miregister.warp import sample, warp  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(function: Callable[[], object], repeats: int, device: torch.device) -> tuple[float, object]:
    """Smallest wall-clock time (s) of ``repeats`` calls after one warm-up call, and the last result.

    A warm-up call slower than 5 s counts as one of the repeats (start-up costs are noise
    at that scale, and it keeps the default run short).
    """
    start = time.perf_counter()
    result = function()
    synchronize(device)
    times = [time.perf_counter() - start]
    if times[0] < 5.0:
        times = []
    while len(times) < repeats:
        start = time.perf_counter()
        result = function()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times), result


def make_volume(grid: Grid, device: torch.device) -> torch.Tensor:
    """A smooth test volume ``(1, 1, *shape)`` (sums of sinusoids, no flat regions)."""
    z, y, x = (torch.arange(n, dtype=torch.float32, device=device) for n in grid.shape)
    volume = (
        torch.sin(x / 7.0)[None, None, :] * torch.cos(y / 11.0)[None, :, None]
        + torch.sin(z / 5.0)[:, None, None] * torch.cos(x / 13.0)[None, None, :]
        + 0.01 * y[None, :, None]
    )
    return volume[None, None].contiguous()


def make_affine(grid: Grid, device: torch.device) -> Affine:
    rotation = torch.tensor([[0.99, -0.10, 0.02], [0.11, 0.98, -0.03], [-0.01, 0.04, 1.03]])
    affine = Affine(3, center=grid.center())
    with torch.no_grad():
        affine.matrix.copy_(rotation[None])
        affine.translation.copy_(torch.tensor([[2.9137, -2.4671, 1.5313]]))  # no exact ties on the border
    return affine.to(device)


def make_bspline(grid: Grid, spacing: float, device: torch.device) -> BSpline:
    bspline = BSpline(grid, spacing)
    with torch.no_grad():
        bspline.coefficients.normal_(0.0, 2.0, generator=torch.Generator().manual_seed(0))
    return bspline.to(device)


def sitk_affine(affine: Affine) -> sitk.AffineTransform:
    matrix = affine.affine_matrix()[0].detach().double().cpu().numpy()
    out = sitk.AffineTransform(3)
    out.SetMatrix(matrix[:3, :3].ravel().tolist())
    out.SetTranslation(matrix[:3, 3].tolist())
    return out


def max_interior_difference(ours: torch.Tensor, theirs: sitk.Image) -> float:
    """Largest absolute difference over voxels 2 away from the border."""
    a = ours.detach().cpu().numpy()[0, 0]
    b = sitk.GetArrayFromImage(theirs)
    core = (slice(2, -2),) * 3
    return float(np.abs(a[core] - b[core]).max())


def run(size: int, device: torch.device, spacing: float, repeats: int) -> str:
    grid = Grid((size,) * 3, (1.0, 1.0, 1.0), (-size / 2.0,) * 3)
    moving = make_volume(grid, device)
    moving_sitk = Image(moving[0].cpu(), grid).to_sitk()
    affine = make_affine(grid, device)
    bspline = make_bspline(grid, spacing, device)
    points = grid.points(device=device)[None]

    def library_forward(transform) -> Callable[[], object]:
        def call():
            with torch.no_grad():
                return warp(moving, grid, transform, grid, margin=0.5)

        return call

    def library_backward(transform) -> Callable[[], object]:
        def call():
            transform.zero_grad(set_to_none=True)
            warp(moving, grid, transform, grid, margin=0.5).mean().backward()

        return call

    def dense(transform: BSpline) -> torch.Tensor:
        mapped = points + transform.displacement_field(grid)
        return sample(moving, grid, mapped, margin=0.5)[0]

    def dense_forward() -> object:
        with torch.no_grad():
            return dense(bspline)

    def dense_backward() -> object:
        bspline.zero_grad(set_to_none=True)
        dense(bspline).mean().backward()

    def sitk_call(transform: sitk.Transform) -> Callable[[], object]:
        return lambda: sitk.Resample(moving_sitk, moving_sitk, transform, sitk.sitkLinear, 0.0)

    rows = []
    for name, transform, itk in (
        ("affine", affine, sitk_affine(affine)),
        (f"B-spline {spacing:g} mm, warp()", bspline, bspline.to_sitk()),
    ):
        forward, ours = best_time(library_forward(transform), repeats, device)
        backward, _ = best_time(library_backward(transform), repeats, device)
        reference, theirs = best_time(sitk_call(itk), repeats, torch.device("cpu"))
        difference = max_interior_difference(ours, theirs)
        rows.append((name, forward, backward, reference, difference))
        print(rows[-1], flush=True)
    forward, ours = best_time(dense_forward, repeats, device)
    backward, _ = best_time(dense_backward, repeats, device)
    difference = max_interior_difference(ours, theirs)  # theirs: the B-spline row's SimpleITK result
    rows.append((f"B-spline {spacing:g} mm, dense path", forward, backward, rows[-1][3], difference))
    print(rows[-1], flush=True)

    lines = [
        "## Warp speed (`benchmarks/warp_speed.py`)",
        "",
        f"{size}^3 float32 volume, 1 mm voxels, trilinear, resampled onto its own grid. "
        f"miregister on `{device}` with {torch.get_num_threads()} torch threads; SimpleITK "
        f"`Resample` (CPU) with {sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()} threads. "
        f"Best of {repeats} after a warm-up (a warm-up over 5 s counts as a repeat). \"fwd+bwd\": gradient of the mean warped intensity "
        "with respect to the transform parameters. \"dense path\": separable "
        "`BSpline.displacement_field` + `warp.sample` instead of point-wise spline evaluation. "
        "Last column: max |miregister - SimpleITK| over interior voxels (intensities in [-2, 4.6]).",
        "",
        f"Machine: {machine_description()}",
        "",
        "| transform | miregister fwd (s) | miregister fwd+bwd (s) | SimpleITK Resample (s) | max diff |",
        "|---|---|---|---|---|",
    ]
    for name, forward, backward, reference, difference in rows:
        lines.append(f"| {name} | {forward:.2f} | {backward:.2f} | {reference:.2f} | {difference:.1e} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256, help="volume edge in voxels (default 256)")
    parser.add_argument("--device", default="cpu", help="torch device for miregister (cpu, cuda)")
    parser.add_argument("--control-spacing", type=float, default=20.0, help="B-spline control spacing in mm")
    parser.add_argument("--repeats", type=int, default=1, help="timed repeats after one warm-up")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch and SimpleITK (default: all cores)")
    parser.add_argument("--no-write", action="store_true", help="print the table, leave RESULTS.md alone")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    table = run(args.size, torch.device(args.device), args.control_spacing, args.repeats)
    print(table)
    if not args.no_write:
        write_section("warp_speed", table)


if __name__ == "__main__":
    main()
