"""The scripted OR with one array per bone: the femur and the tibia move independently, with truth.

A :class:`TwoArrayScenario` places the knee phantom (its CT as imaged = the ``world``) at a
random plausible pose in front of the tracker (``tracker_from_world``, 1.2-1.8 m away), screws
``FemurRef`` to the femoral shaft (the phantom's reference mount) and ``TibiaRef``
to the antero-medial tibial shaft 110 mm below the tibial knee centre (each at a random
orientation), and moves the leg (:mod:`orthonav.phantoms.knee_motion`): the femur about the TRUE
hip centre (the pelvis still: the tracker frame stands in for a pelvis array), the tibia
relative to the femur by the knee model (flexion about the fixed femoral medio-lateral axis,
varus / valgus stress about the floating antero-posterior axis, both through the femoral knee
centre). Phases (:class:`KneePhase`, in order):

1. ``lead_in``; then per bone (femur, then tibia) the pointer touches each of the bone's
   fiducials (``move`` / ``fiducial``, a fixed FLE offset per touch), optionally glides over
   surface points (``surface``), then touches the bone's truth targets (``target``) while the
   leg is held still at ``registration_pose`` (knee flexed, so the tibia is NOT where the CT
   shows it: a registration that used the wrong array is wrong). The pointer then parks.
2. ``leg_move`` to extension; ``hip_circle``: the leg circled about the hip through a cone of
   ``hip_cone_deg`` full angle (``hip_loops`` turns; the tilt eased in and out).
3. Range of motion: ``rom_hold`` at each angle of ``rom_deg`` (hip flexion half the knee
   flexion: the foot stays on the table), ``rom_move`` between.
4. Stress tests at each angle of ``stress_at_deg``: ``stress_hold`` at +``stress_deg`` (varus)
   and -``stress_deg`` (valgus), ``stress_move`` between.
5. The femoral cut (``distal_femur``) with the saw while the tibia swings (knee flexion
   +-``swing_deg`` about ``cut_flexion_deg``), then the tibial cut (``proximal_tibia``) while
   both move (knee and hip flexion swing): ``saw_hidden``, ``saw_sweep`` on-plane,
   ``saw_hold`` with the scripted (flexion, varus, distance) errors in the cut's frame. Optional
   ``array_dropout``: one array hidden for a while in the middle of the OTHER bone's sweep.

``script(t_s)`` is what the tracking simulator runs (``FemurRef``, ``TibiaRef``,
``Pointer``, ``Saw``: tracker_from_tool or None); :meth:`TwoArrayScenario.truth_at` the truth
(:class:`KneeTruth`: the true ``femur_ct_from_tibia_ct``, the knobs, the true alignment, the
brute-force gaps (:mod:`orthonav.phantoms.gap_truth`), the hip centre, the true
``tracker_from_<bone>ref``, the pointer and saw truth). Nothing here is shown to navigation.
What the script needs of the case: :mod:`orthonav.phantoms.two_array_geometry`. The array
names are the tool set's (``bone`` of its reference tools; default
:func:`~orthonav.tracking.tools.knee_two_array_toolset`).

Drivers: :func:`navigate_two_array_offline` (the frames fed to navigation's workflow with no
threads: seconds), :func:`simulate_two_array_navigation` (``navigate_case`` in real time, in
process or over OpenIGTLink) and :func:`serve_two_array_scenario` (``orthonav simulate-tracker
--two-array``); the runs are scored by :func:`orthonav.phantoms.scoring.score_two_array_run`.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike, NDArray

from orthonav.core.errors import InputError
from orthonav.core.transforms import apply, invert, make_rigid, rotation_about_axis
from orthonav.core.vectors import unit
from orthonav.phantoms.gap_truth import true_gaps
from orthonav.phantoms.knee_motion import KneeAngles
from orthonav.phantoms.scenario import DEFAULT_SAW_ERRORS, plausible_tracker_from_ct, pointer_pose_ct, saw_pose_ct, script_frames
from orthonav.phantoms.two_array_geometry import TwoArrayGeometry, two_array_geometry
from orthonav.tracking.frame import TrackingFrame
from orthonav.tracking.tools import ToolSet, knee_two_array_toolset

if TYPE_CHECKING:
    from orthonav.navigation import NavigationSummary
    from orthonav.phantoms.scoring import KneeSessionScores

Vec = NDArray[np.float64]



# --- the leg's pose ----------------------------------------------------------------------


@dataclass(frozen=True)
class LegPose:
    """The knobs of the scripted leg (deg): hip flexion and a cone tilt / azimuth of the femur
    about the hip centre (:meth:`KneeJoint.hip_pose`), knee flexion, varus stress (+ varus) and
    tibial rotation (+ internal) added to the knee as imaged (:meth:`KneeJoint.knee_pose`)."""

    hip_flexion_deg: float = 0.0
    hip_tilt_deg: float = 0.0
    hip_azimuth_deg: float = 0.0
    flexion_deg: float = 0.0
    varus_deg: float = 0.0
    rotation_deg: float = 0.0

    def blend(self, other: LegPose, s: float) -> LegPose:
        """``(1 - s) * self + s * other``, knob by knob."""
        return LegPose(*((1.0 - s) * getattr(self, f.name) + s * getattr(other, f.name) for f in fields(LegPose)))

    def plus(self, other: LegPose, scale: float = 1.0) -> LegPose:
        return LegPose(*(getattr(self, f.name) + scale * getattr(other, f.name) for f in fields(LegPose)))


# --- phases and truth ---------------------------------------------------------------------


@dataclass(frozen=True)
class KneePhase:
    """One scripted interval ``[t0_s, t1_s)`` and the leg's motion over it.

    ``motion``: ``"ramp"`` (``leg0`` -> ``leg1``, eased), ``"circle"`` (the hip circle: azimuth
    swept through ``loops`` turns, tilt eased in and out to ``leg1.hip_tilt_deg``) or
    ``"swing"`` (``leg0`` plus ``swing`` x sin(2 pi f t) under a sine envelope over the block
    ``block_s``)."""

    name: str
    t0_s: float
    t1_s: float
    leg0: LegPose
    leg1: LegPose
    bone: str = ""  #: the bone digitised / cut, if any
    label: str = ""  #: fiducial / target name, angle, hold index
    saw_errors: tuple[float, float, float] | None = None  #: (flexion_deg, varus_deg, distance_mm) of a saw hold
    motion: str = "ramp"
    loops: float = 0.0
    swing: LegPose | None = None
    swing_hz: float = 0.0
    block_s: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class KneeTruth:
    """The true state at one time (the issue-16 contract's scenario truth).

    Attributes
    ----------
    t_s, phase, leg
        Script time (s), the active :class:`KneePhase` and the knobs (:class:`LegPose`).
    femur_ct_from_tibia_ct
        (4, 4) the TRUE knee pose (identity = as imaged).
    alignment
        The TRUE alignment (:class:`~orthonav.phantoms.knee_motion.KneeAngles` of the true
        landmarks: the native angles plus the knobs).
    medial_gap_mm, lateral_gap_mm
        TRUE gaps by brute force (:func:`~orthonav.phantoms.gap_truth.true_gaps`); NaN without meshes.
    hip_centre_ct_mm
        (3,) the TRUE hip centre (femur CT).
    tracker_from_reference
        Reference tool name -> TRUE ``tracker_from_<bone>ref`` (even while hidden).
    visible
        Tool name -> whether the script shows it.
    pointer_bone, pointer_tip_ct_mm
        The bone being digitised and the true pointer tip in that bone's CT (None otherwise).
    saw_cut, saw_flexion_deg, saw_varus_deg, saw_distance_mm
        The cut the saw is guided on (None when hidden) and the true guidance numbers (NaN when hidden).
    """

    t_s: float
    phase: KneePhase
    leg: LegPose
    femur_ct_from_tibia_ct: Vec
    alignment: KneeAngles
    medial_gap_mm: float
    lateral_gap_mm: float
    hip_centre_ct_mm: Vec
    tracker_from_reference: dict[str, Vec]
    visible: dict[str, bool]
    pointer_bone: str | None = None
    pointer_tip_ct_mm: Vec | None = None
    saw_cut: str | None = None
    saw_flexion_deg: float = math.nan
    saw_varus_deg: float = math.nan
    saw_distance_mm: float = math.nan

    @property
    def saw_visible(self) -> bool:
        return self.saw_cut is not None and self.visible.get("Saw", False)


def _ease(u: float) -> float:
    return 0.5 - 0.5 * math.cos(math.pi * min(max(u, 0.0), 1.0))


@dataclass(frozen=True)
class TwoArrayScenario:
    """A scripted two-array knee session with ground truth (see the module docstring)."""

    geometry: TwoArrayGeometry
    toolset: ToolSet
    tracker_from_world: Vec
    ct_from_reference: dict[str, Vec]  #: bone -> TRUE ct_from_<bone>ref
    phases: tuple[KneePhase, ...]
    fle_offsets_mm: dict[str, Vec]  #: bone -> (n, 3) fixed FLE offset of each fiducial touch
    dropouts: dict[str, tuple[float, float]] = field(default_factory=dict)  #: tool -> [t0, t1) hidden
    _pointer_keys: tuple = field(default=(), repr=False)
    _starts: tuple[float, ...] = field(default=(), repr=False)

    # --- basics ------------------------------------------------------------------------

    @property
    def duration_s(self) -> float:
        return self.phases[-1].t1_s

    @property
    def hip_centre_ct_mm(self) -> Vec:
        """The TRUE hip centre in the femur's CT (mm)."""
        return self.geometry.joint.hip_centre_mm

    @property
    def references(self) -> dict[str, str]:
        """Bone -> reference tool name."""
        return {self.geometry.femur.bone: self.geometry.femur.reference, self.geometry.tibia.bone: self.geometry.tibia.reference}

    def phase_at(self, t_s: float) -> KneePhase:
        i = bisect.bisect_right(self._starts, t_s) - 1
        return self.phases[min(max(i, 0), len(self.phases) - 1)]

    def phase_spans(self, name: str) -> list[KneePhase]:
        """Every phase called ``name``, in order."""
        return [ph for ph in self.phases if ph.name == name]

    # --- the leg -----------------------------------------------------------------------

    def leg_at(self, t_s: float, ph: KneePhase | None = None) -> LegPose:
        """The knobs at ``t_s``."""
        ph = ph or self.phase_at(t_s)
        u = 0.0 if ph.t1_s <= ph.t0_s else (t_s - ph.t0_s) / (ph.t1_s - ph.t0_s)
        if ph.motion == "circle":
            ramp = min(1.0, 6.0 * u, 6.0 * (1.0 - u))  # tilt eased in over the first and out over the last sixth
            leg = ph.leg0
            return LegPose(leg.hip_flexion_deg, _ease(ramp) * ph.leg1.hip_tilt_deg, 360.0 * ph.loops * u, leg.flexion_deg,
                           leg.varus_deg, leg.rotation_deg)
        if ph.motion == "swing" and ph.swing is not None:
            b0, b1 = ph.block_s
            v = min(max((t_s - b0) / (b1 - b0), 0.0), 1.0) if b1 > b0 else 0.0
            k = math.sin(math.pi * v) * math.sin(2.0 * math.pi * ph.swing_hz * (t_s - b0))
            return ph.leg0.plus(ph.swing, k)
        return ph.leg0.blend(ph.leg1, _ease(u))

    def bone_poses(self, leg: LegPose) -> tuple[Vec, Vec]:
        """(``world_from_femur_ct``, ``world_from_tibia_ct``) of the knobs."""
        j = self.geometry.joint
        f = j.hip_pose(leg.hip_flexion_deg, leg.hip_tilt_deg, leg.hip_azimuth_deg)
        return f, f @ j.knee_pose(leg.flexion_deg, leg.varus_deg, leg.rotation_deg)

    # --- tools -------------------------------------------------------------------------

    def _pointer_tip_dir(self, t_s: float) -> tuple[Vec, Vec] | None:
        """Pointer tip and shaft direction in the world (the leg is still while it moves)."""
        keys = self._pointer_keys  # (t0, t1, tip0, dir0, tip1, dir1, lift), world
        i = bisect.bisect_right([k[0] for k in keys], t_s) - 1
        if i < 0:
            return None
        t0, t1, p0, d0, p1, d1, lift = keys[i]
        if not t0 <= t_s < t1:
            return None
        u = 0.0 if t1 <= t0 else (t_s - t0) / (t1 - t0)
        s = _ease(u)
        tip = (1 - s) * p0 + s * p1 + 30.0 * math.sin(math.pi * u) * lift
        return tip, unit((1 - s) * d0 + s * d1)

    def _saw_in_bone(self, t_s: float, ph: KneePhase) -> tuple[Vec, tuple[float, float, float]] | None:
        """(``bone_ct_from_saw``, true (flexion, varus, distance)) during a cut, else None."""
        if ph.name not in ("saw_sweep", "saw_hold") or not ph.bone:
            return None
        site = self.geometry.site(ph.bone)
        saw = self.toolset.by_name()["Saw"]
        common = dict(tip_in_tool=saw.tip_in_tool(), axis_in_tool=saw.axis_in_tool(), normal_in_tool=saw.normal_in_tool())
        if ph.name == "saw_sweep":
            u = (t_s - ph.t0_s) / (ph.t1_s - ph.t0_s)
            err, along, across = (0.0, 0.0, 0.0), -45.0 + 65.0 * u, 12.0 * math.sin(2 * math.pi * u)
        else:
            err, along, across = ph.saw_errors or (0.0, 0.0, 0.0), -5.0, 3.0
        pose = saw_pose_ct(site.cut_point_mm, site.cut_normal, site.cut_anterior, site.cut_medial, flexion_deg=err[0],
                           varus_deg=err[1], distance_mm=err[2], along_mm=along, across_mm=across, **common)
        return pose, (float(err[0]), float(err[1]), float(err[2]))

    def _hidden(self, tool: str, t_s: float) -> bool:
        span = self.dropouts.get(tool)
        return span is not None and span[0] <= t_s < span[1]

    def script(self, t_s: float) -> dict[str, Vec | None]:
        """Tool poses at ``t_s`` (s from the start): ``tracker_from_tool`` or None (not visible)."""
        ph = self.phase_at(t_s)
        wf, wt = self.bone_poses(self.leg_at(t_s, ph))
        tw = self.tracker_from_world
        out: dict[str, Vec | None] = {}
        for site, w in ((self.geometry.femur, wf), (self.geometry.tibia, wt)):
            out[site.reference] = None if self._hidden(site.reference, t_s) else tw @ w @ self.ct_from_reference[site.bone]
        td = self._pointer_tip_dir(t_s)
        if td is None:
            out["Pointer"] = None
        else:
            ptr = self.toolset.by_name()["Pointer"]
            out["Pointer"] = tw @ pointer_pose_ct(td[0], td[1], ptr.tip_in_tool(), ptr.axis_in_tool())
        saw = self._saw_in_bone(t_s, ph)
        if saw is None:
            out["Saw"] = None
        else:
            out["Saw"] = tw @ (wf if ph.bone == self.geometry.femur.bone else wt) @ saw[0]
        return out

    def truth_at(self, t_s: float, *, gaps: bool = True) -> KneeTruth:
        """The true state at ``t_s`` (:class:`KneeTruth`); ``gaps=False`` skips the brute-force gaps."""
        ph = self.phase_at(t_s)
        leg = self.leg_at(t_s, ph)
        wf, wt = self.bone_poses(leg)
        knee = invert(wf) @ wt
        g = self.geometry
        med = lat = math.nan
        if gaps and g.gaps is not None:
            med, lat = true_gaps(g.gaps, knee)
        refs = {s.reference: self.tracker_from_world @ w @ self.ct_from_reference[s.bone] for s, w in ((g.femur, wf), (g.tibia, wt))}
        visible = {name: not self._hidden(name, t_s) for name in refs}
        td = self._pointer_tip_dir(t_s)
        visible["Pointer"] = td is not None
        saw = self._saw_in_bone(t_s, ph)
        visible["Saw"] = saw is not None
        p_bone = p_tip = None
        if td is not None and ph.bone and ph.name in ("fiducial", "target", "surface", "move"):
            p_bone = ph.bone
            p_tip = apply(invert(wf if ph.bone == g.femur.bone else wt), td[0])
        sc = dict(saw_cut=g.site(ph.bone).cut_name, saw_flexion_deg=saw[1][0], saw_varus_deg=saw[1][1],
                  saw_distance_mm=saw[1][2]) if saw is not None else {}
        return KneeTruth(t_s, ph, leg, knee, g.joint.angles(knee), med, lat, self.hip_centre_ct_mm.copy(), refs, visible,
                         p_bone, p_tip, **sc)

    def frames(self, rate_hz: float, *, tracker_noise_mm: float = 0.0, rotation_noise_deg: float = 0.0, seed: int = 0,
               t0_s: float = 0.0, t1_s: float | None = None) -> Iterator[TrackingFrame]:
        """Tracking frames sampled at ``rate_hz`` on a simulated clock (no threads; host and
        device time = script time), with the tracking simulator's noise model per tool and sample."""
        return script_frames(self.script, rate_hz, t0_s=t0_s, t1_s=self.duration_s if t1_s is None else t1_s,
                             tracker_noise_mm=tracker_noise_mm, rotation_noise_deg=rotation_noise_deg, seed=seed)

    def true_points_reference_mm(self, bone: str) -> Vec:
        """(n, 3) the bone's true fiducials in its array's frame (no FLE)."""
        return apply(invert(self.ct_from_reference[bone]), self.geometry.site(bone).fiducials_ct_mm)


# --- building the script ------------------------------------------------------------------


def knee_two_array_scenario(
    source: str | Path | TwoArrayGeometry,
    *,
    seed: int = 0,
    fle_mm: float = 0.25,
    toolset: ToolSet | None = None,
    move_s: float = 0.5,
    dwell_s: float = 0.6,
    lead_in_s: float = 1.0,
    touch_targets: bool = True,
    surface_points_ct_mm: Mapping[str, ArrayLike] | None = None,
    surface_step_s: float = 0.05,
    registration_pose: LegPose = LegPose(hip_flexion_deg=20.0, flexion_deg=40.0),
    leg_move_s: float = 1.5,
    hip_cone_deg: float = 35.0,
    hip_circle_s: float = 8.0,
    hip_loops: float = 1.5,
    rom_deg: Sequence[float] = (0.0, 30.0, 60.0, 90.0, 120.0),
    rom_move_s: float = 1.0,
    rom_hold_s: float = 1.0,
    stress_deg: float = 4.0,
    stress_at_deg: Sequence[float] = (90.0, 0.0),
    stress_move_s: float = 0.5,
    stress_hold_s: float = 1.0,
    cut_flexion_deg: float = 90.0,
    swing_deg: float = 8.0,
    swing_hz: float = 0.4,
    saw_hidden_s: float = 0.5,
    sweep_s: float = 2.0,
    hold_s: float = 0.5,
    saw_errors: Sequence[tuple[float, float, float]] = DEFAULT_SAW_ERRORS,
    array_dropout: tuple[str, float] | None = None,
) -> TwoArrayScenario:
    """Build the scripted two-array knee session (phases in the module docstring).

    Parameters
    ----------
    source
        A phantom knee case folder (truth, plan with ``distal_femur`` and ``proximal_tibia``
        cuts, truth meshes) or a :class:`TwoArrayGeometry`.
    seed
        Seeds the tracker placement, the arrays' orientations, approach tilts and FLE offsets.
    fle_mm
        RMS (3D) of the fixed per-fiducial localisation offset added to each fiducial touch.
    registration_pose
        The leg's knobs while both bones are digitised (default: knee flexed 40 deg, hip 20 deg).
    hip_cone_deg, hip_circle_s, hip_loops
        Full angle of the cone the femur's axis sweeps about the hip centre, its duration and turns.
    rom_deg, stress_at_deg, stress_deg
        Range-of-motion holds (knee flexion, deg; hip flexion follows at half), the flexion
        angles of the stress tests and the applied varus (+) / valgus (-) stress (deg).
    cut_flexion_deg, swing_deg, swing_hz
        Knee flexion during the cuts and the swing of the other bone (deg, Hz).
    saw_errors
        Saw holds as (flexion_deg, varus_deg, distance_mm), on each cut.
    array_dropout
        ``(tool, seconds)``: that reference array is hidden for ``seconds`` in the middle of the
        OTHER bone's saw sweep (``TibiaRef`` during the femoral cut, and vice versa).
    """
    geo = source if isinstance(source, TwoArrayGeometry) else two_array_geometry(source)
    tools = toolset or knee_two_array_toolset(geo.femur.bone, geo.tibia.bone)
    refs = tools.bone_references()  # the arrays are the tool set's (e.g. shorter names for OpenIGTLink)
    geo = replace(geo, femur=replace(geo.femur, reference=refs.get(geo.femur.bone, geo.femur.reference)),
                  tibia=replace(geo.tibia, reference=refs.get(geo.tibia.bone, geo.tibia.reference)))
    for needed in (geo.femur.reference, geo.tibia.reference, "Pointer", "Saw"):
        if needed not in tools.by_name():
            raise InputError(None, f"the tool set has no '{needed}' tool")
    if array_dropout is not None and array_dropout[0] not in (geo.femur.reference, geo.tibia.reference):
        raise InputError(None, f"array_dropout names {array_dropout[0]!r}, not a reference array of the scenario")
    rng = np.random.default_rng(seed)
    j = geo.joint
    tracker_from_world = plausible_tracker_from_ct(rng, j.knee_centre_mm)
    ct_from_ref = {}
    for site in (geo.femur, geo.tibia):
        rot = rotation_about_axis(rng.normal(size=3), rng.uniform(-math.pi, math.pi))
        ct_from_ref[site.bone] = make_rigid(rot, site.mount_ct_mm)
    fle = {}
    for site in (geo.femur, geo.tibia):
        n = len(site.fiducial_names)
        fle[site.bone] = rng.normal(scale=fle_mm / math.sqrt(3.0), size=(n, 3)) if fle_mm > 0 else np.zeros((n, 3))

    phases: list[KneePhase] = []
    keys: list[tuple] = []
    t = 0.0
    leg = registration_pose

    def add(name: str, dur: float, leg1: LegPose | None = None, **kw: object) -> KneePhase:
        nonlocal t, leg
        ph = KneePhase(name, t, t + dur, leg, leg1 if leg1 is not None else leg, **kw)  # type: ignore[arg-type]
        phases.append(ph)
        t += dur
        leg = ph.leg1
        return ph

    # 1. registration: the leg still, the pointer in the world frame.
    wf = j.hip_pose(leg.hip_flexion_deg, leg.hip_tilt_deg, leg.hip_azimuth_deg)
    world_of = {geo.femur.bone: wf, geo.tibia.bone: wf @ j.knee_pose(leg.flexion_deg, leg.varus_deg, leg.rotation_deg)}
    centre = apply(wf, j.knee_centre_mm)  # the knee centre in the world: approach directions point away from it
    anterior_w = wf[:3, :3] @ j.femur_anterior
    home_tip = centre + 150.0 * anterior_w - 60.0 * (wf[:3, :3] @ j.femur_lateral)
    cur_tip, cur_dir = home_tip, unit(centre - home_tip)
    if lead_in_s > 0:
        add("lead_in", lead_in_s)
    for site in (geo.femur, geo.tibia):
        w = world_of[site.bone]

        def approach(p_w: Vec) -> Vec:
            out = unit(p_w - centre)
            tilt = rng.normal(scale=0.25, size=3)
            return unit(-(out + tilt - np.dot(tilt, out) * out))

        points = [("fiducial", nm, apply(w, site.fiducials_ct_mm[i] + fle[site.bone][i])) for i, nm in enumerate(site.fiducial_names)]
        surf = None if surface_points_ct_mm is None or site.bone not in surface_points_ct_mm else \
            apply(w, np.asarray(surface_points_ct_mm[site.bone], dtype=np.float64).reshape(-1, 3))
        targets = [("target", nm, apply(w, p)) for nm, p in site.targets_ct_mm.items()] if touch_targets else []
        for kind, name, p in points + [("surface", "", np.zeros(3))] + targets:
            if kind == "surface":
                if surf is None or len(surf) == 0:
                    continue
                d = approach(surf[0])
                keys.append((t, t + move_s, cur_tip, cur_dir, surf[0], d, unit(surf[0] - centre)))
                add("move", move_s, bone=site.bone, label="surface")
                t_start = t
                for a, b in zip(surf[:-1], surf[1:]):
                    keys.append((t_start, t_start + surface_step_s, a, d, b, d, np.zeros(3)))
                    t_start += surface_step_s
                add("surface", t_start - t, bone=site.bone, label=f"{len(surf)} points")
                cur_tip, cur_dir = surf[-1], d
                continue
            d = approach(p)
            keys.append((t, t + move_s, cur_tip, cur_dir, p, d, unit(p - centre)))
            add("move", move_s, bone=site.bone, label=name)
            keys.append((t, t + dwell_s, p, d, p, d, np.zeros(3)))
            add(kind, dwell_s, bone=site.bone, label=name)
            cur_tip, cur_dir = p, d
    park_tip = home_tip + 80.0 * (wf[:3, :3] @ j.femur_proximal)
    park_dir = unit(centre - park_tip)
    keys.append((t, t + move_s, cur_tip, cur_dir, park_tip, park_dir, anterior_w))
    add("move", move_s, label="park")
    t_park = t

    # 2. hip circle in extension.
    add("leg_move", leg_move_s, LegPose())
    add("hip_circle", hip_circle_s, LegPose(hip_tilt_deg=0.5 * hip_cone_deg), motion="circle", loops=hip_loops)
    leg = LegPose()

    def knee_at(flexion: float, varus: float = 0.0) -> LegPose:
        return LegPose(hip_flexion_deg=0.5 * flexion, flexion_deg=flexion, varus_deg=varus)

    # 3. range of motion.
    for i, a in enumerate(rom_deg):
        if i > 0 or abs(a) > 1e-9:
            add("rom_move", rom_move_s, knee_at(a), label=f"{a:g}")
        add("rom_hold", rom_hold_s, label=f"{a:g}")
    # 4. stress tests.
    for a in stress_at_deg:
        add("leg_move", leg_move_s, knee_at(a))
        for v, what in ((stress_deg, "varus"), (-stress_deg, "valgus")):
            add("stress_move", stress_move_s, knee_at(a, v), label=f"{what}@{a:g}")
            add("stress_hold", stress_hold_s, label=f"{what}@{a:g}")
        add("stress_move", stress_move_s, knee_at(a), label=f"neutral@{a:g}")
    # 5. the cuts, the other bone moving.
    add("leg_move", leg_move_s, knee_at(cut_flexion_deg))
    dropouts: dict[str, tuple[float, float]] = {}
    for site, swing in ((geo.femur, LegPose(flexion_deg=swing_deg)),
                        (geo.tibia, LegPose(hip_flexion_deg=0.5 * swing_deg, flexion_deg=swing_deg))):
        add("saw_hidden", saw_hidden_s, bone=site.bone)
        b0 = t
        b1 = t + sweep_s + hold_s * len(saw_errors)
        common = dict(bone=site.bone, motion="swing", swing=swing, swing_hz=swing_hz, block_s=(b0, b1))
        sweep = add("saw_sweep", sweep_s, label=site.cut_name, **common)
        for i, err in enumerate(saw_errors):
            add("saw_hold", hold_s, label=str(i), saw_errors=tuple(float(x) for x in err), **common)  # type: ignore[arg-type]
        if array_dropout is not None and array_dropout[0] != site.reference:
            mid = 0.5 * (sweep.t0_s + sweep.t1_s)
            dropouts[array_dropout[0]] = (mid - 0.5 * array_dropout[1], mid + 0.5 * array_dropout[1])
    add("saw_hidden", 0.3)
    keys.append((t_park, t, park_tip, park_dir, park_tip, park_dir, np.zeros(3)))
    return TwoArrayScenario(geo, tools, tracker_from_world, ct_from_ref, tuple(phases), fle, dropouts, tuple(keys),
                            tuple(ph.t0_s for ph in phases))


# --- driving navigation -------------------------------------------------------------------


def simulate_two_array_navigation(
    case_dir: str | Path,
    *,
    seed: int = 0,
    fle_mm: float = 0.25,
    rate_hz: float = 100.0,
    over_socket: bool = False,
    port: int = 0,
    tracker_noise_mm: float = 0.1,
    rotation_noise_deg: float = 0.05,
    off_screen: bool = True,
    screenshot_every_s: float | None = None,
    progress: Callable[[str], None] | None = None,
    render: bool = False,
    **scenario_options: object,
) -> tuple[NavigationSummary, KneeSessionScores, TwoArrayScenario]:
    """Navigate a phantom knee case with both arrays, end to end, and score the run.

    Builds :func:`knee_two_array_scenario` for ``case_dir`` and runs
    :func:`orthonav.navigation.navigate_case` on it with the two-array tool set
    (:func:`~orthonav.phantoms.scenario.navigate_script`: in process, or over a real
    OpenIGTLink socket). Navigation gets every bone's truth targets as check points and nothing
    else of the truth; the recorded session is then scored
    (:func:`orthonav.phantoms.scoring.score_two_array_session`, also written to
    ``<session>/scores.json``).

    Returns
    -------
    (NavigationSummary, KneeSessionScores, TwoArrayScenario)
    """
    from orthonav.core.atomic import write_json
    from orthonav.phantoms.scenario import navigate_script
    from orthonav.phantoms.scoring import SCORES, KneeSessionScores, score_two_array_session

    sc = knee_two_array_scenario(case_dir, seed=seed, fle_mm=fle_mm, **scenario_options)  # type: ignore[arg-type]
    targets = {**sc.geometry.femur.targets_ct_mm, **sc.geometry.tibia.targets_ct_mm}
    summary, script_time = navigate_script(
        case_dir, sc.script, sc.duration_s, toolset=sc.toolset, over_socket=over_socket, rate_hz=rate_hz, port=port,
        tracker_noise_mm=tracker_noise_mm, rotation_noise_deg=rotation_noise_deg, seed=seed, off_screen=off_screen,
        screenshot_every_s=screenshot_every_s, progress=progress, check_points_ct_mm=targets, render=render)
    if summary.session_dir is None:
        return summary, KneeSessionScores(), sc
    scores = score_two_array_session(summary.session_dir, sc, script_time=script_time)
    write_json(Path(summary.session_dir) / SCORES, scores.to_json())
    return summary, scores, sc


def navigate_two_array_offline(
    case_dir: str | Path,
    scenario: TwoArrayScenario | None = None,
    *,
    seed: int = 0,
    fle_mm: float = 0.25,
    rate_hz: float = 100.0,
    tracker_noise_mm: float = 0.1,
    rotation_noise_deg: float = 0.05,
    on_state: Callable[[TrackingFrame, object], None] | None = None,
    **scenario_options: object,
) -> tuple[KneeSessionScores, TwoArrayScenario]:
    """The two-array session without threads, sockets or a clock: the scenario's frames
    (:meth:`TwoArrayScenario.frames`, tracker noise per tool and sample) fed one by one to
    navigation's deterministic :class:`~orthonav.navigation.workflow.Workflow`, built from the
    case as :func:`~orthonav.navigation.navigate_case` builds it (every bone's truth targets as
    check points), and scored (:func:`orthonav.phantoms.scoring.score_two_array_run`). Seconds
    for a minute of script: for tests, the demo and the accuracy figures.

    ``on_state(frame, state)`` sees every navigation state (e.g. to record alignment).
    """
    from orthonav.navigation.inputs import load_navigation_inputs
    from orthonav.navigation.workflow import Workflow
    from orthonav.phantoms.scoring import score_two_array_run

    sc = scenario or knee_two_array_scenario(case_dir, seed=seed, fle_mm=fle_mm, **scenario_options)  # type: ignore[arg-type]
    inputs = load_navigation_inputs(case_dir, sc.toolset, ct=False)
    checks = {**sc.geometry.femur.targets_ct_mm, **sc.geometry.tibia.targets_ct_mm}
    workflow = Workflow(inputs.context, inputs.fiducial_names, inputs.fiducials_ct_mm, check_points_ct_mm=checks,
                        bone_fiducials=inputs.bone_fiducials, point_bones=inputs.landmark_bones)

    def pairs():
        for frame in sc.frames(rate_hz, tracker_noise_mm=tracker_noise_mm, rotation_noise_deg=rotation_noise_deg, seed=seed):
            state = workflow.process(frame, clock=None)
            if on_state is not None:
                on_state(frame, state)
            yield frame, state

    def record():  # known once the frames have run
        reg = getattr(workflow, "registration", None)
        return None if reg is None else reg.record

    scores = score_two_array_run(pairs(), sc, record)
    return scores, sc


def serve_two_array_scenario(
    case_dir: str | Path,
    *,
    port: int = 18944,
    host: str = "127.0.0.1",
    rate_hz: float = 200.0,
    duration_s: float | None = None,
    truth_path: str | Path | None = None,
    seed: int = 0,
    fle_mm: float = 0.25,
    wait_for_client_s: float = 300.0,
    on_listening: Callable[[str, int, float], None] | None = None,
    toolset: ToolSet | None = None,
    stop: threading.Event | None = None,
):
    """``orthonav simulate-tracker --two-array``: stream the two-array knee script over OpenIGTLink.

    As :func:`~orthonav.phantoms.scenario.serve_scenario` (the clock starts when the first
    client connects; tools go out as ``<Tool>ToTracker``: ``FemurRefToTracker``,
    ``TibiaRefToTracker``, ``PointerToTracker``, ``SawToTracker``); ``truth_path`` records
    the sent poses with the true ones. ``toolset``: the tools to stream (default
    :func:`~orthonav.tracking.tools.knee_two_array_toolset`); its reference arrays (``bone``)
    name the arrays; ``stop`` ends the stream early. An OpenIGTLink device name holds 20 bytes, so a tool name streamed as
    ``<Tool>ToTracker`` has at most 11 characters: checked before listening.

    Raises
    ------
    InputError
        A tool name too long for an OpenIGTLink device name.
    """
    from orthonav.tracking.igtl_protocol import as_device_name
    from orthonav.tracking.simulator import stream_script

    sc = knee_two_array_scenario(case_dir, seed=seed, fle_mm=fle_mm, toolset=toolset)
    too_long = [t for t in sc.script(0.0) if len(as_device_name(t).encode()) > 20]
    if too_long:
        raise InputError(None, f"tool names too long for OpenIGTLink ('<Tool>ToTracker' holds 20 bytes: 11 characters a name): "
                               f"{', '.join(too_long)}; stream a tool set with shorter names")
    duration = duration_s or sc.duration_s
    return stream_script(sc.script, port, rate_hz=rate_hz, duration_s=duration, truth_path=truth_path, host=host, seed=seed,
                         wait_for_client_s=wait_for_client_s, stop=stop,
                         on_listening=None if on_listening is None else lambda p: on_listening(host, p, duration))


__all__ = ["KneePhase", "KneeTruth", "LegPose", "TwoArrayScenario", "knee_two_array_scenario", "navigate_two_array_offline",
           "serve_two_array_scenario", "simulate_two_array_navigation"]
