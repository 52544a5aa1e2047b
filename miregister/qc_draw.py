"""Drawing the QC picture from its panels, in this process or in a helper process.

This module imports numpy and matplotlib only (never torch), so that a helper process can
import it in well under a second. :func:`miregister.registration.qc.qc_panels` computes what
the picture shows (planes, checkerboards, histograms; torch), :func:`qc_figure_from_panels`
draws it.

Importing matplotlib and drawing the first figure (font loading) is slow; the
command line's helper process (:mod:`miregister.helper_process`) pays it with :func:`warm_up`
while the run registers, and then draws the picture with :func:`save_panels`, the same code
(and pixels) as drawing it in the run's own process.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["qc_figure_from_panels", "save_panels", "PreparedPicture", "warm_up"]

#: Size (inches) of one panel's cell, and the band above the rows for the figure's title.
_CELL, _TOP = (3.2, 3.3), 0.35
#: Margins (left, bottom, right, top; inches) of a panel inside its cell: room for the two-line
#: title, and in the last column for the axis labels and tick numbers of the histograms.
_IMAGE_MARGINS, _PLOT_MARGINS = (0.1, 0.1, 0.1, 0.5), (0.6, 0.5, 0.15, 0.5)
#: Panel titles: a given ``y`` skips matplotlib's search for a title place clear of the tick labels.
_TITLE = {"fontsize": 9, "y": 1.0}
#: Picture resolution and PNG compression: zlib level 6 costs twice the time of 1 for 10 % less.
_DPI, _PNG = 90, {"compress_level": 1}


def _mark_tiles(ax, shape: tuple[int, int], tiles: int) -> None:
    """Letter the first two tiles of a checkerboard (array row 0: the bottom row as drawn with
    ``origin="lower"``): F (fixed) and M (moving)."""
    h, w = shape
    for col, label in ((0, "F"), (1, "M")):
        ax.text((col + 0.5) * w / tiles, (0.5) * h / tiles, label, color="yellow", fontsize=7,
                ha="center", va="center", fontweight="bold")


def _edge_letters(ax, plane: dict[str, Any]) -> None:
    ax.text(1.0, 0.5, plane["right"], transform=ax.transAxes, color="cyan", fontsize=8, ha="right", va="center")
    ax.text(0.5, 1.0, plane["up"], transform=ax.transAxes, color="cyan", fontsize=8, ha="center", va="top")


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


def qc_figure_from_panels(panels: dict[str, Any]):
    """The QC picture (a matplotlib Figure on the Agg canvas) of ``panels``.

    Parameters
    ----------
    panels : dict
        As :func:`miregister.registration.qc.qc_panels` returns: ``title``; ``planes`` (one
        dict per view: ``view``, ``right``, ``up``); ``tiles``; ``rows``, one per moving
        image shown (``label``, ``checkerboards`` (one 2-D array in [0, 1] per plane),
        ``histogram`` (2-D, log counts), ``histogram_title``); and ``jacobian``, None or a
        dict (``planes``: one 2-D array per view, ``vmin``/``vmax``: the colour range centred
        at 1, ``counts``/``edges``: its histogram, ``title``).
    """
    return _build(panels)[0]


def _build(panels: dict[str, Any], dpi: float | None = None):
    """:func:`qc_figure_from_panels`'s figure (at ``dpi``, default matplotlib's) and the title
    artists of its joint histograms, one per row of ``panels["rows"]``."""
    # The object API with the Agg canvas: no pyplot (its import and global figure registry).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    planes, jacobian = panels["planes"], panels["jacobian"]
    rows = len(panels["rows"]) + (jacobian is not None)
    columns = len(planes) + 1
    fig = Figure(figsize=(_CELL[0] * columns, _CELL[1] * rows + _TOP), dpi=dpi)
    FigureCanvasAgg(fig)
    histogram_titles = []
    axes = _grid_axes(fig, rows, columns)
    for row, shown in enumerate(panels["rows"]):
        for col, (plane, board) in enumerate(zip(planes, shown["checkerboards"])):
            ax = axes[row, col]
            ax.imshow(board, cmap="gray", origin="lower")
            _mark_tiles(ax, board.shape, panels["tiles"])
            _edge_letters(ax, plane)
            ax.set_axis_off()
            ax.set_title(f"{shown['label']}: {plane['view']}\nF fixed / M moving tiles", **_TITLE)
        ax = axes[row, len(planes)]
        ax.imshow(shown["histogram"], origin="lower", cmap="magma", aspect="auto")
        histogram_titles.append(ax.set_title(shown["histogram_title"], **_TITLE))
        ax.set_xlabel("fixed intensity bin")
        ax.set_ylabel("moving intensity bin")
    if jacobian is not None:
        row = rows - 1
        norm = TwoSlopeNorm(vcenter=1.0, vmin=jacobian["vmin"], vmax=jacobian["vmax"])  # white = no volume change
        for col, (plane, values) in enumerate(zip(planes, jacobian["planes"])):
            ax = axes[row, col]
            image = ax.imshow(values, cmap="RdBu_r", norm=norm, origin="lower")
            _edge_letters(ax, plane)
            ax.set_axis_off()
            ax.set_title(f"Jacobian det: {plane['view']}", **_TITLE)
        fig.colorbar(image, cax=_colorbar_axes(fig, axes[row, len(planes) - 1]), label="det J (1 = no change)")
        ax = axes[row, len(planes)]
        ax.stairs(jacobian["counts"], jacobian["edges"], fill=True, color="0.4")  # one artist, not 100 bar patches
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_title(jacobian["title"], **_TITLE)
        ax.set_xlabel("det J")
        ax.set_yscale("log")
    fig.suptitle(panels["title"], fontsize=11)
    return fig, histogram_titles


def save_panels(panels: dict[str, Any], path: str | os.PathLike) -> Path:
    """Draw ``panels`` (:func:`qc_figure_from_panels`) into the PNG file ``path`` (written in
    place: the caller stages it) and return the path."""
    path = Path(path)
    qc_figure_from_panels(panels).savefig(path, dpi=_DPI, pil_kwargs=_PNG)
    return path


class PreparedPicture:
    """A QC picture drawn before its joint histograms' titles are known (they carry the
    validation's MI, which is computed meanwhile): :meth:`finish` then draws only those titles
    onto the drawn picture and writes the PNG, the same pixels as :func:`save_panels` of the
    panels with the final titles (tested). ``panels``' own histogram titles are not drawn."""

    def __init__(self, panels: dict[str, Any]) -> None:
        self._figure, self._titles = _build(panels, dpi=_DPI)
        for title in self._titles:
            title.set_visible(False)
        self._figure.canvas.draw()

    def finish(self, titles: list[str], path: str | os.PathLike) -> Path:
        """Draw ``titles`` (one per row, as ``histogram_title``) and write the PNG ``path``
        (in place: the caller stages it)."""
        from matplotlib.image import imsave

        if len(titles) != len(self._titles):
            raise ValueError(f"expected {len(self._titles)} histogram titles, got {len(titles)}")
        for artist, text in zip(self._titles, titles):
            artist.set_text(text)
            artist.set_visible(True)
            self._figure.draw_artist(artist)
        # what savefig's PNG writer does after its own full draw (FigureCanvasAgg.print_png)
        imsave(path, self._figure.canvas.buffer_rgba(), format="png", origin="upper", dpi=_DPI, pil_kwargs=dict(_PNG))
        return Path(path)


def warm_up() -> None:
    """Draw a small picture with every kind of panel (checkerboards, histograms, the Jacobian
    row and its colour bar) into memory: loads the fonts, colour maps and the renderer's
    first-use state, so that the real picture draws at full speed."""
    ramp = np.linspace(0.0, 1.0, 64).reshape(8, 8)
    planes = [{"view": "axial", "right": "L", "up": "A"}]
    rows = [{"label": "warm-up", "checkerboards": [ramp], "histogram": ramp, "histogram_title": "warm-up"}]
    counts, edges = np.histogram(ramp + 0.5, bins=10)
    jacobian = {"planes": [ramp + 0.5], "vmin": 0.5, "vmax": 1.5, "counts": counts, "edges": edges, "title": "warm-up"}
    panels = {"title": "warm-up", "planes": planes, "tiles": 2, "rows": rows, "jacobian": jacobian}
    qc_figure_from_panels(panels).savefig(io.BytesIO(), dpi=_DPI, format="png", pil_kwargs=_PNG)
