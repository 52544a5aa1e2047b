"""Will a registration fit in memory? Estimate its peak before allocating, refuse if not.

A 512^3 affine run reached 11.9 GB and died inside the foreground mask; nothing said so
beforehand. The peak of a run grows with the number of voxels of the two images, at a cost
per voxel set by what each phase holds at once (float32 working dtype, CPU). Measured by
``benchmarks/memory.py`` (each phase's own high-water mark, in a fresh process per case):

* fixed and moving images, read: 4 B/voxel each (already resident when the check runs);
* foreground mask (fixed image, no fixed mask): float64 smoothing in bounded slabs, the
  float64 smoothed image for the Otsu threshold, the distance to the object (in slabs, or on
  a coarser grid then interpolated back in float64): ~28 B/voxel at 1 mm;
* initialisation (centre of intensity mass): one float64 copy of each image in turn;
* pyramid levels (:class:`~miregister.registration.levels.LevelCache`): each smoothed level
  is smoothed at full resolution before it is shrunk; the finest level's cubic B-spline
  coefficients of the moving image (4 B); the float sampling mask (4 B);
* linear stages: the final warp (sampling coordinates 12 B + values 4 B), then the
  validation: the overlap mask found in slabs, the overlapping values gathered and widened to
  float64 for soft-binned MI over every overlapping voxel. Together with what is held (images'
  coefficients, masks, warped image) ~39 B per voxel; the peak is the validation's MI or the
  final warp, within a few %;
* deformable stages (B-spline or SVF): the optimisation holds the displacement on the level
  grid with the autograd graph of its evaluation; after it, the dense final warp and the
  validation's warps evaluate the deformation slab by slab (:data:`miregister.warp.DENSE_SLAB_VOXELS`),
  and the validation's Jacobian determinant, once the peak (float64 on the whole grid,
  ~240 B/voxel), is computed in slabs (:func:`~miregister.regularizers.transform_jacobian`)
  and kept as float32 (4 B) for the QC picture and the ``--jacobian`` image: ~44 B per voxel
  with what is held, the peak in the validation or the final warp.

The constants below are what peak RSS shows on the sample brain at 2 mm (98x116x94) and 1 mm
(196x232x188), above the two loaded images (``benchmarks/memory.py``, RESULTS.md): affine
144 MB / 461 MB (39 B per voxel + ~120 MB), B-spline 221 / 466 MB and SVF 211 / 551 MB
(44 B + ~170 MB); before the slab-wise Jacobian, warps, centre of mass and foreground smoothing
they were 173 / 699, 493 / 2498 and 604 / 2451 MB. The estimate is within 17 % of those (above
them but for the 1 mm affine, -2 %, the 1 mm SVF, -1 %, and the 2 mm B-spline, -2 %). float64
doubles the torch part. Writing the run folder afterwards (``write_run``: transform files, the
inverse, displacement images, QC) is not part of the estimate; for deformable runs it takes
more than ``register`` did (the inverse displacement held in float64 on the whole fixed grid,
with the field it inverts: 1.06 GB above the images at 1 mm).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import RegistrationError
from ..grid import Grid
from .options import DEFORMABLE_STAGES, RegistrationOptions

__all__ = ["MemoryEstimate", "estimate_peak_bytes", "available_bytes", "check_memory"]

#: Bytes per fixed voxel of the foreground mask (CPU, float64 smoothing in slabs; see the module notes).
FOREGROUND_BYTES = 28
#: Bytes per fixed voxel of linear stages, their warp and validation (float32).
LINEAR_FIXED_BYTES = 31
#: Bytes per moving voxel: its smoothed levels, the B-spline coefficients, smoothing copies.
MOVING_BYTES = 8
#: Bytes per fixed voxel of a deformable run (validation or the slab-wise final warp is the peak).
DEFORMABLE_FIXED_BYTES = 36
#: Fixed overhead of a run (histograms, KNN validation, libraries' workspaces, allocator slack).
OVERHEAD_BYTES = {"linear": 120e6, "deformable": 170e6}

#: Where the host's free memory is read (MemAvailable).
MEMINFO = Path("/proc/meminfo")

#: Set this environment variable to 0 to skip the check (e.g. when swap is known to suffice).
ENV_SWITCH = "MIREGISTER_MEMORY_CHECK"


@dataclass
class MemoryEstimate:
    """Estimated peak of a run, in bytes, where it happens (``"cpu"`` or ``"cuda"``)."""

    host: float  #: peak bytes in host memory beyond the images already loaded
    device: float  #: peak bytes on the CUDA device (0 on CPU runs)
    detail: str  #: how the figure is made, for messages


def estimate_peak_bytes(
    fixed: Grid,
    moving: Grid,
    stages: list[str],
    opts: RegistrationOptions,
    device: torch.device,
    has_fixed_mask: bool = False,
) -> MemoryEstimate:
    """Estimate the peak memory of ``register(fixed, moving, stages)`` from its grids and options.

    Parameters
    ----------
    fixed, moving : Grid
        The full-resolution grids (the fixed grid is the output grid).
    stages : list of str
        The transform chain, e.g. ``["rigid", "affine", "bspline"]``.
    opts : RegistrationOptions
        Options of the run (``dtype``, ``sampling_region`` matter).
    device : torch.device
        Where the tensors live; on CUDA the foreground mask and the images stay on the host.
    has_fixed_mask : bool
        A fixed mask replaces the foreground mask.

    Returns
    -------
    MemoryEstimate
        Bytes beyond the two images already loaded (float32), on the host and on the device.
    """
    n_fixed, n_moving = fixed.numel, moving.numel
    deformable = any(kind in DEFORMABLE_STAGES for kind in stages)
    per_fixed = DEFORMABLE_FIXED_BYTES if deformable else LINEAR_FIXED_BYTES
    scale = 2.0 if opts.dtype == "float64" else 1.0
    torch_bytes = scale * (per_fixed * n_fixed + MOVING_BYTES * n_moving)
    torch_bytes += OVERHEAD_BYTES["deformable" if deformable else "linear"]
    foreground = FOREGROUND_BYTES * n_fixed if opts.sampling_region == "foreground" and not has_fixed_mask else 0.0
    detail = (
        f"{'deformable' if deformable else 'linear'} stages ~{int(scale * per_fixed)} B per fixed voxel "
        f"({_size(fixed)}) and ~{int(scale * MOVING_BYTES)} B per moving voxel ({_size(moving)})"
    )
    if device.type == "cuda":
        return MemoryEstimate(host=foreground, device=torch_bytes, detail=detail)
    return MemoryEstimate(host=max(foreground, torch_bytes), device=0.0, detail=detail)


def _size(grid: Grid) -> str:
    return f"{'x'.join(str(n) for n in grid.size)} = {grid.numel / 1e6:.1f} M voxels"


def available_bytes(device: torch.device | None = None) -> float | None:
    """Memory free for this process now, in bytes: host (``/proc/meminfo`` MemAvailable, within
    any cgroup limit), or the CUDA device's free memory plus what torch holds unused. None when
    it cannot be known."""
    if device is not None and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return float(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    candidates = []
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                candidates.append(float(line.split()[1]) * 1024)
    except OSError:
        pass
    if not candidates:
        try:
            candidates.append(float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")))
        except (ValueError, OSError, AttributeError):
            pass
    cgroup = _cgroup_free()
    if cgroup is not None:
        candidates.append(cgroup)
    return min(candidates) if candidates else None


def _cgroup_free() -> float | None:
    """Bytes left under this process's cgroup memory limit (v2 or v1), None without a limit."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = float(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or float(limit) >= 2**60:
            return None
        return max(0.0, float(limit) - usage)
    return None


def check_memory(
    fixed: Grid,
    moving: Grid,
    stages: list[str],
    opts: RegistrationOptions,
    device: torch.device,
    has_fixed_mask: bool = False,
) -> MemoryEstimate:
    """Refuse a run whose estimated peak (:func:`estimate_peak_bytes`) exceeds the free memory
    (in a :func:`~miregister.registration.batch.register_batch`, the peak of one pair times the
    batch's pairs).

    Skipped when the environment variable ``MIREGISTER_MEMORY_CHECK`` is ``0`` or when the
    free memory cannot be read.

    Raises
    ------
    RegistrationError
        Saying how much the run needs, how much is free and what to change.
    """
    from .batch import active_batcher

    estimate = estimate_peak_bytes(fixed, moving, stages, opts, device, has_fixed_mask)
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return estimate
    batcher = active_batcher()
    if batcher is not None and batcher.pairs > 1:
        # the pairs of a batch run together: their peaks can coincide
        estimate = MemoryEstimate(estimate.host * batcher.pairs, estimate.device * batcher.pairs,
                                  f"{batcher.pairs} pairs of a batch at once, each {estimate.detail}")
    places = [("host", estimate.host, None)]
    if device.type == "cuda":
        places.append((f"device {device}", estimate.device, device))
    for where, need, dev in places:
        free = available_bytes(dev)
        if free is None or need <= free:
            continue
        shrink = math.ceil((need / free) ** (1 / fixed.ndim) * 10) / 10
        raise RegistrationError(
            f"this registration needs about {need / 1e9:.1f} GB of {where} memory but only {free / 1e9:.1f} GB "
            f"are free ({estimate.detail}): resample both images to a coarser grid (about {shrink:g}x the "
            "spacing: the cost is per voxel, so fewer --samples would not help), or run where more memory is "
            f"free (another machine, or another --device); set {ENV_SWITCH}=0 to try anyway"
        )
    return estimate
