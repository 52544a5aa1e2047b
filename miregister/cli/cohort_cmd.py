"""``miregister cohort``: register every pair of a manifest on a Dask cluster, resumably."""
from __future__ import annotations

import argparse
import sys

from .common import EXIT_INPUT, EXIT_OK, add_command, int_at_least
from .register_cmd import add_registration_options, registration_options

MANIFEST_HELP = """\
manifest:
  A CSV file with a header: id,moving and optionally fixed (else --template), fixed_mask,
  moving_mask, labels (a label map warped with nearest neighbour, pixel type kept). Paths are
  relative to the manifest's folder. Other columns are copied into the summary. Every bad row
  (missing or unreadable file, empty, duplicate or unsafe id, no fixed image) is reported
  before any work starts.

output:
  OUT/<id>/ per pair, as 'miregister register' writes it (transform, warped.nii.gz,
  report.json, qc.png; labels_warped.nii.gz; cohort.json, the resume record),
  OUT/summary.csv (one row per pair, rewritten as pairs finish) and OUT/summary.html (pairs
  sorted failed, doubtful, then by an outlier score, with QC pictures). Rerunning the same
  command skips the pairs whose inputs (path, size, SHA-256), options and miregister version
  are unchanged.

exit codes:
  0 every pair registered; 1 a pair failed or is doubtful (the summary is still written), or
  a bad manifest (nothing is done); 2 bad command line.
"""


def add_parser(commands) -> None:
    """Declare the ``cohort`` sub-command and its options."""
    coh = add_command(commands, "cohort", "register every pair of a CSV manifest (on a local or remote Dask cluster), resumably, with a summary")
    conventions = (coh.epilog or "").split("exit codes:")[0].rstrip()  # the cohort's exit codes are its own
    coh.epilog = MANIFEST_HELP + "\n" + conventions + "\n"
    coh.add_argument("manifest", help="CSV of pairs: id,moving[,fixed,fixed_mask,moving_mask,labels,...]")
    coh.add_argument("-o", "--output", required=True, help="cohort folder: OUT/<id>/ per pair, summary.csv, summary.html")
    coh.add_argument("--template", help="fixed image of the rows without a 'fixed' value")
    coh.add_argument("--workers", type=int_at_least(1),
                     help="pairs registered at once: local worker processes (default: fitted to the CPUs), or SLURM jobs (default 4)")
    coh.add_argument("--threads-per-worker", type=int_at_least(1), metavar="K",
                     help="CPU threads of each pair's registration (default: 1 locally, one pair per CPU, or fitted with --workers to the CPUs; "
                          "1 on a running scheduler; cores per job on SLURM)")
    coh.add_argument("--scheduler", metavar="ADDRESS|slurm",
                     help="tcp://host:port of a running Dask scheduler, or slurm (needs dask-jobqueue; queue, account, memory "
                          "and walltime from Dask's jobqueue.slurm configuration); default: a local cluster on this machine")
    coh.add_argument("--retries", type=int_at_least(0), default=0,
                     help="re-run a pair whose task died of something other than its data (lost worker, out of memory) up to R times")
    coh.add_argument("--batch", type=int_at_least(1), default=1, metavar="B",
                     help="register up to B pairs of the same fixed grid and moving size together, one batched metric pass "
                          "per evaluation (for a GPU worker, with --device cuda); each pair's outputs are those of --batch 1 "
                          "within 0.01 mm (linear) / 0.05 mm (deformable). Default 1: one pair per task")
    add_registration_options(coh)  # its --config: masks belong in the manifest
    coh.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..cohort import register_cohort
    from ..errors import UsageError

    for key in ("fixed_mask", "moving_mask"):
        if (args.config or {}).get(key) is not None:
            raise UsageError(f"--config: {key} differs per pair in a cohort; give it in the manifest's {key} column")
    options = registration_options(args)
    options.update(device=args.device, rotation_search=args.rotation_search, validate=not args.no_validate)
    result = register_cohort(
        args.manifest, args.output, template=args.template, transform=args.transform,
        workers=args.workers, threads_per_worker=args.threads_per_worker, scheduler=args.scheduler,
        retries=args.retries, batch=args.batch, transform_format=args.transform_format, qc=not args.no_qc, verbose=not args.quiet,
        **options,
    )
    counts = {s: sum(1 for r in result.rows if r["status"] == s) for s in ("ok", "doubtful", "failed")}
    if not args.quiet:
        resumed = sum(1 for r in result.rows if r.get("resumed"))
        print(f"{len(result.rows)} pairs: {counts['ok']} ok, {counts['doubtful']} doubtful, {counts['failed']} failed"
              + (f" ({resumed} kept from an earlier run)" if resumed else ""))
        print(f"wrote {result.summary_csv} and {result.summary_html}")
    for row in result.rows:
        if row["status"] != "ok":
            print(f"miregister cohort: {row['id']}: {row['status']}: {row.get('error') or ''}", file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_INPUT
