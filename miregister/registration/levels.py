"""Images of one pyramid level, cached so that stages sharing a schedule share the work."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch

from ..cubic import bspline_prefilter
from ..errors import InputError, RegistrationError, UsageError
from ..grid import Grid
from ..image import Image
from ..pyramid import gaussian_smooth, shrink, shrunk_spacing

__all__ = ["Level", "LevelCache", "MIN_VOXELS", "level_grid", "check_level_sizes"]

#: Fewest voxels an image, and each of its pyramid levels, needs along every axis: a sample
#: point is "inside" an image when it lies between its outermost voxel centres, so along a
#: 1-voxel axis almost no point is, and the registration would fail as "no overlap".
MIN_VOXELS = 2

_AXES = "xyz"


def _size_text(grid: Grid) -> str:
    return "x".join(str(n) for n in grid.size)


def level_grid(grid: Grid, factor: int) -> Grid:
    """The grid of the pyramid level shrunk by ``factor`` (as :class:`LevelCache` builds it)."""
    spacing = shrunk_spacing(grid.spacing, factor) if factor > 1 else grid.spacing
    return grid if tuple(spacing) == tuple(grid.spacing) else grid.with_spacing(spacing)


def check_level_sizes(fixed: Grid, moving: Grid, factors: Iterable[int]) -> None:
    """Refuse images, and shrink factors, that leave fewer than :data:`MIN_VOXELS` along an axis.

    Parameters
    ----------
    fixed, moving : Grid
        The full-resolution grids of the images.
    factors : iterable of int
        Every shrink factor of the run (all stages).

    Raises
    ------
    InputError
        If an image itself is thinner than :data:`MIN_VOXELS` along an axis (e.g. one slice
        given as a 3D volume).
    UsageError
        If a shrink factor leaves a level thinner than that (e.g. ``--shrink-factors 1000``).
    """
    for name, grid in (("fixed", fixed), ("moving", moving)):
        for axis, n in enumerate(grid.size):
            if n < MIN_VOXELS:
                raise InputError(
                    f"the {name} image is {n} voxel{'s' if n != 1 else ''} thick along {_AXES[axis]} (size "
                    f"{_size_text(grid)}): a {grid.ndim}D registration needs at least {MIN_VOXELS} voxels per axis"
                    + ("; register a single slice as a 2D image (both images 2D)" if grid.ndim == 3 else "")
                )
    for factor in sorted(set(int(f) for f in factors), reverse=True):
        for name, grid in (("fixed", fixed), ("moving", moving)):
            level = level_grid(grid, factor)
            if min(level.size) < MIN_VOXELS:
                largest = max((f for f in range(1, factor) if min(level_grid(grid, f).size) >= MIN_VOXELS), default=1)
                raise UsageError(
                    f"shrink factor {factor} leaves a {_size_text(level)}-voxel level of the {_size_text(grid)} "
                    f"{name} image: use smaller shrink factors (at most {largest} keeps {MIN_VOXELS} voxels per axis)"
                )


@dataclass
class Level:
    """Fixed and moving images (and masks) smoothed by ``sigma`` mm and shrunk by ``factor``."""

    factor: int
    sigma: float
    fixed: Image
    moving: Image
    fixed_mask: torch.Tensor | None
    moving_mask: torch.Tensor | None
    _coefficients: torch.Tensor | None = field(default=None, repr=False)
    _ranges: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    def value_ranges(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1, 2)`` (min, max) intensities of ``fixed`` within ``fixed_mask`` and of ``moving``
        within ``moving_mask``: the histogram ranges of every problem at this level, computed once."""
        if self._ranges is None:
            def value_range(image: Image, mask: torch.Tensor | None) -> torch.Tensor:
                values = image.data[0] if mask is None else image.data[0][mask]
                return torch.stack((values.min(), values.max()))[None]

            self._ranges = (value_range(self.fixed, self.fixed_mask), value_range(self.moving, self.moving_mask))
        return self._ranges

    def moving_coefficients(self) -> torch.Tensor:
        """Cubic B-spline coefficients of ``moving`` ``(1, C, *shape)``, computed once per level."""
        if self._coefficients is None:
            self._coefficients = bspline_prefilter(self.moving.batch())
        return self._coefficients


class LevelCache:
    """Build pyramid levels on demand, keyed by (shrink factor, smoothing sigma in mm)."""

    def __init__(self, fixed: Image, moving: Image, fixed_mask: Image | None, moving_mask: Image | None) -> None:
        self.fixed, self.moving = fixed, moving
        self.fixed_mask, self.moving_mask = fixed_mask, moving_mask
        self._cache: dict[tuple[int, float], Level] = {}

    def get(self, factor: int, sigma: float) -> Level:
        """The level for shrink ``factor`` and Gaussian ``sigma`` (mm)."""
        key = (int(factor), float(sigma))
        if key not in self._cache:
            self._cache[key] = self._build(*key)
        return self._cache[key]

    def _build(self, factor: int, sigma: float) -> Level:
        def prepare(image: Image) -> Image:
            smoothed = gaussian_smooth(image, sigma) if sigma > 0 else image
            return shrink(smoothed, factor) if factor > 1 else smoothed

        def prepare_mask(mask: Image | None) -> torch.Tensor | None:
            if mask is None:
                return None
            # A voxel of the level is in the mask when most of its footprint is.
            return prepare(mask.with_data(mask.data.float())).data[0] > 0.5

        level = Level(
            factor, sigma, prepare(self.fixed), prepare(self.moving),
            prepare_mask(self.fixed_mask), prepare_mask(self.moving_mask),
        )
        for name, mask, image in (("fixed", level.fixed_mask, level.fixed), ("moving", level.moving_mask, level.moving)):
            if mask is not None and not bool(mask.any()):
                # A mask smaller than half a level voxel everywhere: the fix is a finer level.
                raise RegistrationError(
                    f"at shrink factor {factor} the {name} mask covers no voxel of the {_size_text(image.grid)}-voxel "
                    f"level (less than half of every level voxel lies in it): use smaller shrink factors or a larger mask"
                )
        return level
