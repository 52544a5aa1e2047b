"""``register_cohort``: register every pair of a manifest on a Dask cluster, resumably.

One Dask task per pair (or per batch of same-grid pairs, ``batch``): it calls
:func:`miregister.register` (:func:`miregister.register_batch`), writes ``OUT/<id>/`` with
:func:`miregister.outputs.write_run` (all or nothing), warps the pair's label map if any, and
writes ``OUT/<id>/cohort.json`` last (the pair's completion and resume record, see
:mod:`miregister.cohort.files`). A pair whose registration fails becomes a summary row with its
error; the cohort goes on.

Where the work runs: a :class:`distributed.LocalCluster` on this machine by default (worker
processes x threads fitted to the CPUs this process may use), a running Dask scheduler
(``scheduler="tcp://host:port"``), or SLURM jobs through dask-jobqueue (``scheduler="slurm"``).
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import MiregisterError, RegistrationError, UsageError
from .files import MARKER, read_marker, write_marker
from .manifest import Pair, read_manifest
from .summary import failed_row, pending_row, row_from_report, write_summary_csv, write_summary_html

__all__ = ["register_cohort", "CohortResult", "run_pair", "run_batch", "fit_workers", "pair_fingerprint"]

LABELS_WARPED = "labels_warped.nii.gz"
#: Dask worker resource of SLURM jobs: one pair at a time per job.
_PAIR_RESOURCE = "miregister_pair"


@dataclass
class CohortResult:
    """What :func:`register_cohort` did.

    Attributes
    ----------
    rows : list of dict
        One summary row per pair, in manifest order (see :data:`miregister.cohort.summary.COLUMNS`).
    summary_csv, summary_html : Path
        ``OUT/summary.csv`` and ``OUT/summary.html``.
    """

    rows: list[dict[str, Any]]
    summary_csv: Path
    summary_html: Path

    @property
    def failed(self) -> list[str]:
        """Ids of the pairs that produced no result."""
        return [r["id"] for r in self.rows if r["status"] == "failed"]

    @property
    def doubtful(self) -> list[str]:
        """Ids of the pairs whose result the quality check flags as doubtful."""
        return [r["id"] for r in self.rows if r["status"] == "doubtful"]

    @property
    def ok(self) -> bool:
        """True when every pair registered and none is doubtful."""
        return all(r["status"] == "ok" for r in self.rows)


# ----------------------------------------------------------------------------- cluster
def fit_workers(workers: int | None, threads_per_worker: int | None, cpus: int | None = None) -> tuple[int, int]:
    """Worker processes and threads per pair for a local cluster, fitted to ``cpus`` (default:
    the CPUs this process may run on, ``os.sched_getaffinity``).

    Unset values fill the CPUs: both unset gives 1 thread per pair and one worker per CPU (a
    registration's optimisation runs on one thread anyway, so more pairs at once give more
    pairs per hour: 1175 against 677 per hour with 2 workers x 1 thread against 1 x 2 on 2
    cores, benchmarks/cohort.py); one set, the other fills the rest.
    """
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for name, value in (("workers", workers), ("threads_per_worker", threads_per_worker)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UsageError(f"{name} must be a positive integer, got {value!r}")
    if threads_per_worker is None:
        threads_per_worker = max(1, cpus // workers) if workers else 1
    if workers is None:
        workers = max(1, cpus // threads_per_worker)
    return workers, threads_per_worker


@contextlib.contextmanager
def _cluster_client(
    client: Any, scheduler: str | None, workers: int | None, threads_per_worker: int | None, n_pairs: int
) -> Iterator[tuple[Any, int, dict[str, float] | None]]:
    """A Dask client to submit to, the threads each pair's registration uses, and the Dask
    resources a pair's task asks for (None: any free worker thread)."""
    if client is not None:
        if scheduler is not None:
            raise UsageError("give either a Dask client or a scheduler, not both")
        yield client, threads_per_worker or 1, None
        return
    from distributed import Client

    if scheduler is None:
        from distributed import LocalCluster

        n, k = fit_workers(workers, threads_per_worker)
        n = min(n, max(1, n_pairs))
        # One pair at a time per worker process (one Dask thread), each pair on k PyTorch
        # threads; memory_limit=0: Dask's spill/pause rules are for Dask data, not for torch.
        with LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, memory_limit=0, dashboard_address=":0",
        ) as cluster, Client(cluster) as local:
            yield local, k, None
        return
    if scheduler == "slurm":
        try:
            from dask_jobqueue import SLURMCluster
        except ImportError:
            raise UsageError(
                "scheduler 'slurm' needs the dask-jobqueue package: pip install dask-jobqueue "
                "(or pip install 'miregister[cohort]')"
            ) from None
        k = threads_per_worker or 1
        # Queue, account, memory and walltime come from Dask's jobqueue configuration
        # (~/.config/dask/jobqueue.yaml, DASK_JOBQUEUE__SLURM__* variables).
        # A job's worker has k Dask threads (one per core); the "pair" resource lets it run one
        # pair at a time, on k PyTorch threads.
        try:
            cluster = SLURMCluster(cores=k, processes=1, worker_extra_args=["--resources", f"{_PAIR_RESOURCE}=1"])
        except (ValueError, TypeError) as error:
            raise UsageError(f"cannot set up SLURM jobs (dask-jobqueue configuration 'jobqueue.slurm'): {error}") from None
        with cluster, Client(cluster) as slurm:
            cluster.adapt(minimum_jobs=0, maximum_jobs=min(workers or 4, max(1, n_pairs)))
            yield slurm, k, {_PAIR_RESOURCE: 1}
        return
    if "://" not in scheduler:
        raise UsageError(f"scheduler must be a Dask scheduler address such as tcp://host:8786, or 'slurm'; got {scheduler!r}")
    try:
        remote = Client(scheduler, timeout="30s")
    except (OSError, TimeoutError, ValueError) as error:
        raise RegistrationError(f"cannot reach the Dask scheduler at {scheduler}: {error}") from None
    with remote:
        yield remote, threads_per_worker or 1, None


# ----------------------------------------------------------------------------- one pair
def pair_fingerprint(pair: Pair, transform: str, options: dict[str, Any], transform_format: str | None, qc: bool,
                     records: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """What decides whether a pair's earlier result can be kept: its input files (path, size,
    SHA-256), the transform chain, the options, the output format and miregister's version."""
    from .. import __version__
    from ..provenance import file_record

    records = {} if records is None else records

    def record(path: str | None) -> dict[str, Any] | None:
        if path is None:
            return None
        if path not in records:
            records[path] = file_record(path)
        return records[path]

    inputs = {role: record(getattr(pair, role)) for role in ("fixed", "moving", "fixed_mask", "moving_mask", "labels")}
    return json.loads(json.dumps({
        "inputs": inputs, "transform": transform, "options": options,
        "transform_format": transform_format, "qc": qc, "miregister": __version__,
    }, sort_keys=True, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _resumable(folder: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The pair's ``cohort.json`` when it matches ``fingerprint`` and every file it lists is
    still there, else None (the pair is redone)."""
    marker = read_marker(folder)
    if marker is None or marker.get("fingerprint") != fingerprint:
        return None
    outputs = marker.get("outputs")
    if not isinstance(outputs, list) or "report.json" not in outputs:
        return None
    if not all(isinstance(n, str) and Path(n).name == n and (folder / n).is_file() for n in outputs):
        return None
    return marker


def _worker_name() -> str:
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        import socket

        return f"{socket.gethostname()}:{os.getpid()}"
    return str(worker.address)


def _write_labels(result: Any, labels: str, folder: Path) -> Path:
    """Carry the label map through the found transform with nearest neighbour, keeping its
    pixel type (as ``miregister apply --interpolation nearest``)."""
    import SimpleITK as sitk

    from ..io import as_image, write_image
    from ..warp import resample

    image = as_image(labels)
    warped = resample(image, result.transform.to("cpu"), result.fixed.grid, mode="nearest")
    pixel = None
    if os.path.isfile(labels):
        reader = sitk.ImageFileReader()
        reader.SetFileName(labels)
        reader.ReadImageInformation()
        pixel = reader.GetPixelID()
    return write_image(warped, folder / LABELS_WARPED, dtype=pixel)  # atomic itself


def _pair_options(options: dict[str, Any], threads: int | None) -> dict[str, Any]:
    """The keyword options of a pair's registration on a worker: quiet, on ``threads`` threads."""
    kwargs = dict(options)
    kwargs["verbose"] = False
    if threads is not None:
        kwargs["threads"] = threads
    return kwargs


def _write_pair(
    pair: Pair, out: Path, outcome: Any, transform_format: str | None, qc: bool,
    fingerprint: dict[str, Any], run: dict[str, Any], start: float,
) -> dict[str, Any]:
    """Write a registered pair's folder from ``outcome`` (its result, or the exception its
    registration raised) and return its summary row; see :func:`run_pair` for which errors
    give a failed row and which propagate."""
    from ..outputs import write_run

    try:
        if isinstance(outcome, BaseException):
            result = getattr(outcome, "result", None)  # a doubtful result under strict=True: keep it for review
            if not isinstance(outcome, RegistrationError) or result is None:
                raise outcome
        else:
            result = outcome
        # overwrite: the folder is this pair's; what is in it is a stale try
        written = [Path(p).name for p in write_run(result, out, transform_format=transform_format, qc=qc, overwrite=True)]
        if pair.labels is not None:
            written.append(_write_labels(result, pair.labels, out).name)
    except (MiregisterError, ValueError, TypeError) as error:
        run["seconds"] = time.perf_counter() - start
        return failed_row(pair, _message(error), run)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    run["seconds"] = time.perf_counter() - start
    row = row_from_report(pair, report, run)
    write_marker(out, {
        "fingerprint": fingerprint, "outputs": written,
        "run": {k: row.get(k) for k in ("status", "error", "seconds", "worker", "threads")},
    })
    return row


def run_pair(
    pair: Pair,
    folder: str,
    transform: str,
    options: dict[str, Any],
    transform_format: str | None,
    qc: bool,
    threads: int | None,
    fingerprint: dict[str, Any],
) -> dict[str, Any]:
    """Register one pair and write ``folder`` (runs on a Dask worker); return its summary row.

    Errors of the data or of the registration (:class:`~miregister.errors.MiregisterError`,
    ``ValueError``: a bad file, no overlap, a diverging metric, an output that cannot be
    written) give a ``"failed"`` row with the message; any other exception (a worker out of
    memory, a file system hiccup) propagates, so Dask's ``retries`` can run the pair again.
    """
    from .. import register

    start = time.perf_counter()
    out = Path(folder)
    # The folder is being (re)done: its old completion record goes first, so a kill from here
    # on leaves the pair to be redone.
    (out / MARKER).unlink(missing_ok=True)
    try:
        outcome: Any = register(pair.fixed, pair.moving, transform, fixed_mask=pair.fixed_mask,
                                moving_mask=pair.moving_mask, **_pair_options(options, threads))
    except (MiregisterError, ValueError, TypeError) as error:
        outcome = error
    return _write_pair(pair, out, outcome, transform_format, qc, fingerprint,
                       {"worker": _worker_name(), "threads": threads}, start)


def run_batch(
    pairs: list[Pair],
    folders: list[str],
    transform: str,
    options: dict[str, Any],
    transform_format: str | None,
    qc: bool,
    threads: int | None,
    fingerprints: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Register pairs together with :func:`~miregister.registration.batch.register_batch`
    (one batched metric pass for all, e.g. on a GPU) and write each pair's folder exactly as
    :func:`run_pair` does; return their rows. A pair's ``seconds`` is the whole batch's time.

    A data or registration error fails only its own pair's row; any other exception of a pair
    is raised after every other pair's folder is written (Dask's ``retries`` then redo the batch).
    """
    from ..registration.batch import register_batch

    start = time.perf_counter()
    outs = [Path(f) for f in folders]
    for out in outs:
        (out / MARKER).unlink(missing_ok=True)
    outcomes = register_batch(
        [p.fixed for p in pairs], [p.moving for p in pairs], transform,
        fixed_masks=[p.fixed_mask for p in pairs], moving_masks=[p.moving_mask for p in pairs],
        return_exceptions=True, **_pair_options(options, threads),
    )
    worker = _worker_name()
    rows, unexpected = [], None
    for pair, out, outcome, fingerprint in zip(pairs, outs, outcomes, fingerprints):
        try:
            rows.append(_write_pair(pair, out, outcome, transform_format, qc, fingerprint,
                                    {"worker": worker, "threads": threads}, start))
        except Exception as error:  # noqa: BLE001 - raised below, after the other pairs are written
            unexpected = unexpected or error
    if unexpected is not None:
        raise unexpected
    return rows


def _message(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text if isinstance(error, MiregisterError) else f"{type(error).__name__}: {text}"


# ----------------------------------------------------------------------------- the cohort
def register_cohort(
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    template: str | os.PathLike | None = None,
    transform: str = "affine",
    client: Any = None,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    scheduler: str | None = None,
    retries: int = 0,
    *,
    batch: int = 1,
    transform_format: str | None = None,
    qc: bool = True,
    verbose: bool = False,
    **options: Any,
) -> CohortResult:
    """Register every pair of a manifest, one Dask task per pair; resumable.

    Each pair's transform maps points of its fixed image's physical space (mm, LPS) to its
    moving image's, as :func:`miregister.register`; ``OUT/<id>/`` holds what ``miregister
    register`` writes (transform, ``warped.nii.gz``, ``report.json``, ``qc.png``), plus
    ``labels_warped.nii.gz`` for a row with labels and ``cohort.json`` (the resume record).
    Rerunning the same call keeps the pairs whose ``cohort.json`` matches their input files
    (path, size, SHA-256), the options and miregister's version, and redoes the others; a run
    killed at any moment loses only the pairs in flight.

    Parameters
    ----------
    manifest : str or PathLike
        CSV with columns ``id``, ``moving`` and optionally ``fixed``, ``fixed_mask``,
        ``moving_mask``, ``labels`` (see :func:`miregister.cohort.read_manifest`); every bad
        row is reported (:class:`~miregister.errors.InputError`) before any work.
    out : str or PathLike
        The cohort's folder: ``OUT/<id>/`` per pair, ``OUT/summary.csv``, ``OUT/summary.html``.
    template : str or PathLike, optional
        Fixed image of the rows without a ``fixed`` value.
    transform : str
        The transform chain of every pair (as :func:`miregister.register`).
    client : distributed.Client, optional
        Submit to this Dask client (its cluster is left running).
    workers, threads_per_worker : int, optional
        Local cluster: worker processes (pairs at once) and PyTorch threads per pair, by
        default fitted to the CPUs (:func:`fit_workers`). SLURM: the most jobs at once
        (default 4) and cores per job. A running scheduler or ``client``: threads per pair
        (default 1).
    scheduler : str, optional
        ``"tcp://host:port"`` of a running Dask scheduler, or ``"slurm"`` (dask-jobqueue's
        ``SLURMCluster``, configured by Dask's ``jobqueue.slurm`` settings).
    retries : int
        Times Dask re-runs a pair whose task died of something other than a data or
        registration error (a lost worker, an out-of-memory error).
    batch : int
        Pairs registered together in one task (:func:`miregister.register_batch`: one batched
        metric pass for all, for a GPU worker): pairs with the same fixed grid and moving
        image size are grouped, ``batch`` at a time. 1 (default): one task per pair. Each
        pair's folder is written as with 1; its ``seconds`` is then its batch's.
    transform_format : {"tfm", "mat", "h5"}, optional
        As :func:`miregister.outputs.write_run`.
    qc : bool
        Draw each pair's ``qc.png``.
    verbose : bool
        A progress bar over pairs (each registration itself stays quiet).
    **options
        Options of :func:`miregister.register`, the same for every pair.

    Returns
    -------
    CohortResult
        Rows in manifest order; ``failed``/``doubtful`` list the ids to look at.

    Raises
    ------
    InputError
        For a bad manifest (every problem listed), before any work.
    UsageError
        For an unknown option or a value out of range, before any work.
    """
    from ..registration.options import build_options, parse_stages

    if not isinstance(retries, int) or retries < 0:
        raise UsageError(f"retries must be a non-negative integer, got {retries!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise UsageError(f"batch must be a positive integer, got {batch!r}")
    options.pop("verbose", None)
    try:
        build_options(parse_stages(transform), **options)  # every option checked before any work
    except UsageError:
        raise
    except (ValueError, TypeError) as error:
        raise UsageError(str(error)) from None
    _check_format(transform, transform_format)
    pairs = read_manifest(manifest, template)
    out = Path(out).absolute()  # workers may run elsewhere (another folder, another node)
    if out.exists() and not out.is_dir():
        raise UsageError(f"cohort output folder '{out}' exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    extra_columns = list(dict.fromkeys(c for p in pairs for c in p.extra))
    csv_path, html_path = out / "summary.csv", out / "summary.html"

    records: dict[str, dict[str, Any]] = {}
    fingerprints = [pair_fingerprint(p, transform, options, transform_format, qc, records) for p in pairs]
    rows: list[dict[str, Any]] = []
    todo: list[int] = []
    for index, (pair, fingerprint) in enumerate(zip(pairs, fingerprints)):
        row = _kept_row(pair, out / pair.id, fingerprint, resumed=True)
        if row is None:
            rows.append(pending_row(pair))
            todo.append(index)
            continue
        rows.append(row)
    write_summary_csv(rows, csv_path, extra_columns)

    progress = None
    if verbose:
        from tqdm.auto import tqdm

        progress = tqdm(total=len(pairs), initial=len(pairs) - len(todo), desc="pairs", unit="pair")
    try:
        if todo:
            with _cluster_client(client, scheduler, workers, threads_per_worker, len(todo)) as (dask_client, threads, resources):
                _run_all(dask_client, pairs, _batches(pairs, todo, batch), fingerprints, rows, out, transform, options,
                         transform_format, qc, threads, retries, resources, csv_path, extra_columns, progress)
    finally:
        if progress is not None:
            progress.close()
        write_summary_csv(rows, csv_path, extra_columns)
        write_summary_html(rows, html_path)
    return CohortResult(rows, csv_path, html_path)


def _kept_row(pair: Pair, folder: Path, fingerprint: dict[str, Any], resumed: bool) -> dict[str, Any] | None:
    """The row of a pair whose folder holds a complete result for ``fingerprint``, else None."""
    marker = _resumable(folder, fingerprint)
    if marker is None:
        return None
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    return row_from_report(pair, report, {**marker.get("run", {}), "resumed": resumed})


def _same_grid_key(path: str | None) -> tuple:
    """What pairs batched together share: an image file's grid from its header (size, spacing,
    origin, direction), or its path where the header cannot be read alone (a DICOM folder)."""
    import SimpleITK as sitk

    if path is None or os.path.isdir(path):
        return (path,)
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return (path,)
    return (reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())


def _batches(pairs: list[Pair], todo: list[int], batch: int) -> list[list[int]]:
    """The pairs to do in tasks: one each (``batch`` 1), else groups of up to ``batch`` pairs with
    the same fixed grid and moving image size, in manifest order."""
    if batch == 1:
        return [[index] for index in todo]
    groups: dict[tuple, list[int]] = {}
    for index in todo:
        key = (_same_grid_key(pairs[index].fixed), _same_grid_key(pairs[index].moving)[0])
        groups.setdefault(key, []).append(index)
    return [members[i:i + batch] for members in groups.values() for i in range(0, len(members), batch)]


def _run_all(client, pairs, tasks, fingerprints, rows, out, transform, options, transform_format, qc, threads, retries,
             resources, csv_path, extra_columns, progress) -> None:
    """Submit the pairs to be done (one task per list of ``tasks``) and record each row as it finishes."""
    import uuid

    from distributed import as_completed

    token = uuid.uuid4().hex[:8]
    futures, members = [], {}
    for indices in tasks:
        key = f"miregister-pair-{'-'.join(map(str, indices))}-{token}"
        if len(indices) == 1:
            pair = pairs[indices[0]]
            future = client.submit(
                run_pair, pair, str(out / pair.id), transform, options, transform_format, qc, threads,
                fingerprints[indices[0]], key=key, retries=retries, pure=False, resources=resources,
            )
        else:
            future = client.submit(
                run_batch, [pairs[i] for i in indices], [str(out / pairs[i].id) for i in indices], transform, options,
                transform_format, qc, threads, [fingerprints[i] for i in indices],
                key=key, retries=retries, pure=False, resources=resources,
            )
        futures.append(future)
        members[future.key] = indices
    for future in as_completed(futures):
        indices = members[future.key]
        try:
            done = future.result()
            for index, row in zip(indices, done if isinstance(done, list) else [done]):
                rows[index] = row
        except Exception as error:  # the task died after its retries: failed rows, never a crashed run
            for index in indices:  # a batch's pairs written before it died keep their result
                kept = _kept_row(pairs[index], out / pairs[index].id, fingerprints[index], resumed=False)
                rows[index] = kept or failed_row(pairs[index], _message(error), {})
        write_summary_csv(rows, csv_path, extra_columns)
        if progress is not None:
            progress.update(len(indices))
            failed = sum(1 for r in rows if r["status"] == "failed")
            if failed:
                progress.set_postfix(failed=failed)


def _check_format(transform: str, transform_format: str | None) -> None:
    """A transform format that does not suit the chain is refused before any work."""
    if transform_format is None:
        return
    from ..registration.options import DEFORMABLE_STAGES, parse_stages

    linear = not any(stage in DEFORMABLE_STAGES for stage in parse_stages(transform))
    allowed = ("tfm", "mat") if linear else ("h5",)
    if transform_format not in allowed:
        raise UsageError(
            f"transform_format {transform_format!r} does not suit a {'linear' if linear else 'deformable'} "
            f"transform chain (use {' or '.join(allowed)})"
        )
