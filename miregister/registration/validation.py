"""Independent checks of a registration: MI before/after by three estimators, NMI, Jacobians.

The optimiser maximised soft-binned MI; a user should see the alignment improved by
estimators that the optimiser never saw: kernel density (Moon et al. 1995) and
k-nearest-neighbour (Kraskov et al. 2004) MI, plus Studholme's normalised MI.
"""
from __future__ import annotations

from typing import Any

import torch

from .. import mi
from ..image import Image
from ..transforms import SpatialTransform
from ..warp import warp

__all__ = ["validate", "mi_measures"]


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


@torch.no_grad()
def validate(
    fixed: Image,
    moving: Image,
    warped: Image,
    transform: SpatialTransform,
    fixed_mask: Image | None,
    bins: int,
    subsample: int,
    seed: int,
) -> dict[str, Any]:
    """MI between the fixed image and the moving image before (identity) and after registration.

    Both are measured over the fixed voxels whose mapped point falls inside the moving image
    (and inside the fixed mask). ``before`` is ``None`` when the images do not overlap at all
    without the transform.

    Returns
    -------
    dict
        ``{"before": {...} | None, "after": {...}, "improved": {estimator: bool},
        "jacobian": {...}}`` — ``jacobian`` only for deformable transforms.
    """
    out: dict[str, Any] = {}
    fixed_values = fixed.data[0]
    region = torch.ones_like(fixed_values, dtype=torch.bool)
    if fixed_mask is not None:
        region &= fixed_mask.data[0].to(region.device) > 0
    for name, mapping in (("before", None), ("after", transform)):
        moved, inside = warp(moving.batch(), moving.grid, mapping, fixed.grid, return_inside=True)
        where = region & inside[0]
        if int(where.sum()) < 100:
            out[name] = None
            continue
        out[name] = mi_measures(fixed_values[where], moved[0, 0][where], bins, subsample, seed)
        out[name]["overlap_fraction"] = float(where.sum()) / float(region.sum())
    if out.get("before") is not None and out.get("after") is not None:
        out["improved"] = {
            k: out["after"][k] > out["before"][k] for k in ("soft_bins", "kde", "knn", "nmi")
        }
    deformation = _deformable_part(transform)
    if deformation is not None:
        from ..regularizers import jacobian_statistics

        field = deformation.displacement_field(fixed.grid, dtype=torch.float64)
        mask = None if fixed_mask is None else (fixed_mask.data[0] > 0)[None]
        stats = jacobian_statistics(field, fixed.grid, mask=mask)
        out["jacobian"] = {k: (float(v[0]) if torch.is_tensor(v) else v) for k, v in stats.items()}
    return out


def _deformable_part(transform: SpatialTransform) -> SpatialTransform | None:
    """The non-linear member of a composite (or the transform itself), if any."""
    members = getattr(transform, "transforms", [transform])
    nonlinear = [t for t in members if not t.is_linear]
    return nonlinear[-1] if nonlinear else None
