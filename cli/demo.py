"""``orthonav demo``: the demo's figures as tables (segmentation, alignment, registration and navigation)."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table

from orthonav.phantoms.demo import DemoSummary


def summary_tables(summary: DemoSummary) -> list[Table]:
    """The demo's figures: segmentation vs truth, plan vs true alignment, registration and navigation."""
    t = Table(title="Segmentation vs truth")
    t.add_column("bone")
    t.add_column("Dice", justify="right")
    t.add_column("HD95 mm", justify="right")
    for b, d in summary.dice.items():
        t.add_row(b, f"{d:.4f}", f"{summary.hd95_mm.get(b, math.nan):.2f}")
    a = Table(title="Alignment (deg): plan vs truth")
    for c in ("angle", "plan", "truth", "error"):
        a.add_column(c, justify="right")
    for k, v in summary.angles_deg.items():
        tv = summary.true_angles_deg.get(k, math.nan)
        a.add_row(k, f"{v:.2f}", f"{tv:.2f}", f"{v - tv:+.2f}")
    r = Table(title="Registration and navigation")
    r.add_column("figure")
    r.add_column("value", justify="right")
    r.add_row("FRE (mm)", f"{summary.fre_mm:.3f}")
    for k, v in summary.tre_mm.items():
        r.add_row(f"TRE {k} (mm), predicted {summary.predicted_tre_mm.get(k, math.nan):.2f}", f"{v:.3f}")
    for k, v in summary.guidance_error.items():
        r.add_row(f"saw guidance error {k}", f"{v:.3f}")
    r.add_row("navigation loop rate (Hz)", f"{summary.loop_rate_hz:.0f}")
    r.add_row("latency receive->state p50 / p99 (ms)", f"{summary.latency_p50_ms:.3f} / {summary.latency_p99_ms:.3f}")
    for k, v in summary.timings_s.items():
        r.add_row(f"time: {k} (s)", f"{v:.1f}")
    return [t, a, r]


def print_summary(summary: DemoSummary, console: Console) -> None:
    """Print the demo's figures as tables, then the path of its report."""
    for table in summary_tables(summary):
        console.print(table)
    console.print(f"report: {summary.report}")


__all__ = ["summary_tables", "print_summary"]
