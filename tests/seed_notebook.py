"""The seed notebook's code (``../shared/seed/torch_mi_notebook.txt``), runnable as a function.

The code cells are kept as the notebook wrote them, with three changes only: ``torch_mi`` is a
parameter (the test passes ``miregister.mi``), the experiment's sizes are parameters (the
notebook used 64 realisations of 7 sizes up to 70 x 70 at 25 correlations), and plotting and
``tqdm`` are left out. ``pandas`` is used when installed, as in the notebook.
"""
from __future__ import annotations

import math
import time
from types import ModuleType
from typing import Any, Sequence

import torch
from torch.distributions.multivariate_normal import MultivariateNormal


def createCovMat(stdX, stdY, p):  # noqa: N802, N803 (the notebook's names)
    return torch.tensor([[stdX**2, p * stdX * stdY], [p * stdX * stdY, stdY**2]])


def miGroundTruth(covMat):  # noqa: N802, N803
    r = covMat[0, 1] / covMat.diag().prod().sqrt()
    return -1 / 2 * math.log(1 - r**2)


def entropyGroundTruth(covMat):  # noqa: N802, N803
    r = covMat[0, 1] / torch.diag(covMat).prod().sqrt()
    return (
        1 / 2 + 1 / 2 * math.log(2 * math.pi) + math.log(covMat[0, 0].sqrt()),
        1 / 2 + 1 / 2 * math.log(2 * math.pi) + math.log(covMat[1, 1].sqrt()),
        1
        + math.log(2 * math.pi)
        + math.log(torch.diag(covMat).prod().sqrt())
        + 1 / 2 * math.log(1 - r**2),
    )


def getMultivariateNormal(covMat, meanX, meanY):  # noqa: N802, N803
    return MultivariateNormal(torch.Tensor([meanX, meanY]), covMat)


def run_notebook(
    torch_mi: ModuleType,
    nRealizations: int = 64,  # noqa: N803
    rs: Sequence[float] | None = None,
    N: Sequence[int] | None = None,  # noqa: N803
) -> tuple[dict[str, float], Any]:
    """Run the notebook's cells with ``torch_mi``; returns the single-sample dict and the stats."""
    # Define parameters
    nNeighbours = 3  # noqa: N806
    nBins = 20  # noqa: N806
    # Define data parameters and generate it
    r = 0.99
    means = [1, 1]
    covMat = createCovMat(1, 1, r)  # noqa: N806
    B, C, H, W = 1, 1, 32, 32  # noqa: N806
    x, y = getMultivariateNormal(covMat, *means).sample((B, C, H, W)).moveaxis(-1, 0)
    # Instanciate four methods
    rangeOpts = dict(percentile=0.001, gain=0)  # noqa: N806
    binsMiSoft = torch_mi.BinsCountMutualInformation(nBins=nBins, mode="soft", rangeOpts=rangeOpts)  # noqa: N806
    binsMiDiscrete = torch_mi.BinsCountMutualInformation(nBins=nBins, mode="discrete", rangeOpts=rangeOpts)  # noqa: N806
    kdeMi = torch_mi.KdeMutualInformation(nBins=nBins, rangeOpts=rangeOpts)  # noqa: N806
    knnMi = torch_mi.KnnMutualInformation(nNeighbours=nNeighbours)  # noqa: N806
    BC, HW = x.size(0) * x.size(1), x.size(2) * x.size(3)  # noqa: N806
    # The notebook plots these three joint distributions.
    for pxy in (
        kdeMi.computePxy(x.view(BC, HW), y.view(BC, HW))[0],
        binsMiSoft.computePxy(x.view(BC, HW), y.view(BC, HW))[0],
        binsMiDiscrete.computePxy(x.view(BC, HW), y.view(BC, HW))[0],
    ):
        assert pxy.shape == (nBins, nBins)
    single = dict(
        binsMiSoft=float(binsMiSoft(x, y)),
        binsMiDiscrete=float(binsMiDiscrete(x, y)),
        kdeMi=float(kdeMi(x, y)),
        knnMi=float(knnMi(x, y)),
        gt=float(miGroundTruth(covMat)),
    )

    def task(args):
        r, n = args
        covMat = createCovMat(1, 1, r)  # noqa: N806
        means = [0, 0]
        x, y = getMultivariateNormal(covMat, *means).sample((nRealizations, 1, n, n)).moveaxis(-1, 0)
        start = time.time()
        knn = knnMi(x, y).mean()
        knnTime = 1000 * (time.time() - start) / nRealizations  # noqa: N806
        start = time.time()
        kde = kdeMi(x, y).mean()
        kdeTime = 1000 * (time.time() - start) / nRealizations  # noqa: N806
        start = time.time()
        bins = binsMiSoft(x, y).mean()
        binsTime = 1000 * (time.time() - start) / nRealizations  # noqa: N806
        return {
            "n": float(n**2),
            "r": float(r),
            "gt": float(miGroundTruth(covMat)),
            **dict(zip(["varX", "varY"], covMat.diag().tolist())),
            **dict(zip(["meanX", "meanY"], means)),
            "knn:score": float(knn),
            "kde:score": float(kde),
            "bins:score": float(bins),
            "knn:duration": float(knnTime),
            "kde:duration": float(kdeTime),
            "bins:duration": float(binsTime),
        }

    if rs is None:
        rs = (1 - (-2 * torch.linspace(0, -0.5 * math.log(1 - 0.99**2), 25)).exp()).sqrt()
    if N is None:
        N = torch.logspace(1, 1.85, 7).to(torch.int)  # noqa: N806
    rows = list(map(task, ((r, n) for r in rs for n in N)))
    try:
        import pandas as pd
    except ImportError:  # the notebook's DataFrame is a convenience; keep the raw rows
        return single, rows
    stats = pd.DataFrame(rows).assign(
        **{
            "knn:score_err": lambda x: (x["knn:score"] - x["gt"]) / (x["gt"].abs()),
            "kde:score_err": lambda x: (x["kde:score"] - x["gt"]) / (x["gt"].abs()),
            "bins:score_err": lambda x: (x["bins:score"] - x["gt"]) / (x["gt"].abs()),
        }
    )
    return single, stats
