"""Writing a registration run's output folder: transform, warped image, report, QC picture.

One writer for the command line and the cohort runner. Files are written to a staging folder
first and then moved into place, so a failure leaves no half-written output.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .registration.result import RegistrationResult

__all__ = ["write_run"]


def write_run(
    result: RegistrationResult,
    out: str | os.PathLike,
    *,
    transform_format: str | None = None,
    qc: bool = True,
    jacobian: bool = False,
) -> list[Path]:
    """Write ``result`` into the folder ``out`` and return the paths written.

    Parameters
    ----------
    result : RegistrationResult
        What :func:`miregister.register` returned.
    out : path
        The output folder (created).
    transform_format : {"tfm", "mat", "h5"}, optional
        Linear chains: ``tfm`` (default) or ``mat``; deformable chains: ``h5`` (default), with
        the displacement field (mm, fixed grid) also written as ``displacement.nii.gz``.
    qc : bool
        Draw ``qc.png`` (checkerboards and joint histograms before/after).
    jacobian : bool
        Also write ``jacobian.nii.gz``: the Jacobian determinant of the transform on the fixed grid.

    Notes
    -----
    The inverse (moving -> fixed) is always written: ``inverse.tfm``/``inverse.mat`` for
    linear chains, ``inverse.h5`` and ``inverse_displacement.nii.gz`` (moving grid) for
    deformable ones (:func:`miregister.transforms.io.write_inverse`).
    """
    from .io import write_image
    from .registration.qc import save_qc_figure
    from .transforms.displacement import jacobian_determinant_image
    from .transforms.io import write_inverse

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".miregister-", dir=out.parent))
    try:
        written = []
        linear = result.transform.is_linear
        fmt = transform_format or ("tfm" if linear else "h5")
        written.append(result.save_transform(staging / f"transform.{fmt}"))
        if not linear:
            written.append(result.save_transform(staging / "displacement.nii.gz"))
        written += write_inverse(result.transform, staging, result.fixed.grid, result.moving.grid, linear_format=fmt if linear else "tfm")
        if jacobian:
            written.append(write_image(jacobian_determinant_image(result.transform, result.fixed.grid), staging / "jacobian.nii.gz"))
        written.append(write_image(result.warped, staging / "warped.nii.gz"))
        written.append(result.save_report(staging / "report.json"))
        if qc:
            written.append(save_qc_figure(result, staging / "qc.png"))
        out.mkdir(parents=True, exist_ok=True)
        final = []
        for path in written:
            target = out / Path(path).name
            os.replace(path, target)
            final.append(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final
