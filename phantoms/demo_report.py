"""``report/index.html`` of the demo: the figures of every step and the screenshots."""

from __future__ import annotations

import math
from pathlib import Path

from orthonav.core.atomic import write_json
from orthonav.core.case import Case
from orthonav.planning.report import ANGLE_NAMES, metric_label

from .demo_summary import DemoSummary, KneeDemo
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
        "two_array": None if summary.knee is None else knee_json(summary.knee),
    }


def _clean(x: object) -> object:
    """Plain JSON: NaN -> null, nested."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, float):
        return _finite(x)
    return x


def knee_json(knee: KneeDemo) -> dict:
    """The two-array part's figures as plain JSON (the per-state series left out)."""
    return _clean({
        "injected": knee.injected, "duration_s": knee.duration_s, "references": knee.references,
        "fre_mm": knee.fre_mm, "tre_mm": knee.tre_mm, "predicted_tre_mm": knee.predicted_tre_mm,
        "hip_centre_error_mm": knee.hip_centre_error_mm, "hip_centre_fit": knee.hip_centre_fit,
        "hip_centre_ct_mm": knee.hip_centre_ct_mm, "ct_hip_centre_error_mm": knee.ct_hip_centre_error_mm, "hip_centre_kinematic_vs_ct_mm": knee.hip_centre_kinematic_vs_ct_mm,
        "error_vs_truth": knee.error_vs_truth, "error_tracking": knee.error_tracking, "error_vs_truth_all": knee.error_vs_truth_all,
        "guidance_error": knee.guidance_error, "rom_before_cuts": knee.rom_before, "rom_after_cuts": knee.rom_after,
        "figures": [str(p) for p in knee.figures],
    })  # type: ignore[return-value]


#: What "before" and "after" the cuts mean in the range-of-motion tables (also in the printed summary).
ROM_NOTE = ("Before the cuts: the range of motion of the native (uncut) knee, which the script runs before any saw cut; the gaps "
            "are the resection gaps navigation shows then (the planned femoral cut faces to the planned tibial cut: what the "
            "planned cuts will leave at that knee pose). After the cuts: the same knee poses against the planned implants (the "
            "femoral component's condyles to the planned tibial cut: the space the tibial component and insert fill); the "
            "simulator does not re-shape the knee after the cuts, so the alignment is not measured again.")


def _opt(x: object) -> object:
    return "-" if x is None else x


def knee_section(knee: KneeDemo) -> Section:
    """The report's two-array section: figures, per-bone registration, hip centre, errors, ROM tables."""
    inj = knee.injected
    reg_rows = []
    for bone, row in knee.tre_mm.items():
        ref = knee.references.get(bone, "")
        for k, v in row.items():
            reg_rows.append([f"{bone} ({ref})", k.removeprefix("target_").replace("_", " "), knee.fre_mm.get(bone, math.nan), v,
                             knee.predicted_tre_mm.get(bone, {}).get(k, math.nan)])
    fit = knee.hip_centre_fit
    hip_rows = [["kinematic hip centre vs truth (mm)", knee.hip_centre_error_mm],
                ["sphere fit RMS (mm)", fit.get("rms_mm", math.nan)],
                ["hip circle range (deg)", fit.get("range_deg", math.nan)],
                ["poses used", fit.get("n_used", math.nan)],
                ["fit passes its quality gate", bool(fit.get("ok", 0.0))],
                ["CT hip centre (plan, segmented) vs truth (mm)", knee.ct_hip_centre_error_mm],
                ["kinematic vs CT hip centre (mm)", knee.hip_centre_kinematic_vs_ct_mm]]
    err_rows = []
    for key, name in (("flexion_deg", "flexion (deg)"), ("varus_deg", "varus/valgus (deg)"),
                      ("medial_gap_mm", "medial gap (mm)"), ("lateral_gap_mm", "lateral gap (mm)")):
        t, p, a = knee.error_vs_truth, knee.error_tracking, knee.error_vs_truth_all
        err_rows.append([name, t.get(f"{key}_hold_mean_max", math.nan), t.get(f"{key}_max", math.nan), t.get(f"{key}_rms", math.nan),
                         p.get(f"{key}_hold_mean_max", math.nan), p.get(f"{key}_max", math.nan),
                         a.get(f"{key}_hold_mean_max", math.nan), a.get(f"{key}_max", math.nan)])
    before = [[r["flexion_deg"], r["n"], _opt(r["flexion_mean_deg"]), _opt(r["varus_valgus_deg"]), _opt(r["true_varus_valgus_deg"]),
               _opt(r["medial_gap_mm"]), _opt(r["true_medial_gap_mm"]), _opt(r["lateral_gap_mm"]), _opt(r["true_lateral_gap_mm"])]
              for r in knee.rom_before]
    after = [[r["flexion_deg"], r["n"], _opt(r["medial_gap_mm"]), _opt(r["true_medial_gap_mm"]), _opt(r["lateral_gap_mm"]),
              _opt(r["true_lateral_gap_mm"])] for r in knee.rom_after]
    guide = [[cut.replace("_", " "), g.get("n", math.nan), g.get("flexion_deg_max", math.nan), g.get("varus_deg_max", math.nan),
              g.get("distance_mm_max", math.nan)] for cut, g in knee.guidance_error.items()]
    captions = {
        "knee_alignment.png": "Live alignment with one array per bone over the range of motion (0-120 deg, holds shaded green) and "
                              "the varus/valgus stress tests at 90 and 0 deg (orange): navigation (thin) against the truth (grey). "
                              "Bottom: navigation minus truth, and (dotted) minus the plan's own landmarks at the true knee pose: "
                              "the tracking and registration part, within the 0.5 deg acceptance band (dashed). The rest of the "
                              "varus/valgus error, changing with flexion, comes from the plan's landmarks on the segmented bones.",
        "knee_gaps.png": "Medial (blue) and lateral (red) gaps between the planned femoral cut faces and the planned tibial cut "
                         "against knee flexion: navigation (dots) against the truth (brute force on the true femur, wide line); "
                         "varus (up) and valgus (down) stress holds: navigation filled, truth hollow. Bottom: navigation minus "
                         "truth with the 0.5 mm band. Past about 95 deg the nearest femoral point is where the posterior cut "
                         "leaves the segmented surface, so the segmentation's error shows.",
    }
    return Section(
        "One reference array per bone: the two-array knee workflow (simulated, frame by frame)",
        text=(f"Femur and tibia each carry an array ({', '.join(f'{b}: {r}' for b, r in knee.references.items())}); each bone is "
              f"registered to its own array; the leg is circled about the hip (kinematic hip centre), moved through 0-120 deg with "
              f"holds, stressed into varus and valgus at 90 and 0 deg, and both bones are cut while the other one moves "
              f"({knee.duration_s:.0f} s of script at {inj.get('rate_hz', math.nan):g} Hz; FLE {inj.get('fle_mm', math.nan)} mm, "
              f"tracker noise {inj.get('tracker_noise_mm', math.nan)} mm and {inj.get('rotation_noise_deg', math.nan)} deg per "
              f"sample). Errors over the holds up to 90 deg of flexion, against the truth and against navigation's own "
              f"definitions at the true pose (tracking and registration only); the last two columns include the 120 deg hold. "
              + ROM_NOTE),
        tables=[
            ("Per-bone registration (mm)", ["bone (array)", "target", "FRE", "true TRE", "predicted RMS TRE"], reg_rows),
            ("Kinematic hip centre (hip circle, the pelvis still)", ["figure", "value"], hip_rows),
            ("Live alignment and gap errors in the holds",
             ["figure", "hold mean, max", "per frame, max", "per frame, RMS", "tracking only: hold mean, max",
              "tracking only: per frame, max", "with 120 deg: hold mean, max", "with 120 deg: per frame, max"], err_rows),
            ("Range of motion before the cuts (native knee; gaps to the planned resection)",
             ["flexion (deg)", "frames", "measured flexion (deg)", "varus/valgus (deg)", "true varus/valgus (deg)", "medial gap (mm)",
              "true medial gap (mm)", "lateral gap (mm)", "true lateral gap (mm)"], before),
            ("After the cuts: gaps to the planned implants at the same knee poses",
             ["flexion (deg)", "frames", "medial gap (mm)", "true medial gap (mm)", "lateral gap (mm)", "true lateral gap (mm)"], after),
            ("Saw guidance while the other bone moves (max error vs truth)",
             ["cut", "frames", "flexion (deg)", "varus (deg)", "distance (mm)"], guide),
        ],
        figures=[(p, captions.get(p.name, p.name)) for p in knee.figures],
    )


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
    sections = [seg, angles, nav] + ([knee_section(summary.knee)] if summary.knee is not None else [])
    return write_report(report_dir / "index.html", "OrthoNav demo: knee phantom, CT to live overlay", sections,
                        meta={"case": str(case.root)})


__all__ = ["ROM_NOTE", "knee_json", "knee_section", "summary_json", "write_demo_report"]
