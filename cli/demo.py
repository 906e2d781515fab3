"""``orthonav demo``: the demo's figures as tables (segmentation, alignment, registration and navigation)."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table

from orthonav.phantoms.demo import DemoSummary
from orthonav.planning.report import ANGLE_NAMES, metric_label


def _num(x: float, fmt: str, missing: str = "not measured") -> str:
    """``x`` formatted, or what is missing (never 'nan'); no '-0.00'."""
    if not math.isfinite(x):
        return missing
    text = format(x, fmt)
    return text.lstrip("-+") if float(text) == 0.0 else text


def summary_tables(summary: DemoSummary) -> list[Table]:
    """The demo's figures: segmentation vs truth, plan vs true alignment, registration and navigation."""
    t = Table(title="Segmentation vs truth")
    t.add_column("bone")
    t.add_column("Dice", justify="right")
    t.add_column("HD95 mm", justify="right")
    for b, d in summary.dice.items():
        t.add_row(b, _num(d, ".4f"), _num(summary.hd95_mm.get(b, math.nan), ".2f"))
    a = Table(title="Alignment (deg): plan vs phantom truth")
    a.add_column("angle")
    for c in ("plan", "truth", "error"):
        a.add_column(c, justify="right")
    for k, v in summary.angles_deg.items():
        tv = summary.true_angles_deg.get(k, math.nan)
        a.add_row(ANGLE_NAMES.get(k, k).split(" (")[0], _num(v, ".1f"), _num(tv, ".1f", "unknown"), _num(v - tv, "+.1f", "-"))
    r = Table(title="Registration and navigation")
    r.add_column("figure")
    r.add_column("value", justify="right")
    r.add_row("FRE, fiducial registration error (RMS)", f"{_num(summary.fre_mm, '.2f')} mm" if math.isfinite(summary.fre_mm) else "not registered")
    for k, v in summary.tre_mm.items():
        name = k.removeprefix("target_").replace("_", " ")
        pred = summary.predicted_tre_mm.get(k, math.nan)
        r.add_row(f"TRE at {name} (predicted {_num(pred, '.2f', 'not predicted')} mm)", f"{_num(v, '.2f')} mm")
    for k, v in summary.guidance_error.items():
        if k == "n":
            r.add_row("saw guidance: frames compared with the truth", f"{int(v)} samples" if math.isfinite(v) else "none")
            continue
        name, unit = metric_label(k)
        r.add_row(f"saw guidance error: {name[:1].lower() + name[1:]}", f"{_num(v, '.2f')} {unit}" if math.isfinite(v) else "not measured")
    r.add_row("navigation loop rate", f"{_num(summary.loop_rate_hz, '.0f')} Hz" if math.isfinite(summary.loop_rate_hz) else "not measured")
    r.add_row("latency receive -> state, p50 / p99", f"{_num(summary.latency_p50_ms, '.2f')} / {_num(summary.latency_p99_ms, '.2f')} ms"
              if math.isfinite(summary.latency_p99_ms) else "not measured")
    for k, v in summary.timings_s.items():
        r.add_row(f"time: {k}", f"{v:.1f} s")
    return [t, a, r]


def print_summary(summary: DemoSummary, console: Console) -> None:
    """Print the demo's figures as tables, then the path of its report."""
    for table in summary_tables(summary):
        console.print(table)
    console.print(f"report: {summary.report}")


__all__ = ["summary_tables", "print_summary"]
