"""Images of one pyramid level, cached so that stages sharing a schedule share the work."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..cubic import bspline_prefilter
from ..image import Image
from ..pyramid import gaussian_smooth, shrink

__all__ = ["Level", "LevelCache"]


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

        return Level(
            factor, sigma, prepare(self.fixed), prepare(self.moving),
            prepare_mask(self.fixed_mask), prepare_mask(self.moving_mask),
        )
