"""miregister: image registration on PyTorch driven by mutual information.

Submodules
----------
mi            mutual-information estimators (soft/discrete bins, KDE, KNN)
grid, image   physical-space grids and images (ITK/LPS, mm)
io            reading and writing images and transforms
transforms    linear, B-spline and velocity-field transforms (fixed -> moving)
warp          resampling images through transforms
registration  ``register(fixed, moving)`` and its result
"""
from __future__ import annotations

from . import io, mi, transforms, warp
from .errors import InputError, MiregisterError, OutputError, UsageError
from .grid import Grid
from .image import Image
from .io import read_image, write_image
from .registration import RegistrationError, RegistrationResult, register
from .transforms.io import read_transform, write_transform

__version__ = "0.1.0"

__all__ = [
    "Grid", "Image", "register", "RegistrationResult", "register_cohort",
    "MiregisterError", "UsageError", "InputError", "RegistrationError", "OutputError",
    "read_image", "write_image", "read_transform", "write_transform",
    "io", "mi", "transforms", "warp", "__version__",
]


def __getattr__(name: str):
    # register_cohort loads lazily: the cohort layer imports Dask only when it runs pairs.
    if name == "register_cohort":
        from .cohort import register_cohort

        return register_cohort
    raise AttributeError(f"module 'miregister' has no attribute {name!r}")
