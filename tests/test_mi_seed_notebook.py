"""The seed notebook runs with ``torch_mi`` replaced by ``miregister.mi`` (the API contract)."""
from __future__ import annotations

import math

import torch

import miregister.mi as torch_mi

from seed_notebook import run_notebook  # tests/ is on sys.path (pytest rootdir-less "prepend" import)


def test_seed_notebook_runs_with_miregister_mi():
    torch.manual_seed(0)
    single, stats = run_notebook(torch_mi, nRealizations=4, rs=[0.0, 0.9], N=[10, 24])
    for name, value in single.items():
        assert math.isfinite(value), name
    assert single["gt"] == 1.9585186697929657 or abs(single["gt"] - 1.9585186697929657) < 1e-6
    # KNN is accurate even on the notebook's 32 x 32 sample; the seed's gave 2.01.
    assert abs(single["knnMi"] - single["gt"]) < 0.15
    rows = stats.to_dict("records") if hasattr(stats, "to_dict") else stats
    assert len(rows) == 4
    for row in rows:
        for key in ("knn:score", "kde:score", "bins:score"):
            assert math.isfinite(row[key]) and row[key] >= 0
        if row["r"] == 0.9:
            assert abs(row["knn:score"] - row["gt"]) < 0.1 * row["gt"]
