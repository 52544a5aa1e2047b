"""MI estimators against the closed form on correlated Gaussians (the seed notebook's experiment).

For a bivariate Gaussian with unit variances and correlation ``rho`` the mutual information is
known exactly, ``MI = -1/2 log(1 - rho^2)`` nats. This script draws seeded samples for a range
of ``rho`` (spaced evenly in MI, up to rho = 0.99, as in the seed notebook) and sample sizes
``N``, and compares every estimator of :mod:`miregister.mi` with the truth:

- soft bins: :func:`miregister.mi.soft_mutual_information` (Parzen, cubic B-spline),
  ``bins="auto"``;
- discrete bins: :func:`miregister.mi.discrete_mutual_information`, ``bins="auto"``;
- KDE: :func:`miregister.mi.kde_mutual_information` (256-point grid, Scott bandwidth);
- KNN: :func:`miregister.mi.knn_mutual_information` (Kraskov-Stoegbauer-Grassberger 1, k = 3).

It prints a table (mean estimate per ``rho`` at the reference ``N``, and mean absolute error
per ``N``) and writes two figures to ``--out``:

- ``gaussian_mi.png``: estimate vs ``rho`` with the closed form, and absolute error vs ``N``
  (log-log);
- ``gaussian_joint_densities.png``: the KDE, soft and discrete joint densities at rho = 0.99.

Usage
-----
::

    python examples/gaussian_mi.py                 # full: 13 rho, N = 100 ... 65536, 16 draws
    python examples/gaussian_mi.py --quick         # 7 rho, N = 256 ... 4096, 8 draws
    python examples/gaussian_mi.py --out somewhere/

Runtime on 2 CPU cores: ``--quick`` about 5 s, full mode about 1 minute.
"""
from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from miregister import mi

from _common import DEFAULT_OUT

#: Sample size of the estimate-vs-rho panel and the printed table.
N_REF = 4096

Estimator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ESTIMATORS: dict[str, Estimator] = {
    "soft bins": lambda x, y: mi.soft_mutual_information(x, y, bins="auto"),
    "discrete bins": lambda x, y: mi.discrete_mutual_information(x, y, bins="auto"),
    "KDE": lambda x, y: mi.kde_mutual_information(x, y),
    "KNN": lambda x, y: mi.knn_mutual_information(x, y, k=3),
}
COLORS = {"soft bins": "tab:blue", "discrete bins": "tab:cyan", "KDE": "tab:green", "KNN": "tab:red"}


def true_mi(rho: float) -> float:
    """Closed-form MI (nats) of a bivariate Gaussian with correlation ``rho``."""
    return -0.5 * math.log1p(-rho * rho)


def rhos_even_in_mi(count: int, rho_max: float = 0.99) -> list[float]:
    """``count`` correlations from 0 to ``rho_max`` whose true MI is evenly spaced (seed notebook)."""
    levels = np.linspace(0.0, true_mi(rho_max), count)
    return [float(math.sqrt(1.0 - math.exp(-2.0 * v))) for v in levels]


def gaussian_pairs(rho: float, n: int, draws: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``draws`` independent sample sets ``(draws, n)`` with unit variances and correlation ``rho``."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(draws, n, 2, generator=generator, dtype=torch.float64)
    x = z[..., 0]
    return x, rho * x + math.sqrt(1.0 - rho * rho) * z[..., 1]


def run_grid(rhos: Sequence[float], ns: Sequence[int], draws: int) -> dict[str, np.ndarray]:
    """Estimates per estimator, shape ``(len(rhos), len(ns), draws)``, in nats."""
    out = {name: np.zeros((len(rhos), len(ns), draws)) for name in ESTIMATORS}
    for i, rho in enumerate(rhos):
        for j, n in enumerate(ns):
            x, y = gaussian_pairs(rho, n, draws, seed=1000 * i + j)
            for name, estimate in ESTIMATORS.items():
                out[name][i, j] = estimate(x, y).double().numpy()
    return out


def plot_accuracy(rhos: Sequence[float], ns: Sequence[int], estimates: dict[str, np.ndarray], path: Path) -> None:
    truth = np.array([true_mi(r) for r in rhos])
    j_ref = list(ns).index(N_REF)
    fig, (ax_rho, ax_n) = plt.subplots(1, 2, figsize=(10, 4))
    fine = np.linspace(0.0, max(rhos), 200)
    ax_rho.plot(fine, [true_mi(r) for r in fine], "k-", lw=1.5, label="closed form")
    for name, values in estimates.items():
        ax_rho.errorbar(rhos, values[:, j_ref].mean(1), yerr=values[:, j_ref].std(1), fmt="o", ms=4,
                        capsize=2, color=COLORS[name], label=name)
    ax_rho.set(xlabel="correlation rho", ylabel="MI (nats)", title=f"estimate vs truth, N = {N_REF}")
    ax_rho.legend(fontsize=8)
    for name, values in estimates.items():
        error = np.abs(values - truth[:, None, None]).mean(axis=(0, 2))
        ax_n.loglog(ns, error, "o-", color=COLORS[name], label=name)
    ax_n.set(xlabel="sample size N", ylabel="mean |estimate - truth| (nats)",
             title=f"absolute error vs N (mean over {len(rhos)} rho)")
    ax_n.grid(True, which="both", alpha=0.3)
    ax_n.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_joint_densities(path: Path, rho: float = 0.99, n: int = N_REF, bins: int = 32) -> None:
    """The three density estimates behind the estimators, as in the seed notebook."""
    x, y = gaussian_pairs(rho, n, 1, seed=7)
    densities = {
        "KDE": mi.kde_joint_density(x, y, bins=bins),
        "soft bins": mi.soft_joint_histogram(x, y, bins=bins),
        "discrete bins": mi.discrete_joint_histogram(x, y, bins=bins),
    }
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.2))
    for ax, (name, density) in zip(axes, densities.items()):
        ax.imshow(density[0].T.numpy(), origin="lower", cmap="magma")
        ax.set(title=f"{name}, {bins}x{bins}", xticks=[], yticks=[])
    fig.suptitle(f"joint density of x, y (rho = {rho}, N = {n})")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def print_tables(rhos: Sequence[float], ns: Sequence[int], estimates: dict[str, np.ndarray]) -> None:
    j_ref = list(ns).index(N_REF)
    names = list(estimates)
    print(f"mean estimate (nats) at N = {N_REF}:")
    print(f"{'rho':>6s} {'truth':>7s} " + " ".join(f"{n:>13s}" for n in names))
    for i, rho in enumerate(rhos):
        print(f"{rho:6.3f} {true_mi(rho):7.3f} " + " ".join(f"{estimates[n][i, j_ref].mean():13.3f}" for n in names))
    truth = np.array([true_mi(r) for r in rhos])[:, None, None]
    print("mean absolute error (nats) over all rho:")
    print(f"{'N':>6s} " + " ".join(f"{n:>13s}" for n in names))
    for j, n in enumerate(ns):
        print(f"{n:6d} " + " ".join(f"{np.abs(estimates[e][:, j] - truth[:, 0]).mean():13.4f}" for e in names))


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the experiment; returns the key numbers (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rho, N and draws (a few seconds)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the figures (default examples/output/)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.quick:
        rhos, ns, draws = rhos_even_in_mi(7), [256, 1024, 4096], 8
    else:
        rhos, ns, draws = rhos_even_in_mi(13), [100, 316, 1000, 4096, 10000, 31623, 65536], 16
    estimates = run_grid(rhos, ns, draws)
    args.out.mkdir(parents=True, exist_ok=True)
    figures = [args.out / "gaussian_mi.png", args.out / "gaussian_joint_densities.png"]
    plot_accuracy(rhos, ns, estimates, figures[0])
    plot_joint_densities(figures[1])
    print_tables(rhos, ns, estimates)
    j_ref = ns.index(N_REF)
    truth = np.array([true_mi(r) for r in rhos])[:, None, None]
    seconds = time.perf_counter() - start
    print(f"wrote {', '.join(map(str, figures))} in {seconds:.1f} s")
    return {
        "rhos": rhos,
        "ns": ns,
        "draws": draws,
        "n_ref": N_REF,
        "truth": [true_mi(r) for r in rhos],
        "mean_estimate_at_n_ref": {k: v[:, j_ref].mean(1).tolist() for k, v in estimates.items()},
        "mean_abs_error_by_n": {k: np.abs(v - truth).mean(axis=(0, 2)).tolist() for k, v in estimates.items()},
        "figures": figures,
        "seconds": seconds,
    }


if __name__ == "__main__":
    main()
