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

One array per bone (issue 16): a tool set whose reference arrays each name their bone
(:func:`~orthonav.tracking.tools.knee_two_array_toolset`) navigates each bone against its own
array: a context then holds one registration per bone (``registrations``: bone ->
``ct_from_<bone>ref``) and the bone -> array map (``references``). Every guidance number is
computed in the frame of the bone the instrument works on::

    <bone>ct_from_tool = ct_from_<bone>ref @ inv(tracker_from_<bone>ref) @ tracker_from_tool

a cut against its bone (``cut_bones``), a trajectory against its bone (``trajectory_bones``).
The pointer's distance-to-bone and its displayed CT position use the bone whose registered
surface is nearest to the tip *in that bone's own frame* (each bone's tip position is mapped
through its own chain; the smallest |signed distance| wins, see :func:`nearest_bone_surface`);
the saw is displayed in the frame of the bone of the cut it is nearest to, the drill in the
frame of the trajectory whose entry it is nearest to, any other tool in the first live bone's.
A bone whose array is not LIVE (or that is not registered yet) has no guidance: its cuts and
trajectories are left out of the state (NOT TRACKING for that bone) while the other bone keeps
navigating; each array has its own :class:`ToolState` in ``state.tools`` (status of its pose;
NOT_TRACKING when its bone is not registered). ``tracking`` is True while at least one bone
navigates. With femur and tibia both registered and both arrays LIVE, the knee pose::

    femur_ct_from_tibia_ct = ct_from_femurref @ inv(tracker_from_femurref) @ tracker_from_tibiaref @ inv(ct_from_tibiaref)

gives ``state.alignment`` and ``state.gaps`` (:mod:`orthonav.navigation.alignment`,
:mod:`orthonav.navigation.gaps`), but only from two poses of the same moment: when the two
arrays' device times differ by more than ``ctx.max_pair_skew_s`` (:data:`MAX_PAIR_SKEW_S`) the
knee pose would pair a femur and a tibia of different ages, so ``alignment`` and ``gaps`` are
None and ``state.knee_reason`` says why (as it does for an array not LIVE, or a plan that
gives no alignment or no gaps: :class:`KneeInputs`). A one-array tool set (one reference,
``bone`` None) takes exactly the path above, unchanged.

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
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np
from numpy.typing import NDArray

from orthonav.core.errors import InputError
from orthonav.core.vectors import unit
from orthonav.tracking.frame import ToolPose, ToolStatus, TrackingFrame
from orthonav.tracking.tools import ToolSet

from .alignment import knee_alignment, knee_frames
from .gaps import knee_gaps
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

#: Largest difference (s) between the femur and the tibia arrays' device times for which their
#: poses are combined into the knee pose (alignment, gaps). PLUS and NDI send all tools of one
#: tracker frame with one timestamp, so a consistent pair differs by 0; poses of two different
#: frames differ by at least one sample period: 33 ms at 30 Hz, 17 ms at 60 Hz. 30 ms therefore
#: never pairs two frames of a 30 Hz tracker, and accepts neighbouring frames of a tracker of
#: 60 Hz or faster (the knee then moves for at most 30 ms between the two poses: 0.9 deg at a
#: brisk 30 deg/s passive flexion, nothing while the leg is held for a reading).
MAX_PAIR_SKEW_S = 0.03

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
    bone: str = ""  #: one array per bone: the bone whose CT frame ``ct_from_tool`` / ``tip_ct_mm`` are in ("" otherwise)

    @property
    def live(self) -> bool:
        return self.status is NavStatus.LIVE


@dataclass(frozen=True)
class KneeInputs:
    """What live knee alignment and gaps need (one array per bone; fixed during navigation).

    Attributes
    ----------
    femur, tibia
        The case's bone names of the femur and the tibia (keys of ``references``).
    landmarks
        The plan's landmark positions, name -> (3,) CT LPS mm (the alignment's frames are
        built from them once per context: :func:`~orthonav.navigation.alignment.knee_frames`).
    gap_geometry
        :class:`~orthonav.navigation.gaps.GapGeometry` of the plan (None: no gaps).
    hip_centre_ct_mm
        (3,) hip centre override, CT LPS mm (kinematic hip centre; None: the plan's).
    alignment_reason
        Why the plan gives no live alignment ("" when it does), e.g. no femoral head in the CT
        (image-free mode gives it once the kinematic hip centre is fitted).
    gaps_reason
        Why there are no live gaps ("" when ``gap_geometry`` is set), e.g. no planned femoral cuts.
    pelvis_reference
        Name of the pelvis array (a reference tool with bone ``pelvis``), if the tool set has
        one: the kinematic hip centre is then fitted in its frame (else in the tracker's, the
        pelvis assumed still). It is not registered (a knee CT has no pelvis to register to).
    """

    femur: str
    tibia: str
    landmarks: Mapping[str, NDArray[np.float64]] = field(default_factory=dict)
    gap_geometry: Any = None
    hip_centre_ct_mm: NDArray[np.float64] | None = None
    alignment_reason: str = ""
    gaps_reason: str = ""
    pelvis_reference: str | None = None


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
        Name of the patient reference tool (one-array tool set).
    references
        One array per bone: bone -> its reference tool name, from
        :meth:`~orthonav.tracking.tools.ToolSet.bone_references` (empty: one patient reference).
    registrations
        One array per bone: bone -> (4, 4) ``ct_from_<bone>ref`` (mm -> CT LPS mm) of each bone
        registered so far.
    trajectory_bones
        Trajectory name -> bone name (one array per bone: the array it is guided against).
    knee
        :class:`KneeInputs` for live alignment and gaps (one array per bone), or None.
    max_pair_skew_s
        Largest difference (s) between the femur and tibia arrays' device times for which the
        two poses make a knee pose (:data:`MAX_PAIR_SKEW_S`).
    """

    toolset: ToolSet
    ct_from_reference: NDArray[np.float64] | None = None
    cuts: Mapping[str, CutFrame] = field(default_factory=dict)
    cut_bones: Mapping[str, str] = field(default_factory=dict)
    trajectories: Mapping[str, tuple[NDArray[np.float64], NDArray[np.float64]]] = field(default_factory=dict)
    surfaces: Mapping[str, BoneSurface] = field(default_factory=dict)
    reference: str = "Reference"
    references: Mapping[str, str] = field(default_factory=dict)
    registrations: Mapping[str, NDArray[np.float64]] = field(default_factory=dict)
    trajectory_bones: Mapping[str, str] = field(default_factory=dict)
    knee: KneeInputs | None = None
    max_pair_skew_s: float = MAX_PAIR_SKEW_S

    @property
    def per_bone(self) -> bool:
        """Whether each bone has its own reference array (``references`` not empty)."""
        return bool(self.references)

    def with_registration(self, ct_from_reference: NDArray[np.float64]) -> NavigationContext:
        """This context registered to the one patient reference (``ct_from_reference``, 4x4)."""
        return replace(self, ct_from_reference=np.asarray(ct_from_reference, dtype=np.float64))

    def with_bone_registration(self, bone: str, ct_from_boneref: NDArray[np.float64]) -> NavigationContext:
        """This context with ``bone`` registered to its own array (``ct_from_<bone>ref``, 4x4)."""
        if bone not in self.references:
            raise KeyError(f"no reference array is fixed to {bone!r} (arrays: {dict(self.references)})")
        regs = dict(self.registrations)
        regs[bone] = np.asarray(ct_from_boneref, dtype=np.float64).reshape(4, 4)
        return replace(self, registrations=regs)

    @property
    def registered(self) -> bool:
        """One array: registered; one array per bone: at least one bone registered."""
        return bool(self.registrations) if self.per_bone else self.ct_from_reference is not None

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
    per_bone: _PerBone | None = None  #: one array per bone (None: one patient reference)


@dataclass(frozen=True)
class _BoneConst:
    bone: str
    reference: str
    timeout_s: float
    ct_from_ref: list[list[float]] | None  #: registration as nested lists (None: not registered)
    ref_tip: NDArray[np.float64] | None  #: (3,) the array's origin in the CT (display)


@dataclass(frozen=True)
class _PerBone:
    """Per-context constants of one array per bone."""

    bones: tuple[_BoneConst, ...]  #: tool-set order
    references: dict[str, str]  #: bone -> reference tool
    cuts: tuple[tuple[str, CutFrame, BoneSurface | None, str], ...]  #: name, frame, surface, bone
    trajectories: tuple[tuple[str, Vec3, Vec3, Vec3, str], ...]  #: name, entry, target, direction, bone
    surfaces: dict[str, BoneSurface]
    knee: KneeInputs | None
    knee_frames: Any  #: :class:`~orthonav.navigation.alignment.KneeFrames` built once (None: no alignment)
    knee_plan_reason: str  #: why the plan gives no alignment and/or no gaps ("" when it gives both)
    max_pair_skew_s: float


def _compile_per_bone(ctx: NavigationContext) -> _PerBone:
    defs = ctx.toolset.by_name()
    bones = []
    for bone, ref in ctx.references.items():
        reg = ctx.registrations.get(bone)
        m = None if reg is None else np.asarray(reg, dtype=np.float64).reshape(4, 4)
        bones.append(_BoneConst(bone, ref, defs[ref].timeout_s if ref in defs else 0.25,
                                None if m is None else m.tolist(), None if m is None else m[:3, 3].copy()))
    cuts = tuple((name, cf, ctx.surfaces.get(ctx.cut_bones.get(name, "")), ctx.cut_bones.get(name, ""))
                 for name, cf in ctx.cuts.items())
    trajs = []
    for name, (entry, target) in ctx.trajectories.items():
        e = np.asarray(entry, dtype=np.float64).reshape(3)
        t = np.asarray(target, dtype=np.float64).reshape(3)
        trajs.append((name, vec3(e), vec3(t), vec3(unit(t - e, f"planned trajectory '{name}' (entry equals target)")),
                      ctx.trajectory_bones.get(name, "")))
    frames, why_not = _knee_frames(ctx.knee)
    reasons = [why_not] if why_not else []
    if ctx.knee is not None and ctx.knee.gap_geometry is None:
        reasons.append(ctx.knee.gaps_reason or "no gaps: no gap geometry")
    return _PerBone(tuple(bones), dict(ctx.references), cuts, tuple(trajs), dict(ctx.surfaces), ctx.knee, frames,
                    "; ".join(reasons), float(ctx.max_pair_skew_s))


def _knee_frames(knee: KneeInputs | None) -> tuple[Any, str]:
    """The alignment's femoral and tibial frames of the plan's landmarks (with the hip centre
    override, if any), built once per context, and why there are none ("" when built)."""
    if knee is None:
        return None, ""
    if not knee.landmarks:
        return None, knee.alignment_reason or "no alignment: the plan has no landmarks"
    try:
        return knee_frames(knee.landmarks, hip_centre_ct_mm=knee.hip_centre_ct_mm), ""
    except InputError as e:  # e.g. a partial CT without hip or ankle: no live alignment
        return None, f"no alignment: {e.problem}"


def _compile(ctx: NavigationContext) -> _Compiled:
    defs = ctx.toolset.by_name()
    ref_timeout = defs[ctx.reference].timeout_s if ctx.reference in defs else 0.25
    # One array per bone: every reference array is left out of the instruments (a pelvis array that
    # only frames the kinematic hip centre too: :attr:`KneeInputs.pelvis_reference`).
    refs = {n for n, t in defs.items() if t.kind == "reference"} if ctx.per_bone else {ctx.reference}
    tools = tuple(_ToolConst(n, t.kind, t.timeout_s, tool_geometry(t)) for n, t in defs.items() if n not in refs)
    cuts = tuple((name, cf, ctx.surfaces.get(ctx.cut_bones.get(name, ""))) for name, cf in ctx.cuts.items())
    trajs = []
    for name, (entry, target) in ctx.trajectories.items():
        e = np.asarray(entry, dtype=np.float64).reshape(3)
        t = np.asarray(target, dtype=np.float64).reshape(3)
        trajs.append((name, vec3(e), vec3(t), vec3(unit(t - e, f"planned trajectory '{name}' (entry equals target)"))))
    reg = None if ctx.ct_from_reference is None else np.asarray(ctx.ct_from_reference, dtype=np.float64).reshape(4, 4).tolist()
    lo, hi = workspace_box(ctx)
    per_bone = _compile_per_bone(ctx) if ctx.per_bone else None
    return _Compiled(ctx.reference, ref_timeout, tools, reg, cuts, tuple(trajs), tuple(ctx.surfaces.items()), lo, hi, per_bone)


def workspace_box(ctx: NavigationContext, margin_mm: float = WORKSPACE_MARGIN_MM) -> tuple[Vec3, Vec3]:
    """The workspace (CT LPS mm): the box around the bone surfaces, the planned cut points and
    trajectories and the patient reference (``ct_from_reference``; one array per bone: every
    registered bone's array), padded by ``margin_mm``.

    With none of these (no anatomy, no plan, no registration) the box is centred on the CT
    origin. Returns (lower corner, upper corner).
    """
    pts = [np.asarray(s.mesh.bounds, dtype=np.float64).reshape(3, 2).T for s in ctx.surfaces.values()]
    pts += [np.asarray(cf.point_mm, dtype=np.float64).reshape(1, 3) for cf in ctx.cuts.values()]
    pts += [np.asarray(e, dtype=np.float64).reshape(1, 3) for pair in ctx.trajectories.values() for e in pair]
    if ctx.ct_from_reference is not None:
        pts.append(np.asarray(ctx.ct_from_reference, dtype=np.float64).reshape(4, 4)[None, :3, 3])
    for reg in ctx.registrations.values():  # one array per bone: each bone's array
        pts.append(np.asarray(reg, dtype=np.float64).reshape(4, 4)[None, :3, 3])
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
    alignment
        One array per bone, femur and tibia registered and both arrays LIVE: the knee's
        :class:`~orthonav.navigation.alignment.KneeAlignment` at this frame; else None.
    gaps
        Same condition, and the plan has cut / implant surfaces: the medial and lateral gaps
        (:class:`~orthonav.navigation.gaps.KneeGaps`); else None.
    references
        One array per bone: bone -> its reference tool name (each array's status is in
        ``tools``); empty for a one-array tool set.
    bone_ct_from_tracker
        One array per bone: bone -> (4, 4) ``ct_from_tracker`` through that bone's registration
        and array, for every bone that navigates in this frame (registered, array LIVE). The
        knee pose is ``bone_ct_from_tracker[femur] @ inv(bone_ct_from_tracker[tibia])``.
    knee_reason
        One array per bone with knee inputs: why ``alignment`` and / or ``gaps`` is None ("" when
        both are given), e.g. "tibia: reference not visible", "femur and tibia arrays measured
        45 ms apart (limit 30 ms): not one tracker frame", "no gaps: ..." (a plan reason).
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
    alignment: Any = None
    gaps: Any = None
    references: Mapping[str, str] = field(default_factory=dict)
    bone_ct_from_tracker: Mapping[str, NDArray[np.float64]] = field(default_factory=dict)
    knee_reason: str = ""

    def status(self, tool: str) -> NavStatus:
        t = self.tools.get(tool)
        return t.status if t is not None else NavStatus.NOT_VISIBLE

    def bone_tracking(self, bone: str) -> bool:
        """Whether ``bone`` navigates in this state: one array per bone, its bone registered and
        its array LIVE; a one-array tool set: ``tracking``."""
        if not self.references:
            return self.tracking
        return bone in self.bone_ct_from_tracker


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
    tools = {name: ToolState(NavStatus.NOT_TRACKING, None, None, t.age_s, t.device_time_s, bone=t.bone)
             for name, t in state.tools.items()}
    why = f"navigation state stale ({age:.2f} s old)"
    return NavigationState(state.sequence, state.host_time_s, False, tools, latency_s=state.latency_s, reason=why,
                           references=state.references, knee_reason=why if state.references else "")


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
    if c.per_bone is not None:
        return _compute_state_per_bone(frame, c, c.per_bone, clock)
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



# --- one array per bone --------------------------------------------------------------------------


def knee_pose(ct_from_femurref: NDArray[np.float64], tracker_from_femurref: NDArray[np.float64],
              tracker_from_tibiaref: NDArray[np.float64], ct_from_tibiaref: NDArray[np.float64]) -> NDArray[np.float64]:
    """The knee pose ``femur_ct_from_tibia_ct`` (4, 4): maps tibia points given in CT LPS mm (as
    planned) to where they are now, in the femur's CT coordinates (identity = the knee as in the CT)::

        femur_ct_from_tibia_ct = ct_from_femurref @ inv(tracker_from_femurref) @ tracker_from_tibiaref @ inv(ct_from_tibiaref)
    """
    a = [np.asarray(m, dtype=np.float64).reshape(4, 4).tolist() for m in
         (ct_from_femurref, tracker_from_femurref, tracker_from_tibiaref, ct_from_tibiaref)]
    return np.array(_matmul_rigid(_matmul_rigid(a[0], _inverse_rigid(a[1])), _matmul_rigid(a[2], _inverse_rigid(a[3]))))


def nearest_bone_surface(tips_by_bone: Mapping[str, Vec3], surfaces: Mapping[str, BoneSurface]) -> tuple[float, str]:
    """(signed distance (mm), bone) of the bone whose registered surface is nearest to a tool tip,
    each bone judged in its own frame: ``tips_by_bone[bone]`` is the tip mapped through that
    bone's registration and array (CT LPS mm). The smallest |distance| wins (the first bone on a
    tie); bones whose bounding box is farther than the best distance so far are skipped.
    ``(nan, "")`` when no bone has both a tip and a surface.
    """
    cand = [(surfaces[b].box_distance(p), b, p) for b, p in tips_by_bone.items() if b in surfaces]
    best, best_bone = math.nan, ""
    for lower, b, p in sorted(cand, key=lambda x: x[0]):
        if best_bone and lower > abs(best):
            break
        d = surfaces[b].signed_distance_mm(p)
        if not best_bone or abs(d) < abs(best):
            best, best_bone = d, b
    return best, best_bone


def pose_skew_s(a: ToolPose, b: ToolPose) -> float:
    """How far apart in time two poses were measured (s): the difference of their device times,
    or of their host receipt times when a device time is unknown (NaN); NaN if neither is known.
    Two tools of one tracker frame (PLUS, NDI: one timestamp a frame) give 0."""
    if math.isfinite(a.device_time_s) and math.isfinite(b.device_time_s):
        return abs(a.device_time_s - b.device_time_s)
    return abs(a.host_time_s - b.host_time_s)


def _knee(frame: TrackingFrame, pb: _PerBone, ct_from_tracker: Mapping[str, list[list[float]]],
          bone_reasons: Mapping[str, str]) -> tuple[Any, Any, str]:
    """(alignment, gaps, knee_reason) of one frame (see :class:`NavigationState`)."""
    knee = pb.knee
    if knee is None:
        return None, None, ""
    missing = [f"{b}: {bone_reasons.get(b, 'not tracked')}" for b in (knee.femur, knee.tibia) if b not in ct_from_tracker]
    if missing:
        return None, None, "; ".join(missing)
    skew = pose_skew_s(frame.tools[pb.references[knee.femur]], frame.tools[pb.references[knee.tibia]])
    if not skew <= pb.max_pair_skew_s:  # NaN (no time at all) is not one frame either
        return None, None, (f"{knee.femur} and {knee.tibia} arrays measured {skew * 1e3:.0f} ms apart "
                            f"(limit {pb.max_pair_skew_s * 1e3:.0f} ms): not one tracker frame")
    femur_ct_from_tibia_ct = np.array(_matmul_rigid(ct_from_tracker[knee.femur], _inverse_rigid(ct_from_tracker[knee.tibia])))
    alignment = None if pb.knee_frames is None else knee_alignment(femur_ct_from_tibia_ct, pb.knee_frames)
    gaps = None if knee.gap_geometry is None else knee_gaps(femur_ct_from_tibia_ct, knee.gap_geometry)
    return alignment, gaps, pb.knee_plan_reason


def _compute_state_per_bone(frame: TrackingFrame, c: _Compiled, pb: _PerBone, clock: Callable[[], float] | None) -> NavigationState:
    """:func:`compute_state` with one reference array per bone (module docstring)."""
    now = frame.host_time_s
    tools: dict[str, ToolState] = {}
    ct_from_tracker: dict[str, list[list[float]]] = {}  # bone -> rows, for every bone that navigates
    bone_reasons: dict[str, str] = {}  # bone -> why it does not navigate
    for b in pb.bones:
        status, age = _tool_status(frame, b.reference, b.timeout_s, now)
        pose = frame.tools.get(b.reference)
        dev_t = pose.device_time_s if pose is not None else math.nan
        if b.ct_from_ref is None:
            tools[b.reference] = ToolState(NavStatus.NOT_TRACKING, None, None, age, dev_t, "not registered", b.bone)
            bone_reasons[b.bone] = "not registered"
            continue
        if status is not NavStatus.LIVE:
            why = "reference stale" if status is NavStatus.STALE else "reference not visible"
            tools[b.reference] = ToolState(status, None, None, age, dev_t, why, b.bone)
            bone_reasons[b.bone] = why
            continue
        tracker_from_ref = pose.tracker_from_tool.tolist()
        if not pose_is_plausible(tracker_from_ref):
            tools[b.reference] = ToolState(NavStatus.IMPLAUSIBLE, None, None, age, dev_t, IMPLAUSIBLE_POSE, b.bone)
            bone_reasons[b.bone] = "reference pose implausible"
            continue
        ct_from_tracker[b.bone] = _matmul_rigid(b.ct_from_ref, _inverse_rigid(tracker_from_ref))
        tools[b.reference] = ToolState(NavStatus.LIVE, np.array(b.ct_from_ref), b.ref_tip, age, dev_t, "", b.bone)
    tracking = bool(ct_from_tracker)
    first = next(iter(ct_from_tracker), "")
    lo, hi = c.workspace_lo, c.workspace_hi
    saw: dict[str, SawGuidance] = {}
    drill: dict[str, DrillGuidance] = {}
    ptr_dist, ptr_bone = math.nan, ""
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
        in_bone = {b: _matmul_rigid(m, tracker_from_tool) for b, m in ct_from_tracker.items()}  # bone -> <bone>ct_from_tool
        tip0 = transform(in_bone[first], tc.geometry.tip)
        if not (lo[0] <= tip0[0] <= hi[0] and lo[1] <= tip0[1] <= hi[1] and lo[2] <= tip0[2] <= hi[2]):
            tools[tc.name] = ToolState(NavStatus.IMPLAUSIBLE, None, None, age, dev_t, OUTSIDE_WORKSPACE)
            continue
        shown = first
        if tc.kind == "saw":
            cuts = [k for k in pb.cuts if k[3] in in_bone]
            for cut_name, cf, _surface, bone in cuts:
                saw[cut_name] = saw_guidance_rows(in_bone[bone], tc.geometry, cf)
            if cuts:
                near = min(cuts, key=lambda k: abs(saw[k[0]].distance_mm))
                shown = near[3]
                if near[2] is not None:
                    g = saw[near[0]]
                    saw[near[0]] = SawGuidance(g.flexion_deg, g.varus_deg, g.angle_deg, g.distance_mm,
                                               remaining_depth_rows(in_bone[shown], tc.geometry, near[2]), g.edge_ct_mm)
        elif tc.kind == "drill":
            trajs = [k for k in pb.trajectories if k[4] in in_bone]
            for traj_name, entry, target, direction, bone in trajs:
                drill[traj_name] = drill_guidance_rows(in_bone[bone], tc.geometry, entry, target, direction)
            if trajs:
                shown = min(trajs, key=lambda k: drill[k[0]].entry_offset_mm)[4]
        elif tc.kind == "pointer" and pb.surfaces:
            d, bone = nearest_bone_surface({b: transform(m, tc.geometry.tip) for b, m in in_bone.items()}, pb.surfaces)
            if bone:
                shown = bone
                if not math.isfinite(ptr_dist) or abs(d) < abs(ptr_dist):  # several pointers: the nearest of them
                    ptr_dist, ptr_bone = d, bone
        rows = in_bone[shown]
        tools[tc.name] = ToolState(NavStatus.LIVE, np.array(rows), np.array(transform(rows, tc.geometry.tip)), age, dev_t, "", shown)
    alignment, gaps, knee_reason = _knee(frame, pb, ct_from_tracker, bone_reasons)
    latency = math.nan
    if clock is not None:
        latency = clock() - newest_receipt_s(frame)
    if not any(b.ct_from_ref is not None for b in pb.bones):
        reason = "not registered"
    else:
        # e.g. "tibia: reference not visible" (the femur may still navigate)
        reason = "; ".join(f"{b.bone}: {bone_reasons[b.bone]}" for b in pb.bones if b.bone in bone_reasons)
    return NavigationState(frame.sequence, now, tracking, tools, saw, drill, ptr_dist, ptr_bone, latency, reason,
                           alignment, gaps, pb.references, {b: np.array(m) for b, m in ct_from_tracker.items()}, knee_reason)
