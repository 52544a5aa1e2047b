"""Spatial transforms mapping fixed-space points (mm) to moving-space points (mm)."""
from .base import LinearTransform, SpatialTransform

__all__ = ["SpatialTransform", "LinearTransform"]
from .linear import Affine, CenteredLinearTransform, Rigid, Similarity, Translation
from .displacement import DisplacementField
from .composite import Composite
__all__ += ["CenteredLinearTransform", "Translation", "Rigid", "Similarity", "Affine", "DisplacementField", "Composite"]
from .bspline import BSpline
from .svf import SVF
__all__ += ["BSpline", "SVF"]
from .io import read_transform, write_transform
__all__ += ["read_transform", "write_transform"]
