"""The :class:`Image` type: a tensor of voxels together with its physical grid.

An image holds ``data`` of shape ``(C, *grid.shape)`` = ``(C, [Z,] Y, X)`` and a
:class:`~miregister.grid.Grid` (size, spacing, origin, direction in ITK/LPS conventions, mm).
Conversions to and from SimpleITK and numpy keep the geometry exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk
import torch
from torch import Tensor

from .grid import Grid

__all__ = ["Image"]


@dataclass
class Image:
    """Voxels with their place in physical space.

    Parameters
    ----------
    data : Tensor
        Shape ``(C, *grid.shape)``, i.e. ``(C, [Z,] Y, X)``; any float dtype, any device.
    grid : Grid
        Size, spacing (mm), origin (mm) and direction of the voxels.

    Raises
    ------
    ValueError
        If ``data`` does not have one channel axis followed by the grid's shape.
    """

    data: Tensor
    grid: Grid

    def __post_init__(self) -> None:
        if not isinstance(self.data, Tensor):
            self.data = torch.as_tensor(self.data)
        if self.data.dim() != self.grid.ndim + 1 or tuple(self.data.shape[1:]) != self.grid.shape:
            raise ValueError(
                f"image data of shape {tuple(self.data.shape)} does not match (C, *{self.grid.shape}) "
                f"for a {self.grid.ndim}D grid of size {self.grid.size}"
            )

    # ------------------------------------------------------------------ properties
    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return self.grid.ndim

    @property
    def channels(self) -> int:
        """Number of channels C."""
        return int(self.data.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial tensor shape ``([Z,] Y, X)``."""
        return self.grid.shape

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    def to(self, *args, **kwargs) -> "Image":
        """A copy with ``data.to(*args, **kwargs)``; the grid is unchanged."""
        return Image(self.data.to(*args, **kwargs), self.grid)

    def with_data(self, data: Tensor) -> "Image":
        """A new image on the same grid with other voxel values ``(C', *grid.shape)``."""
        return Image(data, self.grid)

    def batch(self) -> Tensor:
        """The data with a leading batch axis: ``(1, C, *shape)``."""
        return self.data.unsqueeze(0)

    # ------------------------------------------------------------------ SimpleITK
    @classmethod
    def from_sitk(cls, image: sitk.Image, dtype: torch.dtype = torch.float32) -> "Image":
        """Convert a ``SimpleITK.Image`` (scalar or vector pixels) keeping its geometry.

        Vector pixels become channels. Integer pixel types are cast to ``dtype`` unless
        ``dtype`` is an integer type.
        """
        if image.GetDimension() not in (2, 3):
            raise ValueError(f"only 2D and 3D images are supported, got a {image.GetDimension()}D image")
        array = sitk.GetArrayFromImage(image)  # ([z,] y, x[, c])
        if image.GetNumberOfComponentsPerPixel() > 1:
            array = np.moveaxis(array, -1, 0)
        else:
            array = array[None]
        data = torch.from_numpy(np.ascontiguousarray(array)).to(dtype)
        return cls(data, Grid.from_sitk(image))

    def to_sitk(self, channel: int | None = None) -> sitk.Image:
        """Convert to a ``SimpleITK.Image`` with the same geometry.

        A single-channel image gives scalar pixels, several channels give vector pixels, unless
        ``channel`` picks one. float16/bfloat16 voxels are written as float32, bool as uint8.
        """
        data = self.data.detach().cpu()
        if channel is not None:
            data = data[channel : channel + 1]
        if data.dtype in (torch.float16, torch.bfloat16):
            data = data.to(torch.float32)  # SimpleITK has no half-precision pixels
        elif data.dtype == torch.bool:
            data = data.to(torch.uint8)
        array = data.numpy()
        if array.shape[0] == 1:
            out = sitk.GetImageFromArray(array[0], isVector=False)
        else:
            out = sitk.GetImageFromArray(np.moveaxis(array, 0, -1), isVector=True)
        self.grid.copy_to_sitk(out)
        return out

    # ------------------------------------------------------------------ numpy
    @classmethod
    def from_numpy(
        cls,
        array: np.ndarray,
        spacing: Sequence[float] | None = None,
        origin: Sequence[float] | None = None,
        direction: Sequence[float] | None = None,
        channel_axis: int | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> "Image":
        """Make an image from a numpy array in SimpleITK order ``([Z,] Y, X)``.

        Parameters
        ----------
        array : ndarray
            Voxels in ``([Z,] Y, X)`` order (as ``sitk.GetArrayFromImage``), with an optional
            channel axis given by ``channel_axis``.
        spacing, origin, direction : sequence of float, optional
            Geometry in ITK order ``(x, y[, z])``, mm; defaults 1 mm, 0 mm, identity.
        """
        array = np.asarray(array)
        if channel_axis is None:
            array = array[None]
        else:
            array = np.moveaxis(array, channel_axis, 0)
        size = tuple(reversed(array.shape[1:]))
        grid = Grid(
            size,
            spacing if spacing is not None else (),
            origin if origin is not None else (),
            direction if direction is not None else (),
        )
        return cls(torch.from_numpy(np.ascontiguousarray(array)).to(dtype), grid)

    def to_numpy(self) -> np.ndarray:
        """Voxels as a numpy array ``(C, [Z,] Y, X)`` (on the CPU)."""
        return self.data.detach().cpu().numpy()
