"""Batched registration: B pairs registered together, their metric evaluated in one pass.

Each pair runs the whole :func:`~miregister.registration.register` pipeline (inputs, pyramid,
start searches, validation, quality) in its own Python thread, so everything but the hot loop
is exactly a single run's. The hot loop is shared: while a :class:`Batcher` is active in a
thread, :func:`~miregister.registration.optimize.optimize_level` hands each evaluation of its
loss to the batcher instead of computing it. The threads in their optimisation phase (from the
first stage to the last, searches included) are the batcher's *participants*; when every
participant waits for an evaluation, one of them
evaluates all waiting requests at once: each pair's transform maps its own sample points, then
one ``grid_sample`` (or cubic B-spline sample) over the pairs' stacked moving images
``(B, C, *shape)`` and one soft-binned MI over ``(B, N)`` samples with per-pair bins' ranges.
The summed loss is differentiated once; pairs share no parameter, so each pair's parameters
receive exactly the gradient of its own loss. Each thread then continues its own L-BFGS (or
Adam) with its own state, line search and stopping rule: the pairs do not couple, and each
takes the path of its single run (up to float round-off of batched reductions).

On a GPU this turns B small kernel launches per operation into one; on the CPU it gives the
same results as B single runs (tests/test_batch.py) and is no faster.
"""
from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import mi
from ..errors import UsageError
from ..interpolation import sample_at_indices
from .optimize import LevelProblem

__all__ = ["Batcher", "active_batcher", "register_batch"]

_local = threading.local()


def active_batcher() -> "Batcher | None":
    """The batcher of the calling thread (set by :func:`register_batch`), or None."""
    return getattr(_local, "batcher", None)


@contextlib.contextmanager
def _using(batcher: "Batcher") -> Iterator[None]:
    previous = active_batcher()
    _local.batcher = batcher
    try:
        yield
    finally:
        _local.batcher = previous


@dataclass(eq=False)
class _Request:
    problem: LevelProblem
    transform: nn.Module
    loss: Tensor | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass(eq=False)
class _Stack:
    """The pairs' level images stacked on the batch axis, kept while the same images are asked for."""

    sources: tuple[Tensor, ...]
    stacked: Tensor


@dataclass
class Batcher:
    """Rendezvous of the pairs' metric evaluations (see the module notes).

    ``participant()`` brackets one ``optimize_level`` call of a thread; ``loss(problem,
    transform)`` inside it returns the level loss of that pair (a detached scalar) after its
    gradient has been accumulated into the transform's parameters, as ``loss.backward()``
    would. ``batches`` counts the batched passes and ``sizes`` their pair counts (for tests and
    benchmarks).
    """

    _cond: threading.Condition = field(default_factory=threading.Condition)
    _participants: int = 0
    _pending: list[_Request] = field(default_factory=list)
    _busy: bool = False
    _stacks: list[_Stack] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    #: How many pairs run at once (their memory peaks can coincide: see memory.check_memory).
    pairs: int = 1

    @contextlib.contextmanager
    def participant(self) -> Iterator[None]:
        """Count the calling thread among those an evaluation waits for, until the block ends.
        Re-entrant: ``register`` brackets its whole optimisation phase (stage loop, searches),
        ``optimize_level`` each level inside it; the thread counts once. A thread between two
        levels (building the next level's problem) is thus still waited for, so the pairs'
        evaluations keep sharing passes instead of drifting apart."""
        if getattr(_local, "participating", None) is self:
            yield
            return
        with self._cond:
            self._participants += 1
        _local.participating = self
        try:
            yield
        finally:
            _local.participating = None
            with self._cond:
                self._participants -= 1
                self._cond.notify_all()  # the others may now all be waiting: one of them evaluates

    def loss(self, problem: LevelProblem, transform: nn.Module) -> Tensor:
        request = _Request(problem, transform)
        with self._cond:
            self._pending.append(request)
            while not request.done:
                if not self._busy and self._pending and len(self._pending) >= self._participants:
                    batch, self._pending, self._busy = self._pending, [], True
                    self._cond.release()
                    try:
                        self._evaluate(batch)
                    finally:
                        self._cond.acquire()
                        self._busy = False
                        self._cond.notify_all()
                else:
                    self._cond.wait()
        if request.error is not None:
            raise request.error
        assert request.loss is not None
        return request.loss

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, batch: list[_Request]) -> None:
        """Evaluate every request, one batched pass per group of compatible problems; an error
        reaches only its own request (a failed group is retried pair by pair)."""
        groups: dict[tuple, list[_Request]] = {}
        for request in batch:
            groups.setdefault(_group_key(request.problem), []).append(request)
        try:
            for group in groups.values():
                if len(group) == 1:
                    _evaluate_single(group[0])
                    continue
                try:
                    self._evaluate_group(group)
                except Exception:  # e.g. out of memory in the batched pass: pair by pair
                    for request in group:
                        request.loss, request.error = None, None
                        _evaluate_single(request)
        finally:
            for request in batch:
                if request.loss is None and request.error is None:
                    request.error = RuntimeError("the batched metric evaluation was interrupted")
                request.done = True

    def _stack(self, sources: tuple[Tensor, ...]) -> Tensor:
        """``torch.cat`` of the pairs' level images, reused while the same tensors are asked for
        (a level's images stay the same through its hundreds of evaluations)."""
        for entry in self._stacks:
            if len(entry.sources) == len(sources) and all(a is b for a, b in zip(entry.sources, sources)):
                return entry.stacked
        stacked = torch.cat(sources)
        self._stacks = [_Stack(sources, stacked), *self._stacks[:3]]
        return stacked

    def _evaluate_group(self, group: list[_Request]) -> None:
        first = group[0].problem
        with torch.enable_grad():
            moved = []
            for request in group:
                try:
                    moved.append(request.problem.moving_index(request.transform))  # (1, D, N) in its own moving grid
                except Exception as error:  # this pair's transform failed: only it hears of it
                    request.error = error
                    moved.append(None)
            live = [(r, m) for r, m in zip(group, moved) if m is not None]
            if not live:
                return
            requests = [r for r, _ in live]
            problems = [r.problem for r in requests]
            size = max(int(p.points.shape[1]) for p in problems)
            index = torch.cat([F.pad(m, [0, size - m.shape[2]]) for _, m in live])
            values, inside = sample_at_indices(
                self._stack(tuple(p.moving for p in problems)), first.moving_grid, index,
                mode=first.interpolation, prefiltered=first.interpolation == "bspline",
            )
            fixed_weights = torch.cat([_pad(p.fixed_weights, size) for p in problems])  # padding has weight 0
            weights = fixed_weights * inside.to(fixed_weights.dtype)
            if first.moving_mask is not None:
                mask_values, _ = sample_at_indices(self._stack(tuple(p.moving_mask for p in problems)), first.moving_grid, index)
                weights = weights * mask_values[:, 0]
            overlap = weights.sum(dim=1) / fixed_weights.sum(dim=1)
            value = mi.soft_mutual_information(
                torch.cat([_pad(p.fixed_values, size) for p in problems]), values[:, 0], bins=first.bins,
                kernel=first.kernel, weights=weights,
                x_range=torch.cat([p.fixed_range for p in problems]),
                y_range=torch.cat([p.moving_range for p in problems]), validate=False,
            )
            overlaps = overlap.tolist()
            losses = []
            for index, problem in enumerate(problems):
                if problem.refuses(overlaps[index]):  # as LevelProblem.loss: 0, no gradient
                    losses.append(torch.zeros((), dtype=value.dtype, device=value.device))
                    continue
                loss = -value[index]
                if problem.dense is not None and problem.dense.penalty is not None and problem.penalty_weight > 0:
                    loss = loss + problem.penalty_weight * problem.dense.penalty()
                losses.append(loss)
            finite = torch.isfinite(torch.stack([loss.detach() for loss in losses])).tolist()  # one sync for all
            # Pairs share no parameter: the sum's gradient is each pair's own loss's gradient.
            parts = [loss for loss, ok in zip(losses, finite) if ok and loss.requires_grad]
            if parts:
                torch.stack(parts).sum().backward()
            for request, loss in zip(requests, losses):
                request.loss = loss.detach()
        self.sizes.append(len(requests))


def _evaluate_single(request: _Request) -> None:
    """One pair alone: exactly the single run's ``loss`` and ``backward``."""
    try:
        with torch.enable_grad():
            loss = request.problem.loss(request.transform)
            if torch.isfinite(loss) and loss.requires_grad:
                loss.backward()
        request.loss = loss.detach()
    except Exception as error:
        request.error = error


def _pad(t: Tensor, size: int) -> Tensor:
    """``(1, N, ...)`` padded with zeros to ``(1, size, ...)`` along the sample axis."""
    missing = size - t.shape[1]
    if missing == 0:
        return t
    pad = [0, 0] * (t.dim() - 2) + [0, missing]
    return F.pad(t, pad)


def _group_key(problem: LevelProblem) -> tuple:
    """Problems that can share one batched pass: same moving level shape, dtype, device,
    interpolation, bins, kernels and moving-mask presence (sample counts may differ: padded)."""
    return (
        tuple(problem.moving.shape), problem.moving.dtype, str(problem.moving.device), problem.points.dtype,
        problem.interpolation, problem.bins, tuple(problem.kernel), problem.moving_mask is None,
    )


# ---------------------------------------------------------------------- public API
def _per_pair(value: Any, count: int, name: str, broadcast: bool) -> list[Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise UsageError(f"{name} has {len(value)} entries for {count} moving images")
        return list(value)
    if value is not None and not broadcast:
        raise UsageError(f"{name} must be a list with one entry per moving image (or None)")
    return [value] * count


def register_batch(
    fixed: Any,
    movings: Sequence[Any],
    transform: str = "affine",
    *,
    fixed_masks: Any = None,
    moving_masks: Sequence[Any] | None = None,
    initial_transforms: Sequence[Any] | None = None,
    return_exceptions: bool = False,
    **options: Any,
) -> list[Any]:
    """Register B pairs together: each moving image onto its fixed image, metric evaluated batched.

    Every pair gets what :func:`~miregister.registration.register` gives it alone (the same
    inputs checks, searches, validation and quality report; the same result up to float
    round-off of batched sums: within 0.01 mm for linear and 0.05 mm for deformable
    transforms in tests/test_batch.py). Each transform maps points of its fixed image's
    physical space (mm, LPS) to its moving image's. The optimisation of the B pairs runs in
    step: each metric evaluation of all pairs is one batched pass over ``(B, C, *spatial)``
    tensors, while every pair keeps its own optimiser state, line search and convergence.
    This pays on a GPU (fewer, larger kernels); on the CPU it is about as fast as B single runs.

    Parameters
    ----------
    fixed : image-like or sequence of image-like
        One fixed image for every pair (a template), or one per pair. Pairs batch best on one
        fixed grid; at each level, pairs whose moving level images have the same shape share a
        pass (others are evaluated in smaller groups, still correctly).
    movings : sequence of image-like
        The B moving images (paths, SimpleITK images or :class:`~miregister.image.Image`).
    transform : str
        The transform chain of every pair, as in :func:`~miregister.registration.register`.
    fixed_masks : image-like or sequence, optional
        One mask for a template, or one per pair (None entries allowed).
    moving_masks, initial_transforms : sequence, optional
        One per pair (None entries allowed).
    return_exceptions : bool
        False (default): after every pair has finished, raise the first failed pair's error
        (its ``pair`` attribute is its index). True: a failed pair's entry in the returned
        list is its exception, the others are results.
    **options
        Options of :func:`~miregister.registration.register`, the same for every pair.
        ``threads`` sets torch's CPU threads once for the whole batch; ``verbose`` is refused
        (B progress bars would interleave); ``callback`` is not available.

    Returns
    -------
    list
        B :class:`~miregister.registration.result.RegistrationResult` in the order of
        ``movings`` (or exceptions, with ``return_exceptions=True``).

    Raises
    ------
    UsageError
        For lists of the wrong length, ``verbose=True`` or a ``callback``.
    MiregisterError
        A failed pair's error (see ``return_exceptions``), after all pairs have finished.
    """
    from ..threads import resolve_threads, torch_threads
    from .register import register

    if isinstance(movings, (str, bytes)) or not isinstance(movings, Sequence):
        raise UsageError("movings must be a list of moving images")
    count = len(movings)
    if count == 0:
        return []
    if options.get("verbose"):
        raise UsageError("verbose progress is not available in a batch; leave verbose off")
    if "callback" in options:
        raise UsageError("register_batch takes no callback")
    fixeds = _per_pair(fixed, count, "fixed", broadcast=True)
    fmasks = _per_pair(fixed_masks, count, "fixed_masks", broadcast=True)
    mmasks = _per_pair(moving_masks, count, "moving_masks", broadcast=False)
    starts = _per_pair(initial_transforms, count, "initial_transforms", broadcast=False)
    batcher = Batcher(pairs=count)
    single = register.__wrapped__  # without its per-call thread setting: set once below for all threads

    def run(index: int) -> Any:
        with _using(batcher):
            return single(fixeds[index], movings[index], transform, fixed_mask=fmasks[index],
                          moving_mask=mmasks[index], initial_transform=starts[index], **options)

    outcomes: list[Any] = []
    with torch_threads(resolve_threads(options.get("threads"))), ThreadPoolExecutor(count, "miregister-pair") as pool:
        futures = [pool.submit(run, index) for index in range(count)]
        for index, future in enumerate(futures):
            error = future.exception()
            if error is not None:
                error.pair = index  # type: ignore[attr-defined]
            outcomes.append(future.result() if error is None else error)
    if not return_exceptions:
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
    return outcomes
