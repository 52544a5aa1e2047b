"""Quality-control picture: checkerboards and joint histograms before and after registration."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..warp import warp
from .result import RegistrationResult

__all__ = ["checkerboard", "save_qc_figure"]


def checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    """Interleave two 2-D arrays of the same shape in ``tiles x tiles`` squares (each scaled to [0, 1])."""
    a, b = _unit(a), _unit(b)
    rows = (np.arange(a.shape[0]) * tiles // max(a.shape[0], 1))[:, None]
    cols = (np.arange(a.shape[1]) * tiles // max(a.shape[1], 1))[None, :]
    return np.where((rows + cols) % 2 == 0, a, b)


def _unit(x: np.ndarray) -> np.ndarray:
    low, high = np.percentile(x, [0.5, 99.5])
    return np.clip((x - low) / max(high - low, 1e-12), 0, 1)


def _middle_slices(volume: np.ndarray) -> list[np.ndarray]:
    """Middle axial, coronal and sagittal planes of a ([Z,] Y, X) array (one plane for 2-D)."""
    if volume.ndim == 2:
        return [volume]
    z, y, x = (n // 2 for n in volume.shape)
    return [volume[z], volume[:, y], volume[:, :, x]]


def _joint_histogram(a: np.ndarray, b: np.ndarray, bins: int = 64) -> np.ndarray:
    hist, _, _ = np.histogram2d(a.ravel(), b.ravel(), bins=bins)
    return np.log1p(hist.T)


@torch.no_grad()
def save_qc_figure(result: RegistrationResult, path: str | os.PathLike) -> Path:
    """Write a PNG: fixed/moving checkerboards (middle planes) and joint histograms, before and after.

    "Before" is the moving image resampled onto the fixed grid with the identity transform
    (the images' own physical placement), "after" with the found transform.
    """
    # The object API with the Agg canvas: no pyplot (its import and global figure registry).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fixed = result.fixed.data[0].numpy()
    before = warp(result.moving.batch().float(), result.moving.grid, None, result.fixed.grid)[0, 0].numpy()
    after = result.warped.data[0].float().numpy()
    rows = (("before", before), ("after", after))
    planes = len(_middle_slices(fixed))
    fig = Figure(figsize=(3.2 * (planes + 1), 6.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, planes + 1, squeeze=False)
    for row, (label, moved) in enumerate(rows):
        for col, (f_plane, m_plane) in enumerate(zip(_middle_slices(fixed), _middle_slices(moved))):
            ax = axes[row, col]
            ax.imshow(checkerboard(f_plane, m_plane), cmap="gray", origin="lower")
            ax.set_axis_off()
            ax.set_title(f"{label}: checkerboard {col + 1}", fontsize=9)
        ax = axes[row, planes]
        ax.imshow(_joint_histogram(fixed, moved), origin="lower", cmap="magma", aspect="auto")
        key = "before" if row == 0 else "after"
        stats = result.validation.get(key)
        title = f"joint histogram {label}"
        if stats:
            title += f"\nMI {stats['soft_bins']:.3f} nats, NMI {stats['nmi']:.3f}"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("fixed intensity bin")
        ax.set_ylabel("moving intensity bin")
    fig.suptitle(f"miregister {'+'.join(result.stages)}", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=90, pil_kwargs={"compress_level": 1})  # same pixels; zlib level 6 costs 2x the time for 10 % less
    os.replace(tmp, path)
    return path
