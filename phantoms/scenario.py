"""The scripted OR: what the tracker sees during a simulated knee or hip navigation, with ground truth.

A :class:`Scenario` places the CT (the phantom) at a known, random but plausible pose in front
of the tracker (``tracker_from_ct``, the anatomy 1.2-1.8 m from the camera), fixes a patient
reference marker rigidly to the bone (``ct_from_reference`` at the phantom's reference mount),
and scripts the tools over time. Everything comes from the case (truth + plan), not from the
kind of joint: :func:`~orthonav.phantoms.or_geometry.geometry_from` takes the fiducials, targets
and reference mount from the phantom truth, the cut from the plan (a TKA's distal femoral cut,
else the plan's first cut, e.g. a THA's femoral neck cut ``neck_<side>``) and the plan
trajectory to guide the drill tool along, if the plan has one (a THA plan's planned cup axis,
:func:`~orthonav.phantoms.or_geometry.plan_trajectory`), the same one navigation guides against.

1. The pointer visits every fiducial in the plan's order: it moves for ``move_s`` (lifting off
   the surface) and dwells ``dwell_s`` with its tip exactly at the TRUE fiducial (plus an
   optional, per-fiducial fixed FLE offset). The saw is hidden (None): NOT VISIBLE.
2. Optionally (``surface_points_ct_mm``) the pointer glides over the exposed bone surface
   (surface registration). Then it touches each truth target the same way as the fiducials
   (verification / TRE).
3. The pointer parks away from the anatomy; the saw appears, sweeps along the planned cut
   exactly on-plane, then holds a list of off-plane poses with known flexion, varus and
   distance errors, then is hidden again.
4. Only with a trajectory: the drill tool (a reamer / impactor on a THA cup axis) advances
   along it, then holds poses with known angle and entry-offset errors.

The reference is visible throughout (unless ``reference_dropout_s`` is given).
``scenario.script(t_s)`` is the ``script`` the tracking simulator runs
(``dict[tool, tracker_from_tool | None]``); :meth:`Scenario.truth_at` gives the true guidance
numbers at any time, against which navigation output is checked. :func:`simulate_navigation`
runs the whole thing through :func:`orthonav.navigation.navigate_case`, over a real
OpenIGTLink socket or in process, and scores the recorded session against the truth
(:mod:`orthonav.phantoms.scoring`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike, NDArray

from orthonav.core.errors import InputError, TrackingError
from orthonav.core.transforms import apply, compose, invert, make_rigid, rotation_about_axis
from orthonav.core.vectors import unit
from orthonav.phantoms.or_geometry import KneeGeometry, geometry_from, geometry_from_case, toy_geometry
from orthonav.tracking.frame import ToolPose, ToolStatus, TrackingFrame
from orthonav.tracking.tools import ToolSet, default_toolset

if TYPE_CHECKING:
    from orthonav.navigation import NavigationSummary
    from orthonav.phantoms.scoring import ScoredNavigation

Vec = NDArray[np.float64]

#: Off-plane saw holds scripted by default: (flexion_deg, varus_deg, distance_mm).
DEFAULT_SAW_ERRORS: tuple[tuple[float, float, float], ...] = (
    (3.0, 0.0, 0.0),
    (0.0, -2.0, 0.0),
    (0.0, 0.0, 1.5),
    (2.0, 1.5, -1.0),
    (-1.0, 0.5, 0.5),
    (0.5, 0.0, -0.5),
)


#: Drill (reamer / impactor) holds scripted by default: (angle_deg, entry_offset_mm).
DEFAULT_DRILL_ERRORS: tuple[tuple[float, float], ...] = ((0.0, 0.0), (5.0, 0.0), (0.0, 2.0), (3.0, 1.5), (10.0, 4.0))


# --- poses ---------------------------------------------------------------------------------


def _cross(a: Vec, b: Vec) -> Vec:
    """Cross product of two (3,) vectors (np.cross costs ~50 us per call; this ~2 us: the script
    runs at the tracker rate, up to 1 kHz, in the simulator's thread)."""
    ax, ay, az = a.tolist()
    bx, by, bz = b.tolist()
    return np.array([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx])


def pointer_pose_ct(tip_ct_mm: ArrayLike, direction_ct: ArrayLike, tip_in_tool: ArrayLike, axis_in_tool: ArrayLike) -> Vec:
    """``ct_from_pointer`` with the tip at ``tip_ct_mm`` and the shaft pointing along ``direction_ct``.

    The tool axis (handle -> tip) is mapped to ``direction_ct``; the roll is fixed by CT +z.
    """
    d = unit(direction_ct)
    a = unit(axis_in_tool)
    # Rotation taking tool axis a to d; build frames [a, b, c] -> [d, e, f].
    helper = np.array([0.0, 0.0, 1.0]) if abs(d[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    e = unit(_cross(d, helper))
    f = _cross(d, e)
    helper_t = np.array([1.0, 0.0, 0.0]) if abs(a[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    b = unit(_cross(a, helper_t))
    c = _cross(a, b)
    r = np.array([d, e, f]).T @ np.array([a, b, c])
    t = np.asarray(tip_ct_mm, dtype=np.float64) - r @ np.asarray(tip_in_tool, dtype=np.float64)
    return make_rigid(r, t)


def saw_pose_ct(
    cut_point_mm: ArrayLike,
    cut_normal: ArrayLike,
    anterior: ArrayLike,
    medial: ArrayLike,
    *,
    flexion_deg: float,
    varus_deg: float,
    distance_mm: float,
    along_mm: float,
    across_mm: float,
    tip_in_tool: ArrayLike,
    axis_in_tool: ArrayLike,
    normal_in_tool: ArrayLike,
) -> Vec:
    """``ct_from_saw`` with known errors against a planned cut (the frame's axes orthonormal).

    The blade normal is ``normalise(n - tan(flex) anterior + tan(varus) medial)``; the edge
    centre sits at ``point + distance * n + along * (-anterior) + across * medial``; the cutting
    direction is posterior, projected into the blade plane.
    """
    n, ant, med = (np.asarray(v, dtype=np.float64) for v in (cut_normal, anterior, medial))
    m = unit(n - math.tan(math.radians(flexion_deg)) * ant + math.tan(math.radians(varus_deg)) * med)
    c = -ant - np.dot(-ant, m) * m
    c = unit(c)
    edge = np.asarray(cut_point_mm, dtype=np.float64) + distance_mm * n - along_mm * ant + across_mm * med
    # Tool frame: normal_in_tool -> m, axis_in_tool -> c.
    nt, at = unit(normal_in_tool), unit(axis_in_tool)
    r = np.array([m, c, _cross(m, c)]).T @ np.array([nt, at, _cross(nt, at)])
    return make_rigid(r, edge - r @ np.asarray(tip_in_tool, dtype=np.float64))


def plausible_tracker_from_ct(rng: np.random.Generator, centre_ct_mm: ArrayLike) -> Vec:
    """A random ``tracker_from_ct``: any orientation, the knee centre 1.2-1.8 m along the camera's -z."""
    axis = rng.normal(size=3)
    r = rotation_about_axis(axis, rng.uniform(-math.pi, math.pi))
    where = np.array([rng.uniform(-150, 150), rng.uniform(-150, 150), -rng.uniform(1200.0, 1800.0)])
    return make_rigid(r, where - r @ np.asarray(centre_ct_mm, dtype=np.float64))


@dataclass(frozen=True)
class Phase:
    """One scripted interval ``[t0_s, t1_s)``."""

    name: str  #: e.g. "move", "fiducial", "target", "saw_sweep", "saw_hold", "saw_hidden", "park"
    t0_s: float
    t1_s: float
    label: str = ""  #: fiducial / target name, or the hold index
    saw_errors: tuple[float, float, float] | None = None  #: (flexion_deg, varus_deg, distance_mm)
    drill_errors: tuple[float, float] | None = None  #: (angle_deg, entry_offset_mm) of a drill hold


@dataclass(frozen=True)
class TruthSample:
    """True state at one time.

    Attributes
    ----------
    phase
        The :class:`Phase` active at that time.
    pointer_tip_ct_mm
        (3,) true pointer tip (CT LPS mm), or None when the pointer is hidden.
    saw_visible
        Whether the script shows the saw.
    saw_flexion_deg, saw_varus_deg, saw_distance_mm
        True saw guidance numbers (NaN when the saw is hidden).
    drill_visible, drill_angle_deg, drill_offset_mm, drill_depth_mm
        Whether the script shows the drill, and its true guidance against the trajectory
        (:class:`~orthonav.navigation.guidance.DrillGuidance` definitions; NaN when hidden).
    """

    phase: Phase
    pointer_tip_ct_mm: Vec | None
    saw_visible: bool
    saw_flexion_deg: float
    saw_varus_deg: float
    saw_distance_mm: float
    drill_visible: bool = False
    drill_angle_deg: float = math.nan  #: true drill guidance against the geometry's trajectory
    drill_offset_mm: float = math.nan
    drill_depth_mm: float = math.nan


@dataclass(frozen=True)
class Scenario:
    """A scripted OR session with ground truth (see the module docstring)."""

    geometry: KneeGeometry
    toolset: ToolSet
    tracker_from_ct: Vec
    ct_from_reference: Vec
    phases: tuple[Phase, ...]
    fle_offsets_mm: Vec  #: (n, 3) fixed FLE offset added to each fiducial touch
    anterior: Vec
    reference_dropout_s: tuple[float, float] | None = None
    _pointer_keys: tuple = field(default=(), repr=False)

    @property
    def duration_s(self) -> float:
        return self.phases[-1].t1_s

    @property
    def tracker_from_reference(self) -> Vec:
        return compose(self.tracker_from_ct, self.ct_from_reference)

    def phase_at(self, t_s: float) -> Phase:
        for ph in self.phases:
            if ph.t0_s <= t_s < ph.t1_s:
                return ph
        return self.phases[-1]

    def _pointer_tip_dir(self, t_s: float) -> tuple[Vec, Vec] | None:
        keys = self._pointer_keys  # tuples (t0, t1, tip0, dir0, tip1, dir1, lift_dir)
        for t0, t1, p0, d0, p1, d1, lift in keys:
            if t0 <= t_s < t1:
                u = 0.0 if t1 <= t0 else (t_s - t0) / (t1 - t0)
                s = 0.5 - 0.5 * math.cos(math.pi * u)  # smooth start/stop
                tip = (1 - s) * p0 + s * p1 + 30.0 * math.sin(math.pi * u) * lift
                d = unit((1 - s) * d0 + s * d1)
                return tip, d
        return None

    def _ct_from_pointer(self, t_s: float) -> Vec | None:
        td = self._pointer_tip_dir(t_s)
        if td is None:
            return None
        ptr = self.toolset.by_name()["Pointer"]
        return pointer_pose_ct(td[0], td[1], ptr.tip_in_tool(), ptr.axis_in_tool())

    def _ct_from_saw(self, t_s: float, ph: Phase) -> Vec | None:
        g = self.geometry
        saw = self.toolset.by_name()["Saw"]
        common = dict(tip_in_tool=saw.tip_in_tool(), axis_in_tool=saw.axis_in_tool(), normal_in_tool=saw.normal_in_tool())
        if ph.name == "saw_sweep":
            u = (t_s - ph.t0_s) / (ph.t1_s - ph.t0_s)
            along = -45.0 + 65.0 * u  # from 45 mm anterior of the cut point to 20 mm posterior
            across = 12.0 * math.sin(2 * math.pi * u)
            return saw_pose_ct(g.cut_point_mm, g.cut_normal, self.anterior, g.medial, flexion_deg=0.0, varus_deg=0.0,
                               distance_mm=0.0, along_mm=along, across_mm=across, **common)
        if ph.name == "saw_hold" and ph.saw_errors is not None:
            f, v, d = ph.saw_errors
            return saw_pose_ct(g.cut_point_mm, g.cut_normal, self.anterior, g.medial, flexion_deg=f, varus_deg=v,
                               distance_mm=d, along_mm=-5.0, across_mm=3.0, **common)
        return None

    def _drill_state(self, t_s: float, ph: Phase) -> tuple[Vec, Vec, float, float, float] | None:
        """(tip, axis direction, angle_deg, entry_offset_mm, depth_mm) of the drill in CT, or None.

        ``drill_approach``: on the trajectory, the tip going from the entry to 5 mm short of the
        target. ``drill_hold``: the tip 20 mm past the entry, moved ``offset`` off the line, the
        axis tilted by ``angle`` (both about fixed directions perpendicular to the trajectory).
        """
        g = self.geometry
        if g.trajectory_entry_mm is None or g.trajectory_target_mm is None or ph.name not in ("drill_approach", "drill_hold"):
            return None
        entry, target = g.trajectory_entry_mm, g.trajectory_target_mm
        length = float(np.linalg.norm(target - entry))
        d = (target - entry) / length
        if ph.name == "drill_approach":
            u = (t_s - ph.t0_s) / (ph.t1_s - ph.t0_s)
            s_mm = (0.5 - 0.5 * math.cos(math.pi * u)) * max(length - 5.0, 0.0)
            return entry + s_mm * d, d, 0.0, 0.0, length - s_mm
        angle, offset = ph.drill_errors or (0.0, 0.0)
        helper = self.anterior if abs(float(self.anterior @ d)) < 0.9 else g.medial
        tilt_axis = unit(_cross(d, helper))
        side = _cross(d, tilt_axis)
        axis = rotation_about_axis(tilt_axis, math.radians(angle)) @ d
        return entry + 20.0 * d + offset * side, axis, float(angle), float(abs(offset)), length - 20.0

    def script(self, t_s: float) -> dict[str, Vec | None]:
        """Tool poses at time ``t_s`` (s from the start): ``tracker_from_tool`` or None (not visible).

        A ``Drill`` entry is present only when the geometry has a trajectory."""
        ph = self.phase_at(t_s)
        out: dict[str, Vec | None] = {}
        ref_hidden = self.reference_dropout_s is not None and self.reference_dropout_s[0] <= t_s < self.reference_dropout_s[1]
        out["Reference"] = None if ref_hidden else self.tracker_from_reference
        ptr = self._ct_from_pointer(t_s)
        out["Pointer"] = None if ptr is None else compose(self.tracker_from_ct, ptr)
        saw = self._ct_from_saw(t_s, ph)
        out["Saw"] = None if saw is None else compose(self.tracker_from_ct, saw)
        if self.geometry.trajectory_name:
            dr = self._drill_state(t_s, ph)
            if dr is None:
                out["Drill"] = None
            else:
                tool = self.toolset.by_name()["Drill"]
                ct_from_drill = pointer_pose_ct(dr[0], dr[1], tool.tip_in_tool(), tool.axis_in_tool())
                out["Drill"] = compose(self.tracker_from_ct, ct_from_drill)
        return out

    def truth_at(self, t_s: float) -> TruthSample:
        """The true state at ``t_s``: phase, pointer tip (CT) and saw guidance numbers."""
        ph = self.phase_at(t_s)
        td = self._pointer_tip_dir(t_s)
        saw_visible = ph.name in ("saw_sweep", "saw_hold")
        if ph.name == "saw_sweep":
            f, v, d = 0.0, 0.0, 0.0
        elif ph.name == "saw_hold" and ph.saw_errors is not None:
            f, v, d = ph.saw_errors
        else:
            f = v = d = math.nan
        dr = self._drill_state(t_s, ph)
        if dr is None:
            return TruthSample(ph, None if td is None else td[0], saw_visible, f, v, d)
        return TruthSample(ph, None if td is None else td[0], saw_visible, f, v, d, True, dr[2], dr[3], dr[4])

    def true_points_reference_mm(self) -> Vec:
        """(n, 3) true fiducials in the reference frame (no FLE): what perfect digitisation gives."""
        return apply(invert(self.ct_from_reference), self.geometry.fiducials_ct_mm)

    def frames(self, rate_hz: float, *, tracker_noise_mm: float = 0.0, rotation_noise_deg: float = 0.0, seed: int = 0,
               t0_s: float = 0.0, t1_s: float | None = None) -> Iterator[TrackingFrame]:
        """Tracking frames sampled from the script at ``rate_hz`` on a simulated clock (no threads).

        Host and device time are both the script time ``t_s``. Noise is the tracking
        simulator's model (:func:`orthonav.tracking.simulator.add_noise`), per tool and sample.
        """
        return script_frames(self.script, rate_hz, t0_s=t0_s, t1_s=self.duration_s if t1_s is None else t1_s,
                             tracker_noise_mm=tracker_noise_mm, rotation_noise_deg=rotation_noise_deg, seed=seed)


def script_frames(script: Callable[[float], Mapping[str, Vec | None]], rate_hz: float, *, t0_s: float = 0.0, t1_s: float,
                  tracker_noise_mm: float = 0.0, rotation_noise_deg: float = 0.0, seed: int = 0) -> Iterator[TrackingFrame]:
    """Tracking frames of a script (``script(t_s) -> {tool: tracker_from_tool | None}``) sampled
    at ``rate_hz`` over ``[t0_s, t1_s)`` on a simulated clock (no threads).

    Host and device time are both the script time ``t_s``. Noise is the tracking simulator's
    model (:func:`orthonav.tracking.simulator.add_noise`), per tool and sample; a None pose is
    NOT_VISIBLE. Shared by every scripted OR (:class:`Scenario`, the two-array knee scenario).
    """
    from orthonav.tracking.simulator import add_noise

    rng = np.random.default_rng(seed)
    n = int(math.floor((t1_s - t0_s) * rate_hz))
    for i in range(n):
        t = t0_s + i / rate_hz
        tools = {}
        for name, pose in script(t).items():
            if pose is None:
                tools[name] = ToolPose(ToolStatus.NOT_VISIBLE, None, math.nan, t, t)
                continue
            if tracker_noise_mm > 0 or rotation_noise_deg > 0:
                pose = add_noise(pose, rng, tracker_noise_mm, rotation_noise_deg)
            tools[name] = ToolPose(ToolStatus.LIVE, pose, tracker_noise_mm, t, t)
        yield TrackingFrame(tools=tools, host_time_s=t, sequence=i + 1)


def knee_scenario(
    source: str | Path | KneeGeometry | tuple[object, object],
    *,
    seed: int = 0,
    fle_mm: float = 0.0,
    move_s: float = 0.5,
    dwell_s: float = 0.6,
    saw_hidden_s: float = 0.5,
    sweep_s: float = 2.0,
    hold_s: float = 0.5,
    saw_errors: Sequence[tuple[float, float, float]] = DEFAULT_SAW_ERRORS,
    touch_targets: bool = True,
    toolset: ToolSet | None = None,
    reference_dropout_s: tuple[float, float] | None = None,
    surface_points_ct_mm: ArrayLike | None = None,
    surface_step_s: float = 0.05,
    lead_in_s: float = 1.0,
    drill_s: float = 2.0,
    drill_errors: Sequence[tuple[float, float]] = DEFAULT_DRILL_ERRORS,
) -> Scenario:
    """Build the scripted knee session.

    Parameters
    ----------
    source
        A phantom case folder (``truth/truth.json`` + ``plan.json``), a ``(truth, plan)`` pair,
        or a :class:`KneeGeometry` (e.g. :func:`toy_geometry`).
    seed
        Seeds ``tracker_from_ct``, the reference orientation, approach tilts and the FLE offsets.
    fle_mm
        RMS (3D) of the fixed per-fiducial localisation offset added to each fiducial touch.
    move_s, dwell_s
        Pointer travel time between points and dwell time on each point (s).
    saw_hidden_s, sweep_s, hold_s
        Saw hidden before appearing; on-plane sweep; each off-plane hold (s).
    saw_errors
        Off-plane holds as (flexion_deg, varus_deg, distance_mm).
    touch_targets
        Also touch every truth target after the fiducials.
    reference_dropout_s
        Optional (t0, t1) during which the reference is not visible.
    surface_points_ct_mm
        Optional (m, 3) points on the bone surface (CT): after the fiducials the pointer glides
        through them in the given order, ``surface_step_s`` per point, tip on the surface
        (phase ``"surface"``), for surface registration.
    lead_in_s
        The pointer (and saw) are not visible for this long at the start (the surgeon picks the
        pointer up; the navigator settles), phase ``"lead_in"``.
    drill_s, drill_errors
        Only when the geometry has a trajectory (a THA plan's cup axis): after the saw, the
        ``Drill`` tool (the reamer / impactor) advances along it for ``drill_s`` (phase
        ``"drill_approach"``), then holds each (angle_deg, entry_offset_mm) error for ``hold_s``
        (``"drill_hold"``).
    """
    if isinstance(source, KneeGeometry):
        geo = source
    elif isinstance(source, tuple):
        geo = geometry_from(*source)
    else:
        geo = geometry_from_case(source)
    tools = toolset or default_toolset()
    for needed in ("Reference", "Pointer", "Saw") + (("Drill",) if geo.trajectory_name else ()):
        if needed not in tools.by_name():
            raise InputError(None, f"the tool set has no '{needed}' tool")
    rng = np.random.default_rng(seed)
    tracker_from_ct = plausible_tracker_from_ct(rng, geo.centre_ct_mm)
    ref_rot = rotation_about_axis(rng.normal(size=3), rng.uniform(-math.pi, math.pi))
    ct_from_reference = make_rigid(ref_rot, geo.reference_mount_ct_mm)
    n = len(geo.fiducial_names)
    fle = rng.normal(scale=fle_mm / math.sqrt(3.0), size=(n, 3)) if fle_mm > 0 else np.zeros((n, 3))
    anterior = np.array([0.0, -1.0, 0.0]) - np.dot([0.0, -1.0, 0.0], geo.cut_normal) * geo.cut_normal
    anterior = unit(anterior)
    medial = geo.medial - np.dot(geo.medial, geo.cut_normal) * geo.cut_normal - np.dot(geo.medial, anterior) * anterior
    geo = KneeGeometry(**{**geo.__dict__, "medial": unit(medial), "cut_normal": unit(geo.cut_normal)})

    def approach(p: Vec) -> Vec:
        out = unit(p - geo.centre_ct_mm)
        tilt = rng.normal(scale=0.25, size=3)
        return unit(-(out + tilt - np.dot(tilt, out) * out))  # shaft points into the bone

    points: list[tuple[str, str, Vec]] = [("fiducial", nm, geo.fiducials_ct_mm[i] + fle[i]) for i, nm in enumerate(geo.fiducial_names)]
    targets = [("target", nm, np.asarray(p, dtype=np.float64)) for nm, p in geo.targets_ct_mm.items()] if touch_targets else []
    phases: list[Phase] = []
    keys: list[tuple] = []
    home_tip = geo.centre_ct_mm + 120.0 * anterior + 60.0 * geo.medial
    home_dir = unit(geo.centre_ct_mm - home_tip)
    cur_tip, cur_dir = home_tip, home_dir
    t = 0.0
    if lead_in_s > 0:
        phases.append(Phase("lead_in", 0.0, lead_in_s))
        t = lead_in_s
    surface = None if surface_points_ct_mm is None else np.asarray(surface_points_ct_mm, dtype=np.float64).reshape(-1, 3)
    for kind, name, p in points + [("surface", "", np.zeros(3))] + targets:
        if kind == "surface":
            if surface is None or len(surface) == 0:
                continue
            d = approach(surface[0])
            keys.append((t, t + move_s, cur_tip, cur_dir, surface[0], d, unit(surface[0] - geo.centre_ct_mm)))
            phases.append(Phase("move", t, t + move_s, "surface"))
            t += move_s
            t_start = t
            for a, b in zip(surface[:-1], surface[1:]):
                keys.append((t, t + surface_step_s, a, d, b, d, np.zeros(3)))
                t += surface_step_s
            phases.append(Phase("surface", t_start, t, f"{len(surface)} points"))
            cur_tip, cur_dir = surface[-1], d
            continue
        d = approach(p)
        lift = unit(p - geo.centre_ct_mm)
        keys.append((t, t + move_s, cur_tip, cur_dir, p, d, lift))
        phases.append(Phase("move", t, t + move_s, name))
        t += move_s
        keys.append((t, t + dwell_s, p, d, p, d, np.zeros(3)))
        phases.append(Phase(kind, t, t + dwell_s, name))
        t += dwell_s
        cur_tip, cur_dir = p, d
    park_tip = geo.centre_ct_mm + 150.0 * anterior - 80.0 * geo.medial
    keys.append((t, t + move_s, cur_tip, cur_dir, park_tip, home_dir, anterior))
    phases.append(Phase("move", t, t + move_s, "park"))
    t += move_s
    saw_end = t + saw_hidden_s + sweep_s + hold_s * len(saw_errors) + 0.3
    if geo.trajectory_name:
        saw_end += drill_s + hold_s * len(drill_errors) + 0.3
    keys.append((t, saw_end, park_tip, home_dir, park_tip, home_dir, np.zeros(3)))
    phases.append(Phase("saw_hidden", t, t + saw_hidden_s))
    t += saw_hidden_s
    phases.append(Phase("saw_sweep", t, t + sweep_s))
    t += sweep_s
    for i, err in enumerate(saw_errors):
        phases.append(Phase("saw_hold", t, t + hold_s, str(i), tuple(float(x) for x in err)))
        t += hold_s
    if geo.trajectory_name:
        phases.append(Phase("saw_hidden", t, t + 0.3))
        t += 0.3
        phases.append(Phase("drill_approach", t, t + drill_s, geo.trajectory_name))
        t += drill_s
        for i, (ang, off) in enumerate(drill_errors):
            phases.append(Phase("drill_hold", t, t + hold_s, str(i), drill_errors=(float(ang), float(off))))
            t += hold_s
    phases.append(Phase("saw_hidden", t, saw_end))
    return Scenario(
        geometry=geo,
        toolset=tools,
        tracker_from_ct=tracker_from_ct,
        ct_from_reference=ct_from_reference,
        phases=tuple(phases),
        fle_offsets_mm=fle,
        anterior=anterior,
        reference_dropout_s=reference_dropout_s,
        _pointer_keys=tuple(keys),
    )


def write_toy_case(case_dir: str | Path, geometry: KneeGeometry | None = None, *, detection_error_mm: float = 0.0, seed: int = 0,
                   resolution: int = 60, with_ct: bool = False) -> KneeGeometry:
    """Write a minimal navigable case for :func:`toy_geometry` (tests, benchmarks, demos without a phantom).

    ``meshes/femur.stl`` is an ellipsoid (semi-axes 45, 40, 110 mm, centre (0, 0, 70)): a
    stand-in distal femur crossed by the toy cut z = 0. ``plan.json`` holds the fiducials
    (true positions plus an optional isotropic detection error of RMS ``detection_error_mm``),
    the epicondyles and the distal femoral cut. With ``with_ct`` a coarse ``ct.nii.gz``
    (1.5 mm voxels: air, a soft-tissue cylinder, the ellipsoid as bone with a cortex) is written.
    """
    from orthonav.core.case import Case
    from orthonav.core.meshio import write_mesh
    from orthonav.planning.schema import CutPlane, Landmark, Plan, save_plan
    import pyvista as pv

    geo = geometry or toy_geometry(seed=seed)
    case = Case(case_dir)
    case.root.mkdir(parents=True, exist_ok=True)
    bone = pv.ParametricEllipsoid(45.0, 40.0, 110.0, u_res=resolution, v_res=resolution, w_res=resolution).triangulate().clean()
    bone = bone.translate((0.0, 0.0, 70.0), inplace=False)
    write_mesh(bone, case.mesh("femur"))
    rng = np.random.default_rng(seed + 1)
    err = rng.normal(scale=detection_error_mm / math.sqrt(3.0), size=geo.fiducials_ct_mm.shape) if detection_error_mm > 0 else 0.0
    detected = geo.fiducials_ct_mm + err
    lms = {n: Landmark(position_lps_mm=tuple(map(float, p)), bone="femur", method="toy bead") for n, p in zip(geo.fiducial_names, detected)}
    lms["medial_epicondyle"] = Landmark(position_lps_mm=tuple(map(float, geo.centre_ct_mm + 45.0 * geo.medial)), bone="femur", method="toy")
    lms["lateral_epicondyle"] = Landmark(position_lps_mm=tuple(map(float, geo.centre_ct_mm - 45.0 * geo.medial)), bone="femur", method="toy")
    cut = CutPlane(bone="femur", point_lps_mm=tuple(map(float, geo.cut_point_mm)), normal_lps=tuple(map(float, geo.cut_normal)),
                   resection_depth_mm=9.0, reference="toy")
    save_plan(case.plan, Plan(procedure="tka", side="right", landmarks=lms, cuts={"distal_femur": cut}))
    if with_ct:
        from orthonav.core.volume import Volume, make_lps_from_ijk, write_volume

        sp = 1.5
        origin = np.array([-75.0, -75.0, -60.0])
        ni, nj, nk = 101, 101, 175
        k, j, i = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
        x, y, z = origin[0] + sp * i, origin[1] + sp * j, origin[2] + sp * k
        hu = np.full((nk, nj, ni), -1000, dtype=np.int16)
        hu[x**2 + y**2 < 70.0**2] = 40
        e = (x / 45.0) ** 2 + (y / 40.0) ** 2 + ((z - 70.0) / 110.0) ** 2
        hu[e < 1.0] = 1200
        hu[e < 0.85] = 300
        write_volume(Volume(hu, make_lps_from_ijk([sp, sp, sp], origin)), case.ct)
    return geo


def simulate_navigation(
    case_dir: str | Path,
    *,
    seed: int = 0,
    fle_mm: float = 0.25,
    rate_hz: float = 100.0,
    over_socket: bool = True,
    port: int = 0,
    tracker_noise_mm: float = 0.1,
    rotation_noise_deg: float = 0.05,
    off_screen: bool = True,
    screenshot_every_s: float | None = 2.0,
    progress=None,
    geometry: KneeGeometry | None = None,
    render: bool = True,
    **scenario_options: object,
) -> tuple[ScoredNavigation, Scenario]:
    """Navigate a phantom (or toy) case with the scripted OR, end to end, and score the run.

    Builds :func:`knee_scenario` for ``case_dir`` and runs
    :func:`orthonav.navigation.navigate_case` on it, either over a real OpenIGTLink socket
    (``stream_script`` on 127.0.0.1 + ``IGTLClientSource``) or with the in-process
    ``SimulatedSource``. Navigation gets the truth targets as its verification check points
    and nothing else of the truth; the recorded session is then scored against the truth
    (true TRE, saw guidance errors by script time: :func:`orthonav.phantoms.scoring.scored_run`,
    also written to ``<session>/scores.json``). ``geometry`` replaces ``truth/truth.json``
    (e.g. for a case written by :func:`write_toy_case`).

    Returns
    -------
    (ScoredNavigation, Scenario)
        The navigation summary with ``tre_mm`` and ``guidance_error``, and the scripted OR.
    """
    from orthonav.phantoms.scoring import scored_run

    case_dir = Path(case_dir)
    sc = knee_scenario(geometry if geometry is not None else case_dir, seed=seed, fle_mm=fle_mm, **scenario_options)  # type: ignore[arg-type]
    targets = dict(sc.geometry.targets_ct_mm)
    summary, script_time = navigate_script(
        case_dir, sc.script, sc.duration_s, toolset=sc.toolset, over_socket=over_socket, rate_hz=rate_hz, port=port,
        tracker_noise_mm=tracker_noise_mm, rotation_noise_deg=rotation_noise_deg, seed=seed,
        off_screen=off_screen, screenshot_every_s=screenshot_every_s, progress=progress, check_points_ct_mm=targets, render=render)
    return scored_run(summary, targets_ct_mm=targets, true_ct_from_reference=sc.ct_from_reference,
                      truth_at=lambda device_time_s: sc.truth_at(script_time(device_time_s))), sc


def navigate_script(case_dir: str | Path, script: Callable[[float], Mapping[str, Vec | None]], duration_s: float, *,
                    toolset: ToolSet, over_socket: bool = True, rate_hz: float = 100.0, port: int = 0,
                    tracker_noise_mm: float = 0.1, rotation_noise_deg: float = 0.05, seed: int = 0,
                    **navigate_options: object) -> tuple[NavigationSummary, Callable[[float], float]]:
    """Run :func:`orthonav.navigation.navigate_case` on a scripted OR (any ``script``), end to end.

    Over a real OpenIGTLink socket (``stream_script`` on 127.0.0.1 + ``IGTLClientSource``) or
    with the in-process ``SimulatedSource`` (``over_socket=False``). Shared by every scripted OR
    (:func:`simulate_navigation`, the two-array knee's driver).

    Returns
    -------
    (NavigationSummary, script_time)
        The run's summary and ``script_time(device_time_s) -> s`` mapping a pose's device time
        to script time (over a socket the device time is the sender's wall clock).
    """
    import threading

    from orthonav.navigation import navigate_case
    from orthonav.tracking.simulator import SimulatedSource, stream_script

    if not over_socket:
        source = SimulatedSource(script, rate_hz=rate_hz, tracker_noise_mm=tracker_noise_mm, rotation_noise_deg=rotation_noise_deg,
                                 seed=seed, tools=toolset)
        summary = navigate_case(case_dir, source, duration_s=duration_s + 0.3, toolset=toolset, **navigate_options)  # type: ignore[arg-type]
        return summary, lambda device_time_s: device_time_s

    from orthonav.tracking.igtl_client import IGTLClientSource

    # Device time on the wire is the sender's wall clock at script time 0 plus script time.
    epoch: list[float] = []

    def script_time(device_time_s: float) -> float:
        return device_time_s - epoch[0] if epoch else -1.0

    listening = threading.Event()
    box: dict[str, object] = {}

    def serve() -> None:
        try:
            stream_script(script, port, rate_hz=rate_hz, duration_s=duration_s, wait_for_client_s=30.0, seed=seed, on_start=epoch.append,
                          tracker_noise_mm=tracker_noise_mm, rotation_noise_deg=rotation_noise_deg,
                          on_listening=lambda p: (box.__setitem__("port", p), listening.set()))
        except BaseException as e:  # re-raised in the caller's thread below
            box["error"] = e
            listening.set()

    th = threading.Thread(target=serve, name="scenario-stream", daemon=True)
    th.start()
    if not listening.wait(30.0) or "error" in box:
        th.join(timeout=1.0)
        raise TrackingError(f"the simulated tracker did not start: {box.get('error')!r}") from box.get("error")  # type: ignore[misc]
    source = IGTLClientSource("127.0.0.1", int(box["port"]), tools=toolset)  # type: ignore[arg-type]
    summary = navigate_case(case_dir, source, duration_s=duration_s + 1.0, toolset=toolset, **navigate_options)  # type: ignore[arg-type]
    th.join(timeout=10.0)
    if "error" in box:
        raise TrackingError(f"the simulated tracker failed: {box['error']!r}") from box["error"]  # type: ignore[misc]
    return summary, script_time


def serve_scenario(
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
    stop: threading.Event | None = None,
):
    """``orthonav simulate-tracker``: stream the phantom's OR script over OpenIGTLink.

    ``on_listening(host, port, duration_s)`` is called once the socket listens (the script's
    length in s), so a caller can say where to connect. ``stop``: an event that ends the
    stream early (a caller done with it).

    The script's clock starts when the first client (``orthonav navigate``) connects (waiting
    up to ``wait_for_client_s``), so the navigator sees the whole session. Tools go out as
    ``<Tool>ToTracker`` (RAS on the wire). Returns the tracking simulator's ``StreamStats``.
    """
    from orthonav.tracking.simulator import stream_script

    sc = knee_scenario(case_dir, seed=seed, fle_mm=fle_mm)
    duration = duration_s or sc.duration_s
    return stream_script(sc.script, port, rate_hz=rate_hz, duration_s=duration, truth_path=truth_path,
                         host=host, seed=seed, wait_for_client_s=wait_for_client_s, stop=stop,
                         on_listening=None if on_listening is None else lambda p: on_listening(host, p, duration))
