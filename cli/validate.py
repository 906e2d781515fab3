"""``orthonav validate``: run the accuracy protocol and summarise it as plain text."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from orthonav.phantoms.validation import ValidationResult, validate_and_report


def summary_text(result: ValidationResult, report: Path | None = None) -> str:
    """A short plain-text summary: key figures (mm) and one PASS/FAIL line per check."""
    lines = [f"Accuracy protocol ({result.mode}): {result.source}"]
    fre = result.fre_mm
    if result.mode == "simulation":
        lines.append(f"  {result.trials} trials, FLE {result.parameters['fle_mm']:g} mm, tracker noise "
                     f"{result.parameters['tracker_noise_mm']:g} mm/axis -> effective FLE {result.fle_mm:.3f} mm "
                     f"(observed {result.fle_observed_mm:.3f})")
        lines.append(f"  FRE RMS {math.sqrt(np.mean(fre**2)):.3f} mm (predicted {result.predicted_fre_mm:.3f}), p95 {np.percentile(fre, 95):.3f} mm")
    else:
        lines.append(f"  FRE {fre[0]:.3f} mm over {len(result.fiducial_names)} fiducials; FLE estimate {result.fle_mm:.3f} mm")
    for row in result.target_table():
        lines.append(f"  TRE {row['target']}: measured RMS {row['measured_rms_mm']:.3f} mm, predicted {row['predicted_rms_mm']:.3f} mm"
                     + (f", p95 {row['p95_mm']:.3f}" if row["n"] > 1 else ""))
    if result.pivot is not None:
        lines.append(f"  pivot calibration RMS {result.pivot.rms_mm:.3f} mm ({result.pivot.source})")
    for c in result.checks:
        lim = f"<= {c.limit:g}" if c.name != "targets touched" else f">= {c.limit:g}"
        lines.append(f"  {c.verdict:4s} {c.name}: {c.value:.3f} (limit {lim}) {c.detail}".rstrip())
    lines.append(f"OVERALL: {'PASS' if result.passed else 'FAIL'}")
    if report is not None:
        lines.append(f"report: {report}")
    return "\n".join(lines)


def validate_cli(
    *,
    session: str | Path | None = None,
    simulate: str | Path | None = None,
    fle_mm: float = 0.25,
    trials: int = 1000,
    tracker_noise_mm: float = 0.0,
    seed: int = 0,
    config: str | Path | None = None,
) -> str:
    """Validate, write ``CASE/validation/`` and return the summary text (:func:`summary_text`).

    Exactly one of ``session`` (a recorded session folder) and ``simulate`` (a phantom case);
    see :func:`orthonav.phantoms.validation.validate_and_report`. The ``orthonav validate``
    command calls that function itself, as it also needs the verdict for its exit code.
    """
    result, report = validate_and_report(session=session, simulate=simulate, fle_mm=fle_mm, trials=trials,
                                         tracker_noise_mm=tracker_noise_mm, seed=seed, config=config)
    return summary_text(result, report)


__all__ = ["summary_text", "validate_cli"]
