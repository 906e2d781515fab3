"""The navigation workflow as a deterministic frame processor: digitise -> register -> verify -> navigate.

:class:`Workflow` consumes tracking frames one at a time and returns a
:class:`~orthonav.navigation.state.NavigationState` for each. It holds no threads and reads no
clock except for ``latency_s``, so feeding it the frames a live session recorded reproduces the
session exactly (captures, registration, guidance): that is how replay works.

Phases
------
``digitise``
    Every pointer dwell (:class:`~orthonav.navigation.digitise.StillCapture`) is kept, and the
    dwells are labelled by the largest set of them matching plan fiducials under one rigid
    transform (:class:`~orthonav.navigation.digitise.FiducialDigitiser`): a rest position or a
    mis-touch is left unmatched and costs nothing, a re-touch replaces the earlier touch. When
    all are labelled, paired-point registration runs; if the FRE exceeds ``max_fre_mm`` the
    fiducial with the largest residual is discarded and must be touched again. If the TRE
    predicted at the check points exceeds ``max_predicted_tre_mm`` (near-collinear or clustered
    fiducials), registration is refused: with fiducials still untouched, digitising goes on
    (touching them spreads the layout); with every plan fiducial touched, the workflow stays
    unregistered (:attr:`Workflow.refusal` says why) and navigation never starts.
``surface`` (only with ``surface_points > 0``)
    Registered with the fiducials (navigation is live); pointer samples near the bone surface
    are collected, then :func:`~orthonav.navigation.surface.refine_registration` refines the
    registration (method ``paired_point+surface_icp``; the record keeps the fiducial stage's FRE
    and predicted TRE labelled as such, see
    :func:`~orthonav.navigation.registration.with_surface_stage`). A failed refinement keeps the
    paired-point registration and says so in the events.
One array per bone (a context with ``references``, see :mod:`orthonav.navigation.state`):
the phases run once per bone, in tool-set order (e.g. femur, then tibia). Each bone's fiducials
(the plan landmarks on that bone, ``bone_fiducials``) are digitised with the pointer relative
to *that bone's* array and registered (paired points, FRE, TRE predicted at that bone's check
points; then the surface stage on that bone's mesh alone). A bone navigates as soon as it is
registered, while the next one is digitised (a touch that checks a registered bone's point is
recorded meanwhile). :attr:`Workflow.registration` is set once every
bone is registered (a version-3 record with one record per bone,
:func:`~orthonav.navigation.registration.per_bone_registration`);
:attr:`Workflow.partial_registration` holds the bones registered so far. After registration a
touch is measured in each registered bone's frame against that bone's check points
(``point_bones``); the nearest is kept.

Hip circle (one array per bone, ``hip_centre_poses`` > 0): once the femur is registered, the
femur array's poses are collected (whenever it has turned ``hip_centre_step_deg``) and the
kinematic hip centre is fitted (:func:`~orthonav.navigation.hip_centre.fit_hip_centre`) in the
pelvis array's frame (``inv(tracker_from_pelvisref) @ tracker_from_femurref``, when the tool
set has a pelvis array: :attr:`~orthonav.navigation.state.KneeInputs.pelvis_reference`), else
in the tracker's frame (the pelvis assumed still; the events say so):
:attr:`Workflow.hip_centre`, reported beside the CT hip centre, and used for the live
alignment instead of it with ``use_kinematic_hip_centre`` (image-free mode). The poses kept
and the fits tried are bounded (``WorkflowConfig.hip_centre_poses``).

Knee inputs (one array per bone): when the plan gives no live alignment or no gaps (no
femoral head in the CT, no planned femoral cuts), the first frame's events say why.

``navigate``
    Registered: states carry tool poses and guidance. Every further pointer dwell is a touch:
    its CT position and the distance to the nearest known point (plan landmarks and any check
    points given) are computed. It counts as a *verification* of that point only within
    :meth:`Workflow.check_radius_mm` of it (3 x the TRE predicted there + a margin, at most
    ``verify_radius_mm``): a touch farther away was meant for something else, so it is recorded
    as a stray touch ("N mm from the nearest landmark X: not a check"), never as an error figure.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace

from typing import Any

import numpy as np
from numpy.typing import NDArray

from orthonav.core.errors import RegistrationError
from orthonav.core.transforms import apply, invert
from orthonav.tracking.frame import TrackingFrame

from .digitise import FiducialDigitiser, StillCapture, pointer_sample_time, tip_in_reference
from .registration import FRELimitExceeded, Registration, per_bone_registration, register_paired_points, with_surface_stage
from .hip_centre import fit_hip_centre
from .state import NavigationContext, NavigationState, compute_state, pose_skew_s

#: The workflow keeps the newest ``HIP_POSES_KEPT x WorkflowConfig.hip_centre_poses`` hip-circle poses.
HIP_POSES_KEPT = 4


@dataclass(frozen=True)
class WorkflowConfig:
    """Settings of the workflow (recorded in ``session.json`` so replay uses the same).

    Attributes
    ----------
    hold_s, still_mm, rearm_mm
        Pointer dwell detection (see :class:`StillCapture`).
    max_fre_mm
        Registration is rejected above this FRE; the fiducial with the largest residual is
        then digitised again.
    consistency_mm
        Tolerance (mm) on distances between captures against CT distances, and on the rigid
        fit's residuals, for labelling captures (see :class:`FiducialDigitiser`); 3.0 suits an
        FLE of about 0.9 mm RMS (:func:`~orthonav.navigation.fiducial_match.consistency_tolerance_mm`).
    min_fiducials
        When the pointer has clearly moved on (3 captures in a row fit no fiducial) with at least
        this many fiducials labelled, register with those.
    verify_radius_mm
        Upper bound (mm) of the radius within which a touch after registration counts as a
        verification of the nearest known point.
    verify_tre_factor, verify_margin_mm
        The radius of a check at a point is ``verify_tre_factor`` x the TRE predicted there +
        ``verify_margin_mm`` (capped by ``verify_radius_mm``): a touch that far from the point
        cannot be a registration error the prediction allows, so it was aimed elsewhere.
    fle_rms_mm
        FLE used for predicted TRE (None: estimated from the FRE).
    max_predicted_tre_mm
        Registration is refused when the TRE predicted (Fitzpatrick 1998) at any check point
        exceeds this (mm; None = no limit). The check uses FLE = max(``fle_rms_mm`` or the FLE
        estimated from the FRE, ``policy_min_fle_mm``), so a lucky small FRE cannot pass a
        layout that amplifies error (see
        :func:`~orthonav.navigation.registration.register_paired_points`).
    policy_min_fle_mm
        Floor of the FLE used by that check (mm): a typical optical pointer FLE.
    surface_points
        After paired-point registration, collect this many pointer samples on the bone
        surface and refine with trimmed point-to-plane ICP (0 = off). Samples are taken at
        least ``surface_spacing_mm`` apart and only within ``surface_band_mm`` of a bone
        surface under the current registration. ``surface_keep_fraction`` is the ICP trimming;
        a refinement is refused and the paired-point registration kept when it did not converge,
        when its ``constraint`` is below ``surface_min_constraint`` (points that let the bone
        slide or roll), when fewer than ``surface_min_inlier_fraction`` of the points end within
        the ICP's inlier distance of the bone (a wrong local minimum, or the bone moved against
        the reference), or when it moves the digitised fiducials more than ``max_fre_mm`` (RMS)
        from their CT positions (see :func:`surface_refusal`).
    pointer, reference
        Tool names (``reference`` is not used with one array per bone: each bone's array is
        the context's ``references[bone]``).
    hip_centre_poses
        One array per bone (knee): once the femur is registered, femur-array poses (in the
        pelvis array's frame, or the tracker's when there is no pelvis array: the pelvis is then
        assumed still) are kept whenever the array has turned at least ``hip_centre_step_deg``
        since the last one kept, and the kinematic hip centre is fitted
        (:func:`~orthonav.navigation.hip_centre.fit_hip_centre`) when this many are kept, again
        every half as many more until the fit passes its quality gate (0 = off). Circling the
        leg gives them in seconds; the range-of-motion tests add to them. Only the newest
        ``HIP_POSES_KEPT`` x this many poses are kept (older ones are dropped), and at most
        ``hip_centre_max_fits`` fits are tried (then the workflow stops collecting and says so).
        Cost: the fit (robust RANSAC pivot solve, 200 samples) runs in :meth:`Workflow.process`,
        i.e. in the tracking thread, on the frame that makes it due: about 15-20 ms for 60-120
        poses and 40-45 ms for the 240 kept at the default 60 (2-core machine, load ~1.3), so
        that one state is that late (the loop then computes the newest frame; nothing queues).
        At most ``hip_centre_max_fits`` such frames per session.
    hip_centre_max_fits
        Most fits of the kinematic hip centre tried before giving up (each on the poses kept).
    use_kinematic_hip_centre
        Once the kinematic hip centre passes its gate, use it instead of the CT's femoral head
        centre for the live alignment (image-free mode).
    """

    hold_s: float = 0.4
    still_mm: float = 0.5
    rearm_mm: float = 10.0
    max_fre_mm: float = 2.0
    consistency_mm: float = 3.0
    min_fiducials: int = 4
    verify_radius_mm: float = 15.0
    verify_tre_factor: float = 3.0
    verify_margin_mm: float = 3.0
    surface_points: int = 0
    surface_spacing_mm: float = 3.0
    surface_band_mm: float = 5.0
    surface_keep_fraction: float = 0.9
    surface_min_constraint: float = 0.05
    surface_min_inlier_fraction: float = 0.5
    fle_rms_mm: float | None = None
    max_predicted_tre_mm: float | None = 2.0
    policy_min_fle_mm: float = 0.25
    pointer: str = "Pointer"
    reference: str = "Reference"
    hip_centre_poses: int = 0
    hip_centre_step_deg: float = 2.0
    use_kinematic_hip_centre: bool = False
    hip_centre_max_fits: int = 10

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Verification:
    """One pointer touch after registration, against the nearest known point."""

    name: str  #: nearest known point
    distance_mm: float  #: touched point to that known point (mm)
    p_ct_mm: NDArray[np.float64]  #: touched point in CT LPS (mm)
    host_time_s: float
    radius_mm: float = math.inf  #: a touch within this distance of ``name`` checks it (mm)
    bone: str = ""  #: one array per bone: the bone whose registration measured the touch

    @property
    def is_check(self) -> bool:
        """Whether the touch was aimed at ``name`` (within :attr:`radius_mm`), so its distance
        is a verification figure; else it is a stray touch."""
        return self.distance_mm <= self.radius_mm

    def describe(self) -> str:
        """One line for a user: the check's figure, or where a stray touch was."""
        if self.is_check:
            return f"verification at {self.name}: {self.distance_mm:.2f} mm"
        return (f"touch {self.distance_mm:.1f} mm from the nearest landmark {self.name}: not a check "
                f"(a check counts within {self.radius_mm:.1f} mm)")


@dataclass(frozen=True)
class WorkflowEvent:
    host_time_s: float
    text: str


class Workflow:
    """Frame processor for one session (see the module docstring).

    Parameters
    ----------
    ctx
        Navigation context without registration (tool set, cuts, surfaces...).
    fiducial_names, fiducials_ct_mm
        The plan's fiducials (n,) and (n, 3) CT LPS mm, in the order they will be touched.
    check_points_ct_mm
        Known points (name -> (3,) CT LPS mm) for verification touches and predicted TRE.
    config
        :class:`WorkflowConfig`.
    bone_fiducials
        One array per bone: bone -> (fiducial names, (n, 3) CT LPS mm) on that bone, n >= 3
        (:attr:`~orthonav.navigation.inputs.CaseNavigationInputs.bone_fiducials`).
    point_bones
        Landmark / check point name -> its bone (one array per bone: a check point is measured
        with its bone's registration; a point not listed is measured with every bone's).
    """

    def __init__(
        self,
        ctx: NavigationContext,
        fiducial_names: list[str],
        fiducials_ct_mm: NDArray[np.float64],
        *,
        check_points_ct_mm: Mapping[str, NDArray[np.float64]] | None = None,
        config: WorkflowConfig = WorkflowConfig(),
        bone_fiducials: Mapping[str, tuple[list[str], NDArray[np.float64]]] | None = None,
        point_bones: Mapping[str, str] | None = None,
    ) -> None:
        defs = ctx.toolset.by_name()
        if ctx.per_bone:
            if config.pointer not in defs:
                raise RegistrationError(f"the tool set needs a '{config.pointer}' tool")
        elif config.pointer not in defs or config.reference not in defs:
            raise RegistrationError(f"the tool set needs '{config.pointer}' and '{config.reference}' tools")
        self.config = config
        self.base_ctx = ctx
        self.ctx = ctx
        self.fiducial_names = list(fiducial_names)
        self.fiducials_ct_mm = np.asarray(fiducials_ct_mm, dtype=np.float64)
        if self.fiducials_ct_mm.shape != (len(self.fiducial_names), 3) or len(self.fiducial_names) < 3:
            raise RegistrationError(f"need >= 3 named fiducials as an (n, 3) array, got {self.fiducials_ct_mm.shape}")
        self.check_points = {k: np.asarray(v, dtype=np.float64) for k, v in (check_points_ct_mm or {}).items()}
        self._tip = defs[config.pointer].tip_in_tool()
        self._capture = StillCapture(hold_s=config.hold_s, still_mm=config.still_mm, rearm_mm=config.rearm_mm)
        self.digitiser = FiducialDigitiser(self.fiducial_names, self._tip, fiducials_ct_mm=self.fiducials_ct_mm,
                                           consistency_mm=config.consistency_mm, pointer=config.pointer,
                                           reference=config.reference, capture=self._capture, min_fiducials=config.min_fiducials)
        self._n_rejected = 0
        self._n_restarts = 0
        self._last_verify_sample: float | None = None
        self.surface_phase = False
        self.surface_samples: list[NDArray[np.float64]] = []
        self._last_surface_sample: float | None = None
        self._surface_model = None
        self.surface_rejected: dict[str, float] | None = None
        self.registration: Registration | None = None
        self.verifications: list[Verification] = []  # touches aimed at a known point (checks)
        self.stray_touches: list[Verification] = []  # touches too far from every known point
        self.events: list[WorkflowEvent] = []
        self.failed_registrations = 0
        #: Why registration was refused with every plan fiducial touched (navigation cannot start), else None.
        self.refusal: str | None = None
        #: The registration so far: :attr:`registration` (one array), or the bones registered so far (one array per bone).
        self.partial_registration: Registration | None = None
        #: One array per bone: bone -> its registration, in the order registered.
        self.bone_registrations: dict[str, Registration] = {}
        self.point_bones = dict(point_bones or {})
        self.bones: list[str] = list(ctx.references)
        #: One array per bone: the bone being digitised (None once every bone is registered, or one array).
        self.digitising_bone: str | None = None
        self._reference = config.reference
        #: The kinematic hip centre fit (one array per bone, ``hip_centre_poses`` > 0), else None.
        self.hip_centre = None
        #: Femur-array poses kept for it (pelvis array's frame, or the tracker's), newest last.
        self.hip_poses: list[NDArray[np.float64]] = []
        self.hip_fits = 0  #: fits of the kinematic hip centre tried so far
        self.hip_poses_seen = 0  #: hip-circle poses kept so far, including those dropped since (the newest are in hip_poses)
        self._hip_fitted_at = 0
        self._hip_done = False
        self._knee_announced = False
        if ctx.per_bone:
            self._init_per_bone(bone_fiducials)

    # --- one array per bone ----------------------------------------------------------------------

    def _init_per_bone(self, bone_fiducials: Mapping[str, tuple[list[str], NDArray[np.float64]]] | None) -> None:
        missing = [b for b in self.bones if bone_fiducials is None or b not in bone_fiducials]
        if missing:
            raise RegistrationError(f"one array per bone: no fiducials given for {', '.join(missing)} (bone_fiducials)")
        assert bone_fiducials is not None
        self.all_fiducial_names = list(self.fiducial_names)
        self.bone_fiducials: dict[str, tuple[list[str], NDArray[np.float64]]] = {}
        for b in self.bones:
            names, pts = bone_fiducials[b]
            arr = np.asarray(pts, dtype=np.float64).reshape(-1, 3)
            if len(names) < 3 or arr.shape != (len(names), 3):
                raise RegistrationError(f"{b}: need >= 3 named fiducials on the bone as an (n, 3) array, got {len(names)} names, "
                                        f"{arr.shape} points")
            self.bone_fiducials[b] = (list(names), arr)
        self._bone_captures: dict[str, StillCapture] = {}
        self._last_bone_sample: dict[str, float | None] = {}
        self._start_bone(self.bones[0])

    def _start_bone(self, bone: str) -> None:
        """Digitise ``bone``'s fiducials relative to its own array."""
        cfg = self.config
        self.digitising_bone = bone
        self._reference = self.base_ctx.references[bone]
        self.fiducial_names, self.fiducials_ct_mm = self.bone_fiducials[bone][0], self.bone_fiducials[bone][1]
        self._capture = StillCapture(hold_s=cfg.hold_s, still_mm=cfg.still_mm, rearm_mm=cfg.rearm_mm)
        self.digitiser = FiducialDigitiser(self.fiducial_names, self._tip, fiducials_ct_mm=self.fiducials_ct_mm,
                                           consistency_mm=cfg.consistency_mm, pointer=cfg.pointer, reference=self._reference,
                                           capture=self._capture, min_fiducials=cfg.min_fiducials)
        self._n_rejected = 0
        self._n_restarts = 0

    def _bone_done(self, t: float) -> None:
        """The current bone is registered (and refined): digitise the next bone, or navigate."""
        assert self.digitising_bone is not None
        k = self.bones.index(self.digitising_bone) + 1
        if k < len(self.bones):
            nxt = self.bones[k]
            self._start_bone(nxt)
            self.events.append(WorkflowEvent(t, f"digitise the fiducials on {nxt} with the pointer ({len(self.fiducial_names)}; "
                                                f"array {self._reference})"))
            return
        self.digitising_bone = None
        self.registration = self.partial_registration
        self.events.append(WorkflowEvent(t, "every bone registered: " + ", ".join(
            f"{b} FRE {r.record.fre_mm:.3f} mm" for b, r in self.bone_registrations.items())))

    def _set_bone_registration(self, bone: str, reg: Registration) -> None:
        self.bone_registrations[bone] = reg
        self.ctx = self.ctx.with_bone_registration(bone, reg.ct_from_reference)
        self.partial_registration = per_bone_registration(self.bone_registrations, self.base_ctx.references)
        if self.digitising_bone is None:
            self.registration = self.partial_registration

    def _announce_knee(self, t: float) -> None:
        """Say once why the plan gives no live alignment or no gaps (one array per bone, knee)."""
        self._knee_announced = True
        knee = self.base_ctx.knee
        if knee is None:
            return
        if knee.alignment_reason:
            hint = " (image-free: circle the leg for the kinematic hip centre)" if self.config.use_kinematic_hip_centre else ""
            self.events.append(WorkflowEvent(t, f"live knee {knee.alignment_reason}{hint}"))
        if knee.gaps_reason:
            self.events.append(WorkflowEvent(t, f"live knee {knee.gaps_reason}"))

    def _hip_frame_words(self) -> str:
        knee = self.base_ctx.knee
        if knee is not None and knee.pelvis_reference:
            return f"in the pelvis array's frame ({knee.pelvis_reference})"
        return "in the tracker's frame: no pelvis array, the pelvis is assumed still"

    def _hip_pose(self, frame: TrackingFrame, femur_ref: str) -> NDArray[np.float64] | None:
        """The femur array's pose for the hip fit: ``pelvis_from_femurref`` (pelvis array LIVE in
        the same tracker frame) or ``tracker_from_femurref`` (no pelvis array); None if not seen."""
        femur = frame.tools.get(femur_ref)
        if femur is None or femur.tracker_from_tool is None:
            return None
        pelvis_ref = self.base_ctx.knee.pelvis_reference if self.base_ctx.knee is not None else None
        if not pelvis_ref:
            return femur.tracker_from_tool
        pelvis = frame.tools.get(pelvis_ref)
        if pelvis is None or pelvis.tracker_from_tool is None or not pose_skew_s(femur, pelvis) <= self.base_ctx.max_pair_skew_s:
            return None  # not one moment: a pelvis that moved in between would bias the centre
        return invert(np.asarray(pelvis.tracker_from_tool, dtype=np.float64)) @ np.asarray(femur.tracker_from_tool, dtype=np.float64)

    def _collect_hip_pose(self, frame: TrackingFrame) -> None:
        """Keep the femur array's pose when it has turned enough; fit the hip centre when due
        (bounded: ``HIP_POSES_KEPT`` x ``hip_centre_poses`` poses, ``hip_centre_max_fits`` fits)."""
        knee = self.base_ctx.knee
        if knee is None or knee.femur not in self.bone_registrations or self._hip_done:
            return
        pose = self._hip_pose(frame, self.base_ctx.references[knee.femur])
        if pose is None or not np.all(np.isfinite(pose)):
            return
        if self.hip_poses:
            last = self.hip_poses[-1]
            c = (float(np.trace(last[:3, :3].T @ pose[:3, :3])) - 1.0) / 2.0
            if math.degrees(math.acos(max(-1.0, min(1.0, c)))) < self.config.hip_centre_step_deg:
                return
        t = frame.host_time_s
        due = self.config.hip_centre_poses
        if not self.hip_poses:
            self.events.append(WorkflowEvent(t, f"hip circle: collecting femur array poses {self._hip_frame_words()}"))
        self.hip_poses.append(np.array(pose, dtype=np.float64))
        if len(self.hip_poses) > HIP_POSES_KEPT * due:
            del self.hip_poses[0]  # the newest poses are kept: bounded memory and fit time
        self.hip_poses_seen += 1
        if self.hip_poses_seen < due or self._hip_fitted_at and self.hip_poses_seen - self._hip_fitted_at < max(1, due // 2):
            return
        self._hip_fitted_at = self.hip_poses_seen
        self.hip_fits += 1
        fit = fit_hip_centre(np.array(self.hip_poses))
        self.hip_centre = fit
        if not fit.ok:
            if self.hip_fits >= self.config.hip_centre_max_fits:
                self._hip_done = True
                ct = " (the CT hip centre stays in use)" if "femoral_head_centre" in knee.landmarks else ""
                self.events.append(WorkflowEvent(t, f"kinematic hip centre NOT found after {self.hip_fits} fits: {fit.reason}; "
                                                    f"no longer collecting{ct}"))
            else:
                self.events.append(WorkflowEvent(t, f"kinematic hip centre not yet: {fit.reason}"))
            return
        self._hip_done = True
        centre = self.hip_centre_ct_mm()
        ct = knee.landmarks.get("femoral_head_centre")
        beside = "" if ct is None or centre is None else f"; {float(np.linalg.norm(centre - ct)):.1f} mm from the CT hip centre"
        self.events.append(WorkflowEvent(t, f"kinematic hip centre: RMS {fit.rms_mm:.2f} mm over {fit.range_deg:.0f} deg "
                                            f"({fit.n_used} poses, {self._hip_frame_words()}){beside}"))
        if self.config.use_kinematic_hip_centre and centre is not None:
            self.ctx = replace(self.ctx, knee=replace(knee, hip_centre_ct_mm=centre))
            self.base_ctx = replace(self.base_ctx, knee=replace(knee, hip_centre_ct_mm=centre))
            self.events.append(WorkflowEvent(t, "live alignment now uses the kinematic hip centre"))

    def hip_centre_ct_mm(self) -> NDArray[np.float64] | None:
        """The kinematic hip centre in the femur's CT (LPS mm) through the femur's current
        registration (None without a fit or a femur registration)."""
        knee = self.base_ctx.knee
        if self.hip_centre is None or knee is None or knee.femur not in self.bone_registrations:
            return None
        return apply(self.bone_registrations[knee.femur].ct_from_reference, self.hip_centre.centre_femurref_mm)

    def _current_registration(self) -> Registration | None:
        if self.base_ctx.per_bone:
            return None if self.digitising_bone is None else self.bone_registrations.get(self.digitising_bone)
        return self.registration

    def _bone_check_points(self, bone: str | None) -> dict[str, NDArray[np.float64]]:
        if bone is None:
            return self.check_points
        return {k: v for k, v in self.check_points.items() if self.point_bones.get(k, bone) == bone}

    @property
    def phase(self) -> str:
        if self.surface_phase:
            return "surface"
        if self.base_ctx.per_bone:
            return "navigate" if self.digitising_bone is None else "digitise"
        return "digitise" if self.registration is None else "navigate"

    def _register(self, t: float) -> None:
        caps = self.digitiser.captures
        names, p_ref = self.digitiser.labelled()
        p_ct = np.array([self.fiducials_ct_mm[self.fiducial_names.index(n)] for n in names])
        bone = self.digitising_bone
        try:
            reg = register_paired_points(
                names,
                p_ct,
                p_ref,
                targets_ct_mm=self._bone_check_points(bone) or None,
                fle_rms_mm=self.config.fle_rms_mm,
                max_fre_mm=self.config.max_fre_mm,
                max_predicted_tre_mm=self.config.max_predicted_tre_mm,
                policy_min_fle_mm=self.config.policy_min_fle_mm,
                host_times_s=[caps[n].host_time_s for n in names],
            )
        except FRELimitExceeded as e:
            # Re-digitise the fiducial with the largest residual (the likely mis-touch).
            self.failed_registrations += 1
            self.digitiser.discard(e.worst)
            self.events.append(WorkflowEvent(t, f"registration rejected ({e}); touch {e.worst} again"))
            return
        except RegistrationError as e:
            # The layout of the fiducials touched (TRELimitExceeded) or degenerate: re-touching does not help.
            self.failed_registrations += 1
            missing = [n for n in self.fiducial_names if n not in caps]
            if missing:
                self.events.append(WorkflowEvent(t, f"registration refused ({e}); touch {', '.join(missing)} as well"))
            else:
                self.refusal = str(e)
                self.events.append(WorkflowEvent(t, f"REGISTRATION REFUSED ({e}); navigation cannot start with this plan's "
                                                    f"fiducials: add fiducials around the targets and plan again"))
            return
        if bone is not None:  # one array per bone
            self._set_bone_registration(bone, reg)
            self.events.append(WorkflowEvent(t, f"registered {bone}: FRE {reg.record.fre_mm:.3f} mm over "
                                                f"{len(reg.record.points_ct_mm)} fiducials (array {self._reference})"))
            if self.config.surface_points > 0 and bone in self.base_ctx.surfaces:
                self._start_surface(t, bone)
            else:
                if self.config.surface_points > 0:
                    self.events.append(WorkflowEvent(t, f"surface refinement of {bone} skipped: the case has no mesh of it"))
                self._bone_done(t)
            return
        self.registration = reg
        self.partial_registration = reg
        self.ctx = self.base_ctx.with_registration(reg.ct_from_reference)
        self.events.append(WorkflowEvent(t, f"registered: FRE {reg.record.fre_mm:.3f} mm over {len(reg.record.points_ct_mm)} fiducials"))
        if self.config.surface_points > 0:
            if not self.base_ctx.surfaces:
                self.events.append(WorkflowEvent(t, "surface refinement skipped: the case has no bone meshes"))
            else:
                self._start_surface(t, None)

    def _start_surface(self, t: float, bone: str | None) -> None:
        self.surface_phase = True
        self.surface_samples = []
        self._last_surface_sample = None
        self._surface_model = None
        what = "the exposed bone" if bone is None else f"the exposed {bone}"
        self.events.append(WorkflowEvent(t, f"paint {what} with the pointer ({self.config.surface_points} points)"))

    def _surfaces(self) -> dict[str, Any]:
        """The bone surfaces of the surface stage: every bone (one array), the bone being registered (one array per bone)."""
        bone = self.digitising_bone
        if bone is None:
            return dict(self.base_ctx.surfaces)
        return {bone: self.base_ctx.surfaces[bone]}

    def _collect_surface(self, frame: TrackingFrame) -> None:
        from .surface import SurfaceModel, refine_registration

        current = self._current_registration()
        t = pointer_sample_time(frame, self.config.pointer, self._reference)
        if t is None or t == self._last_surface_sample or current is None:
            return
        self._last_surface_sample = t
        p_ref = tip_in_reference(frame, self.config.pointer, self._reference, self._tip)
        if p_ref is None:
            return
        surfaces = self._surfaces()
        p_ct = apply(current.ct_from_reference, p_ref)
        near = min(abs(s.signed_distance_mm(p_ct)) for s in surfaces.values())
        if not near <= self.config.surface_band_mm:  # NaN (no distance) is never a surface sample
            return
        if self.surface_samples and np.linalg.norm(p_ref - self.surface_samples[-1]) < self.config.surface_spacing_mm:
            return
        self.surface_samples.append(p_ref)
        if len(self.surface_samples) < self.config.surface_points:
            return
        self.surface_phase = False
        if self._surface_model is None:
            import pyvista as pv

            merged = pv.merge([s.mesh for s in surfaces.values()]) if len(surfaces) > 1 else \
                next(iter(surfaces.values())).mesh
            self._surface_model = SurfaceModel(merged, "bones" if self.digitising_bone is None else self.digitising_bone)
        try:
            refined = with_surface_stage(current, refine_registration(
                current, np.array(self.surface_samples), self._surface_model, keep_fraction=self.config.surface_keep_fraction))
        except RegistrationError as e:
            self.events.append(WorkflowEvent(t, f"surface refinement failed ({e}); keeping the fiducial registration"))
            return
        sf = refined.record.surface
        why = surface_refusal(sf, sf["fiducial_rms_mm"], self.config)
        if why is not None:
            self.surface_rejected = sf
            self.events.append(WorkflowEvent(t, f"surface refinement refused ({why}); keeping the fiducial registration"))
            return
        if self.digitising_bone is not None:
            self._set_bone_registration(self.digitising_bone, refined)
        else:
            self.registration = refined
            self.partial_registration = refined
            self.ctx = self.base_ctx.with_registration(refined.ct_from_reference)
        which = "" if self.digitising_bone is None else f"{self.digitising_bone} "
        self.events.append(WorkflowEvent(t, f"{which}surface refinement: {len(self.surface_samples)} points, RMS {sf['rms_mm']:.2f} mm, "
                                            f"inliers {sf['inlier_fraction']:.0%}, constraint {sf['constraint']:.2f}, "
                                            f"fiducials now {sf['fiducial_rms_mm']:.3f} mm RMS from their CT positions"))

    def _verify(self, frame: TrackingFrame) -> None:
        if self.base_ctx.per_bone:
            self._verify_per_bone(frame)
            return
        t = pointer_sample_time(frame, self.config.pointer, self.config.reference)
        if t is not None and t == self._last_verify_sample:
            return  # a repeated (watchdog) frame is not a new sample
        self._last_verify_sample = t
        p_ref = None if t is None else tip_in_reference(frame, self.config.pointer, self.config.reference, self._tip)
        cap = self._capture.add(frame.host_time_s if t is None else t, p_ref)
        if cap is None or not self.check_points or self.registration is None:
            return
        p_ct = apply(self.registration.ct_from_reference, cap.p_reference_mm)
        names = list(self.check_points)
        d = [float(np.linalg.norm(p_ct - self.check_points[n])) for n in names]
        k = int(np.argmin(d))
        touch = Verification(names[k], d[k], p_ct, cap.host_time_s, self.check_radius_mm(names[k]))
        (self.verifications if touch.is_check else self.stray_touches).append(touch)
        self.events.append(WorkflowEvent(cap.host_time_s, touch.describe()))

    def _verify_per_bone(self, frame: TrackingFrame, *, checks_only: bool = False) -> None:
        """A touch measured with each registered bone's registration (pointer dwell relative to
        that bone's array) against that bone's check points; of the bones whose dwell ends in
        this frame, the nearest known point wins. ``checks_only`` (while another bone is being
        digitised): a touch that checks no point is not recorded (it is most likely one of that
        bone's fiducials)."""
        touches: list[Verification] = []
        for bone, reg in self.bone_registrations.items():
            ref = self.base_ctx.references[bone]
            t = pointer_sample_time(frame, self.config.pointer, ref)
            if t is not None and t == self._last_bone_sample.get(bone):
                continue  # a repeated (watchdog) frame is not a new sample
            self._last_bone_sample[bone] = t
            p_ref = None if t is None else tip_in_reference(frame, self.config.pointer, ref, self._tip)
            capture = self._bone_captures.get(bone)
            if capture is None:
                cfg = self.config
                capture = self._bone_captures[bone] = StillCapture(hold_s=cfg.hold_s, still_mm=cfg.still_mm, rearm_mm=cfg.rearm_mm)
            cap = capture.add(frame.host_time_s if t is None else t, p_ref)
            points = self._bone_check_points(bone)
            if cap is None or not points:
                continue
            p_ct = apply(reg.ct_from_reference, cap.p_reference_mm)
            names = list(points)
            d = [float(np.linalg.norm(p_ct - points[n])) for n in names]
            k = int(np.argmin(d))
            touches.append(Verification(names[k], d[k], p_ct, cap.host_time_s, self.check_radius_mm(names[k], bone), bone))
        if touches:
            touch = min(touches, key=lambda v: v.distance_mm)
            if checks_only and not touch.is_check:
                return
            (self.verifications if touch.is_check else self.stray_touches).append(touch)
            self.events.append(WorkflowEvent(touch.host_time_s, f"{touch.bone}: {touch.describe()}"))

    def check_radius_mm(self, name: str, bone: str | None = None) -> float:
        """Radius (mm) around known point ``name`` within which a touch verifies it:
        ``verify_tre_factor`` x its predicted TRE + ``verify_margin_mm``, at most
        ``verify_radius_mm`` (the cap alone when no TRE is predicted there). ``bone``: one
        array per bone, the TRE predicted by that bone's registration."""
        cfg = self.config
        reg = self.registration if bone is None else self.bone_registrations.get(bone)
        tre = math.nan if reg is None else reg.record.predicted_tre_mm.get(name, math.nan)
        if not math.isfinite(tre):
            return cfg.verify_radius_mm
        return min(cfg.verify_radius_mm, cfg.verify_tre_factor * tre + cfg.verify_margin_mm)

    def process(self, frame: TrackingFrame, *, clock: Callable[[], float] | None = time.monotonic) -> NavigationState:
        """Advance the workflow with one frame and return its navigation state."""
        if self.base_ctx.per_bone:
            if not self._knee_announced:
                self._announce_knee(frame.host_time_s)
            if self.config.hip_centre_poses > 0:
                self._collect_hip_pose(frame)
            digitising = self.digitising_bone is not None and not self.surface_phase
        else:
            digitising = self.registration is None
        if digitising:
            if self.bone_registrations:  # one array per bone: the bones registered so far can be checked meanwhile
                self._verify_per_bone(frame, checks_only=True)
            got = self.digitiser.update(frame)
            while self._n_rejected < len(self.digitiser.rejected):
                name, cap, problem = self.digitiser.rejected[self._n_rejected]
                self.events.append(WorkflowEvent(cap.host_time_s, f"capture for {name} rejected: {problem}"))
                self._n_rejected += 1
            if self.digitiser.restarts > self._n_restarts:
                self._n_restarts = self.digitiser.restarts
                self.events.append(WorkflowEvent(frame.host_time_s, f"{self.digitiser.restart_after} captures in a row did not fit the "
                                                 f"plan's fiducials: digitising starts again at {self.fiducial_names[0]}"))
            if got is not None:
                name, cap = got
                self.events.append(WorkflowEvent(cap.host_time_s, f"captured {name} (spread {cap.spread_mm:.2f} mm, {cap.n_samples} samples)"))
                if self.digitiser.relabelled:
                    moves = ", ".join(f"{o} -> {n}" for o, n in self.digitiser.relabelled)
                    self.events.append(WorkflowEvent(cap.host_time_s, f"relabelled earlier captures by geometry: {moves}"))
                if self.digitiser.done:
                    self._register(frame.host_time_s)
            elif self.digitiser.stalled:
                missing = [n for n in self.fiducial_names if n not in self.digitiser.captures]
                self.events.append(WorkflowEvent(frame.host_time_s, f"{', '.join(missing)} not touched; registering with the "
                                                 f"{len(self.digitiser.captures)} fiducials digitised"))
                self.digitiser.stalled = False
                self._register(frame.host_time_s)
        elif self.surface_phase:
            self._collect_surface(frame)
            if self.digitising_bone is not None and not self.surface_phase:  # one array per bone: this bone is done
                self._bone_done(frame.host_time_s)
        else:
            self._verify(frame)
        return compute_state(frame, self.ctx, clock=clock)

    def verification_by_point(self, bone: str | None = None) -> dict[str, float]:
        """Known point -> distance of the first check touch of it (mm); stray touches are not
        checks. ``bone`` (one array per bone): only the touches measured with that bone's
        registration."""
        out: dict[str, float] = {}
        for v in self.verifications:
            if bone is None or v.bone == bone:
                out.setdefault(v.name, v.distance_mm)
        return out

    def stray_by_point(self) -> dict[str, float]:
        """Nearest known point -> distance of the first stray touch nearest to it (mm), for
        points with no check touch (a touch too far away to verify anything)."""
        checked = self.verification_by_point()
        out: dict[str, float] = {}
        for v in self.stray_touches:
            if v.name not in checked:
                out.setdefault(v.name, v.distance_mm)
        return out


def surface_refusal(surface: Mapping[str, float], refined_fre_mm: float, config: WorkflowConfig) -> str | None:
    """Why a surface refinement must not replace the fiducial registration (None: accept it).

    Parameters
    ----------
    surface
        The refined record's ``surface`` figures (``converged``, ``constraint``,
        ``inlier_fraction``; see :func:`~orthonav.navigation.surface.refine_registration`).
    refined_fre_mm
        RMS distance of the digitised fiducials from their CT positions under the refined
        registration (mm).
    config
        Acceptance limits: ``surface_min_constraint``, ``surface_min_inlier_fraction``,
        ``max_fre_mm``.
    """
    if surface.get("converged") != 1.0:
        return "ICP did not converge"
    if not surface.get("constraint", 0.0) >= config.surface_min_constraint:
        return (f"constraint {surface.get('constraint', math.nan):.3f} < {config.surface_min_constraint}: "
                f"the painted points do not pin the bone down")
    if not surface.get("inlier_fraction", 0.0) >= config.surface_min_inlier_fraction:
        return (f"only {surface.get('inlier_fraction', math.nan):.0%} of the painted points lie on the bone "
                f"(< {config.surface_min_inlier_fraction:.0%})")
    if not refined_fre_mm <= config.max_fre_mm:
        return (f"it moves the digitised fiducials {refined_fre_mm:.2f} mm RMS from their CT positions "
                f"(> {config.max_fre_mm:.2f} mm): the surface fit disagrees with the fiducials")
    return None


def percentile_ms(values_s: list[float], q: float) -> float:
    """The ``q``-th percentile of durations given in seconds, in milliseconds (NaN if none)."""
    v = [x for x in values_s if math.isfinite(x)]
    return float(np.percentile(v, q) * 1e3) if v else math.nan
