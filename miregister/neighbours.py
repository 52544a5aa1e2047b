"""The k-th nearest neighbour distance of samples under the max-norm (KSG mutual information).

The search is scipy's ``cKDTree`` (exact, O(N log N), all cores). This module imports NumPy
only, and scipy when it searches, never torch: the command line's helper process
(:mod:`miregister.helper_process`) answers the same search with the same code.

Why a delegate: importing ``scipy.spatial`` (it imports ``scipy.sparse``, which imports
``numpy.testing`` and ``numpy.f2py``) costs far more than the search itself for the
validation's 20 k samples, and a command-line run would pay it in every process. Inside
:func:`delegated_to`, :func:`kth_neighbour_distance` asks the given delegate first (the helper
process, which imported scipy while the registration ran); a delegate that answers None
(unavailable, failed) leaves the search to this process.
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Callable, Iterator, Optional

import numpy as np

__all__ = ["kth_neighbour_distance", "local_kth_neighbour_distance", "delegated_to", "NeighbourSearch"]

#: ``search(points, k)``: the distances, or None to leave the search to this process.
NeighbourSearch = Callable[[np.ndarray, int], Optional[np.ndarray]]

_DELEGATE: ContextVar[Optional[NeighbourSearch]] = ContextVar("miregister_neighbour_search", default=None)


def local_kth_neighbour_distance(points: np.ndarray, k: int) -> np.ndarray:
    """Max-norm distance from each point to its k-th nearest other point, searched here.

    Parameters
    ----------
    points : ndarray
        (N, D) float64 coordinates (any units; KSG uses the samples' values).
    k : int
        Neighbour order, 1 <= k < N.

    Returns
    -------
    ndarray
        (N,) float64 distances, in the units of ``points``.
    """
    from scipy.spatial import cKDTree

    tree = cKDTree(points, leafsize=16, balanced_tree=False, compact_nodes=False)
    # k + 1: the point itself is at distance 0, so the (k+1)-th distance is the k-th neighbour's
    # even with duplicates.
    dist, _ = tree.query(points, k=[k + 1], p=np.inf, workers=-1)
    return dist[:, 0]


def kth_neighbour_distance(points: np.ndarray, k: int) -> np.ndarray:
    """:func:`local_kth_neighbour_distance`, asked of the active delegate first (:func:`delegated_to`).

    A delegate's answer is used only when it has the expected shape and dtype, so a wrong
    answer cannot reach the estimate; the distances are the same either way (same code).
    """
    delegate = _DELEGATE.get()
    if delegate is not None:
        answer = delegate(points, k)
        if isinstance(answer, np.ndarray) and answer.shape == (points.shape[0],) and answer.dtype == np.float64:
            return answer
    return local_kth_neighbour_distance(points, k)


@contextlib.contextmanager
def delegated_to(search: Optional[NeighbourSearch]) -> Iterator[None]:
    """Within the block (this thread or task), neighbour searches ask ``search`` first; None
    leaves them here."""
    token = _DELEGATE.set(search)
    try:
        yield
    finally:
        _DELEGATE.reset(token)
