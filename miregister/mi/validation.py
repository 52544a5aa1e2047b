"""Input checks shared by the estimators; every failure is a :class:`ValueError`.

Shape checks are always run. Checks that need the *values* of a tensor (NaN/inf, empty masks)
force a device-to-host synchronisation, so they are skipped automatically while tracing with
``torch.compile`` or capturing a CUDA graph, and can be turned off with ``validate=False``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = [
    "NORMALIZATIONS",
    "check_pair",
    "check_weights",
    "check_bins",
    "check_normalization",
    "check_range",
    "prepare_inputs",
    "values_checkable",
    "computation_dtype",
]

#: Normalisations of the seed API plus Studholme's NMI, ``(H(X) + H(Y)) / H(X, Y)``.
NORMALIZATIONS = ("none", "sum", "joint", "max", "sqrt", "min", "studholme")


def values_checkable(t: Tensor) -> bool:
    """Whether value checks (which synchronise with the host) may run on ``t`` now."""
    if torch.compiler.is_compiling():
        return False
    if t.is_cuda and torch.cuda.is_current_stream_capturing():
        return False
    return True


def all_finite(t: Tensor) -> bool:
    """Whether every value of ``t`` is finite (synchronises).

    A finite sum proves it in one fast reduction; only a non-finite sum (bad values, or an
    overflow of huge ones) needs the exact elementwise test.
    """
    if not t.is_floating_point():
        return True
    if bool(torch.isfinite(t.sum())):
        return True
    return bool(torch.isfinite(t).all())


def computation_dtype(*tensors: Tensor) -> torch.dtype:
    """Floating dtype to compute in: the promoted input dtype, at least float32.

    Half precision accumulates histograms badly, so float16/bfloat16 inputs are computed in
    float32; integer inputs are computed in float32 too.
    """
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    if not dtype.is_floating_point or dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return dtype


def check_pair(x: Tensor, y: Tensor, *, validate: bool = True, min_samples: int = 1) -> None:
    """Check that ``x`` and ``y`` are (B, N) tensors of one shape with finite values.

    Parameters
    ----------
    x, y : Tensor
        Samples, shape (B, N).
    validate : bool
        Also check the values (NaN/inf), which synchronises with the host.
    min_samples : int
        Smallest acceptable N.

    Raises
    ------
    ValueError
        On a shape mismatch, a wrong number of dimensions, too few samples, or NaN/inf values.
    """
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise ValueError("x and y must be torch tensors")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dim() != 2:
        raise ValueError(f"x and y must have shape (B, N), got {tuple(x.shape)}")
    if x.device != y.device:
        raise ValueError(f"x and y must be on the same device, got {x.device} and {y.device}")
    if x.shape[0] < 1:
        raise ValueError("the batch is empty (B = 0)")
    if x.shape[1] < min_samples:
        raise ValueError(f"need at least {min_samples} samples per batch element, got N = {x.shape[1]}")
    if validate and values_checkable(x):
        for name, t in (("x", x), ("y", y)):
            if not all_finite(t):
                raise ValueError(f"{name} contains NaN or infinite values")


def check_weights(
    weights: Optional[Tensor], x: Tensor, *, validate: bool = True, min_count: float = 0.0
) -> Optional[Tensor]:
    """Check sample weights (or a mask) against samples ``x`` of shape (B, N).

    Parameters
    ----------
    weights : Tensor or None
        Non-negative weights, shape (B, N) or (N,) (shared by the batch), boolean or floating;
        0 excludes a sample.
    x : Tensor
        The samples the weights belong to, shape (B, N).
    validate : bool
        Also check the values, which synchronises with the host.
    min_count : float
        Each batch element needs a weight sum strictly above this (0: at least one sample).

    Returns
    -------
    Tensor or None
        The weights broadcast to (B, N) in ``x``'s computation dtype, or None.

    Raises
    ------
    ValueError
        On a shape/device mismatch, negative or non-finite weights, or a batch element whose
        weights are all zero (an empty mask).
    """
    if weights is None:
        return None
    if not isinstance(weights, Tensor):
        raise ValueError("weights/mask must be a torch tensor or None")
    if weights.device != x.device:
        raise ValueError(f"weights are on {weights.device} but the samples on {x.device}")
    if weights.dim() == 1:
        weights = weights.unsqueeze(0)
    try:
        weights = weights.expand_as(x)
    except RuntimeError as error:
        raise ValueError(
            f"weights of shape {tuple(weights.shape)} do not match samples of shape {tuple(x.shape)}"
        ) from error
    weights = weights.to(computation_dtype(x))
    if validate and values_checkable(weights):
        if not all_finite(weights):
            raise ValueError("weights contain NaN or infinite values")
        if bool((weights < 0).any()):
            raise ValueError("weights must be non-negative")
        if bool((weights.sum(dim=1) <= min_count).any()):
            raise ValueError("a batch element has an empty mask (all its weights are zero)")
    return weights


def check_bins(bins: int, name: str = "bins") -> int:
    """Check a bin count: an int >= 2."""
    if isinstance(bins, bool) or not isinstance(bins, int):
        raise ValueError(f"{name} must be an integer >= 2, got {bins!r}")
    if bins < 2:
        raise ValueError(f"{name} must be >= 2, got {bins}")
    return bins


def check_normalization(normalization: str) -> str:
    """Check a normalisation name against :data:`NORMALIZATIONS`."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    return normalization


def check_range(
    value_range: Optional[Tensor], x: Tensor, name: str, *, validate: bool = True
) -> Optional[Tensor]:
    """Check an explicit (min, max) range, shape (B, 2) or (2,), and broadcast it to (B, 2).

    With ``validate``, also reject non-finite or inverted (max < min) ranges; max == min is
    allowed (a constant image) and puts every sample in one bin.
    """
    if value_range is None:
        return None
    value_range = torch.as_tensor(value_range, device=x.device)
    if value_range.dim() == 1:
        value_range = value_range.unsqueeze(0)
    if value_range.dim() != 2 or value_range.shape[-1] != 2 or value_range.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"{name} must have shape (B, 2) or (2,), got {tuple(value_range.shape)}")
    value_range = value_range.to(computation_dtype(x)).expand(x.shape[0], 2)
    if validate and values_checkable(value_range):
        if not all_finite(value_range) or bool((value_range[:, 1] < value_range[:, 0]).any()):
            raise ValueError(f"{name} must hold finite (min, max) pairs with min <= max")
    return value_range


def prepare_inputs(
    x: Tensor,
    y: Tensor,
    *,
    weights: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    x_range: Optional[Tensor] = None,
    y_range: Optional[Tensor] = None,
    validate: bool = True,
) -> tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Check and convert the common arguments of the density estimators.

    Returns
    -------
    tuple
        ``(x, y, weights, x_range, y_range)`` in the computation dtype; ``weights`` is the
        product of ``weights`` and ``mask`` broadcast to (B, N), or None.

    Raises
    ------
    ValueError
        See :func:`check_pair`, :func:`check_weights` and :func:`check_range`.
    """
    check_pair(x, y, validate=validate)
    dtype = computation_dtype(x, y)
    x, y = x.to(dtype), y.to(dtype)
    weights = check_weights(weights, x, validate=False)
    mask = check_weights(mask, x, validate=False)
    if mask is not None:
        weights = mask if weights is None else weights * mask
    weights = check_weights(weights, x, validate=validate)
    return (
        x,
        y,
        weights,
        check_range(x_range, x, "x_range", validate=validate),
        check_range(y_range, y, "y_range", validate=validate),
    )
