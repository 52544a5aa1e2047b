"""Independent checks of a registration: MI before/after by three estimators, NMI, Jacobians.

The optimiser maximised soft-binned MI; a user should see the alignment improved by
estimators that the optimiser never saw: kernel density (Moon et al. 1995) and
k-nearest-neighbour (Kraskov et al. 2004) MI, plus Studholme's normalised MI.

One measurement, two callers: :func:`validate` (``register``'s before/after) and the
``miregister mi`` command both call :func:`compare`, with the same region
(:func:`measurement_region`: the fixed mask, else the fixed image's foreground, intersected
with the voxels that map inside the other image) and the same bins (:data:`REPORT_BINS`),
so ``miregister mi fixed warped.nii.gz`` prints the ``after`` values of the report.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import mi
from ..image import Image
from ..transforms import SpatialTransform
from ..warp import warp

__all__ = ["validate", "mi_measures", "compare", "measurement_region", "on_fixed_grid", "REPORT_BINS", "INSIDE_MARGIN"]

#: Histogram bins of the reported soft-bins MI and NMI, in ``register``'s report and in
#: ``miregister mi``: one fixed scale, whatever bins the optimiser used (its own per-level bins
#: are in the report's history), so that values of different runs and of the two commands compare.
REPORT_BINS = 64
#: Inside rule of the overlap: half a voxel beyond the outer voxel centres, as SimpleITK's
#: resampler (and ``resample``, which makes ``result.warped``) uses.
INSIDE_MARGIN = 0.5
#: Fewest voxels a measurement needs.
MIN_VOXELS = 100


def mi_measures(x: torch.Tensor, y: torch.Tensor, bins: int, subsample: int, seed: int) -> dict[str, float]:
    """MI of paired samples ``x``, ``y`` (1-D tensors) by four estimators, in nats (NMI is unitless).

    Soft bins and NMI use every sample; KDE and KNN use a seeded random subset of
    ``subsample`` samples (KNN is exact but costs O(N log N) per query). Image intensities
    are quantised (often uint8), so KNN gets a seeded uniform dequantisation jitter of 1% of
    each variable's standard deviation: without it, thousands of tied background voxels give
    zero neighbour distances and a meaningless estimate.
    """
    x2, y2 = x.reshape(1, -1).double(), y.reshape(1, -1).double()
    generator = torch.Generator().manual_seed(int(seed))
    if x2.shape[1] > subsample:
        pick = torch.randperm(x2.shape[1], generator=generator)[:subsample].to(x2.device)
        xs, ys = x2[:, pick], y2[:, pick]
    else:
        xs, ys = x2, y2
    # Soft-bins MI and NMI from one joint histogram (the same one that soft_mutual_information
    # and normalized_mutual_information would each build): half the work, same values.
    soft = mi.joint_entropies(x2, y2, estimator="soft", bins=bins)
    return {
        "soft_bins": float(mi.normalize_mutual_information(soft, "none")[0]),
        "kde": float(mi.kde_mutual_information(xs, ys)[0]),
        "knn": float(mi.knn_mutual_information(xs, ys, k=3, jitter=0.01, seed=seed)[0]),
        "nmi": float(mi.normalize_mutual_information(soft, "studholme")[0]),
        "samples": int(x2.shape[1]),
    }


def measurement_region(
    fixed: Image, fixed_mask: Image | None = None, region: str = "foreground"
) -> tuple[Tensor, str]:
    """The fixed voxels where MI is measured, before the overlap is taken into account.

    Parameters
    ----------
    fixed : Image
        The fixed (first) image.
    fixed_mask : Image, optional
        Non-zero where to measure, on the fixed grid; takes precedence over ``region``.
    region : {"foreground", "all"}
        Without a mask: the fixed image's foreground (Otsu threshold dilated by 10 mm,
        :func:`~miregister.registration.foreground.foreground_mask`, the region the registration
        samples by default) or every voxel.

    Returns
    -------
    (Tensor, str)
        Boolean ``fixed.shape`` mask (CPU) and its description for reports.
    """
    if fixed_mask is not None:
        return fixed_mask.data[0].detach().cpu() != 0, "fixed mask"
    if region == "foreground":
        from .foreground import foreground_mask

        return foreground_mask(fixed), "fixed foreground (Otsu + 10 mm)"
    if region == "all":
        return torch.ones(fixed.shape, dtype=torch.bool), "all fixed voxels"
    raise ValueError(f"region must be 'foreground' or 'all', got {region!r}")


#: Fixed voxels per slab of :func:`on_fixed_grid` when only the inside mask is asked for: the
#: sampling coordinates and comparisons (~30 B a voxel) then take ~8 MB, not ~250 MB (1 mm brain).
WARP_SLAB_VOXELS = 1 << 18


def on_fixed_grid(
    image: Image, fixed: Image, transform: SpatialTransform | None = None, values: bool = True
) -> tuple[Tensor | None, Tensor]:
    """``image`` on the fixed grid through ``transform`` (fixed -> image space; None: identity),
    linear, and the mask of fixed voxels that map inside it (SimpleITK's inside rule).

    An image already on the fixed grid (to 1e-6 mm) with no transform is taken as it is, not
    interpolated: interpolating at its own voxel centres changes values in the last float32
    digits, and a saved ``warped.nii.gz`` must measure as the report's ``after``.

    Parameters
    ----------
    values : bool
        Return the values (one whole-grid resampling: the values are those of
        :func:`~miregister.warp.resample` to the last bit, which the KNN estimate needs). False
        returns ``(None, inside)``, the mask found slab by slab (planes of the fixed grid,
        :data:`WARP_SLAB_VOXELS` voxels each), each voxel mapped on its own.

    Returns
    -------
    (Tensor or None, Tensor)
        Values ``fixed.shape`` and boolean inside mask ``fixed.shape``.
    """
    if transform is None and image.grid.same_as(fixed.grid, tolerance=1e-6):
        data = image.data[0]
        return (data if values else None), torch.ones(data.shape, dtype=torch.bool, device=data.device)
    if values:
        moved, inside = warp(image.batch(), image.grid, transform, fixed.grid, return_inside=True, margin=INSIDE_MARGIN)
        return moved[0, 0], inside[0]
    grid = fixed.grid
    inside = torch.empty(grid.shape, dtype=torch.bool, device=image.data.device)
    for lo, hi in grid.slabs(WARP_SLAB_VOXELS):
        _, part = warp(image.batch(), image.grid, transform, grid.slab(lo, hi), return_inside=True, margin=INSIDE_MARGIN)
        inside[lo:hi] = part[0]
    return None, inside


def compare(
    fixed: Image,
    moved: Tensor,
    inside: Tensor,
    region: Tensor,
    description: str,
    bins: int = REPORT_BINS,
    subsample: int = 20_000,
    seed: int = 0,
) -> dict[str, Any] | None:
    """MI between ``fixed`` and an image on its grid, over ``region`` and the overlap.

    Parameters
    ----------
    fixed : Image
        The fixed image.
    moved : Tensor
        The other image's values on the fixed grid, ``fixed.shape``.
    inside : Tensor
        Boolean ``fixed.shape``: where ``moved`` comes from inside the other image (the overlap).
    region, description
        From :func:`measurement_region`.
    bins : int
        Bins of the soft-bins MI and NMI (:data:`REPORT_BINS` by default).
    subsample, seed
        As in :func:`mi_measures` (KDE and KNN subsample).

    Returns
    -------
    dict or None
        :func:`mi_measures` plus ``bins``, ``region`` (description, "∩ overlap") and
        ``overlap_fraction`` (share of the region inside the other image); None when fewer than
        100 voxels are in both.
    """
    region = region.to(inside.device)
    where = region & inside
    if int(where.sum()) < MIN_VOXELS:
        return None
    fixed_values = fixed.data[0].to(moved.device)
    out: dict[str, Any] = mi_measures(fixed_values[where], moved[where], bins, subsample, seed)
    out["bins"] = int(bins)
    out["region"] = f"{description} ∩ overlap"
    out["overlap_fraction"] = float(where.sum()) / float(region.sum())
    return out


@torch.no_grad()
def validate(
    fixed: Image,
    moving: Image,
    warped: Image,
    transform: SpatialTransform,
    fixed_mask: Image | None,
    region: Tensor,
    description: str,
    subsample: int,
    seed: int,
    bins: int = REPORT_BINS,
    after_inside: Tensor | None = None,
) -> dict[str, Any]:
    """MI between the fixed image and the moving image before (identity) and after registration.

    Both are measured by :func:`compare` over ``region`` (:func:`measurement_region`) and the
    fixed voxels whose mapped point falls inside the moving image (SimpleITK's inside rule), by
    soft bins and NMI with ``bins`` bins (:data:`REPORT_BINS`), KDE and KNN. "after" uses
    ``warped`` itself, so ``miregister mi fixed warped.nii.gz`` gives the same values wherever
    the moving image covers the region (``overlap_fraction`` 1). ``before`` is ``None`` when
    the images do not overlap at all without the transform. Jacobian statistics (deformable
    transforms) cover ``fixed_mask``, or the whole fixed grid.

    ``after_inside`` is the boolean ``fixed.shape`` mask of the fixed voxels that ``transform``
    maps inside the moving image, when the caller has it from making ``warped`` (the warp
    computes it anyway); otherwise it is found here, slab by slab.

    Returns
    -------
    dict
        ``{"before": {...} | None, "after": {...}, "improved": {estimator: bool},
        "bins": int, "region": str, "jacobian": {...}}`` — ``jacobian`` only for deformable
        transforms.
    """
    out: dict[str, Any] = {"bins": int(bins), "region": f"{description} ∩ overlap"}
    moved, inside = on_fixed_grid(moving, fixed)
    out["before"] = compare(fixed, moved, inside, region, description, bins, subsample, seed)
    inside = on_fixed_grid(moving, fixed, transform, values=False)[1] if after_inside is None else after_inside
    out["after"] = compare(fixed, warped.data[0].to(inside.device), inside, region, description, bins, subsample, seed)
    if out.get("before") is not None and out.get("after") is not None:
        out["improved"] = {
            k: out["after"][k] > out["before"][k] for k in ("soft_bins", "kde", "knn", "nmi")
        }
    deformation = _deformable_part(transform)
    if deformation is not None:
        from ..regularizers import transform_jacobian

        # In slabs, float64 per slab; the float32 determinant is remembered for the QC picture
        # and the --jacobian image of this run.
        mask = None if fixed_mask is None else (fixed_mask.data[0] > 0)[None]
        stats = transform_jacobian(deformation, fixed.grid, mask=mask).statistics
        out["jacobian"] = {k: float(v[0]) for k, v in stats.items()}
    return out


def _deformable_part(transform: SpatialTransform) -> SpatialTransform | None:
    """The non-linear member of a composite (or the transform itself), if any."""
    members = getattr(transform, "transforms", [transform])
    nonlinear = [t for t in members if not t.is_linear]
    return nonlinear[-1] if nonlinear else None
