"""miregister: image registration on PyTorch driven by mutual information.

Submodules
----------
mi            mutual-information estimators (soft/discrete bins, KDE, KNN)
grid, image   physical-space grids and images (ITK/LPS, mm)
io            reading and writing images and transforms
transforms    linear, B-spline and velocity-field transforms (fixed -> moving)
warp          resampling images through transforms
registration  ``register(fixed, moving)``, ``register_batch`` and their result

Names are imported on first use (PEP 562 ``__getattr__``): ``import miregister`` costs
milliseconds, and ``miregister --help`` does not load torch, SimpleITK or scipy.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import InputError, MiregisterError, OutputError, RegistrationError, UsageError

__version__ = "0.1.0"

#: Public name -> (module, attribute or None for the module itself), imported on first access.
_LAZY: dict[str, tuple[str, str | None]] = {
    "Grid": (".grid", "Grid"),
    "Image": (".image", "Image"),
    "register": (".registration", "register"),
    "register_batch": (".registration", "register_batch"),
    "RegistrationResult": (".registration", "RegistrationResult"),
    "read_image": (".io", "read_image"),
    "write_image": (".io", "write_image"),
    "read_transform": (".transforms.io", "read_transform"),
    "write_transform": (".transforms.io", "write_transform"),
    "io": (".io", None),
    "mi": (".mi", None),
    "transforms": (".transforms", None),
    "warp": (".warp", None),
    # the cohort layer imports Dask only when it runs pairs
    "register_cohort": (".cohort", "register_cohort"),
}

__all__ = [
    "Grid", "Image", "register", "register_batch", "RegistrationResult", "register_cohort",
    "MiregisterError", "UsageError", "InputError", "RegistrationError", "OutputError",
    "read_image", "write_image", "read_transform", "write_transform",
    "io", "mi", "transforms", "warp", "__version__",
]


def __getattr__(name: str) -> Any:
    try:
        module_name, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    module = importlib.import_module(module_name, __name__)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static checkers and IDEs see the eager imports
    from . import io, mi, transforms, warp
    from .grid import Grid
    from .image import Image
    from .io import read_image, write_image
    from .registration import RegistrationResult, register, register_batch
    from .cohort import register_cohort
    from .transforms.io import read_transform, write_transform
