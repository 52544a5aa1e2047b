"""Writing a registration run's output folder: transform, warped image, report, QC picture.

One writer for the command line and the cohort runner, with these promises:

- A run owns its folder. ``report.json`` lists the files the run wrote (key ``"outputs"``);
  a non-empty folder is refused unless ``overwrite=True`` (``--overwrite``), and then the
  previous run's listed files are removed, so an old ``transform.h5`` or ``qc.png`` never sits
  beside a new result. Files that miregister did not list are left alone.
- All or nothing. Files are written into a hidden staging folder *inside* the output folder
  (``.miregister-staging-<pid>-<random>``: same file system, so the final moves are renames,
  also on a mount point), then moved in; the previous files are moved aside first and put
  back if any move fails. SIGINT/SIGTERM are held back during the moves.
- Problems are found before any work: :func:`check_output_folder` says what is wrong with the
  folder the user named (never the staging path). Staging folders of dead runs (their
  process no longer exists) are removed when the next run starts.
"""
from __future__ import annotations

import collections
import contextlib
import errno
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import OutputError, UsageError

__all__ = [
    "write_run", "check_output_folder", "check_output_file", "check_transform_format", "atomic_write",
    "previous_outputs", "STAGING_PREFIX",
]

STAGING_PREFIX = ".miregister-staging-"
REPORT = "report.json"
QC_PICTURE = "qc.png"
#: Threads that write a run's files at once (see :func:`_write_all`).
WRITE_THREADS = 2
#: Above this many fixed voxels a run's files are written one at a time: the writers' memory
#: peaks add up when they overlap (a 1 mm B-spline run: 1.9 GB above the images instead of
#: 1.1 GB, the inverse field and the QC picture at once), and at that size the registration,
#: not the writing, takes the time.
PARALLEL_WRITE_VOXELS = 4_000_000
#: Longest wait (s) for the writes under way when a run is interrupted while writing.
WRITE_STOP_SECONDS = 5.0


# ------------------------------------------------------------------------------- checks
def check_output_folder(out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Check, before any work, that a run may write its folder ``out``; return it as a Path.

    Removes staging folders left by dead runs, then checks that ``out`` is (or can be made)
    a writable folder that this run may own: empty, or ``overwrite`` is true. Nothing is
    created (a folder made to test writability is removed again).

    Raises
    ------
    OutputError
        (an OSError) For an empty name, a path that is a file or lies under one, a dangling
        symbolic link, a folder that cannot be created or written (read-only, immutable,
        permission), another live run writing there, or a non-empty folder without
        ``overwrite`` (naming ``--overwrite``). The message names ``out`` as given.
    """
    text = os.fspath(out)
    if not str(text).strip():
        raise OutputError("the output folder name is empty; give a folder to write the results into")
    path = Path(text)
    _check_not_dangling(path, f"output folder {text!r}")
    if path.exists() and not path.is_dir():
        raise OutputError(f"output folder {text!r} exists and is not a folder")
    if not path.exists():
        _probe_creatable(path, f"cannot create output folder {text!r}")
        return path
    _probe_writable(path, f"cannot write into output folder {text!r}")
    _remove_stale_staging(path)
    busy = [p for p in _staging_folders(path)]
    if busy:
        pid = _staging_pid(busy[0])
        raise OutputError(f"another miregister run (process {pid}) is writing into output folder {text!r}")
    entries = sorted(p.name for p in path.iterdir())
    if not entries or overwrite:
        return path
    previous = previous_outputs(path)
    if previous is not None:
        raise OutputError(
            f"output folder {text!r} holds the result of an earlier miregister run ({', '.join(previous)}); "
            "use --overwrite (overwrite=True) to replace it, or choose another folder"
        )
    shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
    raise OutputError(
        f"output folder {text!r} is not empty ({shown}) and holds no miregister result; choose an empty or "
        "new folder, or use --overwrite (overwrite=True) to write into it anyway"
    )


def check_output_file(path: str | os.PathLike) -> Path:
    """Check, before any work, that the single output file ``path`` can be written.

    Raises
    ------
    OutputError
        For an empty name, a folder of that name, a dangling symbolic link, or a parent folder
        that is a file, cannot be created or is not writable.
    """
    text = os.fspath(path)
    if not str(text).strip():
        raise OutputError("the output file name is empty")
    target = Path(text)
    if target.is_dir():
        raise OutputError(f"output file {text!r} is a folder")
    _check_not_dangling(target, f"output file {text!r}")
    parent = target.parent
    _check_not_dangling(parent, f"the folder of output file {text!r}")
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"cannot write output file {text!r}: {str(parent)!r} is a file, not a folder")
    if parent.exists():
        _probe_writable(parent, f"cannot write output file {text!r}")
    else:
        _probe_creatable(parent, f"cannot write output file {text!r}: cannot create its folder")
    return target


def check_transform_format(linear: bool, transform_format: str | None) -> str:
    """The transform file's extension: ``tfm``/``mat`` for linear chains (default ``tfm``),
    ``h5`` for deformable ones; :class:`UsageError` for a format that does not suit."""
    if transform_format is None:
        return "tfm" if linear else "h5"
    allowed = ("tfm", "mat") if linear else ("h5",)
    if transform_format not in allowed:
        kind = "linear" if linear else "deformable"
        error = UsageError(
            f"transform_format: got {transform_format!r}; a {kind} transform is written as {' or '.join(allowed)}"
        )
        error.option, error.detail = "transform_format", str(error).split(": ", 1)[1]  # type: ignore[attr-defined]
        raise error
    return transform_format


def previous_outputs(folder: str | os.PathLike) -> list[str] | None:
    """The file names an earlier run listed in ``folder/report.json`` (plain names only), or
    None when the folder holds no readable miregister report."""
    report = Path(folder) / REPORT
    try:
        listed = json.loads(report.read_text()).get("outputs")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(listed, list):
        return None
    # Only plain names inside the folder: a report is data, never a licence to delete elsewhere.
    return [n for n in listed if isinstance(n, str) and n not in ("", ".", "..") and Path(n).name == n
            and "/" not in n and "\\" not in n and not n.startswith(STAGING_PREFIX)]


# ------------------------------------------------------------------------------ writing
def write_run(
    result: Any,
    out: str | os.PathLike,
    *,
    transform_format: str | None = None,
    qc: bool = True,
    overwrite: bool = False,
    report: dict[str, Any] | None = None,
    jacobian: bool = False,
    threads: int | None = None,
    qc_helper: Any = None,
) -> list[Path]:
    """Write ``result`` into the folder ``out`` (all or nothing) and return the paths written.

    Parameters
    ----------
    result : RegistrationResult
        What :func:`miregister.register` returned.
    out : path
        The output folder (created). It must be empty or new unless ``overwrite``.
    transform_format : {"tfm", "mat", "h5"}, optional
        Linear chains: ``tfm`` (default) or ``mat``; deformable chains: ``h5`` (default), with
        the displacement field (mm, fixed grid) also written as ``displacement.nii.gz``.
    qc : bool
        Draw ``qc.png`` (checkerboards and joint histograms before/after).
    overwrite : bool
        Replace the result of an earlier run (its files listed in its ``report.json`` are
        removed, others kept), or write into a non-empty folder miregister did not write.
    report : dict, optional
        Extra keys for ``report.json`` (e.g. ``inputs``, ``command_line``). The key
        ``outputs`` is set here: the names of the files this run wrote.

    Raises
    ------
    OutputError
        When ``out`` cannot be written or may not be taken (see :func:`check_output_folder`),
        or a write or move fails; the folder is then as it was before the call.
    UsageError
        For a transform format that does not suit the transform.
    jacobian : bool
        Also write ``jacobian.nii.gz``: the Jacobian determinant of the transform on the fixed grid.
    threads : int, optional
        CPU threads for the writing (torch's intra-op threads and the writer threads, at most
        :data:`WRITE_THREADS`), as ``register``'s ``threads`` (the command line's ``--threads``);
        by default torch's setting is left alone and :data:`WRITE_THREADS` files are written at once.
    qc_helper : miregister.helper_process.HelperProcess, optional
        A helper process started earlier that draws the QC picture while this process writes
        the other files (the command line starts one; see :mod:`miregister.helper_process`).

    Notes
    -----
    The inverse (moving -> fixed) is always written: ``inverse.tfm``/``inverse.mat`` for
    linear chains, ``inverse.h5`` and ``inverse_displacement.nii.gz`` (moving grid) for
    deformable ones (:func:`miregister.transforms.io.inverse_writers`).
    """
    from .io import write_image
    from .registration.qc import save_qc_figure
    from .threads import resolve_threads, torch_threads
    from .transforms.displacement import jacobian_determinant_image
    from .transforms.io import inverse_writers

    text = os.fspath(out)
    folder = check_output_folder(out, overwrite=overwrite)
    linear = result.transform.is_linear
    fmt = check_transform_format(linear, transform_format)
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=folder))
    except OSError as error:
        raise OutputError(f"cannot write into output folder {text!r}: {_reason(error)}") from error
    done = False
    try:
        writers: list[tuple[str, Callable[[Path], Any]]] = [(f"transform.{fmt}", result.save_transform)]
        if not linear:
            writers.append(("displacement.nii.gz", result.save_transform))
        writers.append(("warped.nii.gz", lambda p: write_image(result.warped, p)))
        inverse = inverse_writers(result.transform, result.fixed.grid, result.moving.grid, linear_format=fmt if linear else "tfm")
        writers += inverse
        if jacobian:
            writers.append(("jacobian.nii.gz", lambda p: write_image(jacobian_determinant_image(result.transform, result.fixed.grid), p)))
        if qc:
            writers.append((QC_PICTURE, lambda p: save_qc_figure(result, p, qc_helper)))
        names = [name for name, _ in writers] + [REPORT]
        extra = dict(report or {})
        extra["outputs"] = names
        writers.append((REPORT, lambda p: result.save_report(p, extra=extra)))
        cpus = None if threads is None else resolve_threads(threads)
        writing = 1 if result.fixed.grid.numel > PARALLEL_WRITE_VOXELS else min(WRITE_THREADS, cpus or WRITE_THREADS)
        with contextlib.nullcontext() if cpus is None else torch_threads(cpus):
            # The longest chain starts first: a deformable inverse (computed by the first of its
            # writers, the longest write) and the QC picture (waiting for its helper, or drawn here).
            first = ([] if linear else [inverse[0][0]]) + [QC_PICTURE]
            failure = _write_all(writers, staging, writing, first=first)
        if failure is not None:
            name, error = failure
            reason = str(error).replace(str(staging), text) if not isinstance(error, OSError) else _reason(error)
            raise OutputError(f"cannot write {name} into output folder {text!r}: {reason}") from error
        with _signals_deferred():
            _commit(folder, staging, names, text)
            done = True
    finally:
        with _signals_deferred():
            shutil.rmtree(staging, ignore_errors=True)
            if not done:  # a failed or stopped run leaves no folder it made
                for path in created:
                    with contextlib.suppress(OSError):
                        path.rmdir()
    return [folder / name for name in names]


def _write_all(
    writers: list[tuple[str, Callable[[Path], Any]]], staging: Path, threads: int = WRITE_THREADS,
    first: tuple[str, ...] | list[str] = (QC_PICTURE,),
) -> tuple[str, Exception] | None:
    """Call every ``write(staging / name)`` on ``threads`` threads, the names in ``first`` (in
    that order) before the others; return the first
    failure (OSError, ValueError or RuntimeError) in the writers' order as ``(name, error)``,
    or None; other errors propagate. No write is under way when it returns, unless it returns
    on an interruption and a write outlasted :data:`WRITE_STOP_SECONDS`.

    The files are independent, so their gzip (zlib) and the inverse field (native code,
    the GIL released) overlap each other and the QC picture. The
    threads are daemons: an interrupted run (Ctrl-C, SIGTERM in the main thread) waits at most
    :data:`WRITE_STOP_SECONDS` for the writes under way, stops starting new ones, and leaves; a
    write that hangs (a stalled network disk) then cannot keep the process from exiting.
    """
    rank = {name: k for k, name in enumerate(first)}
    order = collections.deque(sorted(range(len(writers)), key=lambda i: rank.get(writers[i][0], len(rank))))
    done = [threading.Event() for _ in writers]
    errors: list[BaseException | None] = [None] * len(writers)
    stop = threading.Event()

    def work() -> None:
        while True:
            try:
                i = order.popleft()  # atomic
            except IndexError:
                return
            try:
                if not stop.is_set():
                    name, write = writers[i]
                    write(staging / name)
            except BaseException as error:  # handed to the main thread
                errors[i] = error
            finally:
                done[i].set()

    threads = [threading.Thread(target=work, name=f"miregister-write-{k}", daemon=True)
               for k in range(max(1, min(threads, len(writers))))]
    for thread in threads:
        thread.start()
    try:
        for k, (name, _) in enumerate(writers):
            done[k].wait()
            error = errors[k]
            if isinstance(error, (OSError, ValueError, RuntimeError)):
                return name, error
            if error is not None:
                raise error
        return None
    finally:  # also at the first failure, or when a signal interrupts the wait
        stop.set()
        deadline = time.monotonic() + WRITE_STOP_SECONDS
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(staged_path)`` and move the file into place at ``path``: all or nothing.

    The staged file has the final name, in a hidden staging folder inside the target's folder
    (same file system: the move is a rename), so formats with a data file beside the header
    (``.mhd`` + ``.raw``) name it right; data files move first, the named file last. The one
    atomic writer of the project: images (:func:`miregister.io.write_image`), transforms
    (:func:`miregister.transforms.io.write_transform`), cohort files. A target that is itself
    in a staging folder (a run folder being staged by :func:`write_run`, or an outer
    ``atomic_write``) is written directly: that folder is private and its own move is the
    atomic step.

    Raises
    ------
    OutputError
        When the file or its folder cannot be written (naming ``path``). Other errors of
        ``write`` pass through, with nothing left behind.
    """
    target = Path(path)
    text = os.fspath(path)
    if target.parent.name.startswith(STAGING_PREFIX) and target.parent.is_dir():
        try:
            write(target)
        except OSError as error:
            raise OutputError(f"cannot write output file {text!r}: {_reason(error)}") from error
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=target.parent))
    except OSError as error:
        raise OutputError(f"cannot write output file {text!r}: {_reason(error)}") from error
    try:
        staged = staging / target.name
        try:
            write(staged)
        except OSError as error:
            raise OutputError(f"cannot write output file {text!r}: {_reason(error)}") from error
        with _signals_deferred():
            try:
                for extra in sorted(p for p in staging.iterdir() if p != staged):
                    os.replace(extra, target.parent / extra.name)
                os.replace(staged, target)
            except OSError as error:
                raise OutputError(f"cannot write output file {text!r}: {_reason(error)}") from error
    finally:
        with _signals_deferred():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _commit(folder: Path, staging: Path, names: list[str], text: str) -> None:
    """Move the staged ``names`` into ``folder``, replacing the previous run's files; on any
    failure put everything back as it was and raise OutputError."""
    for name in names:
        target = folder / name
        if target.is_dir() and not target.is_symlink():
            raise OutputError(
                f"cannot write {name} into output folder {text!r}: a folder of that name is in the way "
                "(nothing was changed)"
            )
    previous = previous_outputs(folder) or []
    aside = staging / ".previous"
    aside.mkdir()
    # The old report last out and the new one last in: a folder with a report is complete.
    old = [n for n in dict.fromkeys(previous + names) if n != REPORT] + [REPORT]
    old = [n for n in old if (folder / n).is_symlink() or (folder / n).is_file()]
    moved_aside: list[str] = []
    moved_in: list[str] = []
    try:
        for name in old:
            os.replace(folder / name, aside / name)
            moved_aside.append(name)
        for name in names:
            os.replace(staging / name, folder / name)
            moved_in.append(name)
    except OSError as error:
        for name in reversed(moved_in):
            with contextlib.suppress(OSError):
                os.replace(folder / name, staging / name)
        for name in reversed(moved_aside):
            with contextlib.suppress(OSError):
                os.replace(aside / name, folder / name)
        raise OutputError(
            f"cannot write {Path(error.filename or '').name or 'the results'} into output folder {text!r}: "
            f"{_reason(error)}; the previous contents were restored"
        ) from error


# ----------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back (main thread only) so a move or a clean-up is not cut short;
    a signal that arrived meanwhile is handled on leaving."""
    can = hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread()
    if not can:
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _staging_folders(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.name.startswith(STAGING_PREFIX)]
    except OSError:
        return []


def _staging_pid(path: Path) -> int | None:
    try:
        return int(path.name[len(STAGING_PREFIX):].split("-", 1)[0])
    except ValueError:
        return None


def _pid_alive(pid: int | None) -> bool:
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _remove_stale_staging(folder: Path) -> None:
    """Remove staging folders whose run is dead (killed before it could clean up)."""
    for path in _staging_folders(folder):
        if not _pid_alive(_staging_pid(path)):
            shutil.rmtree(path, ignore_errors=True)


def _check_not_dangling(path: Path, what: str) -> None:
    """Refuse a symbolic link (``path`` or a folder above it) that points nowhere."""
    for candidate in (path, *path.parents):
        if candidate.is_symlink() and not candidate.exists():
            subject = what if candidate == path else f"{what}: {str(candidate)!r}"
            raise OutputError(f"{subject} is a symbolic link to {os.readlink(candidate)!r}, which does not exist")


def _probe_writable(folder: Path, context: str) -> None:
    """Create and remove a hidden folder in ``folder``: the only check that sees read-only
    mounts, immutable folders and ACLs alike (``os.access`` does not, e.g. for root)."""
    try:
        probe = tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=folder)
        os.rmdir(probe)
    except OSError as error:
        raise OutputError(f"{context}: {_reason(error, folder)}") from error


def _probe_creatable(path: Path, context: str) -> None:
    """Create ``path`` (and missing parents) and a probe inside, then remove what was made."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for candidate in path.parents:
        if candidate.exists():
            if not candidate.is_dir():
                raise OutputError(f"{context}: {str(candidate)!r} is a file, not a folder")
            break
    made: list[Path] = []
    try:
        for p in reversed(missing):
            p.mkdir()
            made.append(p)
        _probe_writable(path, context)
    except OSError as error:
        if isinstance(error, OutputError):
            raise
        parent = missing[-1].parent if missing else path.parent
        raise OutputError(f"{context}: {_reason(error, parent)}") from error
    finally:
        for p in reversed(made):
            with contextlib.suppress(OSError):
                p.rmdir()


_REASONS = {
    errno.EACCES: "permission denied: {where} is not writable by this user",
    errno.EPERM: "operation not permitted on {where} (an immutable or protected folder?)",
    errno.EROFS: "{where} is on a read-only file system",
    errno.ENOSPC: "no space left on the device of {where}",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ENAMETOOLONG: "the name is too long",
    errno.ENOENT: "the system refused to create it in {where} (no such file or directory)",
    errno.EXDEV: "it is on another file system than its staging folder",
}
if hasattr(errno, "EDQUOT"):
    _REASONS[errno.EDQUOT] = "disk quota exceeded on {where}"


def _reason(error: OSError, where: Path | None = None) -> str:
    """Words for an OSError (never the staging path; the errno text only as a last resort)."""
    template = _REASONS.get(error.errno or -1)
    place = repr(str(where)) if where is not None else "the folder"
    if template:
        return template.format(where=place)
    return f"the system refused it in {place} ({(error.strerror or str(error)).lower()})"
