"""Entropies, mutual information and its normalisations from a joint histogram.

All quantities are in nats. Entropies are the plug-in (discrete) entropies of the normalised
histogram, so they depend on the bin width; mutual information does not, to first order.
``p log p`` is taken as 0 for empty cells, with a zero (not NaN) gradient there.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .validation import check_normalization

__all__ = [
    "Entropies",
    "BIAS_CORRECTIONS",
    "entropies_from_joint",
    "normalize_mutual_information",
    "mutual_information_from_joint",
]

#: Bias corrections of the plug-in estimate: none, or Miller-Madow's (m - 1) / (2 n) per entropy.
BIAS_CORRECTIONS = ("none", "miller-madow")


class Entropies(NamedTuple):
    """Marginal and joint entropies, each of shape (B,), in nats."""

    hx: Tensor
    hy: Tensor
    hxy: Tensor

    @property
    def mutual_information(self) -> Tensor:
        """I(X; Y) = H(X) + H(Y) - H(X, Y), in nats."""
        return self.hx + self.hy - self.hxy


def _entropy(p: Tensor, dims: tuple[int, ...]) -> Tensor:
    """-sum p log p over ``dims``; empty cells contribute 0 and get a zero gradient."""
    safe = torch.where(p > 0, p, torch.ones_like(p))  # log(1) = 0: no -inf, no NaN gradient
    return -(p * safe.log()).sum(dim=dims)


def entropies_from_joint(
    joint: Tensor,
    *,
    bias_correction: str = "none",
    n_effective: Optional[Tensor] = None,
) -> Entropies:
    """Plug-in entropies H(X), H(Y), H(X, Y) of a joint histogram.

    Parameters
    ----------
    joint : Tensor
        (B, Kx, Ky) non-negative counts or probabilities, ``[b, x_bin, y_bin]``; each batch
        element is normalised to sum 1.
    bias_correction : {"none", "miller-madow"}
        ``"miller-madow"`` adds ``(m - 1) / (2 n)`` to each entropy, m being its number of
        non-empty cells (Miller 1955): it removes the first-order negative bias of the plug-in
        entropy, and so the positive bias of MI. The correction is piecewise constant in the
        samples (no gradient).
    n_effective : Tensor, optional
        (B,) effective number of samples for the correction (required with it).

    Returns
    -------
    Entropies
        (hx, hy, hxy), each (B,), in nats.
    """
    total = joint.sum(dim=(1, 2), keepdim=True)
    p = joint / torch.where(total > 0, total, torch.ones_like(total))
    px, py = p.sum(dim=2), p.sum(dim=1)
    hx, hy, hxy = _entropy(px, (1,)), _entropy(py, (1,)), _entropy(p, (1, 2))
    if bias_correction == "miller-madow":
        if n_effective is None:
            raise ValueError("the Miller-Madow correction needs the effective sample count")
        with torch.no_grad():
            n2 = 2 * n_effective.to(p.dtype)
            cx = ((px > 0).sum(dim=1) - 1).to(p.dtype) / n2
            cy = ((py > 0).sum(dim=1) - 1).to(p.dtype) / n2
            cxy = ((p > 0).sum(dim=(1, 2)) - 1).to(p.dtype) / n2
        hx, hy, hxy = hx + cx, hy + cy, hxy + cxy
    elif bias_correction != "none":
        raise ValueError(f"bias_correction must be one of {BIAS_CORRECTIONS}, got {bias_correction!r}")
    return Entropies(hx, hy, hxy)


def _safe_ratio(num: Tensor, den: Tensor, default: float) -> Tensor:
    """num / den where den > 0, else ``default`` (a constant input has zero entropy)."""
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.full_like(num, default))


def normalize_mutual_information(h: Entropies, normalization: str = "none") -> Tensor:
    """Mutual information, possibly normalised, from entropies.

    Parameters
    ----------
    h : Entropies
        (hx, hy, hxy), each (B,), nats.
    normalization : str
        ``"none"``: I = H(X) + H(Y) - H(X,Y) in nats; ``"sum"``: 2 I / (H(X) + H(Y));
        ``"joint"``: I / H(X,Y); ``"max"``: I / max(H(X), H(Y)); ``"sqrt"``: I / sqrt(H(X) H(Y));
        ``"min"``: I / min(H(X), H(Y)) (the seed's list, all in [0, 1]); ``"studholme"``:
        (H(X) + H(Y)) / H(X,Y) (Studholme et al. 1999, in [1, 2]). A zero denominator (a
        constant input) gives 0 (1 for ``"studholme"``).

    Returns
    -------
    Tensor
        (B,). Larger is more dependent; a loss is its negative.
    """
    check_normalization(normalization)
    mi = h.mutual_information
    if normalization == "none":
        return mi
    if normalization == "sum":
        return _safe_ratio(2 * mi, h.hx + h.hy, 0.0)
    if normalization == "joint":
        return _safe_ratio(mi, h.hxy, 0.0)
    if normalization == "max":
        return _safe_ratio(mi, torch.maximum(h.hx, h.hy), 0.0)
    if normalization == "sqrt":
        prod = h.hx * h.hy
        return _safe_ratio(mi, torch.where(prod > 0, prod, torch.ones_like(prod)).sqrt() * (prod > 0), 0.0)
    if normalization == "min":
        return _safe_ratio(mi, torch.minimum(h.hx, h.hy), 0.0)
    return _safe_ratio(h.hx + h.hy, h.hxy, 1.0)  # studholme


def mutual_information_from_joint(
    joint: Tensor,
    normalization: str = "none",
    *,
    bias_correction: str = "none",
    n_effective: Optional[Tensor] = None,
) -> Tensor:
    """MI (nats) or a normalised MI of a (B, Kx, Ky) joint histogram; returns (B,)."""
    h = entropies_from_joint(joint, bias_correction=bias_correction, n_effective=n_effective)
    return normalize_mutual_information(h, normalization)
