"""``report/index.html`` of the demo: the figures of every step and the screenshots."""

from __future__ import annotations

import math
from pathlib import Path

from orthonav.core.atomic import write_json
from orthonav.core.case import Case

from .demo_summary import DemoSummary
from .html_report import Section, write_report


def _finite(x: float) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def summary_json(summary: DemoSummary) -> dict:
    """The demo's figures as plain JSON (NaN -> null)."""
    return {
        "dice": summary.dice,
        "hd95_mm": {k: _finite(v) for k, v in summary.hd95_mm.items()},
        "angles_deg": summary.angles_deg,
        "true_angles_deg": summary.true_angles_deg,
        "fre_mm": _finite(summary.fre_mm),
        "tre_mm": summary.tre_mm,
        "predicted_tre_mm": summary.predicted_tre_mm,
        "guidance_error": {k: _finite(v) for k, v in summary.guidance_error.items()},
        "loop_rate_hz": _finite(summary.loop_rate_hz),
        "latency_p50_ms": _finite(summary.latency_p50_ms),
        "latency_p99_ms": _finite(summary.latency_p99_ms),
        "timings_s": summary.timings_s,
        "session_dir": str(summary.session_dir) if summary.session_dir else None,
    }


def write_demo_report(summary: DemoSummary) -> Path:
    """Write ``CASE/report/index.html`` and ``CASE/report/summary.json``; return the HTML path."""
    case = Case(summary.case_dir)
    report_dir = case.report_dir
    write_json(report_dir / "summary.json", summary_json(summary))
    seg = Section(
        "Segmentation (classical) vs phantom truth",
        tables=[("Per bone", ["bone", "Dice", "HD95 (mm)"], [[b, d, summary.hd95_mm.get(b, math.nan)] for b, d in summary.dice.items()])],
    )
    angles = Section(
        "Automatic plan: alignment",
        text="Angles measured on the segmented meshes, against the phantom's construction truth (docs/anatomy.md).",
        tables=[("Angles (deg)", ["angle", "plan", "truth", "error"],
                 [[k, v, summary.true_angles_deg.get(k, math.nan), v - summary.true_angles_deg.get(k, math.nan)]
                  for k, v in summary.angles_deg.items()])],
        figures=[(p, "planning scene") for p in summary.screenshots if p.name.startswith("plan")],
    )
    reg_rows = [[k, v, summary.predicted_tre_mm.get(k, math.nan)] for k, v in summary.tre_mm.items()]
    nav = Section(
        "Registration and live navigation (simulated tracker over OpenIGTLink, 127.0.0.1)",
        text=f"FRE {summary.fre_mm:.3f} mm. Predicted TRE from the fiducial configuration (Fitzpatrick 1998) beside the true TRE.",
        tables=[
            ("TRE at targets (mm)", ["target", "true TRE", "predicted RMS TRE"], reg_rows),
            ("Saw guidance vs scripted truth", ["figure", "value"], [[k, v] for k, v in summary.guidance_error.items()]),
            ("Loop", ["figure", "value"], [
                ["navigation loop rate (Hz)", summary.loop_rate_hz],
                ["latency receive -> state p50 (ms)", summary.latency_p50_ms],
                ["latency receive -> state p99 (ms)", summary.latency_p99_ms],
            ]),
            ("Step times (s)", ["step", "s"], [[k, v] for k, v in summary.timings_s.items()]),
        ],
        figures=[(p, "navigation overlay") for p in summary.screenshots if p.name.startswith("navigation")],
    )
    return write_report(report_dir / "index.html", "OrthoNav demo: knee phantom, CT to live overlay", [seg, angles, nav],
                        meta={"case": str(case.root)})


__all__ = ["summary_json", "write_demo_report"]
