"""The result of :func:`miregister.register`: transform, warped image, history, validation."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..image import Image
from ..transforms import SpatialTransform
from .options import RegistrationOptions, stage_to_dict

__all__ = ["RegistrationResult"]


@dataclass
class RegistrationResult:
    """What a registration found.

    Attributes
    ----------
    transform : SpatialTransform
        Maps fixed physical points (mm) to moving physical points (mm), batch size 1.
    warped : Image
        The moving image resampled through ``transform`` onto the fixed grid (linear).
    fixed, moving : Image
        The inputs (on the CPU, single channel).
    stages : list of str
        The stages run, e.g. ``["rigid", "affine"]``.
    options : RegistrationOptions
        Every option used, defaults included.
    history : list of dict
        One entry per stage and level: grid, samples, MI at the start and end (nats),
        objective after each evaluation, seconds.
    timings : dict
        Seconds per stage, warp, validation and total.
    validation : dict
        MI before/after by soft bins, KDE and KNN (nats), NMI, and Jacobian statistics for
        deformable stages (see :func:`miregister.registration.validation.validate`).
    device : str
        Where the optimisation ran.
    inputs : dict
        ``{"fixed", "moving", "fixed_mask", "moving_mask"}``: for inputs given as a file or
        folder, :func:`miregister.provenance.file_record` (absolute path, bytes, SHA-256), else
        None (in-memory images, no mask).
    command_line : list of str or None
        The command line that ran the registration (``sys.argv``; set by the ``miregister``
        command), None from the Python API.
    threads : int or None
        PyTorch's CPU threads (``torch.get_num_threads()``) during the registration.
    quality : dict
        ``{"doubtful": bool, "reasons": [str], "notes": [str], "signals": {...}}`` from
        :func:`miregister.registration.quality.assess`: whether the result is doubtful and why.
    """

    transform: SpatialTransform
    warped: Image
    fixed: Image
    moving: Image
    stages: list[str]
    options: RegistrationOptions
    history: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    inputs: dict[str, Any] = field(default_factory=dict)
    command_line: list[str] | None = None
    threads: int | None = None
    quality: dict[str, Any] = field(default_factory=dict)

    @property
    def matrix(self) -> np.ndarray | None:
        """The homogeneous fixed->moving matrix ``(D+1, D+1)`` (mm) for linear results, else None."""
        if not self.transform.is_linear:
            return None
        return self.transform.affine_matrix()[0].detach().cpu().double().numpy()

    def report(self) -> dict[str, Any]:
        """A JSON-ready summary: provenance, options, stages, history, timings, validation.

        Keys: ``transform`` (the chain), ``convention``, ``inputs`` (file records or None),
        ``command_line``, ``software`` (versions), ``device``, ``threads``, ``fixed``/``moving``
        (grids), ``options``/``stage_options`` (every option, defaults included: the file can be
        passed back as ``miregister register --config report.json`` to rerun the same
        registration), ``bins`` (per level, as the metric used them, and those of the reported
        MI), ``matrix``, ``history``, ``timings_seconds``, ``validation``.
        """
        from ..provenance import software_versions

        opts = self.options
        return {
            "transform": "+".join(self.stages),
            "convention": "transform maps fixed physical points (mm, LPS) to moving physical points",
            "fixed": _grid_dict(self.fixed),
            "moving": _grid_dict(self.moving),
            "inputs": self.inputs,
            "command_line": self.command_line,
            "software": software_versions(),
            "device": self.device,
            "threads": self.threads,
            "options": opts.to_dict(),
            "stage_options": {k: stage_to_dict(v) for k, v in opts.stages.items()},
            "bins": {
                "levels": [{"stage": h["stage"], "level": h["level"], "bins": h["bins"]} for h in self.history],
                "reported_mi": self.validation.get("bins"),
            },
            "matrix": None if self.matrix is None else self.matrix.tolist(),
            "history": self.history,
            "timings_seconds": self.timings,
            "validation": self.validation,
            "quality": self.quality,
        }

    def save_transform(self, path: str | os.PathLike) -> Path:
        """Write the transform in ITK format (``.tfm``/``.txt``/``.mat`` for linear, ``.h5``,
        or a displacement-field image ``.nii.gz``/``.nrrd``/``.mha`` on the fixed grid)."""
        from ..transforms.io import write_transform

        write_transform(self.transform, path, reference=self.fixed.grid)
        return Path(path)

    def save_report(self, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
        """Write :meth:`report`, updated with the keys of ``extra`` (e.g. ``outputs``, the
        file names a run wrote), as JSON (atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({**self.report(), **(extra or {})}, indent=2, default=_json_default))
        os.replace(tmp, path)
        return path

    def summary(self) -> str:
        """A few human-readable lines: what ran, how long, MI before/after."""
        lines = [f"{'+'.join(self.stages)} registration on {self.device} in {self.timings.get('total', float('nan')):.2f} s"]
        before, after = self.validation.get("before"), self.validation.get("after")
        if after is not None:
            lines.append(
                f"  MI in nats over {self.validation['region']} ({after['overlap_fraction']:.1%} of the region "
                f"after); soft bins and NMI with {self.validation['bins']} bins (same as `miregister mi`)"
            )
            for key, label in (("soft_bins", "MI soft bins"), ("kde", "MI KDE"), ("knn", "MI KNN"), ("nmi", "NMI")):
                b = "n/a" if before is None else f"{before[key]:.4f}"
                lines.append(f"  {label:<13s} before {b:>8s}  after {after[key]:.4f}")
        jac = self.validation.get("jacobian")
        if jac:
            lines.append(f"  Jacobian det min {jac.get('min', float('nan')):.3f}, folded fraction {jac.get('folded_fraction', float('nan')):.2e}")
        if self.quality:
            doubtful = self.quality.get("doubtful")
            lines.append("  quality: " + ("DOUBTFUL: " + "; ".join(self.quality.get("reasons", [])) if doubtful else "no warning"))
            lines.extend(f"  note: {n}" for n in self.quality.get("notes", []))
        return "\n".join(lines)


def _grid_dict(image: Image) -> dict[str, Any]:
    g = image.grid
    return {"size": list(g.size), "spacing": list(g.spacing), "origin": list(g.origin), "direction": list(g.direction)}


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    return str(value)
