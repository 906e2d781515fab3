"""The navigation state of one tracking frame: tool poses in the CT, per-tool status, guidance.

:func:`compute_state` is deterministic in its inputs (a :class:`TrackingFrame` and a
:class:`NavigationContext`): replaying recorded frames reproduces every guidance number
exactly. Only ``latency_s`` depends on the wall clock.

Pose chain (SlicerIGT-style, patient motion compensated)::

    ct_from_tool = ct_from_reference @ inv(tracker_from_reference) @ tracker_from_tool

Watchdog: a tool is LIVE only when its pose is LIVE in the frame and not older than its
timeout at the frame's time; when the Reference is not LIVE (or there is no registration yet)
every tool is NOT_TRACKING and no pose or guidance is shown. A state is itself a snapshot: a
display that shows the newest state must pass it through :func:`expire_state` with the current
time, so that a tracking thread that stalls or dies turns the screen NOT TRACKING instead of
freezing the last poses on it as if they were live.

Plausibility: navigation never computes or shows numbers from an absurd pose, whatever let it
through. A pose (reference or tool) with a non-finite entry or a translation beyond
``MAX_POSE_MM`` in the tracker's frame is implausible: for the reference the state is NOT
TRACKING (reason "reference pose implausible"), for a tool it is IMPLAUSIBLE (reason in its
:class:`ToolState`). So is a tool whose tip lies outside the workspace: the box around the
bones, the planned points and the patient reference (CT LPS), padded by
``WORKSPACE_MARGIN_MM`` on every side (:func:`workspace_box`).
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from numpy.typing import NDArray

from orthonav.core.vectors import unit
from orthonav.tracking.frame import ToolStatus, TrackingFrame
from orthonav.tracking.tools import ToolSet

from .guidance import (
    BoneSurface,
    CutFrame,
    DrillGuidance,
    SawGuidance,
    ToolGeometry,
    drill_guidance_rows,
    nearest_surface,
    remaining_depth_rows,
    saw_guidance_rows,
    tool_geometry,
)
from .vec3 import Vec3, transform, vec3


class NavStatus(str, enum.Enum):
    """What the screen may show for a tool."""

    LIVE = "live"  #: fresh pose, registered, reference visible
    NOT_VISIBLE = "not_visible"  #: the tracker does not see the tool (or never saw it)
    STALE = "stale"  #: the newest pose is older than the tool's timeout
    NOT_TRACKING = "not_tracking"  #: reference not visible or no registration: nothing is shown
    IMPLAUSIBLE = "implausible"  #: the pose is not finite, or puts the tool outside the workspace: not shown


#: A tool tip farther than this outside the box around the bones, planned points and patient
#: reference (mm, on every side) is outside the workspace: no optical or electromagnetic
#: tracker measures a tool 3 m away from the patient it is tracking (their measurement volumes
#: span at most ~2.5 m), so such a pose is a corrupt or mis-framed one, not an instrument.
WORKSPACE_MARGIN_MM = 3000.0

#: Largest translation (mm) of a plausible pose in the tracker's frame (100 m): far beyond any
#: tracker's range (the receiving side rejects much less, see :mod:`orthonav.tracking`), it
#: only keeps huge finite values (e.g. 3e38) out of the pose chain, where they would cancel
#: into plausible-looking numbers.
MAX_POSE_MM = 1e5

#: :attr:`ToolState.reason` of an IMPLAUSIBLE tool.
IMPLAUSIBLE_POSE = f"pose not finite or beyond {MAX_POSE_MM / 1000:g} m"
OUTSIDE_WORKSPACE = f"tip outside the workspace ({WORKSPACE_MARGIN_MM / 1000:g} m around the patient)"


@dataclass(frozen=True)
class ToolState:
    """One tool in one navigation state.

    Attributes
    ----------
    status
        :class:`NavStatus`.
    ct_from_tool
        (4, 4) tool pose in the CT (LPS mm), only when LIVE.
    tip_ct_mm
        (3,) tool tip in CT LPS (mm), only when LIVE.
    age_s
        Frame time minus the host receipt time of the tool's newest message (s); NaN if none.
    device_time_s
        Source timestamp of the tool's newest message (s, source clock); NaN if none.
    reason
        Why an IMPLAUSIBLE tool is not shown (``IMPLAUSIBLE_POSE`` or ``OUTSIDE_WORKSPACE``); else "".
    """

    status: NavStatus
    ct_from_tool: NDArray[np.float64] | None = None
    tip_ct_mm: NDArray[np.float64] | None = None
    age_s: float = math.nan
    device_time_s: float = math.nan
    reason: str = ""

    @property
    def live(self) -> bool:
        return self.status is NavStatus.LIVE


@dataclass(frozen=True)
class NavigationContext:
    """Everything :func:`compute_state` needs besides the frame (fixed during navigation).

    Attributes
    ----------
    toolset
        Tool definitions (tips, axes, timeouts).
    ct_from_reference
        (4, 4) registration, or None before registration (state is NOT_TRACKING).
    cuts
        Cut name -> :class:`CutFrame` (e.g. ``distal_femur``).
    cut_bones
        Cut name -> bone name (for remaining depth against that bone's surface).
    trajectories
        Name -> (entry (3,), target (3,)) CT LPS mm.
    surfaces
        Bone name -> :class:`BoneSurface` (tip-to-bone distance, remaining depth).
    reference
        Name of the patient reference tool.
    """

    toolset: ToolSet
    ct_from_reference: NDArray[np.float64] | None = None
    cuts: Mapping[str, CutFrame] = field(default_factory=dict)
    cut_bones: Mapping[str, str] = field(default_factory=dict)
    trajectories: Mapping[str, tuple[NDArray[np.float64], NDArray[np.float64]]] = field(default_factory=dict)
    surfaces: Mapping[str, BoneSurface] = field(default_factory=dict)
    reference: str = "Reference"

    def with_registration(self, ct_from_reference: NDArray[np.float64]) -> NavigationContext:
        return NavigationContext(self.toolset, np.asarray(ct_from_reference, dtype=np.float64), self.cuts, self.cut_bones,
                                 self.trajectories, self.surfaces, self.reference)

    @cached_property
    def compiled(self) -> _Compiled:
        """Per-context constants of :func:`compute_state`, built on first use (the context is
        fixed during navigation: a new registration is a new context)."""
        return _compile(self)


@dataclass(frozen=True)
class _ToolConst:
    name: str
    kind: str
    timeout_s: float
    geometry: ToolGeometry


@dataclass(frozen=True)
class _Compiled:
    """What :func:`compute_state` needs from a context, precomputed once: tool constants as
    plain floats, the registration as nested lists, each cut with the surface for its depth,
    each trajectory with its unit direction."""

    reference: str
    reference_timeout_s: float
    tools: tuple[_ToolConst, ...]  #: every tool but the reference, tool-set order
    ct_from_reference: list[list[float]] | None
    cuts: tuple[tuple[str, CutFrame, BoneSurface | None], ...]
    trajectories: tuple[tuple[str, Vec3, Vec3, Vec3], ...]  #: name, entry, target, unit direction (CT LPS)
    surfaces: tuple[tuple[str, BoneSurface], ...]
    workspace_lo: Vec3  #: the workspace box (CT LPS mm): a LIVE tool's tip must lie inside it
    workspace_hi: Vec3


def _compile(ctx: NavigationContext) -> _Compiled:
    defs = ctx.toolset.by_name()
    ref_timeout = defs[ctx.reference].timeout_s if ctx.reference in defs else 0.25
    tools = tuple(_ToolConst(n, t.kind, t.timeout_s, tool_geometry(t)) for n, t in defs.items() if n != ctx.reference)
    cuts = tuple((name, cf, ctx.surfaces.get(ctx.cut_bones.get(name, ""))) for name, cf in ctx.cuts.items())
    trajs = []
    for name, (entry, target) in ctx.trajectories.items():
        e = np.asarray(entry, dtype=np.float64).reshape(3)
        t = np.asarray(target, dtype=np.float64).reshape(3)
        trajs.append((name, vec3(e), vec3(t), vec3(unit(t - e, f"planned trajectory '{name}' (entry equals target)"))))
    reg = None if ctx.ct_from_reference is None else np.asarray(ctx.ct_from_reference, dtype=np.float64).reshape(4, 4).tolist()
    lo, hi = workspace_box(ctx)
    return _Compiled(ctx.reference, ref_timeout, tools, reg, cuts, tuple(trajs), tuple(ctx.surfaces.items()), lo, hi)


def workspace_box(ctx: NavigationContext, margin_mm: float = WORKSPACE_MARGIN_MM) -> tuple[Vec3, Vec3]:
    """The workspace (CT LPS mm): the box around the bone surfaces, the planned cut points and
    trajectories and the patient reference (``ct_from_reference``), padded by ``margin_mm``.

    With none of these (no anatomy, no plan, no registration) the box is centred on the CT
    origin. Returns (lower corner, upper corner).
    """
    pts = [np.asarray(s.mesh.bounds, dtype=np.float64).reshape(3, 2).T for s in ctx.surfaces.values()]
    pts += [np.asarray(cf.point_mm, dtype=np.float64).reshape(1, 3) for cf in ctx.cuts.values()]
    pts += [np.asarray(e, dtype=np.float64).reshape(1, 3) for pair in ctx.trajectories.values() for e in pair]
    if ctx.ct_from_reference is not None:
        pts.append(np.asarray(ctx.ct_from_reference, dtype=np.float64).reshape(4, 4)[None, :3, 3])
    a = np.vstack(pts) if pts else np.zeros((0, 3))
    a = a[np.all(np.isfinite(a), axis=1)]
    if len(a) == 0:
        a = np.zeros((1, 3))
    return vec3(a.min(axis=0) - margin_mm), vec3(a.max(axis=0) + margin_mm)


def pose_is_plausible(m: list[list[float]], max_translation_mm: float = MAX_POSE_MM) -> bool:
    """True when a rigid 4x4 (nested lists) is finite and translates by at most ``max_translation_mm``."""
    r0, r1, r2 = m[0], m[1], m[2]
    if not math.isfinite(r0[0] + r0[1] + r0[2] + r1[0] + r1[1] + r1[2] + r2[0] + r2[1] + r2[2]):
        return False  # a NaN or an infinity anywhere (or a sum that overflows: absurd entries)
    return math.hypot(r0[3], r1[3], r2[3]) <= max_translation_mm  # False for NaN / inf


@dataclass(frozen=True)
class NavigationState:
    """The navigation state after one tracking frame.

    Attributes
    ----------
    sequence, host_time_s
        From the tracking frame (host time is ``time.monotonic()`` s at the snapshot).
    tracking
        True when registered and the reference is LIVE; otherwise the screen shows NOT TRACKING.
    tools
        Tool name -> :class:`ToolState` (every tool of the tool set except the reference).
    saw
        Cut name -> :class:`SawGuidance` while the saw is LIVE (else empty); the remaining depth
        is computed only for the cut the blade is nearest to (NaN for the others).
    drill
        Trajectory name -> :class:`DrillGuidance` while the drill is LIVE (else empty).
    pointer_to_bone_mm
        Signed distance of the pointer tip to the nearest bone surface (mm, negative inside; see
        :meth:`BoneSurface.signed_distance_mm`), NaN if the pointer is not LIVE (an implausible
        pose never is) or no surface is loaded.
    latency_s
        Host receipt of the newest message in the frame -> this state computed (s).
    """

    sequence: int
    host_time_s: float
    tracking: bool
    tools: Mapping[str, ToolState]
    saw: Mapping[str, SawGuidance] = field(default_factory=dict)
    drill: Mapping[str, DrillGuidance] = field(default_factory=dict)
    pointer_to_bone_mm: float = math.nan
    pointer_bone: str = ""
    latency_s: float = math.nan
    reason: str = ""  #: why not tracking: "not registered", "reference not visible" / "reference stale" / "reference pose implausible"

    def status(self, tool: str) -> NavStatus:
        t = self.tools.get(tool)
        return t.status if t is not None else NavStatus.NOT_VISIBLE


def _tool_status(frame: TrackingFrame, name: str, timeout_s: float, now_s: float) -> tuple[NavStatus, float]:
    pose = frame.tools.get(name)
    if pose is None:
        return NavStatus.NOT_VISIBLE, math.nan
    age = now_s - pose.host_time_s if math.isfinite(pose.host_time_s) else math.nan
    if pose.status is ToolStatus.TIMED_OUT:
        return NavStatus.STALE, age
    if pose.status is not ToolStatus.LIVE:
        return NavStatus.NOT_VISIBLE, age
    if not (age <= timeout_s):  # NaN age is stale too
        return NavStatus.STALE, age
    return NavStatus.LIVE, age


def newest_receipt_s(frame: TrackingFrame) -> float:
    """Host receipt time (s) of the newest LIVE message in ``frame`` (NaN if none)."""
    times = [p.host_time_s for p in frame.tools.values() if p.status is ToolStatus.LIVE and math.isfinite(p.host_time_s)]
    return max(times) if times else math.nan


def expire_state(state: NavigationState | None, now_s: float, max_age_s: float) -> NavigationState | None:
    """``state`` if it is at most ``max_age_s`` old at host time ``now_s``, else a NOT TRACKING copy.

    The copy keeps the sequence and host time, marks every tool NOT_TRACKING (no pose, no tip),
    drops all guidance and says ``reason = "navigation state stale (X s old)"``. Use it in any
    display that reads the newest state at its own rate (the tracking thread may have stalled).

    Parameters
    ----------
    state
        The newest state (None passes through).
    now_s
        Current host time, ``time.monotonic()`` (s), same clock as ``state.host_time_s``.
    max_age_s
        Oldest state still shown (s); a NaN state time counts as stale.
    """
    if state is None:
        return None
    age = now_s - state.host_time_s
    if age <= max_age_s:  # NaN age is stale
        return state
    tools = {name: ToolState(NavStatus.NOT_TRACKING, None, None, t.age_s, t.device_time_s) for name, t in state.tools.items()}
    return NavigationState(state.sequence, state.host_time_s, False, tools, latency_s=state.latency_s,
                           reason=f"navigation state stale ({age:.2f} s old)")


def _inverse_rigid(m: list[list[float]]) -> list[list[float]]:
    """inv([R t]) = [R^T, -R^T t] of a rigid 4x4 as nested lists (exact for a rigid transform)."""
    (r00, r01, r02, t0), (r10, r11, r12, t1), (r20, r21, r22, t2) = m[0], m[1], m[2]
    return [[r00, r10, r20, -(r00 * t0 + r10 * t1 + r20 * t2)],
            [r01, r11, r21, -(r01 * t0 + r11 * t1 + r21 * t2)],
            [r02, r12, r22, -(r02 * t0 + r12 * t1 + r22 * t2)],
            [0.0, 0.0, 0.0, 1.0]]


def _matmul_rigid(a: list[list[float]], b: list[list[float]]) -> list[list[float]]:
    """``a @ b`` for two rigid 4x4 transforms as nested lists (last rows [0, 0, 0, 1]). Plain
    floats: numpy's per-call overhead on 4x4 arrays exceeds the arithmetic."""
    out = []
    b0, b1, b2 = b[0], b[1], b[2]
    for a0, a1, a2, a3 in a[:3]:
        out.append([a0 * b0[0] + a1 * b1[0] + a2 * b2[0], a0 * b0[1] + a1 * b1[1] + a2 * b2[1],
                    a0 * b0[2] + a1 * b1[2] + a2 * b2[2], a0 * b0[3] + a1 * b1[3] + a2 * b2[3] + a3])
    out.append([0.0, 0.0, 0.0, 1.0])
    return out


def compute_state(frame: TrackingFrame, ctx: NavigationContext, *, clock: Callable[[], float] | None = time.monotonic) -> NavigationState:
    """The :class:`NavigationState` for one frame (deterministic apart from ``latency_s``).

    About 0.1 ms with a saw and a pointer live on a 200k-face bone (the live loop runs it for
    every tracker update): per-context constants come from ``ctx.compiled``, the per-frame maths
    is done on plain floats, and the costly geometry is bounded (ray casts clipped to the bone's
    box, pointer-to-bone distance exact only near the bone: see :class:`BoneSurface`). Absurd
    poses are never used (see the module docstring: IMPLAUSIBLE tools, NOT TRACKING for an
    implausible reference).

    Parameters
    ----------
    frame
        A tracking frame; ``frame.host_time_s`` is "now" for the stale-pose watchdog.
    ctx
        Tool set, registration, plan geometry and bone surfaces.
    clock
        Clock for ``latency_s`` (None: latency NaN, e.g. when replaying).
    """
    c = ctx.compiled
    now = frame.host_time_s
    ref_status, _ = _tool_status(frame, c.reference, c.reference_timeout_s, now)
    tracking = c.ct_from_reference is not None and ref_status is NavStatus.LIVE
    reason = ""
    if c.ct_from_reference is None:
        reason = "not registered"
    elif ref_status is NavStatus.STALE:
        reason = "reference stale"
    elif ref_status is not NavStatus.LIVE:
        reason = "reference not visible"
    ct_from_tracker = None
    if tracking:
        tracker_from_reference = frame.tools[c.reference].tracker_from_tool.tolist()
        if pose_is_plausible(tracker_from_reference):
            ct_from_tracker = _matmul_rigid(c.ct_from_reference, _inverse_rigid(tracker_from_reference))
        else:
            tracking, reason = False, "reference pose implausible"
    tools: dict[str, ToolState] = {}
    live: list[tuple[_ToolConst, list[list[float]], ToolState]] = []
    lo, hi = c.workspace_lo, c.workspace_hi
    for tc in c.tools:
        status, age = _tool_status(frame, tc.name, tc.timeout_s, now)
        pose = frame.tools.get(tc.name)
        dev_t = pose.device_time_s if pose is not None else math.nan
        if not tracking:
            tools[tc.name] = ToolState(NavStatus.NOT_TRACKING, None, None, age, dev_t)
            continue
        if status is not NavStatus.LIVE:
            tools[tc.name] = ToolState(status, None, None, age, dev_t)
            continue
        tracker_from_tool = pose.tracker_from_tool.tolist()
        if not pose_is_plausible(tracker_from_tool):
            tools[tc.name] = ToolState(NavStatus.IMPLAUSIBLE, None, None, age, dev_t, IMPLAUSIBLE_POSE)
            continue
        rows = _matmul_rigid(ct_from_tracker, tracker_from_tool)
        tip = transform(rows, tc.geometry.tip)
        if not (lo[0] <= tip[0] <= hi[0] and lo[1] <= tip[1] <= hi[1] and lo[2] <= tip[2] <= hi[2]):
            tools[tc.name] = ToolState(NavStatus.IMPLAUSIBLE, None, None, age, dev_t, OUTSIDE_WORKSPACE)
            continue
        st = ToolState(NavStatus.LIVE, np.array(rows), np.array(tip), age, dev_t)
        tools[tc.name] = st
        live.append((tc, rows, st))

    saw: dict[str, SawGuidance] = {}
    drill: dict[str, DrillGuidance] = {}
    ptr_dist, ptr_bone = math.nan, ""
    for tc, rows, st in live:
        if tc.kind == "saw" and c.cuts:
            for cut_name, cf, _surface in c.cuts:
                saw[cut_name] = saw_guidance_rows(rows, tc.geometry, cf)
            # Remaining depth (ray casts) only for the cut the blade is nearest to.
            near = min(c.cuts, key=lambda k: abs(saw[k[0]].distance_mm))
            if near[2] is not None:
                g = saw[near[0]]
                saw[near[0]] = SawGuidance(g.flexion_deg, g.varus_deg, g.angle_deg, g.distance_mm,
                                           remaining_depth_rows(rows, tc.geometry, near[2]), g.edge_ct_mm)
        elif tc.kind == "drill":
            for traj_name, entry, target, direction in c.trajectories:
                drill[traj_name] = drill_guidance_rows(rows, tc.geometry, entry, target, direction)
        elif tc.kind == "pointer" and c.surfaces:
            d, bone = nearest_surface(transform(rows, tc.geometry.tip), c.surfaces)
            if not math.isfinite(ptr_dist) or abs(d) < abs(ptr_dist):  # several pointers: the nearest of them
                ptr_dist, ptr_bone = d, bone
    latency = math.nan
    if clock is not None:
        latency = clock() - newest_receipt_s(frame)
    return NavigationState(frame.sequence, now, tracking, tools, saw, drill, ptr_dist, ptr_bone, latency, reason)

