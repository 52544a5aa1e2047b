"""Quality-control picture: checkerboards and joint histograms before and after registration,
and the Jacobian determinant of a deformable stage.

Every plane is named by its anatomical view (axial, coronal, sagittal), found from the fixed
image's direction matrix (LPS), and its edges carry the anatomical letters (R/L, A/P, S/I) of
the direction each screen axis points to, so an oblique or sagittally acquired volume is shown
with the right names. Checkerboard tiles alternate fixed (F, the bottom-left tile as drawn) and
moving (M); the letters mark the first two tiles.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..grid import Grid
from .result import RegistrationResult
from .validation import on_fixed_grid

if TYPE_CHECKING:
    from ..helper_process import HelperProcess

__all__ = ["checkerboard", "plane_views", "qc_panels", "qc_figure", "save_qc_figure", "start_qc_picture"]

#: Letters at the positive / negative end of each LPS axis.
_POSITIVE, _NEGATIVE = "LPS", "RAI"
#: The view whose plane is perpendicular to LPS axis 0 (x), 1 (y), 2 (z).
_VIEW_OF_NORMAL = ("sagittal", "coronal", "axial")
#: Checkerboard tiles along each side of a plane.
TILES = 8


def checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = TILES) -> np.ndarray:
    """Interleave two 2-D arrays of the same shape in ``tiles x tiles`` squares (each scaled to [0, 1]).

    Tile ``(0, 0)`` (first row, first column) and every tile an even number of steps from it
    come from ``a``; the others from ``b``.
    """
    a, b = _unit(a), _unit(b)
    rows = (np.arange(a.shape[0]) * tiles // max(a.shape[0], 1))[:, None]
    cols = (np.arange(a.shape[1]) * tiles // max(a.shape[1], 1))[None, :]
    return np.where((rows + cols) % 2 == 0, a, b)


def _unit(x: np.ndarray) -> np.ndarray:
    low, high = np.percentile(x, [0.5, 99.5])
    return np.clip((x - low) / max(high - low, 1e-12), 0, 1)


def _letter(direction: np.ndarray) -> str:
    """Anatomical letter (LPS) toward which a physical direction mostly points."""
    axis = int(np.argmax(np.abs(direction)))
    return _POSITIVE[axis] if direction[axis] > 0 else _NEGATIVE[axis]


def plane_views(grid: Grid) -> list[dict[str, Any]]:
    """The middle planes shown for an image on ``grid``, with their anatomical names.

    Parameters
    ----------
    grid : Grid
        2-D or 3-D grid; its direction matrix (columns: physical directions of the index
        axes x, y[, z] in LPS) decides the names.

    Returns
    -------
    list of dict
        One per plane (three for 3-D, in the order axial, coronal, sagittal when the grid is
        near-orthogonal to LPS; one for 2-D): ``view`` ("axial", "coronal", "sagittal", or
        "slice" for 2-D), ``axis`` (the array axis, in ``([Z,] Y, X)`` order, that is fixed,
        None for 2-D), ``index`` (its middle index), ``right`` and ``up`` (the letters the
        screen's column and row axes point to, the image drawn with ``origin="lower"``).
    """
    direction = np.asarray(grid.direction, dtype=float).reshape(grid.ndim, grid.ndim)
    if grid.ndim == 2:
        return [{"view": "slice", "axis": None, "index": None, "right": _letter(direction[:, 0]), "up": _letter(direction[:, 1])}]
    planes = []
    for array_axis in range(3):  # array axis 0 is index axis z (2), 1 is y, 2 is x
        normal = direction[:, 2 - array_axis]
        shown = [k for k in (2, 1, 0) if k != 2 - array_axis]  # remaining index axes, array order
        planes.append({
            "view": _VIEW_OF_NORMAL[int(np.argmax(np.abs(normal)))],
            "axis": array_axis,
            "index": grid.shape[array_axis] // 2,
            "right": _letter(direction[:, shown[1]]),  # array columns: the later index axis
            "up": _letter(direction[:, shown[0]]),
        })
    order = {"axial": 0, "coronal": 1, "sagittal": 2}
    return sorted(planes, key=lambda p: order[p["view"]])


def _plane(volume: np.ndarray, plane: dict[str, Any]) -> np.ndarray:
    if plane["axis"] is None:
        return volume
    return np.take(volume, plane["index"], axis=plane["axis"])


#: Voxels per chunk of :func:`_joint_histogram` (bounds its temporaries: ~40 B a voxel of a chunk).
HISTOGRAM_CHUNK = 1 << 20


def _bin_index(x: np.ndarray, low: float, high: float, bins: int) -> np.ndarray:
    """Bin of every value among ``bins`` equal bins over ``[low, high]`` (the last bin closed), as
    ``np.histogram``."""
    x = x.astype(np.float64, copy=False)
    return np.minimum(((x - low) * (bins / (high - low))).astype(np.int64), bins - 1)


def _joint_histogram(a: np.ndarray, b: np.ndarray, bins: int = 64) -> np.ndarray:
    """``log1p`` of the joint histogram, rows: ``b``'s bins, columns: ``a``'s (as
    ``np.histogram2d(a, b, bins).T``), counted by ``bincount`` (~20x faster than histogram2d
    on a 1 M-voxel pair) in chunks of :data:`HISTOGRAM_CHUNK` voxels (no whole-image temporaries)."""
    a, b = a.ravel(), b.ravel()
    (a_low, a_high), (b_low, b_high) = (_value_range(x) for x in (a, b))
    counts = np.zeros(bins * bins, dtype=np.int64)
    for start in range(0, a.size, HISTOGRAM_CHUNK):
        part = slice(start, start + HISTOGRAM_CHUNK)
        cells = _bin_index(b[part], b_low, b_high, bins) * bins + _bin_index(a[part], a_low, a_high, bins)
        counts += np.bincount(cells, minlength=bins * bins)
    return np.log1p(counts.reshape(bins, bins).astype(np.float64))


def _value_range(x: np.ndarray) -> tuple[float, float]:
    """The outer bin edges ``np.histogram2d`` uses for ``x``: its min and max, or ``v -+ 0.5``
    for a constant ``v`` (numpy's histogramdd rule)."""
    low, high = float(x.min()), float(x.max())
    return (low - 0.5, high + 0.5) if low == high else (low, high)


def _jacobian(result: RegistrationResult) -> np.ndarray | None:
    """Jacobian determinant (float32) of the deformable stage on the fixed grid, or None for
    linear chains; the one the validation computed, when it did."""
    from ..regularizers import transform_jacobian
    from .validation import _deformable_part

    deformation = _deformable_part(result.transform)
    if deformation is None:
        return None
    return transform_jacobian(deformation, result.fixed.grid, statistics=False).determinant[0].numpy()


@torch.no_grad()
def qc_panels(result: RegistrationResult) -> dict[str, Any]:
    """What the QC picture shows, as numpy arrays and text (no matplotlib): the input of
    :func:`miregister.qc_draw.qc_figure_from_panels`, which documents the keys.

    The fixed image's middle planes (:func:`plane_views`) as checkerboards with the moving
    image before (identity resampling onto the fixed grid) and after registration, the joint
    histograms of the whole volumes (log counts, 64 bins), and for deformable chains the
    Jacobian determinant's planes, colour range (centred at 1) and histogram.
    """
    fixed = result.fixed.data[0].float().numpy()
    # the identity resampling in slabs (the image itself when the grids agree), SimpleITK's inside rule
    before = on_fixed_grid(result.moving, result.fixed)[0].float().numpy()
    after = result.warped.data[0].float().numpy()
    planes = plane_views(result.fixed.grid)
    rows = []
    for label, moved in (("before", before), ("after", after)):
        rows.append({
            "label": label,
            "checkerboards": [checkerboard(_plane(fixed, plane), _plane(moved, plane), TILES) for plane in planes],
            "histogram": _joint_histogram(fixed, moved),
            "histogram_title": _histogram_title(result, label),
        })
    panels: dict[str, Any] = {
        "title": f"miregister {'+'.join(result.stages)}: moving on the fixed grid",
        "planes": [{key: plane[key] for key in ("view", "right", "up")} for plane in planes],
        "tiles": TILES,
        "rows": rows,
        "jacobian": None,
    }
    jacobian = _jacobian(result)
    if jacobian is not None:
        low, high = float(np.nanmin(jacobian)), float(np.nanmax(jacobian))
        spread = max(1.0 - low, high - 1.0, 1e-3)
        counts, edges = np.histogram(jacobian[np.isfinite(jacobian)], bins=100)
        folded = float((jacobian <= 0).mean())
        panels["jacobian"] = {
            "planes": [_plane(jacobian, plane) for plane in planes],
            "vmin": 1.0 - spread, "vmax": 1.0 + spread,
            "counts": counts, "edges": edges,
            "title": f"det J over the fixed grid\nmin {low:.2f}, max {high:.2f}, folded {folded:.1e}",
        }
    return panels


def _histogram_title(result: RegistrationResult, label: str) -> str:
    """A joint histogram's title: its row and the validation's MI and NMI of it, when measured."""
    stats = result.validation.get(label)
    title = f"joint histogram {label}"
    if stats:
        title += f"\nMI {stats['soft_bins']:.3f} nats, NMI {stats['nmi']:.3f}"
    return title


def start_qc_picture(result: RegistrationResult, helper: HelperProcess) -> None:
    """Have ``helper`` start drawing ``result``'s QC picture before the validation has run
    (:func:`~miregister.registration.register`'s ``on_warped``): :func:`save_qc_figure` with
    the same helper then only adds the histograms' titles (the validation's MI), the same
    pixels as drawing it whole. Deformable results are left to :func:`save_qc_figure`: their
    Jacobian row, computed first here, would make the validation reuse its float32 values for
    its float64 statistics."""
    if result.transform.is_linear:
        helper.prepare_picture(qc_panels(result), key=result.warped)


def qc_figure(result: RegistrationResult):
    """The QC figure (a matplotlib Figure): see :func:`save_qc_figure`."""
    from ..qc_draw import qc_figure_from_panels

    return qc_figure_from_panels(qc_panels(result))


def save_qc_figure(result: RegistrationResult, path: str | os.PathLike, helper: HelperProcess | None = None) -> Path:
    """Write a PNG: fixed/moving checkerboards (middle axial, coronal and sagittal planes) and
    joint histograms, before and after; for deformable chains also the Jacobian determinant of
    the deformation (colour map centred at 1, blue shrinks, red grows) and its histogram.

    "Before" is the moving image resampled onto the fixed grid with the identity transform
    (the images' own physical placement), "after" with the found transform.

    Parameters
    ----------
    result : RegistrationResult
        The run to show.
    path : path
        The PNG file, replaced atomically (drawn under a temporary name beside it).
    helper : HelperProcess, optional
        A helper process that draws the picture (:class:`miregister.helper_process.HelperProcess`),
        or finishes the one :func:`start_qc_picture` started on it for this result; when it is
        missing or fails, the picture is drawn in this process.
    """
    from ..qc_draw import save_panels

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    prepared = None if helper is None else helper.prepared
    if prepared is not None and prepared[0] is result.warped:  # started by start_qc_picture for this result
        panels = dict(prepared[1], rows=[dict(row, histogram_title=_histogram_title(result, row["label"]))
                                         for row in prepared[1]["rows"]])
        written = helper.finish_picture([row["histogram_title"] for row in panels["rows"]], tmp)
    else:
        panels = qc_panels(result)
        written = helper is not None and helper.save_picture(panels, tmp)
    if not written:
        save_panels(panels, tmp)
    os.replace(tmp, path)
    return path
