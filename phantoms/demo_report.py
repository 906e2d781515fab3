"""``report/index.html`` of the demo: the figures of every step and the screenshots."""

from __future__ import annotations

import math
from pathlib import Path

from orthonav.core.atomic import write_json
from orthonav.core.case import Case
from orthonav.planning.report import ANGLE_NAMES, metric_label

from .demo_summary import DemoSummary
from .html_report import Section, write_report


def _finite(x: float) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


#: What the overlay's colours mean (the same legend under every navigation picture).
OVERLAY_LEGEND = ("Blue lines: the planned cuts on the bones. Readout numbers: green within 1 deg / 1 mm of the plan, "
                  "amber within twice that, red beyond. Bottom left: what the workflow waits for.")


def _signed(x: float) -> str:
    text = f"{x:+.1f}"
    return text[1:] if float(text) == 0.0 else text


def overlay_caption(state: dict | None, t0_s: float | None = None) -> str:
    """A caption for one navigation picture from the guidance line recorded when it was taken
    (``guidance.jsonl``; None: unknown): the phase, and the saw's figures when it was guided."""
    if state is None:
        return "Navigation overlay. " + OVERLAY_LEGEND
    when = f" ({state['host_time_s'] - t0_s:.0f} s into the session)" if t0_s is not None and "host_time_s" in state else ""
    if not state.get("tracking"):
        if state.get("reason") == "not registered":
            what = ("Digitising the fiducials: not registered yet, so the instruments are hidden; "
                    "bottom left names the next fiducial to touch")
        else:
            what = f"Tracking interrupted ({state.get('reason') or 'no data'}): the overlay says so instead of showing a stale pose"
    elif state.get("saw"):
        cut, g = min(state["saw"].items(), key=lambda kv: abs(kv[1].get("distance_mm") or math.inf))
        what = (f"Saw guided on the {cut.replace('_', ' ')} cut: blade {_signed(g['flexion_deg'])} deg flexion, "
                f"{_signed(g['varus_deg'])} deg varus, {_signed(g['distance_mm'])} mm from the planned plane")
    else:
        bone, d = state.get("pointer_bone"), state.get("pointer_to_bone_mm")
        near = f", tip {abs(d):.1f} mm {'inside' if d < 0 else 'outside'} the {bone} surface" if bone and d is not None else ""
        what = f"Registered: pointer tracked{near}"
    return f"{what}{when}. {OVERLAY_LEGEND}"


def _navigation_captions(summary: DemoSummary, pictures: list[Path]) -> list[str]:
    """Captions of the report's navigation pictures: each is matched (by content) to the
    session screenshot it copies, and described from the guidance recorded at that moment."""
    states: dict[int, dict] = {}
    seq_of: dict[str, int] = {}
    t0 = None
    if summary.session_dir is not None:
        from orthonav.core.errors import OrthoNavError
        from orthonav.navigation.session import read_guidance, read_session_info

        try:
            seq_of = read_session_info(summary.session_dir).screenshots
            wanted = set(seq_of.values())
            for row in read_guidance(summary.session_dir):
                t0 = row.get("host_time_s") if t0 is None else t0
                if row.get("seq") in wanted:
                    states[row["seq"]] = row
        except OrthoNavError:
            seq_of = {}
    shots = {p.read_bytes(): p.name for p in (Path(summary.session_dir or ".") / "screenshots").glob("*.png")} if seq_of else {}
    out = []
    for pic in pictures:
        name = shots.get(pic.read_bytes()) if pic.is_file() else None
        out.append(overlay_caption(states.get(seq_of.get(name, -1)) if name else None, t0))
    return out


def _angle_name(key: str) -> str:
    return ANGLE_NAMES.get(key, key).split(" (")[0]


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


def _guidance_rows(errors: dict[str, float]) -> list[list[object]]:
    """Rows (name with unit, value) of the saw guidance errors; the sample count as a count."""
    rows: list[list[object]] = []
    for k, v in errors.items():
        if k == "n":
            rows.append(["frames compared", f"{int(v)} samples" if math.isfinite(v) else "none"])
            continue
        name, unit = metric_label(k)
        rows.append([f"{name} ({unit})" if unit else name, v if math.isfinite(v) else "not measured"])
    return rows


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
                 [[_angle_name(k), v, summary.true_angles_deg.get(k, math.nan), v - summary.true_angles_deg.get(k, math.nan)]
                  for k, v in summary.angles_deg.items()])],
        figures=[(p, "The automatic plan on the segmented bones: the whole limb from the front and the side, then close-ups "
                     "of the knee. The legend (bottom left) names each colour; the planned angles (deg) are under the "
                     "first close-up.") for p in summary.screenshots if p.name.startswith("plan")],
    )
    reg_rows = [[k.removeprefix("target_").replace("_", " "), v, summary.predicted_tre_mm.get(k, math.nan)] for k, v in summary.tre_mm.items()]
    nav_pics = [p for p in summary.screenshots if p.name.startswith("navigation")]
    nav = Section(
        "Registration and live navigation (simulated tracker over OpenIGTLink, 127.0.0.1)",
        text=f"FRE {summary.fre_mm:.3f} mm. Predicted TRE from the fiducial configuration (Fitzpatrick 1998) beside the true TRE.",
        tables=[
            ("TRE at targets (mm)", ["target", "true TRE", "predicted RMS TRE"], reg_rows),
            ("Saw guidance vs scripted truth", ["figure", "value"], _guidance_rows(summary.guidance_error)),
            ("Loop", ["figure", "value"], [
                ["navigation loop rate (Hz)", summary.loop_rate_hz],
                ["latency receive -> state p50 (ms)", summary.latency_p50_ms],
                ["latency receive -> state p99 (ms)", summary.latency_p99_ms],
            ]),
            ("Step times (s)", ["step", "s"], [[k, v] for k, v in summary.timings_s.items()]),
        ],
        figures=list(zip(nav_pics, _navigation_captions(summary, nav_pics))),
    )
    return write_report(report_dir / "index.html", "OrthoNav demo: knee phantom, CT to live overlay", [seg, angles, nav],
                        meta={"case": str(case.root)})


__all__ = ["summary_json", "write_demo_report"]
