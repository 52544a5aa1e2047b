"""Cohorts: register every pair of a manifest on a Dask cluster, resumably, with a summary.

- :func:`read_manifest` (:mod:`.manifest`): the CSV of pairs, checked before any work;
- :func:`register_cohort` (:mod:`.runner`): one Dask task per pair, ``OUT/<id>/`` each;
- :mod:`.summary`: ``OUT/summary.csv`` and the review page ``OUT/summary.html``.

Dask (``dask[distributed]``) is imported only when pairs are run; install it with
``pip install 'miregister[cohort]'`` (which also brings dask-jobqueue for SLURM).
"""
from __future__ import annotations

from .manifest import Pair, read_manifest
from .runner import CohortResult, register_cohort

__all__ = ["Pair", "read_manifest", "register_cohort", "CohortResult"]
