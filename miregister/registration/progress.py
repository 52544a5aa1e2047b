"""Progress of a registration: the per-evaluation callback's record, the stderr bar or
per-level lines, and the hook that :func:`~miregister.registration.optimize.optimize_level` calls."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable

from ..transforms import SpatialTransform

__all__ = ["IterationInfo", "observer", "evaluation_budget", "Progress"]


@dataclass(frozen=True)
class IterationInfo:
    """What a ``register(..., callback=f)`` callback receives after every evaluation of the metric.

    Attributes
    ----------
    stage : str
        The stage being optimised (``"rigid"``, ``"affine"``, ``"bspline"``, ...).
    level : int
        Pyramid level within the stage, 0 = coarsest.
    iteration : int
        Evaluation count within the level, from 1 (L-BFGS evaluates the metric more than once
        per iteration in its line search; every evaluation is reported, as in the history).
    mi : float
        The objective just evaluated, in nats: soft-binned MI of the level's samples (minus the
        weighted regularisation penalty in a deformable stage); equals the level's
        ``history[i]["objective"][iteration - 1]``.
    transform : SpatialTransform
        The fixed -> moving transform being optimised, live (it keeps changing; copy what you
        want to keep, e.g. ``info.transform.affine_matrix().clone()``).
    """

    stage: str
    level: int
    iteration: int
    mi: float
    transform: SpatialTransform


def observer(
    kind: str,
    level: int,
    transform: SpatialTransform,
    progress: "Progress | None",
    callback: Callable[[IterationInfo], Any] | None,
) -> Callable[[float], None] | None:
    """The per-evaluation hook of :func:`optimize_level`: advance the bar, call the user's callback."""
    if progress is None and callback is None:
        return None
    count = 0

    def observe(value: float) -> None:
        nonlocal count
        count += 1
        if progress is not None:
            progress.step()
        if callback is not None:
            callback(IterationInfo(kind, level, count, value, transform))

    return observe


def evaluation_budget(iterations: int, optimizer: str) -> int:
    """The most metric evaluations a level may make: L-BFGS's ``max_eval`` (see
    :func:`optimize_level`), Adam's iteration count."""
    if iterations <= 0:
        return 0
    return int(iterations * 1.25) + 1 if optimizer == "lbfgs" else iterations


class Progress:
    """Progress of one stage on stderr: a bar counting metric evaluations on a terminal, else
    one line per level (stage, level, grid, MI start -> end, evaluations, seconds).

    The bar's total is what the stage can still run: the evaluations done plus the remaining
    levels' budgets. A level that converges early gives its unused budget back (the total
    shrinks); one whose last line search overran its budget adds the overrun.
    """

    def __init__(self, kind: str, budgets: list[int]) -> None:
        self.kind, self.budgets, self.level, self.done = kind, budgets, 0, 0
        self.bar = None
        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=sum(budgets), desc=f"{kind:>11s}", unit="eval", leave=True)

    def step(self) -> None:
        self.done += 1
        if self.bar is not None:
            if self.bar.n + 1 > self.bar.total:
                self.bar.total = self.bar.n + 1
            self.bar.update(1)

    def level_done(self, entry: dict[str, Any], levels: int) -> None:
        """Close a level: settle the bar's total on what ran, or print the level's line."""
        self.level += 1
        if self.bar is not None:
            self.bar.total = self.done + sum(self.budgets[self.level:])
            self.bar.refresh()
            return
        grid = "x".join(str(n) for n in entry["grid_size"])
        print(
            f"{self.kind} level {entry['level'] + 1}/{levels}: grid {grid}, MI {entry['mi_start']:.4f} -> "
            f"{entry['mi_end']:.4f} nats, {entry['evaluations']} evaluations, {entry['seconds']:.1f} s",
            file=sys.stderr, flush=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
