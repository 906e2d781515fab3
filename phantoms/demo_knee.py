"""The demo's two-array part (issue 16): one reference array per bone on the demo's knee case.

:func:`run_knee_demo` runs the scripted two-array OR
(:func:`~orthonav.phantoms.scenario_two_array.knee_two_array_scenario`: femur then tibia
digitised, hip circle, range of motion 0-120 deg with holds, varus/valgus stress in extension
and at 90 deg, the femoral and the tibial cuts while the other bone moves) through navigation's
own workflow frame by frame (:func:`~orthonav.phantoms.scenario_two_array.navigate_two_array_offline`,
no threads or sockets: a few seconds), and compares every navigation state with the scripted
truth at the femoral array's device time.

Two comparisons per state (:class:`KneeSeries`):

* against the TRUTH: the true alignment (the phantom's true landmarks at the true knee pose)
  and the true gaps (brute force on the TRUE femur mesh, :mod:`orthonav.phantoms.gap_truth`).
  This error includes what planning put into the definitions (the plan's landmarks and cut
  faces come from the SEGMENTED meshes);
* against navigation's own definitions at the TRUE knee pose (the plan's landmarks, the gap
  geometry of the segmented femur): the tracking and registration part alone.

"Before" and "after" the cuts in the range-of-motion tables (:func:`rom_tables`):

* before: the range of motion the script runs before any saw cut, i.e. the native knee moving:
  alignment (flexion, varus/valgus) and the gaps navigation shows then, the resection gaps of
  :func:`~orthonav.navigation.gaps.gap_geometry` ``surface="cuts"`` (the planned femoral cut
  faces against the planned tibial cut: what the planned cuts will leave at that knee pose);
* after: the same knee poses against the planned implants (``surface="implant"``: the femoral
  component's condyles against the planned tibial cut: the space the tibial component and insert
  fill). The simulator does not re-shape the knee after the cuts, so the alignment after is not
  a new measurement and is not repeated.

Figures (:mod:`orthonav.phantoms.demo_knee_plots`): ``report/knee_alignment.png`` and
``report/knee_gaps.png``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from orthonav.core.transforms import invert

from .demo_summary import KneeDemo

Vec = NDArray[np.float64]

#: Flexion angles (deg) of the range-of-motion tables.
ROM_BINS = (0.0, 30.0, 60.0, 90.0)
#: Phases of the range of motion (before the cuts) and the holds the errors are taken over.
ROM_PHASES = ("rom_move", "rom_hold")
HOLDS = ("rom_hold", "stress_hold")
#: The holds the headline errors are taken over: up to 90 deg of flexion (the range-of-motion
#: table's range, where extension and flexion gaps are balanced), with a margin for the knee's
#: native flexion (deg). Past it (the 120 deg hold) the femoral point nearest the tibial plane is
#: the proximal edge of the posterior cut face, where the cut leaves the SEGMENTED surface: that
#: hold is reported apart (``error_vs_truth_all``).
GAP_MAX_FLEXION_DEG = 95.0


@dataclass(frozen=True)
class KneeSeries:
    """Per navigation state with alignment and gaps (n,), in time order. Angles deg, gaps mm.

    ``nav_*``: what navigation showed; ``true_*``: the scripted truth; ``pose_*``: navigation's
    definitions (plan landmarks, gap geometry of the segmented femur) at the TRUE knee pose;
    ``implant_nav_*`` / ``implant_true_*``: gaps to the planned implant surfaces at the measured /
    true pose. ``t_s``: script time (s); ``phase`` / ``label``: the scripted phase."""

    t_s: Vec
    phase: tuple[str, ...]
    label: tuple[str, ...]
    nav_flexion: Vec
    nav_varus: Vec
    nav_medial: Vec
    nav_lateral: Vec
    true_flexion: Vec
    true_varus: Vec
    true_medial: Vec
    true_lateral: Vec
    pose_flexion: Vec
    pose_varus: Vec
    pose_medial: Vec
    pose_lateral: Vec
    implant_nav_medial: Vec
    implant_nav_lateral: Vec
    implant_true_medial: Vec
    implant_true_lateral: Vec

    def mask(self, phases: Sequence[str]) -> NDArray[np.bool_]:
        return np.array([p in phases for p in self.phase], dtype=bool)

    def holds(self, phases: Sequence[str] = HOLDS) -> dict[tuple[str, str], NDArray[np.intp]]:
        """(phase, label) -> indices of that hold's states (a label names one hold per phase)."""
        out: dict[tuple[str, str], list[int]] = {}
        for i, (p, lab) in enumerate(zip(self.phase, self.label)):
            if p in phases:
                out.setdefault((p, lab), []).append(i)
        return {k: np.array(v, dtype=np.intp) for k, v in out.items()}


def knee_errors(series: KneeSeries, against: str = "true", *, max_flexion_deg: float | None = None) -> dict[str, float]:
    """Errors of navigation against ``against`` ("true" or "pose", see :class:`KneeSeries`) over
    the holds (:data:`HOLDS`; only those whose mean true flexion is at most ``max_flexion_deg``
    when given): per state ``*_max`` / ``*_rms`` and of each hold's mean reading
    ``*_hold_mean_max``, for ``flexion_deg``, ``varus_deg``, ``medial_gap_mm``, ``lateral_gap_mm``;
    ``n`` states, ``n_holds``. Empty without held states."""
    pairs = {"flexion_deg": (series.nav_flexion, getattr(series, f"{against}_flexion")),
             "varus_deg": (series.nav_varus, getattr(series, f"{against}_varus")),
             "medial_gap_mm": (series.nav_medial, getattr(series, f"{against}_medial")),
             "lateral_gap_mm": (series.nav_lateral, getattr(series, f"{against}_lateral"))}
    holds = {k: i for k, i in series.holds().items()
             if max_flexion_deg is None or float(series.true_flexion[i].mean()) <= max_flexion_deg}
    idx = np.concatenate(list(holds.values())) if holds else np.zeros(0, dtype=np.intp)
    if len(idx) == 0:
        return {}
    out = {"n": float(len(idx)), "n_holds": float(len(holds))}
    for key, (nav, ref) in pairs.items():
        err = nav - ref
        e = np.abs(err[idx])
        out[f"{key}_max"], out[f"{key}_rms"] = float(e.max()), float(np.sqrt(np.mean(e**2)))
        out[f"{key}_hold_mean_max"] = float(max(abs(float(err[i].mean())) for i in holds.values()))
    return out


def rom_tables(series: KneeSeries, bins: Sequence[float] = ROM_BINS) -> tuple[list[dict], list[dict]]:
    """The range-of-motion tables (:func:`~orthonav.navigation.alignment.rom_table`) over the
    range-of-motion phase (before any cut), navigation beside the truth, per flexion angle:
    ``before`` rows: ``flexion_deg``, ``n``, ``flexion_mean_deg``, ``varus_valgus_deg`` /
    ``true_varus_valgus_deg``, ``medial_gap_mm`` / ``true_medial_gap_mm``, ``lateral_gap_mm`` /
    ``true_lateral_gap_mm`` (the resection gaps); ``after`` rows: the same keys for the gaps to
    the planned implants (no alignment: see the module docstring). None where a bin is empty."""
    from orthonav.navigation.alignment import rom_table

    m = series.mask(ROM_PHASES)

    def table(flex: Vec, vv: Vec, med: Vec, lat: Vec) -> list[dict]:
        return rom_table(flex[m], vv[m], bins=bins, medial_gap_mm=med[m], lateral_gap_mm=lat[m])

    nav = table(series.nav_flexion, series.nav_varus, series.nav_medial, series.nav_lateral)
    true = table(series.true_flexion, series.true_varus, series.true_medial, series.true_lateral)
    nav_i = table(series.nav_flexion, series.nav_varus, series.implant_nav_medial, series.implant_nav_lateral)
    true_i = table(series.true_flexion, series.true_varus, series.implant_true_medial, series.implant_true_lateral)
    before, after = [], []
    for a, b, ai, bi in zip(nav, true, nav_i, true_i):
        common = {"flexion_deg": a["flexion_target_deg"], "n": a["n"], "flexion_mean_deg": a["flexion_mean_deg"],
                  "true_flexion_mean_deg": b["flexion_mean_deg"]}
        before.append({**common, "varus_valgus_deg": a["varus_valgus_mean_deg"], "true_varus_valgus_deg": b["varus_valgus_mean_deg"],
                       "medial_gap_mm": a["medial_gap_mean_mm"], "true_medial_gap_mm": b["medial_gap_mean_mm"],
                       "lateral_gap_mm": a["lateral_gap_mean_mm"], "true_lateral_gap_mm": b["lateral_gap_mean_mm"]})
        after.append({**common, "medial_gap_mm": ai["medial_gap_mean_mm"], "true_medial_gap_mm": bi["medial_gap_mean_mm"],
                      "lateral_gap_mm": ai["lateral_gap_mean_mm"], "true_lateral_gap_mm": bi["lateral_gap_mean_mm"]})
    return before, after


def run_knee_demo(case_dir: str | Path, out_dir: str | Path, *, seed: int, fle_mm: float, tracker_noise_mm: float,
                  rotation_noise_deg: float, rate_hz: float = 50.0, progress: Callable[[float], None] | None = None) -> KneeDemo:
    """Run the two-array session on a planned phantom knee case and measure it against the truth.

    Parameters
    ----------
    case_dir
        A phantom knee case with ``plan.json`` (its cuts and femoral component), ``meshes/``
        (the segmentation) and ``truth/``.
    out_dir
        Where the figures go (``knee_alignment.png``, ``knee_gaps.png``).
    seed, fle_mm, tracker_noise_mm, rotation_noise_deg, rate_hz
        The scenario's seed, FLE (RMS 3D, mm, a fixed offset per fiducial touch), tracker noise
        per tool and sample (mm per axis; deg about a random axis) and the frame rate (Hz).
    progress
        ``progress(fraction)``.
    """
    from orthonav.core.case import read_case_meshes
    from orthonav.navigation.alignment import knee_alignment, knee_frames
    from orthonav.navigation.gaps import gap_geometry, knee_gaps
    from orthonav.navigation.inputs import knee_inputs
    from orthonav.phantoms.scenario_two_array import knee_two_array_scenario, navigate_two_array_offline
    from orthonav.planning.schema import load_plan

    from .demo_knee_plots import write_knee_figures

    def tick(f: float) -> None:
        if progress is not None:
            progress(f)

    case_dir, out_dir = Path(case_dir), Path(out_dir)
    sc = knee_two_array_scenario(case_dir, seed=seed, fle_mm=fle_mm)
    tick(0.1)
    plan = load_plan(case_dir / "plan.json")
    femur, tibia = sc.geometry.femur, sc.geometry.tibia
    knee = knee_inputs(plan, sc.references, read_case_meshes(case_dir, bones=[femur.bone]))
    if knee is None or knee.gap_geometry is None:
        from orthonav.core.errors import InputError

        raise InputError(case_dir / "plan.json", "the plan has no knee alignment landmarks or no cuts to measure gaps between")
    frames = knee_frames(knee.landmarks)
    implant = gap_geometry(plan, surface="implant", femur=femur.bone, tibia=tibia.bone)

    rows: list[tuple] = []

    def on_state(frame: object, state: object) -> None:
        al, gaps = getattr(state, "alignment", None), getattr(state, "gaps", None)
        bct = getattr(state, "bone_ct_from_tracker", {})
        if al is None or gaps is None or femur.bone not in bct or tibia.bone not in bct:
            return
        t = state.tools[femur.reference].device_time_s  # type: ignore[attr-defined]
        pose = np.asarray(bct[femur.bone]) @ invert(np.asarray(bct[tibia.bone]))
        rows.append((t, al.flexion_deg, al.varus_valgus_deg, gaps.medial_mm, gaps.lateral_mm, pose))

    scores, _ = navigate_two_array_offline(case_dir, sc, seed=seed, rate_hz=rate_hz, tracker_noise_mm=tracker_noise_mm,
                                           rotation_noise_deg=rotation_noise_deg, on_state=on_state)
    tick(0.7)
    cols: dict[str, list] = {k: [] for k in ("phase", "label", "true", "pose", "implant_nav", "implant_true")}
    for t, *_nav, pose in rows:
        tr = sc.truth_at(t)
        cols["phase"].append(tr.phase.name)
        cols["label"].append(tr.phase.label)
        cols["true"].append((tr.alignment.flexion_deg, tr.alignment.varus_deg, tr.medial_gap_mm, tr.lateral_gap_mm))
        at_true = knee_alignment(tr.femur_ct_from_tibia_ct, frames)
        g = knee_gaps(tr.femur_ct_from_tibia_ct, knee.gap_geometry)
        cols["pose"].append((at_true.flexion_deg, at_true.varus_valgus_deg, g.medial_mm, g.lateral_mm))
        gi, gt = knee_gaps(pose, implant), knee_gaps(tr.femur_ct_from_tibia_ct, implant)
        cols["implant_nav"].append((gi.medial_mm, gi.lateral_mm))
        cols["implant_true"].append((gt.medial_mm, gt.lateral_mm))
    nav = np.array([r[1:5] for r in rows], dtype=np.float64).reshape(-1, 4)
    true, at_pose = (np.array(cols[k], dtype=np.float64).reshape(-1, 4) for k in ("true", "pose"))
    imp_n, imp_t = (np.array(cols[k], dtype=np.float64).reshape(-1, 2) for k in ("implant_nav", "implant_true"))
    series = KneeSeries(np.array([r[0] for r in rows], dtype=np.float64), tuple(cols["phase"]), tuple(cols["label"]),
                        *nav.T, *true.T, *at_pose.T, *imp_n.T, *imp_t.T)

    true_hip = np.asarray(sc.hip_centre_ct_mm, dtype=np.float64)
    ct_hip = np.asarray(knee.landmarks["femoral_head_centre"], dtype=np.float64)
    kin = None if scores.hip_centre_ct_mm is None else np.asarray(scores.hip_centre_ct_mm, dtype=np.float64)
    before, after = rom_tables(series)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = write_knee_figures(series, out_dir, stress_deg=4.0)
    tick(1.0)
    return KneeDemo(
        injected={"seed": seed, "fle_mm": fle_mm, "tracker_noise_mm": tracker_noise_mm, "rotation_noise_deg": rotation_noise_deg,
                  "rate_hz": rate_hz},
        duration_s=float(sc.duration_s),
        references=dict(sc.references),
        fre_mm={b: float(r["fre_mm"]) for b, r in scores.tre_mm.items()},
        tre_mm={b: {k: float(v) for k, v in r.items() if k != "fre_mm"} for b, r in scores.tre_mm.items()},
        predicted_tre_mm={b: {k: float(v) for k, v in rec.predicted_tre_mm.items() if k in scores.tre_mm.get(b, {})}
                          for b, rec in (scores.registration.bones.items() if scores.registration else ())},
        hip_centre_error_mm=float(scores.hip_centre_error_mm),
        hip_centre_fit=dict(scores.hip_centre_fit),
        ct_hip_centre_error_mm=float(np.linalg.norm(ct_hip - true_hip)),
        hip_centre_kinematic_vs_ct_mm=math.nan if kin is None else float(np.linalg.norm(kin - ct_hip)),
        error_vs_truth=knee_errors(series, "true", max_flexion_deg=GAP_MAX_FLEXION_DEG),
        error_tracking=knee_errors(series, "pose", max_flexion_deg=GAP_MAX_FLEXION_DEG),
        error_vs_truth_all=knee_errors(series, "true"),
        guidance_error={c: dict(g) for c, g in scores.guidance_error.items()},
        rom_before=before,
        rom_after=after,
        figures=figures,
        hip_centre_ct_mm=scores.hip_centre_ct_mm,
        series=series,
        registration=scores.registration,
    )


__all__ = ["GAP_MAX_FLEXION_DEG", "HOLDS", "ROM_BINS", "ROM_PHASES", "KneeSeries", "knee_errors", "rom_tables", "run_knee_demo"]
