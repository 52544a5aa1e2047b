"""The inputs of a registration: device choice, single-channel images, masks, the start transform,
and the provenance records of input files."""
from __future__ import annotations

import os
from typing import Any

import torch

from ..errors import InputError, RegistrationError, UsageError
from ..image import Image
from ..io import as_image
from ..transforms import Affine, SpatialTransform, Translation
from .initialization import initial_centers
from .options import RegistrationOptions

__all__ = ["input_records", "choose_device", "single_channel", "load_mask", "starting_transform"]


def input_records(**given: Any) -> dict[str, dict[str, Any] | None]:
    """Path, size and SHA-256 of each input given as a file or folder (None for in-memory images)."""
    from ..provenance import file_record

    return {
        name: file_record(value) if isinstance(value, (str, os.PathLike)) and os.path.exists(value) else None
        for name, value in given.items()
    }


def choose_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:  # not a device string at all
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UsageError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {name!r}")
    # A valid request this machine cannot serve: the run cannot proceed here (exit 1, not 2).
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RegistrationError(f"device {name!r} was asked for but CUDA is not available on this machine (use --device cpu or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RegistrationError(f"device {name!r} was asked for but this machine has {torch.cuda.device_count()} CUDA devices")
    return device


def single_channel(image: Image, name: str) -> Image:
    if image.channels == 1:
        return image
    return image.with_data(image.data.float().mean(dim=0, keepdim=True))


def load_mask(mask: Any, image: Image, name: str) -> Image | None:
    if mask is None:
        return None
    mask_img = as_image(mask)
    if mask_img.ndim != image.ndim:
        raise InputError(f"the {name} is {mask_img.ndim}D but its image is {image.ndim}D")
    if not mask_img.grid.same_as(image.grid, tolerance=1e-3):
        raise InputError(
            f"the {name} must lie on the grid of its image: mask size {mask_img.grid.size}, spacing "
            f"{mask_img.grid.spacing}, origin {mask_img.grid.origin} vs image size {image.grid.size}, "
            f"spacing {image.grid.spacing}, origin {image.grid.origin}"
        )
    binary = (mask_img.data[:1] != 0).to(torch.float32)
    if not bool(binary.any()):
        raise InputError(f"the {name} is empty: it selects no voxel")
    return mask_img.with_data(binary)


def starting_transform(
    given: SpatialTransform | None,
    fixed: Image,
    moving: Image,
    fixed_mask: Image | None,
    moving_mask: Image | None,
    opts: RegistrationOptions,
    dtype: torch.dtype,
    device: torch.device,
) -> SpatialTransform:
    if given is not None:
        from ..errors import InputError
        from ..transforms.io import as_transform

        name = f"initial transform {given}" if isinstance(given, (str, os.PathLike)) else "initial_transform"
        transform = as_transform(given)
        if not transform.is_linear:
            raise InputError(
                f"{name} is deformable ({type(transform).__name__}): a start must be linear (translation, rigid, "
                "similarity, affine or a composite of them), because every stage re-fits a linear transform from it "
                "and a deformable stage is built fresh on the fixed grid"
            )
        if transform.ndim != fixed.ndim:
            raise InputError(f"{name} is {transform.ndim}D but the images are {fixed.ndim}D")
        start = Affine.from_transform(transform, dtype=torch.float64)
        # rotate and scale about the fixed grid's centre (mapping unchanged): files often carry
        # the world origin as centre (composites always do), which conditions the optimiser badly
        start.set_center(fixed.grid.center())
        return start.to(device=device, dtype=dtype)
    center, translation = initial_centers(
        fixed, moving, opts.initialization,
        None if fixed_mask is None else fixed_mask.data[0], None if moving_mask is None else moving_mask.data[0],
    )
    out = Translation(fixed.ndim, center=center, dtype=dtype)
    with torch.no_grad():
        out.translation.copy_(torch.as_tensor(translation, dtype=dtype)[None])
    return out.to(device)
