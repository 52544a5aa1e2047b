"""CPU threads of a registration: how many, set for the run and restored afterwards.

torch's CPU kernels run on an OpenMP pool (libgomp in the CPU wheels). Two things matter to a
user who runs several registrations at once:

- the pool's size: by default the CPUs this process may use (``os.sched_getaffinity``, which
  honours ``taskset`` and container CPU sets), not every core of the machine;
- what a pool thread does between parallel regions: libgomp's default is to spin (about
  300 000 polls) before sleeping. A registration runs thousands of short regions, so its
  threads spin most of the time; alone that costs nothing, but beside another busy process on
  the same cores the spinning threads take the CPU from the threads doing work (measured on 2
  shared cores: 24.5 s of user CPU for a 2 mm affine run, against 6.3 s with passive waiting).
  :func:`set_openmp_defaults` asks for passive waiting; it only works before the OpenMP
  runtime starts (before ``import torch``), so the command line calls it first thing.

The optimisation itself (every metric evaluation, the start searches and the final flip check)
runs on one thread whatever ``threads`` says: :func:`optimisation_threads`.
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Callable, Iterator, TypeVar

from .errors import UsageError

__all__ = ["available_cpus", "resolve_threads", "torch_threads", "with_threads", "set_openmp_defaults",
           "OPTIMISATION_THREADS", "optimisation_threads", "DENSE_PARALLEL_VOXELS", "level_threads"]

F = TypeVar("F", bound=Callable[..., Any])


def available_cpus() -> int:
    """The number of CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def resolve_threads(threads: Any) -> int:
    """``threads`` as a thread count: ``None`` means :func:`available_cpus`.

    Raises
    ------
    UsageError
        (a ValueError) for anything but ``None`` or an int >= 1.
    """
    if threads is None:
        return available_cpus()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UsageError(f"threads must be a whole number >= 1 (or None for the available CPUs), got {threads!r}")
    return threads


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(threads)``, then restore the previous count.

    Inter-op threads are left alone: miregister does not use them, and torch allows setting
    their number only once per process (it could not be restored).
    """
    import torch

    previous = torch.get_num_threads()
    if threads != previous:
        torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def with_threads(function: F) -> F:
    """Decorate :func:`~miregister.registration.register`: its ``threads`` keyword (default
    :func:`available_cpus`) sets torch's intra-op threads for the call only."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with torch_threads(resolve_threads(kwargs.get("threads"))):
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def set_openmp_defaults(environ: Any = os.environ) -> None:
    """Ask OpenMP threads to sleep, not spin, between parallel regions, unless the user chose.

    Sets ``OMP_WAIT_POLICY=PASSIVE`` (libgomp, torch's CPU wheels) and ``KMP_BLOCKTIME=0``
    (Intel's runtime, should a build use it) when none of these nor ``GOMP_SPINCOUNT`` is set.
    The runtime reads them once, when torch loads it: call this before ``import torch``.
    """
    if not any(name in environ for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")):
        environ["OMP_WAIT_POLICY"] = "PASSIVE"
        environ["KMP_BLOCKTIME"] = "0"


#: torch's CPU threads while a registration optimises (see :func:`optimisation_threads`).
OPTIMISATION_THREADS = 1


def optimisation_threads() -> contextlib.AbstractContextManager[int]:
    """The thread rule of a registration's optimisation: run it on :data:`OPTIMISATION_THREADS`.

    Why one thread: an evaluation of the metric is hundreds to thousands of small torch ops
    (5k-80k samples, a few ms each at most), so a parallel region has little work to share;
    with passive waiting (the command line's default) every parallel region costs a futex
    sleep/wake round trip per thread (185 686 voluntary context switches in a 2-thread
    rigid+affine+bspline run, 20 with 1 thread; 17 s against 10 s on an idle machine), and with
    spinning threads concurrent runs starve each other. The user's ``threads`` still applies to
    the preparation (foreground mask, pyramid), the final warp and the validation, whose ops are
    image-sized, and to the levels of a deformable stage whose dense field is large enough
    to share (:func:`level_threads`). On CUDA this changes nothing on the GPU (only torch's CPU
    pool).
    """
    return torch_threads(OPTIMISATION_THREADS)


#: Level grids of at least this many voxels make a deformable stage's per-evaluation dense
#: field (B-spline displacement and its backward on the whole level grid) large enough for
#: threads to pay: on 2 cores with passive waiting, 1 thread took 17 ms and 2 threads 21 ms per
#: field and backward at 1.07 M voxels (2 mm brain), 45 against 31 ms at 2.1 M and 320 against
#: 190 ms at 8.5 M (1 mm brain).
DENSE_PARALLEL_VOXELS = 2_000_000


def level_threads(threads: int, dense_voxels: int) -> int:
    """torch's CPU threads for one level's optimisation: :data:`OPTIMISATION_THREADS`, or the
    user's ``threads`` when the level evaluates a dense field on ``dense_voxels`` >=
    :data:`DENSE_PARALLEL_VOXELS` voxels at every evaluation (0 for linear stages and pointwise
    deformations)."""
    return threads if dense_voxels >= DENSE_PARALLEL_VOXELS else OPTIMISATION_THREADS
