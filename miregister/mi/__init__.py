"""Mutual-information estimators on PyTorch: soft (Parzen) and discrete bins, KDE and KNN.

MI is in nats and positive; a loss is its negative. Functions take sample sets ``x``, ``y`` of
shape (B, N) and return (B,); the seed-API modules take images (B, C, *spatial) with 1 to 3
spatial dimensions and return (B, C).

Functions
---------
soft_mutual_information       Parzen-window (cubic B-spline) MI, exactly differentiable, O(N)
discrete_mutual_information   hard-binned MI, each sample counted once
kde_mutual_information        Gaussian-KDE MI on a grid, Scott's full-covariance bandwidth
knn_mutual_information        Kraskov-Stoegbauer-Grassberger estimator 1, exact
joint_entropies               H(X), H(Y), H(X, Y) of the soft or discrete histogram
normalized_mutual_information Studholme's (H(X) + H(Y)) / H(X, Y)

Seed API (``torch_mi`` names and arguments)
-------------------------------------------
BinsCountMutualInformation, KdeMutualInformation, KnnMutualInformation (+ ``computePxy``).
"""
from __future__ import annotations

from .bins import (
    auto_bins,
    discrete_mutual_information,
    joint_entropies,
    normalized_mutual_information,
    soft_mutual_information,
)
from .entropy import Entropies, entropies_from_joint, mutual_information_from_joint, normalize_mutual_information
from .histogram import discrete_joint_histogram, soft_joint_histogram
from .kde import kde_entropies, kde_joint_density, kde_mutual_information, scott_bandwidth
from .knn import knn_mutual_information
from .modules import (
    BinsCountMutualInformation,
    KdeMutualInformation,
    KnnMutualInformation,
    MutualInformationDensityBased,
    SoftMutualInformation,
)
from .ranges import PercentileShiftRange, compute_range
from .validation import NORMALIZATIONS

__all__ = [
    "soft_mutual_information",
    "discrete_mutual_information",
    "kde_mutual_information",
    "knn_mutual_information",
    "joint_entropies",
    "kde_entropies",
    "normalized_mutual_information",
    "auto_bins",
    "Entropies",
    "entropies_from_joint",
    "mutual_information_from_joint",
    "normalize_mutual_information",
    "soft_joint_histogram",
    "discrete_joint_histogram",
    "kde_joint_density",
    "scott_bandwidth",
    "compute_range",
    "PercentileShiftRange",
    "NORMALIZATIONS",
    "MutualInformationDensityBased",
    "BinsCountMutualInformation",
    "KdeMutualInformation",
    "KnnMutualInformation",
    "SoftMutualInformation",
]
