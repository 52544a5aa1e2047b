"""``torch.nn.Module`` wrappers: the seed's API (a contract) and a thin soft-MI module.

The seed classes take images ``(B, C, *spatial)`` with 1, 2 or 3 spatial dimensions and return
one value per channel, ``(B, C)``, in nats (or normalised), clamped at 0 as the seed did. Each
(batch, channel) pair is an independent sample set. They keep the seed's names and arguments
so that code written for ``torch_mi`` runs unchanged with ``miregister.mi``.
"""
from __future__ import annotations

from typing import Collection, Literal, Optional, Union

from torch import Tensor, nn

from .bins import soft_mutual_information
from .entropy import Entropies, entropies_from_joint, normalize_mutual_information
from .histogram import discrete_joint_histogram, soft_joint_histogram
from .kde import kde_joint_density
from .kernels import KernelArg, axis_kernels
from .knn import knn_mutual_information
from .validation import check_bins, check_normalization, check_pair, check_weights, computation_dtype

__all__ = [
    "MutualInformationDensityBased",
    "BinsCountMutualInformation",
    "KdeMutualInformation",
    "KnnMutualInformation",
    "SoftMutualInformation",
]

Normalization = Literal["none", "sum", "joint", "max", "sqrt", "min", "studholme"]


def _flatten_pair(x: Tensor, y: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """(B, C, *spatial) images -> (B*C, N) sample sets (and the mask broadcast to them)."""
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise ValueError("x and y must be torch tensors")
    if x.shape != y.shape:
        raise ValueError(f"Tensor x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dim() not in (3, 4, 5):
        raise ValueError(f"inputs must be (B, C, *spatial) with 1 to 3 spatial dimensions, got {tuple(x.shape)}")
    bc = x.shape[0] * x.shape[1]
    flat_mask = None
    if mask is not None:
        if not isinstance(mask, Tensor):
            raise ValueError("mask must be a torch tensor")
        try:
            flat_mask = mask.expand_as(x).reshape(bc, -1)
        except RuntimeError as error:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to {tuple(x.shape)}") from error
    return x.reshape(bc, -1), y.reshape(bc, -1), flat_mask


def _range_options(rangeOpts: dict) -> tuple[float, float]:  # noqa: N803 (seed name)
    if not isinstance(rangeOpts, dict) or not all(k in rangeOpts for k in ("percentile", "gain")):
        raise ValueError("rangeOpts must be a dictionary with at least keys 'percentile' and 'gain'")
    percentile, gain = float(rangeOpts["percentile"]), float(rangeOpts["gain"])
    if not 0.0 <= percentile < 0.5:
        raise ValueError(f"rangeOpts['percentile'] must be in [0, 0.5), got {percentile}")
    if not 0.0 <= gain <= 1.0:
        raise ValueError(f"rangeOpts['gain'] must be in [0, 1], got {gain}")
    return percentile, gain


class MutualInformationDensityBased(nn.Module):
    """Base of the density (histogram/KDE) estimators of the seed API.

    Parameters
    ----------
    nBins : int
        Bins (grid points) per axis, >= 2.
    normalization : str
        ``"none"`` (MI in nats), ``"sum"``, ``"joint"``, ``"max"``, ``"sqrt"``, ``"min"`` or
        ``"studholme"``; see :func:`~miregister.mi.entropy.normalize_mutual_information`.
    rangeOpts : dict
        ``{"percentile": p, "gain": g}``: bins span the p to 1 - p quantiles of each sample set
        (p a fraction), widened by g times the bounds' magnitudes.
    """

    def __init__(
        self,
        nBins: int,  # noqa: N803 (seed names)
        normalization: Normalization = "none",
        rangeOpts: Optional[dict] = None,  # noqa: N803
    ) -> None:
        super().__init__()
        self.nBins = check_bins(nBins, "nBins")
        self.normalization = check_normalization(normalization)
        self.rangeOpts = dict(rangeOpts) if rangeOpts is not None else {"percentile": 0.0, "gain": 0.0}
        self.percentile, self.gain = _range_options(self.rangeOpts)

    def computePxy(self, x: Tensor, y: Tensor, mask: Optional[Tensor] = None) -> Tensor:  # noqa: N802
        """Joint distribution (B, nBins, nBins), ``[b, x_bin, y_bin]``, of samples x, y (B, N)."""
        raise NotImplementedError

    def _entropies(self, x: Tensor, y: Tensor, mask: Optional[Tensor]) -> Entropies:
        return entropies_from_joint(self.computePxy(x, y, mask))

    def computeEntropies(self, Pxy: Tensor) -> Entropies:  # noqa: N802, N803
        """(H(X), H(Y), H(X, Y)), each (B,), in nats, of a joint distribution (B, K, K)."""
        return entropies_from_joint(Pxy)

    def entropies(self, x: Tensor, y: Tensor, mask: Optional[Tensor] = None) -> Entropies:
        """(H(X), H(Y), H(X, Y)) of images (B, C, *spatial), each (B, C), in nats."""
        b, c = x.shape[:2]
        h = self._entropies(*_flatten_pair(x, y, mask))
        return Entropies(*(t.reshape(b, c) for t in h))

    def forward(self, x: Tensor, y: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Channel-wise MI (nats) or normalised MI of images (B, C, *spatial): (B, C), >= 0.

        ``mask`` (broadcastable to x, boolean or non-negative weights) excludes samples.
        """
        b, c = x.shape[:2]
        h = self._entropies(*_flatten_pair(x, y, mask))
        return normalize_mutual_information(h, self.normalization).reshape(b, c).clamp(min=0)


class BinsCountMutualInformation(MutualInformationDensityBased):
    """Histogram MI (seed API): ``mode="soft"`` Parzen window (differentiable) or ``"discrete"``.

    Parameters
    ----------
    nBins : int
        Bins per axis (>= 2).
    normalization, rangeOpts
        See :class:`MutualInformationDensityBased`.
    mode : {"soft", "discrete"}
        ``"soft"``: cubic B-spline Parzen histogram, exact finite gradients (the seed's step
        function is gone). ``"discrete"``: each sample counted once.
    kernel : {"bspline", "gaussian", "box"} or (str, str)
        Parzen kernel of the soft mode, or an ``(x_kernel, y_kernel)`` pair.
    """

    def __init__(
        self,
        nBins: int,  # noqa: N803
        normalization: Normalization = "none",
        mode: Literal["soft", "discrete"] = "soft",
        rangeOpts: Optional[dict] = None,  # noqa: N803
        kernel: KernelArg = "bspline",
    ) -> None:
        super().__init__(nBins=nBins, normalization=normalization, rangeOpts=rangeOpts)
        if mode not in ("soft", "discrete"):
            raise ValueError(f"mode must be 'soft' or 'discrete', got {mode!r}")
        self.mode = mode
        axis_kernels(kernel)  # an unknown kernel fails here, not at the first call
        self.kernel = kernel

    def computePxy(self, x: Tensor, y: Tensor, mask: Optional[Tensor] = None) -> Tensor:  # noqa: N802
        check_pair(x, y)
        dtype = computation_dtype(x, y)
        x, y = x.to(dtype), y.to(dtype)
        weights = check_weights(mask, x)
        opts = dict(bins=self.nBins, weights=weights, percentile=self.percentile, gain=self.gain)
        if self.mode == "soft":
            joint = soft_joint_histogram(x, y, kernel=self.kernel, **opts)
        else:
            joint = discrete_joint_histogram(x, y, **opts)
        return joint / joint.sum(dim=(1, 2), keepdim=True)


class KdeMutualInformation(MutualInformationDensityBased):
    """Gaussian-KDE MI on an nBins x nBins grid (seed API); see :mod:`miregister.mi.kde`.

    Parameters
    ----------
    nBins : int
        Grid points per axis (>= 2). The default of the functional form is 256; a coarse grid
        (the seed notebook's 20) underestimates strong dependence.
    bandwidths : float, pair of floats, or None
        Kernel standard deviations (x, y) in data units, or None for Scott's full-covariance
        rule.
    normalization, rangeOpts
        See :class:`MutualInformationDensityBased`.
    """

    def __init__(
        self,
        nBins: int,  # noqa: N803
        bandwidths: Optional[Union[Collection[float], float, Tensor]] = None,
        normalization: Normalization = "none",
        rangeOpts: Optional[dict] = None,  # noqa: N803
    ) -> None:
        super().__init__(nBins=nBins, normalization=normalization, rangeOpts=rangeOpts)
        if bandwidths is not None and not isinstance(bandwidths, Tensor):
            values = [bandwidths] * 2 if isinstance(bandwidths, (int, float)) else list(bandwidths)
            if len(values) != 2 or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 for v in values
            ):
                raise ValueError("Bandwidths must be a strictly positive number or a collection of two")
            bandwidths = tuple(float(v) for v in values)
        self.bandwidths = bandwidths

    def computePxy(self, x: Tensor, y: Tensor, mask: Optional[Tensor] = None) -> Tensor:  # noqa: N802
        check_pair(x, y)
        dtype = computation_dtype(x, y)
        x, y = x.to(dtype), y.to(dtype)
        return kde_joint_density(
            x, y, bins=self.nBins, bandwidths=self.bandwidths, weights=check_weights(mask, x),
            percentile=self.percentile, gain=self.gain,
        )


class KnnMutualInformation(nn.Module):
    """KSG estimator 1 (seed API): channel-wise MI (nats) of images (B, C, *spatial) -> (B, C).

    Exact, ties handled by a strict-inequality rule (see :mod:`miregister.mi.knn`), clamped at
    0 as the seed did. Runs on the CPU with scipy for CPU tensors.

    Parameters
    ----------
    nNeighbours : int
        k >= 1.
    backend : {"auto", "scipy", "torch"}
        Neighbour search.
    """

    def __init__(self, nNeighbours: int, backend: str = "auto") -> None:  # noqa: N803
        super().__init__()
        if isinstance(nNeighbours, bool) or not isinstance(nNeighbours, int) or nNeighbours <= 0:
            raise ValueError("nNeighbours must be a strictly positive integer")
        self.nNeighbours = nNeighbours
        self.backend = backend

    def forward(self, x: Tensor, y: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """(B, C) MI in nats, float64, on the input's device."""
        b, c = x.shape[:2]
        xf, yf, mf = _flatten_pair(x, y, mask)
        mi = knn_mutual_information(xf, yf, k=self.nNeighbours, mask=mf, backend=self.backend)
        return mi.reshape(b, c).clamp(min=0)


class SoftMutualInformation(nn.Module):
    """Thin module around :func:`~miregister.mi.bins.soft_mutual_information` for (B, N) samples.

    ``forward(x, y, weights=None, x_range=None, y_range=None)`` returns (B,) MI in nats (or the
    chosen normalisation); use its negative as a loss. Keyword arguments are stored and passed on.
    """

    def __init__(self, bins: int = 32, **kwargs) -> None:
        super().__init__()
        self.bins = check_bins(bins)
        self.kwargs = kwargs

    def forward(
        self,
        x: Tensor,
        y: Tensor,
        weights: Optional[Tensor] = None,
        x_range: Optional[Tensor] = None,
        y_range: Optional[Tensor] = None,
    ) -> Tensor:
        return soft_mutual_information(
            x, y, bins=self.bins, weights=weights, x_range=x_range, y_range=y_range, **self.kwargs
        )

