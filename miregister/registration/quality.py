"""Is a registration result doubtful? Cheap signals a user cannot compute by eye.

A registration can end in a wrong optimum with every "MI improved" flag true (a header rotated
by 90 degrees ends ~70 mm off yet raises MI). :func:`assess` combines signals that cost little
beside the registration itself:

- the final overlap: the fraction of the fixed sampled region that maps inside the moving image;
- a short rotation search: the final linear mapping's MI at the coarsest level against its 29
  re-orientations (the 23 axis-aligned ones and +-45 degrees about each axis;
  :func:`miregister.registration.searches.final_flip_check`); a higher
  MI elsewhere means the result is not the best optimum in reach;
- the independent estimators of the validation (KDE, KNN) disagreeing with the optimised soft
  bins about whether the alignment improved;
- folds of a deformable stage (det J <= 0).

The result is the report's ``"quality"`` entry: ``{"doubtful": bool, "reasons": [str],
"notes": [str], "signals": {...}}``; ``notes`` say what the automatic searches did (e.g.
"rotation search run automatically because ..."). Under ``strict=True``,
:func:`miregister.register` raises :class:`DoubtfulRegistrationError` for a doubtful result
and the command line (``--strict``) exits with code 3.
"""
from __future__ import annotations

from typing import Any

from ..errors import RegistrationError

__all__ = ["assess", "DoubtfulRegistrationError", "MIN_FINAL_OVERLAP", "EXIT_DOUBTFUL"]

#: Below this fraction of the fixed sampled region inside the moving image, a result is doubtful:
#: a partial field of view (a 20-slice slab covers ~25 % of a brain) stays well above it.
MIN_FINAL_OVERLAP = 0.10
#: A re-orientation must beat the result's MI by this relative margin to count (sampling noise).
FLIP_MARGIN = 0.02
#: An MI estimate "fell" when it dropped by more than this (nats) or this fraction, whichever is larger.
MI_TOLERANCE = 0.01
MI_TOLERANCE_RELATIVE = 0.02
#: Command-line exit code of a doubtful result under ``--strict``.
EXIT_DOUBTFUL = 3


class DoubtfulRegistrationError(RegistrationError):
    """Raised by ``register(..., strict=True)`` when the quality check finds the result doubtful.

    Attributes
    ----------
    result : RegistrationResult
        The finished registration, with its ``quality`` entry, so a caller can still save it.
    """

    def __init__(self, result: Any) -> None:
        self.result = result
        reasons = "; ".join(result.quality.get("reasons", [])) or "see the report's quality entry"
        super().__init__(f"the registration result is doubtful: {reasons}")


def assess(
    history: list[dict[str, Any]],
    validation: dict[str, Any],
    searches: list[dict[str, Any]],
    flip_check: dict[str, Any] | None,
) -> dict[str, Any]:
    """Combine the cheap signals into the report's ``quality`` entry.

    Parameters
    ----------
    history : list of dict
        The registration's per-level history (its last entry's ``overlap`` is the final overlap).
    validation : dict
        :func:`~miregister.registration.validation.validate`'s output (may be empty).
    searches : list of dict
        What the automatic start searches did (each may carry a ``note``).
    flip_check : dict or None
        ``{"mi", "best_other", "best_other_rotation_deg"}`` of the final mapping at the coarsest level.

    Returns
    -------
    dict
        ``{"doubtful": bool, "reasons": [str], "notes": [str], "signals": {...}}``.
    """
    reasons: list[str] = []
    signals: dict[str, Any] = {}
    if history:
        overlap = float(history[-1]["overlap"])
        signals["final_overlap"] = overlap
        if overlap < MIN_FINAL_OVERLAP:
            reasons.append(f"only {100 * overlap:.1f}% of the fixed sampled region maps inside the moving image")
    if flip_check is not None and flip_check.get("best_other") is not None:
        signals["rotation_check"] = flip_check
        mi, other = flip_check["mi"], flip_check["best_other"]
        if other > mi + FLIP_MARGIN * abs(mi):
            reasons.append(
                f"the result re-oriented by {flip_check['best_other_rotation_deg']:.0f} deg scores a higher MI "
                f"({other:.4f} > {mi:.4f} at the coarsest level): a better optimum exists; try --rotation-search "
                "or an initial transform"
            )
    before, after = validation.get("before"), validation.get("after")
    if before is not None and after is not None:
        # "fell": lower by more than the estimators' noise, so that already aligned inputs (no
        # change to measure) do not count as a disagreement
        fell = {k: bool(after[k] < before[k] - max(MI_TOLERANCE, MI_TOLERANCE_RELATIVE * abs(before[k])))
                for k in ("soft_bins", "kde", "knn")}
        signals["fell"] = fell
        if fell["soft_bins"]:
            reasons.append(f"soft-bins MI fell ({before['soft_bins']:.4f} -> {after['soft_bins']:.4f})")
        elif fell["kde"] or fell["knn"]:
            names = [k.upper() for k in ("kde", "knn") if fell[k]]
            reasons.append(f"{' and '.join(names)} MI fell while the optimised soft-bins MI did not: the estimators disagree")
    jacobian = validation.get("jacobian")
    if jacobian:
        folded = float(jacobian.get("folded_fraction", 0.0))
        signals["folded_fraction"] = folded
        if folded > 0:
            reasons.append(f"the deformation folds {100 * folded:.3f}% of the fixed region (det J <= 0)")
    notes = [s["note"] for s in searches if s.get("note")]
    signals["searches"] = searches
    return {"doubtful": bool(reasons), "reasons": reasons, "notes": notes, "signals": signals}
