"""Spatial transforms mapping fixed-space points (mm) to moving-space points (mm)."""
from .base import LinearTransform, SpatialTransform

__all__ = ["SpatialTransform", "LinearTransform"]
