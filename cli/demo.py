"""``orthonav demo``: the demo's figures as tables (segmentation, alignment, registration and navigation)."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table

from orthonav.phantoms.demo import DemoSummary
from orthonav.phantoms.demo_report import ROM_NOTE
from orthonav.phantoms.demo_summary import KneeDemo
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
    return [t, a, r] + (knee_tables(summary.knee) if summary.knee is not None else [])


def _opt(x: float | None, fmt: str) -> str:
    return "-" if x is None else _num(x, fmt)


def knee_tables(knee: KneeDemo) -> list[Table]:
    """The two-array part: per-bone registration, kinematic hip centre, alignment and gap errors,
    and the range-of-motion tables before and after the cuts."""
    k = Table(title="One array per bone (two-array knee workflow, simulated): registration and hip centre")
    k.add_column("figure")
    k.add_column("value", justify="right")
    for bone, row in knee.tre_mm.items():
        worst = max(row.values()) if row else math.nan
        k.add_row(f"{bone} ({knee.references.get(bone, '')}): FRE / largest TRE at {len(row)} targets",
                  f"{_num(knee.fre_mm.get(bone, math.nan), '.2f')} / {_num(worst, '.2f')} mm")
    fit = knee.hip_centre_fit
    k.add_row("kinematic hip centre vs truth (sphere fit RMS)",
              f"{_num(knee.hip_centre_error_mm, '.2f')} mm ({_num(fit.get('rms_mm', math.nan), '.2f')} mm)")
    k.add_row("CT hip centre (plan) vs truth; kinematic vs CT",
              f"{_num(knee.ct_hip_centre_error_mm, '.2f')}; {_num(knee.hip_centre_kinematic_vs_ct_mm, '.2f')} mm")
    e = Table(title="Live alignment and gaps vs truth in the holds up to 90 deg (tracking only: vs the plan's definitions at the true pose)")
    e.add_column("figure")
    for c in ("hold mean max", "per frame max", "tracking only: hold mean max", "with the 120 deg hold: per frame max"):
        e.add_column(c, justify="right")
    for key, name, unit in (("flexion_deg", "flexion", "deg"), ("varus_deg", "varus/valgus", "deg"),
                            ("medial_gap_mm", "medial gap", "mm"), ("lateral_gap_mm", "lateral gap", "mm")):
        t, p, a = knee.error_vs_truth, knee.error_tracking, knee.error_vs_truth_all
        e.add_row(f"{name} ({unit})", _num(t.get(f"{key}_hold_mean_max", math.nan), ".2f"), _num(t.get(f"{key}_max", math.nan), ".2f"),
                  _num(p.get(f"{key}_hold_mean_max", math.nan), ".2f"), _num(a.get(f"{key}_max", math.nan), ".2f"))
    b = Table(title="Range of motion BEFORE the cuts (native knee; gaps to the planned resection): navigation / truth")
    for c in ("flexion deg", "varus/valgus deg", "medial gap mm", "lateral gap mm"):
        b.add_column(c, justify="right")
    for r in knee.rom_before:
        b.add_row(f"{r['flexion_deg']:.0f} (measured {_opt(r['flexion_mean_deg'], '.1f')})",
                  f"{_opt(r['varus_valgus_deg'], '+.1f')} / {_opt(r['true_varus_valgus_deg'], '+.1f')}",
                  f"{_opt(r['medial_gap_mm'], '.1f')} / {_opt(r['true_medial_gap_mm'], '.1f')}",
                  f"{_opt(r['lateral_gap_mm'], '.1f')} / {_opt(r['true_lateral_gap_mm'], '.1f')}")
    f = Table(title="AFTER the cuts: gaps to the planned implants at the same knee poses: navigation / truth")
    for c in ("flexion deg", "medial gap mm", "lateral gap mm"):
        f.add_column(c, justify="right")
    for r in knee.rom_after:
        f.add_row(f"{r['flexion_deg']:.0f}", f"{_opt(r['medial_gap_mm'], '.1f')} / {_opt(r['true_medial_gap_mm'], '.1f')}",
                  f"{_opt(r['lateral_gap_mm'], '.1f')} / {_opt(r['true_lateral_gap_mm'], '.1f')}")
    return [k, e, b, f]


def print_summary(summary: DemoSummary, console: Console) -> None:
    """Print the demo's figures as tables, then the path of its report."""
    for table in summary_tables(summary):
        console.print(table)
    if summary.knee is not None:
        console.print(ROM_NOTE, markup=False)
    console.print(f"report: {summary.report}")


__all__ = ["knee_tables", "summary_tables", "print_summary"]
