"""The command line's helper process: draws the QC picture and answers neighbour searches.

Why: a command-line run pays, once per process, for imports that its single-threaded
optimisation cannot hide: matplotlib and the first figure (fonts), and scipy.spatial (the KNN
cross-check's k-d tree), each a visible share of a run's start-up (README's speed notes and
benchmarks/RESULTS.md give the measurements). On a machine with two or more CPUs,
``miregister register`` starts a :class:`HelperProcess` before torch loads. It imports scipy
and matplotlib and draws a warm-up figure on an otherwise idle CPU while the run imports torch
and registers. A linear run sends it the QC picture's panels (a few 2-D arrays, ~1 MB) as soon
as its warped image exists, and the helper draws them while the run validates; the run asks it
for the validation's neighbour distances (:func:`miregister.neighbours.delegated_to`) and, at
the end, sends the histograms' titles (the validation's MI) and writes its other files while the
helper finishes the picture. A deformable run sends the panels at the end (its Jacobian row
waits for the validation's).

Any failure of the helper (it cannot start, dies, answers with an error or not in time) leaves
the work to the run's own process, so the outputs and their errors are the same either way.
This module and the helper import NumPy, matplotlib and scipy only, never torch.

Protocol: length-prefixed pickles both ways on the helper's stdin and stdout. The helper
answers ``("ready",)`` once warm, then each request ``("neighbours", points, k)`` with
``("ok", distances)``, ``("draw", panels, path)`` and ``("finish", titles, path)`` with
``("ok", None)``, or any of them with ``("error", message)``. ``("prepare", panels)`` has no
answer: the helper starts drawing the picture without its histograms' titles on a thread of
its own (still answering searches) and the ``finish`` that follows draws the titles, which
carry the validation's MI, and writes the file. It ends after a picture or at the end of its
input.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO, Optional

import numpy as np

__all__ = ["HelperProcess", "HELPER_TIMEOUT_SECONDS"]

#: Longest wait (s) for the helper's picture before drawing it in the run's own process.
HELPER_TIMEOUT_SECONDS = 60.0
#: Longest wait (s) for a neighbour search the helper has accepted (far above a search of the
#: validation's samples, which is quick; a helper this slow is treated as failed).
NEIGHBOUR_TIMEOUT_SECONDS = 10.0
_HEADER = struct.Struct("<Q")
_END = object()  # the reader's mark: the helper's output ended
_FAILED = object()  # _ask's answer when the helper could not do the work


def _send(stream: BinaryIO, message: tuple) -> None:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(body)) + body)
    stream.flush()


def _receive(stream: BinaryIO) -> Optional[tuple]:
    """The next message, or None at the end of the stream (or a cut one)."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    body = stream.read(size)
    if len(body) < size:
        return None
    return pickle.loads(body)


def _answer(request: tuple) -> tuple:
    """The helper's answer to one request that needs no state."""
    kind = request[0]
    if kind == "neighbours":
        from .neighbours import local_kth_neighbour_distance

        _, points, k = request
        return ("ok", local_kth_neighbour_distance(points, k))
    if kind == "draw":
        from .qc_draw import save_panels

        _, panels, path = request
        save_panels(panels, path)
        return ("ok", None)
    raise ValueError(f"unknown request {kind!r}")


class _Preparation:
    """The helper's picture drawn ahead (``prepare``), on a thread of its own so that the
    helper keeps answering neighbour searches meanwhile; ``finish`` completes it."""

    def __init__(self, panels: dict[str, Any]) -> None:
        self._picture: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._draw, args=(panels,), daemon=True)
        self._thread.start()

    def _draw(self, panels: dict[str, Any]) -> None:
        from .qc_draw import PreparedPicture

        try:
            self._picture = PreparedPicture(panels)
        except BaseException as error:  # reported at finish
            self._error = error

    def finish(self, titles: list[str], path: str) -> tuple:
        self._thread.join()
        if self._error is not None:
            raise self._error
        self._picture.finish(titles, path)
        return ("ok", None)


def _serve(draw: bool, neighbours: bool) -> None:
    """The helper process: warm up, answer ``ready``, then answer requests until a drawing is
    done or the input ends (``prepare`` has no answer: ``finish`` reports its outcome). The
    caller ends the process with ``os._exit`` after this returns: the run waits for the
    answer, and the interpreter's teardown of matplotlib would add its time to a run that
    waits for the process to end."""
    out, requests = sys.stdout.buffer, sys.stdin.buffer
    if neighbours:
        from .neighbours import local_kth_neighbour_distance

        local_kth_neighbour_distance(np.arange(8.0).reshape(4, 2), 1)  # imports scipy.spatial
    if draw:
        from .qc_draw import warm_up

        warm_up()
    _send(out, ("ready",))
    preparation: _Preparation | None = None
    while True:
        request = _receive(requests)
        if request is None:
            return
        if request[0] == "prepare":
            preparation = _Preparation(request[1])
            continue
        try:
            if request[0] == "finish":
                if preparation is None:
                    raise ValueError("finish without prepare")
                answer = preparation.finish(request[1], request[2])
            else:
                answer = _answer(request)
        except Exception as error:  # reported to the run, which then does the work itself
            answer = ("error", f"{type(error).__name__}: {error}")
        _send(out, answer)
        if request[0] in ("draw", "finish"):
            return


def _read_answers(stream: BinaryIO, answers: queue.Queue) -> None:
    """The run's reader thread: the helper's messages into ``answers``, then :data:`_END`. It
    closes ``stream`` at its end (the helper exited or was killed), so that no other thread
    closes a stream this one is reading."""
    try:
        while True:
            message = _receive(stream)
            if message is None:
                break
            answers.put(message)
    except Exception:  # a cut or garbled stream: the helper is treated as gone
        pass
    finally:
        answers.put(_END)
        with contextlib.suppress(OSError, ValueError):
            stream.close()


class HelperProcess:
    """A helper process started at once that later answers neighbour searches and draws one
    QC picture, whole (:meth:`save_picture`) or prepared ahead (:meth:`prepare_picture`, then
    :meth:`finish_picture`); see the module notes.

    Every method is safe to call after a failure: :meth:`neighbour_distance` returns None
    (search here), :meth:`save_picture` and :meth:`finish_picture` return False (draw here),
    :meth:`prepare_picture` and :meth:`close` do nothing. A failure ends the process.
    """

    def __init__(self, process: subprocess.Popen | None) -> None:
        self._process = process
        self._lock = threading.Lock()
        self._answers: queue.Queue = queue.Queue()
        self._ready = False
        #: ``(key, panels)`` of :meth:`prepare_picture`, or None.
        self.prepared: tuple[Any, dict[str, Any]] | None = None
        if process is not None:
            threading.Thread(target=_read_answers, args=(process.stdout, self._answers), daemon=True).start()

    @classmethod
    def start(cls, *, draw: bool = True, neighbours: bool = True) -> "HelperProcess":
        """Start the helper (same interpreter, this package's copy, one thread for NumPy) warmed
        up for drawing and/or neighbour searches; one that cannot start is inactive."""
        package_parent = str(Path(__file__).resolve().parent.parent)
        code = (f"import os, sys; sys.path.insert(0, {package_parent!r}); from miregister.helper_process import _serve; "
                f"_serve(draw={bool(draw)}, neighbours={bool(neighbours)}); os._exit(0)")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
        try:
            process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.DEVNULL, env=env, close_fds=True)
        except (OSError, ValueError):
            process = None
        return cls(process)

    def _wait(self, deadline: float) -> Any:
        """The next message before ``deadline`` (time.monotonic), or :data:`_END`."""
        try:
            return self._answers.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return _END

    def _is_ready(self, deadline: float | None) -> bool:
        """Whether the helper has warmed up, waiting for it until ``deadline`` (None: not at
        all: a helper still warming up is not worth waiting for). Called under the lock; a
        helper that answers anything else first is ended."""
        if self._ready:
            return True
        try:
            message = self._wait(deadline) if deadline is not None else self._answers.get_nowait()
        except queue.Empty:
            return False
        if message != ("ready",):
            self._stop()
            return False
        self._ready = True
        return True

    def _ask(self, request: tuple, timeout: float, wait_until_ready: bool) -> Any:
        """Send ``request`` and return the helper's result; :data:`_FAILED` when the helper is
        gone, not ready (and ``wait_until_ready`` is false), answers an error or not by
        ``timeout`` (s). A failure other than not being ready ends the helper."""
        with self._lock:
            process = self._process
            deadline = time.monotonic() + timeout
            if process is None or not self._is_ready(deadline if wait_until_ready else None):
                return _FAILED
            try:
                _send(process.stdin, request)
            except (OSError, ValueError):
                self._stop()
                return _FAILED
            answer = self._wait(deadline)
            if not (isinstance(answer, tuple) and len(answer) == 2 and answer[0] == "ok"):
                self._stop()
                return _FAILED
            return answer[1]

    def neighbour_distance(self, points: np.ndarray, k: int) -> np.ndarray | None:
        """:func:`miregister.neighbours.local_kth_neighbour_distance` computed by the helper, or
        None when it is unavailable or still warming up (then search here): a
        :data:`~miregister.neighbours.NeighbourSearch` for :func:`~miregister.neighbours.delegated_to`."""
        answer = self._ask(("neighbours", np.ascontiguousarray(points, dtype=np.float64), int(k)),
                           NEIGHBOUR_TIMEOUT_SECONDS, wait_until_ready=False)
        return None if answer is _FAILED else answer

    def prepare_picture(self, panels: dict[str, Any], key: Any = None) -> None:
        """Have the helper start drawing ``panels`` without their joint histograms' titles
        (:class:`miregister.qc_draw.PreparedPicture`), not waiting for it; :meth:`finish_picture`
        completes it. Nothing is sent (and :attr:`prepared` stays None) while the helper is
        still warming up. ``key`` and ``panels`` are kept as :attr:`prepared` (the caller's way to
        check that a later picture is of the same result)."""
        with self._lock:
            # Only to a warm helper: a cold one reads no request yet, and sending ~1 MB would
            # wait for it (the picture is then drawn at the end, as without preparation).
            if self._process is None or not self._is_ready(None):
                return
            try:
                _send(self._process.stdin, ("prepare", panels))
            except (OSError, ValueError):
                self._stop()
                return
            self.prepared = (key, panels)

    def finish_picture(self, titles: list[str], path: str | os.PathLike, timeout: float = HELPER_TIMEOUT_SECONDS) -> bool:
        """Draw ``titles`` (one per joint histogram) onto the prepared picture and write it to
        ``path``; True when the file is written, False otherwise (nothing is then left at
        ``path``). The helper ends after it."""
        return self._picture(("finish", list(titles), os.fspath(path)), path, timeout)

    def save_picture(self, panels: dict[str, Any], path: str | os.PathLike, timeout: float = HELPER_TIMEOUT_SECONDS) -> bool:
        """Have the helper draw ``panels`` (:func:`miregister.qc_draw.save_panels`) into ``path``;
        True when the file is written, False when the helper is unavailable or failed (nothing
        is then left at ``path``). The helper ends after it."""
        return self._picture(("draw", panels, os.fspath(path)), path, timeout)

    def _picture(self, request: tuple, path: str | os.PathLike, timeout: float) -> bool:
        done = self._ask(request, timeout, wait_until_ready=True) is not _FAILED
        self.close()
        if done and Path(path).is_file():
            return True
        with contextlib.suppress(OSError):
            Path(path).unlink(missing_ok=True)
        return False

    def close(self) -> None:
        """End the helper if it is still running."""
        with self._lock:
            self._stop()

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            _end(process)

    def __enter__(self) -> "HelperProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _end(process: subprocess.Popen) -> None:
    """Kill ``process`` if it still runs, reap it and close its input (the reader thread
    closes its output on the end of file that follows)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        if process.poll() is None:
            process.kill()
        process.wait(timeout=5.0)
    with contextlib.suppress(OSError, ValueError):
        if process.stdin is not None:
            process.stdin.close()
