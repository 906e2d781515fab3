"""``orthonav validate``: run the accuracy protocol and summarise it as plain text."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from orthonav.phantoms.validation import ValidationResult, validate_and_report
from orthonav.phantoms.validation_result import Check


def _mm(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f} mm".replace(f"-{0:.{digits}f}", f"{0:.{digits}f}") if math.isfinite(x) else "not measured"


def _check_value(c: Check) -> str:
    """A check's figure with its unit (a count as a whole number, a ratio as a percentage)."""
    if c.name == "targets touched":
        return f"{int(c.value)} targets" if math.isfinite(c.value) else "not counted"
    if not math.isfinite(c.value):
        return "not measured"
    if c.name == "TRE vs Fitzpatrick prediction":
        return f"{100.0 * c.value:.0f} % off the prediction"
    return _mm(c.value)


def _check_limit(c: Check) -> str:
    if c.name == "targets touched":
        return f">= {int(c.limit)} targets"
    if c.name == "TRE vs Fitzpatrick prediction":
        return f"<= {100.0 * c.limit:.0f} %"
    return f"<= {c.limit:g} mm"


def summary_text(result: ValidationResult, report: Path | None = None) -> str:
    """A short plain-text summary: key figures (mm) and one PASS/FAIL line per check.

    Every figure has its unit; a figure that could not be measured says so (never ``nan``)."""
    lines = [f"Accuracy protocol ({result.mode}): {result.source}"]
    fre = result.fre_mm
    if result.mode == "simulation":
        lines.append(f"  {result.trials} trials, FLE {result.parameters['fle_mm']:g} mm, tracker noise "
                     f"{result.parameters['tracker_noise_mm']:g} mm/axis -> effective FLE {_mm(result.fle_mm, 3)} "
                     f"(observed {_mm(result.fle_observed_mm, 3)})")
        lines.append(f"  FRE RMS {_mm(math.sqrt(np.mean(fre**2)), 3)} (predicted {_mm(result.predicted_fre_mm, 3)}), "
                     f"p95 {_mm(float(np.percentile(fre, 95)), 3)}")
    else:
        lines.append(f"  FRE {_mm(float(fre[0]), 3)} over {len(result.fiducial_names)} fiducials; FLE estimate {_mm(result.fle_mm, 3)}")
    for row in result.target_table():
        name = str(row["target"]).removeprefix("target_").replace("_", " ")
        if not math.isfinite(row["measured_rms_mm"]):
            lines.append(f"  TRE at {name}: not measured (target not touched), predicted RMS {_mm(row['predicted_rms_mm'], 3)}")
            continue
        lines.append(f"  TRE at {name}: measured RMS {_mm(row['measured_rms_mm'], 3)}, predicted RMS {_mm(row['predicted_rms_mm'], 3)}"
                     + (f", p95 {_mm(row['p95_mm'], 3)}" if row["n"] > 1 else ""))
    if result.pivot is not None and math.isfinite(result.pivot.rms_mm):
        lines.append(f"  pivot calibration RMS {_mm(result.pivot.rms_mm, 3)} ({result.pivot.source})")
    else:
        lines.append("  pivot calibration RMS: not measured (no pivot recording)")
    for c in result.checks:
        lines.append(f"  {c.verdict:4s} {c.name}: {_check_value(c)} (limit {_check_limit(c)}) {c.detail}".rstrip())
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
