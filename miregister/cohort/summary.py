"""A cohort's summary: ``OUT/summary.csv`` (one row per pair) and ``OUT/summary.html`` (review page).

Each row's numbers come from the pair's ``report.json`` (MI in nats before/after by soft bins,
KDE and KNN; NMI; the final overlap; Jacobian statistics of deformable stages; the quality
flag), plus how the pair ran (status, error, seconds, device, worker) and the manifest's own
extra columns. The HTML page lists the pairs most worth a look first: failed, then doubtful,
then by an outlier score, each with its QC picture and links to its files.
"""
from __future__ import annotations

import csv
import html
import io
import math
import os
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

from .files import atomic_write_text
from .manifest import Pair

__all__ = ["COLUMNS", "row_from_report", "failed_row", "pending_row", "outlier_scores", "write_summary_csv", "write_summary_html"]

#: The summary's columns, in order (the manifest's extra columns follow).
COLUMNS = (
    "id", "status", "error", "resumed",
    "mi_before_soft_bins", "mi_after_soft_bins", "mi_before_kde", "mi_after_kde", "mi_before_knn", "mi_after_knn",
    "nmi_before", "nmi_after", "overlap", "jacobian_min", "folded_fraction", "doubtful", "doubtful_reasons",
    "seconds", "device", "worker", "threads", "fixed", "moving",
)
_MI = {"soft_bins": "mi_{}_soft_bins", "kde": "mi_{}_kde", "knn": "mi_{}_knn", "nmi": "nmi_{}"}
#: Status order on the review page: the ones to look at first.
_STATUS_RANK = {"failed": 0, "doubtful": 1, "pending": 2, "ok": 3}


def _base(pair: Pair, status: str, run: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(id=pair.id, status=status, fixed=pair.fixed, moving=pair.moving, resumed=bool(run.get("resumed", False)))
    for key in ("error", "seconds", "worker", "threads", "device"):
        if run.get(key) is not None:
            row[key] = run[key]
    row.update(pair.extra)
    return row


def row_from_report(pair: Pair, report: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """A finished pair's summary row.

    Parameters
    ----------
    pair : Pair
        The manifest row.
    report : dict
        The pair's ``report.json`` as read back from disk.
    run : dict
        ``seconds``, ``worker``, ``threads``, ``resumed`` of the pair's run.

    Returns
    -------
    dict
        Keys :data:`COLUMNS` plus the manifest's extra columns; status ``"doubtful"`` when the
        report's ``quality`` entry says so, else ``"ok"``.
    """
    quality = report.get("quality") or {}
    doubtful = bool(quality.get("doubtful", False))
    row = _base(pair, "doubtful" if doubtful else "ok", run)
    validation = report.get("validation") or {}
    for when in ("before", "after"):
        measures = validation.get(when) or {}
        for key, column in _MI.items():
            row[column.format(when)] = measures.get(key)
    after = validation.get("after") or {}
    overlap = after.get("overlap_fraction")
    if overlap is None and report.get("history"):
        overlap = report["history"][-1].get("overlap")
    jacobian = validation.get("jacobian") or {}
    row.update(
        overlap=overlap, jacobian_min=jacobian.get("min"), folded_fraction=jacobian.get("folded_fraction"),
        doubtful=doubtful, doubtful_reasons="; ".join(str(r) for r in quality.get("reasons", []) or []) or None,
        device=report.get("device", row.get("device")),
    )
    if doubtful and not row.get("error"):
        row["error"] = "doubtful result: " + (row["doubtful_reasons"] or "see the report's quality entry")
    return row


def failed_row(pair: Pair, error: str, run: dict[str, Any]) -> dict[str, Any]:
    """The row of a pair that produced no result, with its error message."""
    return _base(pair, "failed", {**run, "error": error})


def pending_row(pair: Pair) -> dict[str, Any]:
    """The row of a pair not finished yet (what a summary written mid-run shows)."""
    return _base(pair, "pending", {})


def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _robust_z(values: Sequence[float | None]) -> list[float]:
    """|x - median| / (1.4826 MAD) per value (0 where missing; the MAD falls back to the
    standard deviation, then 1, when the cohort's values are mostly equal)."""
    present = sorted(v for v in values if v is not None)
    if not present:
        return [0.0] * len(values)
    median = _median(present)
    mad = 1.4826 * _median(sorted(abs(v - median) for v in present))
    if mad <= 0:
        mean = sum(present) / len(present)
        mad = math.sqrt(sum((v - mean) ** 2 for v in present) / len(present)) or 1.0
    return [0.0 if v is None else abs(v - median) / mad for v in values]


def _median(ordered: list[float]) -> float:
    n = len(ordered)
    return ordered[n // 2] if n % 2 else 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])


def outlier_scores(rows: Sequence[dict[str, Any]]) -> list[float]:
    """How unusual each pair looks against the cohort: the larger of the robust z-scores of
    its MI after registration (soft bins) and of its gain (after - before), over the pairs
    with a result; ``inf`` for failed pairs, 0 for pending ones."""
    done = [r.get("status") in ("ok", "doubtful") for r in rows]
    after = [_number(r.get("mi_after_soft_bins")) if d else None for r, d in zip(rows, done)]
    before = [_number(r.get("mi_before_soft_bins")) if d else None for r, d in zip(rows, done)]
    gain = [None if a is None or b is None else a - b for a, b in zip(after, before)]
    z_after, z_gain = _robust_z(after), _robust_z(gain)
    return [
        math.inf if r.get("status") == "failed" else max(za, zg)
        for r, za, zg in zip(rows, z_after, z_gain)
    ]


def review_order(rows: Sequence[dict[str, Any]]) -> list[int]:
    """Row indices as the review page lists them: failed, doubtful, then by decreasing outlier score."""
    scores = outlier_scores(rows)
    return sorted(range(len(rows)), key=lambda i: (_STATUS_RANK.get(rows[i].get("status"), 9), -scores[i], i))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # round-trips exactly
    return str(value)


def write_summary_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike, extra_columns: Sequence[str] = ()) -> Path:
    """Write the rows (manifest order) to ``path`` as CSV, atomically; floats written exactly."""
    columns = list(COLUMNS) + [c for c in extra_columns if c not in COLUMNS]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return atomic_write_text(path, buffer.getvalue())


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td,th{border-bottom:1px solid #ddd;padding:4px 8px;text-align:right;vertical-align:top}
td.l,th.l{text-align:left}tr.failed{background:#fde2e2}tr.doubtful{background:#fff4d6}tr.pending{color:#888}
img{width:260px;height:auto;border:1px solid #ccc}.err{max-width:28em;text-align:left;white-space:pre-wrap}
"""


def write_summary_html(rows: Sequence[dict[str, Any]], path: str | os.PathLike, title: str = "miregister cohort") -> Path:
    """Write the self-contained review page: pairs sorted by :func:`review_order`, each with its
    QC thumbnail (a relative link to ``<id>/qc.png``) and links to the files of its folder."""
    out = Path(path)
    scores = outlier_scores(rows)
    counts = {s: sum(1 for r in rows if r.get("status") == s) for s in ("ok", "doubtful", "failed", "pending")}
    parts = [
        "<!DOCTYPE html>", '<html><head><meta charset="utf-8">', f"<title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
        "<p>" + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + f" of {len(rows)} pairs. "
        "Listed failed first, then doubtful, then by outlier score: the larger robust z-score "
        "(|x - median| / 1.4826 MAD over the cohort) of the MI after registration (soft bins, nats) and of its "
        "gain. Click a picture to open it full size.</p>",
        "<table><tr><th>#</th><th class=l>id</th><th class=l>status</th><th>outlier score</th><th>MI before</th>"
        "<th>MI after</th><th>gain</th><th>NMI after</th><th>overlap</th><th>det J min</th><th>seconds</th>"
        "<th class=l>QC</th><th class=l>files</th></tr>",
    ]
    for rank, index in enumerate(review_order(rows), start=1):
        row = rows[index]
        ident = str(row["id"])
        folder = out.parent / ident
        link = quote(ident)
        before, after = _number(row.get("mi_before_soft_bins")), _number(row.get("mi_after_soft_bins"))
        gain = None if before is None or after is None else after - before
        score = scores[index]
        qc = folder / "qc.png"
        thumb = (f'<a href="{link}/qc.png"><img src="{link}/qc.png" loading="lazy" alt="QC of {html.escape(ident)}"></a>'
                 if qc.exists() else "")
        files = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")) if folder.is_dir() else []
        file_links = "<br>".join(f'<a href="{link}/{quote(name)}">{html.escape(name)}</a>' for name in files)
        error = row.get("error") or ""
        status = str(row.get("status"))
        parts.append(
            f'<tr class="{html.escape(status)}" id="pair-{html.escape(ident)}"><td>{rank}</td><td class=l>{html.escape(ident)}</td>'
            f"<td class=l>{html.escape(status)}" + (f'<div class=err>{html.escape(str(error))}</div>' if error else "") + "</td>"
            f"<td>{'' if math.isinf(score) else f'{score:.2f}'}</td><td>{_fmt(before)}</td><td>{_fmt(after)}</td><td>{_fmt(gain)}</td>"
            f"<td>{_fmt(_number(row.get('nmi_after')))}</td><td>{_fmt(_number(row.get('overlap')), 3)}</td>"
            f"<td>{_fmt(_number(row.get('jacobian_min')), 3)}</td><td>{_fmt(_number(row.get('seconds')), 1)}</td>"
            f"<td class=l>{thumb}</td><td class=l>{file_links}</td></tr>"
        )
    parts.append("</table></body></html>")
    return atomic_write_text(out, "\n".join(parts) + "\n")


def _fmt(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"
