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
from typing import Any

import numpy as np
import torch

from ..grid import Grid
from .result import RegistrationResult
from .validation import on_fixed_grid

__all__ = ["checkerboard", "plane_views", "qc_figure", "save_qc_figure"]

#: Letters at the positive / negative end of each LPS axis.
_POSITIVE, _NEGATIVE = "LPS", "RAI"
#: The view whose plane is perpendicular to LPS axis 0 (x), 1 (y), 2 (z).
_VIEW_OF_NORMAL = ("sagittal", "coronal", "axial")


def checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
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


def _mark_tiles(ax, shape: tuple[int, int], tiles: int = 8) -> None:
    """Letter the first two tiles of a checkerboard (array row 0: the bottom row as drawn with
    ``origin="lower"``): F (fixed) and M (moving)."""
    h, w = shape
    for col, label in ((0, "F"), (1, "M")):
        ax.text((col + 0.5) * w / tiles, (0.5) * h / tiles, label, color="yellow", fontsize=7,
                ha="center", va="center", fontweight="bold")


def _edge_letters(ax, plane: dict[str, Any]) -> None:
    ax.text(1.0, 0.5, plane["right"], transform=ax.transAxes, color="cyan", fontsize=8, ha="right", va="center")
    ax.text(0.5, 1.0, plane["up"], transform=ax.transAxes, color="cyan", fontsize=8, ha="center", va="top")


def _jacobian(result: RegistrationResult) -> np.ndarray | None:
    """Jacobian determinant (float32) of the deformable stage on the fixed grid, or None for
    linear chains; the one the validation computed, when it did."""
    from ..regularizers import transform_jacobian
    from .validation import _deformable_part

    deformation = _deformable_part(result.transform)
    if deformation is None:
        return None
    return transform_jacobian(deformation, result.fixed.grid, statistics=False).determinant[0].numpy()


#: Size (inches) of one panel's cell, and the band above the rows for the figure's title.
_CELL, _TOP = (3.2, 3.3), 0.35
#: Margins (left, bottom, right, top; inches) of a panel inside its cell: room for the two-line
#: title, and in the last column for the axis labels and tick numbers of the histograms.
_IMAGE_MARGINS, _PLOT_MARGINS = (0.1, 0.1, 0.1, 0.5), (0.6, 0.5, 0.15, 0.5)
#: Panel titles: a given ``y`` skips matplotlib's search for a title place clear of the tick labels.
_TITLE = {"fontsize": 9, "y": 1.0}


def _grid_axes(fig, rows: int, columns: int) -> np.ndarray:
    """``rows x columns`` axes at fixed places (images in the first columns, plots in the
    last). Placed by hand rather than by a layout engine: matplotlib's constrained layout
    measures every text and tick label of all panels before drawing (about half of the
    picture's CPU time) and the panels are the same every time."""
    width, height = fig.get_size_inches()
    axes = np.empty((rows, columns), dtype=object)
    for row in range(rows):
        for col in range(columns):
            left, bottom, right, top = _PLOT_MARGINS if col == columns - 1 else _IMAGE_MARGINS
            x0 = col * _CELL[0] + left
            y0 = (rows - 1 - row) * _CELL[1] + bottom
            axes[row, col] = fig.add_axes((x0 / width, y0 / height, (_CELL[0] - left - right) / width,
                                           (_CELL[1] - bottom - top) / height))
    return axes


def _colorbar_axes(fig, ax):
    """A colour bar's axes at the right of ``ax``, inside ``ax``'s cell (``ax`` narrowed to
    make room for the bar, its tick numbers and its label)."""
    width, _ = fig.get_size_inches()
    box = ax.get_position()
    room = 0.85 / width  # inches: bar 0.12, gap 0.05, tick numbers and label ~0.65
    ax.set_position((box.x0, box.y0, box.width - room, box.height))
    return fig.add_axes((box.x0 + box.width - room + 0.05 / width, box.y0, 0.12 / width, box.height))


@torch.no_grad()
def qc_figure(result: RegistrationResult):
    """The QC figure (a matplotlib Figure): see :func:`save_qc_figure`."""
    # The object API with the Agg canvas: no pyplot (its import and global figure registry).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    fixed = result.fixed.data[0].float().numpy()
    # the identity resampling in slabs (the image itself when the grids agree), SimpleITK's inside rule
    before = on_fixed_grid(result.moving, result.fixed)[0].float().numpy()
    after = result.warped.data[0].float().numpy()
    planes = plane_views(result.fixed.grid)
    jacobian = _jacobian(result)
    rows = 2 + (jacobian is not None)
    columns = len(planes) + 1
    fig = Figure(figsize=(_CELL[0] * columns, _CELL[1] * rows + _TOP))
    FigureCanvasAgg(fig)
    axes = _grid_axes(fig, rows, columns)
    for row, (label, moved) in enumerate((("before", before), ("after", after))):
        for col, plane in enumerate(planes):
            ax = axes[row, col]
            f_plane, m_plane = _plane(fixed, plane), _plane(moved, plane)
            ax.imshow(checkerboard(f_plane, m_plane), cmap="gray", origin="lower")
            _mark_tiles(ax, f_plane.shape)
            _edge_letters(ax, plane)
            ax.set_axis_off()
            ax.set_title(f"{label}: {plane['view']}\nF fixed / M moving tiles", **_TITLE)
        ax = axes[row, len(planes)]
        ax.imshow(_joint_histogram(fixed, moved), origin="lower", cmap="magma", aspect="auto")
        stats = result.validation.get(label)
        title = f"joint histogram {label}"
        if stats:
            title += f"\nMI {stats['soft_bins']:.3f} nats, NMI {stats['nmi']:.3f}"
        ax.set_title(title, **_TITLE)
        ax.set_xlabel("fixed intensity bin")
        ax.set_ylabel("moving intensity bin")
    if jacobian is not None:
        low, high = float(np.nanmin(jacobian)), float(np.nanmax(jacobian))
        spread = max(1.0 - low, high - 1.0, 1e-3)
        norm = TwoSlopeNorm(vcenter=1.0, vmin=1.0 - spread, vmax=1.0 + spread)  # white = no volume change
        for col, plane in enumerate(planes):
            ax = axes[2, col]
            shown = ax.imshow(_plane(jacobian, plane), cmap="RdBu_r", norm=norm, origin="lower")
            _edge_letters(ax, plane)
            ax.set_axis_off()
            ax.set_title(f"Jacobian det: {plane['view']}", **_TITLE)
        fig.colorbar(shown, cax=_colorbar_axes(fig, axes[2, len(planes) - 1]), label="det J (1 = no change)")
        ax = axes[2, len(planes)]
        counts, edges = np.histogram(jacobian[np.isfinite(jacobian)], bins=100)
        ax.stairs(counts, edges, fill=True, color="0.4")  # one artist, not 100 bar patches
        ax.axvline(1.0, color="k", lw=0.8)
        folded = float((jacobian <= 0).mean())
        ax.set_title(f"det J over the fixed grid\nmin {low:.2f}, max {high:.2f}, folded {folded:.1e}", **_TITLE)
        ax.set_xlabel("det J")
        ax.set_yscale("log")
    fig.suptitle(f"miregister {'+'.join(result.stages)}: moving on the fixed grid", fontsize=11)
    return fig


def save_qc_figure(result: RegistrationResult, path: str | os.PathLike) -> Path:
    """Write a PNG: fixed/moving checkerboards (middle axial, coronal and sagittal planes) and
    joint histograms, before and after; for deformable chains also the Jacobian determinant of
    the deformation (colour map centred at 1, blue shrinks, red grows) and its histogram.

    "Before" is the moving image resampled onto the fixed grid with the identity transform
    (the images' own physical placement), "after" with the found transform.
    """
    fig = qc_figure(result)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=90, pil_kwargs={"compress_level": 1})  # same pixels; zlib level 6 costs 2x the time for 10 % less
    os.replace(tmp, path)
    return path
