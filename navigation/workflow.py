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
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import NDArray

from orthonav.core.errors import RegistrationError
from orthonav.core.transforms import apply
from orthonav.tracking.frame import TrackingFrame

from .digitise import FiducialDigitiser, StillCapture, pointer_sample_time, tip_in_reference
from .registration import FRELimitExceeded, Registration, register_paired_points, with_surface_stage
from .state import NavigationContext, NavigationState, compute_state


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
        Tool names.
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
    """

    def __init__(
        self,
        ctx: NavigationContext,
        fiducial_names: list[str],
        fiducials_ct_mm: NDArray[np.float64],
        *,
        check_points_ct_mm: Mapping[str, NDArray[np.float64]] | None = None,
        config: WorkflowConfig = WorkflowConfig(),
    ) -> None:
        defs = ctx.toolset.by_name()
        if config.pointer not in defs or config.reference not in defs:
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

    @property
    def phase(self) -> str:
        if self.registration is None:
            return "digitise"
        return "surface" if self.surface_phase else "navigate"

    def _register(self, t: float) -> None:
        caps = self.digitiser.captures
        names, p_ref = self.digitiser.labelled()
        p_ct = np.array([self.fiducials_ct_mm[self.fiducial_names.index(n)] for n in names])
        try:
            reg = register_paired_points(
                names,
                p_ct,
                p_ref,
                targets_ct_mm=self.check_points or None,
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
        self.registration = reg
        self.ctx = self.base_ctx.with_registration(reg.ct_from_reference)
        self.events.append(WorkflowEvent(t, f"registered: FRE {reg.record.fre_mm:.3f} mm over {len(reg.record.points_ct_mm)} fiducials"))
        if self.config.surface_points > 0:
            if not self.base_ctx.surfaces:
                self.events.append(WorkflowEvent(t, "surface refinement skipped: the case has no bone meshes"))
            else:
                self.surface_phase = True
                self.events.append(WorkflowEvent(t, f"paint the exposed bone with the pointer ({self.config.surface_points} points)"))

    def _collect_surface(self, frame: TrackingFrame) -> None:
        from .surface import SurfaceModel, refine_registration

        t = pointer_sample_time(frame, self.config.pointer, self.config.reference)
        if t is None or t == self._last_surface_sample or self.registration is None:
            return
        self._last_surface_sample = t
        p_ref = tip_in_reference(frame, self.config.pointer, self.config.reference, self._tip)
        if p_ref is None:
            return
        p_ct = apply(self.registration.ct_from_reference, p_ref)
        near = min(abs(s.signed_distance_mm(p_ct)) for s in self.base_ctx.surfaces.values())
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

            merged = pv.merge([s.mesh for s in self.base_ctx.surfaces.values()]) if len(self.base_ctx.surfaces) > 1 else \
                next(iter(self.base_ctx.surfaces.values())).mesh
            self._surface_model = SurfaceModel(merged, "bones")
        try:
            refined = with_surface_stage(self.registration, refine_registration(
                self.registration, np.array(self.surface_samples), self._surface_model, keep_fraction=self.config.surface_keep_fraction))
        except RegistrationError as e:
            self.events.append(WorkflowEvent(t, f"surface refinement failed ({e}); keeping the fiducial registration"))
            return
        sf = refined.record.surface
        why = surface_refusal(sf, sf["fiducial_rms_mm"], self.config)
        if why is not None:
            self.surface_rejected = sf
            self.events.append(WorkflowEvent(t, f"surface refinement refused ({why}); keeping the fiducial registration"))
            return
        self.registration = refined
        self.ctx = self.base_ctx.with_registration(refined.ct_from_reference)
        self.events.append(WorkflowEvent(t, f"surface refinement: {len(self.surface_samples)} points, RMS {sf['rms_mm']:.2f} mm, "
                                            f"inliers {sf['inlier_fraction']:.0%}, constraint {sf['constraint']:.2f}, "
                                            f"fiducials now {sf['fiducial_rms_mm']:.3f} mm RMS from their CT positions"))

    def _verify(self, frame: TrackingFrame) -> None:
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

    def check_radius_mm(self, name: str) -> float:
        """Radius (mm) around known point ``name`` within which a touch verifies it:
        ``verify_tre_factor`` x its predicted TRE + ``verify_margin_mm``, at most
        ``verify_radius_mm`` (the cap alone when no TRE is predicted there)."""
        cfg = self.config
        tre = math.nan if self.registration is None else self.registration.record.predicted_tre_mm.get(name, math.nan)
        if not math.isfinite(tre):
            return cfg.verify_radius_mm
        return min(cfg.verify_radius_mm, cfg.verify_tre_factor * tre + cfg.verify_margin_mm)

    def process(self, frame: TrackingFrame, *, clock: Callable[[], float] | None = time.monotonic) -> NavigationState:
        """Advance the workflow with one frame and return its navigation state."""
        if self.registration is None:
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
        else:
            self._verify(frame)
        return compute_state(frame, self.ctx, clock=clock)

    def verification_by_point(self) -> dict[str, float]:
        """Known point -> distance of the first check touch of it (mm); stray touches are not checks."""
        out: dict[str, float] = {}
        for v in self.verifications:
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
