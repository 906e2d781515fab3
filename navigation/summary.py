"""What a navigation or replay run measured (:class:`NavigationSummary`), and the status line
the overlay shows for a workflow (shared by the live run and the replay).

One array per bone: the summary holds each registered bone's figures (:class:`BoneSummary`:
FRE, predicted TRE at that bone's targets, surface stage, verification touches) and the
kinematic hip centre; the status line says which bone and array is being digitised or painted
and each registered bone's FRE / predicted TRE. A one-array run's summary and status line are
as they always were.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .registration import Registration
from .workflow import Workflow


def finite_or_none(x: float) -> float | None:
    """``x`` as a float, or None when it is NaN or infinite (JSON has no NaN)."""
    return None if not math.isfinite(x) else float(x)


def _jsonable(v: Any) -> Any:
    """Floats (also inside lists) with NaN / inf as None; anything else as it is."""
    if isinstance(v, float):
        return finite_or_none(v)
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


@dataclass(frozen=True)
class BoneSummary:
    """One bone's registration to its own array (one array per bone).

    Attributes
    ----------
    reference
        The reference tool fixed to the bone (e.g. ``FemurRef``).
    registration_method
        ``paired_point`` or ``paired_point+surface_icp``.
    fre_mm
        FRE of the bone's fiducial stage (RMS, mm).
    predicted_tre_mm
        Check point on that bone -> TRE predicted by its fiducial stage (RMS, mm).
    surface
        The bone's surface stage figures when refined (``rms_mm``, ...), else empty.
    verification_mm
        Check point -> distance of the first verification touch measured with this bone's
        registration (mm).
    """

    reference: str
    registration_method: str
    fre_mm: float
    predicted_tre_mm: dict[str, float] = field(default_factory=dict)
    surface: dict[str, float] = field(default_factory=dict)
    verification_mm: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        num = finite_or_none
        return {"reference": self.reference, "registration_method": self.registration_method, "fre_mm": num(self.fre_mm),
                "predicted_tre_mm": {k: num(v) for k, v in self.predicted_tre_mm.items()},
                "surface": {k: num(v) for k, v in self.surface.items()},
                "verification_mm": {k: num(v) for k, v in self.verification_mm.items()}}


@dataclass(frozen=True)
class NavigationSummary:
    """What a navigation (or replay) run measured.

    Navigation only reports what it can know: ground-truth scores of a simulated run (true
    TRE, guidance error against the scripted truth) are made by
    :mod:`orthonav.phantoms.scoring`, which observes the recorded session.

    Attributes
    ----------
    session_dir
        The recorded session folder (None when not recorded).
    registered
        Whether registration succeeded (one array per bone: every bone registered; ``bones``
        holds those registered so far).
    registration_method
        What produced the registration in force (``paired_point`` or
        ``paired_point+surface_icp``); '' if not registered. One array per bone: the bones'
        method when they share it, else ``mixed`` (each bone's is in ``bones``).
    fre_mm
        FRE of the paired-point (fiducial) stage (RMS, mm); NaN if not registered. One array
        per bone: the largest of the registered bones' FREs.
    predicted_tre_mm
        Check point -> predicted RMS TRE (mm) of the fiducial stage (Fitzpatrick 1998); after a
        surface refinement it does not describe the registration in force. One array per bone:
        every registered bone's, at its own check points.
    surface
        Surface stage figures (``rms_mm``, ``inlier_fraction``, ``constraint``, ...) when refined.
    refusal
        Why registration was refused with every fiducial touched (navigation never started), else None.
    warnings
        Things the user must know about the run (e.g. a replay against a changed plan).
    plan_changed
        Replay only: ``plan.json`` differs from the one recorded (replayed with ``allow_changed_plan``).
    verification_mm
        Known point -> distance of the first verification touch of it after registration (mm):
        only touches aimed at the point (within the workflow's check radius, see
        :meth:`~orthonav.navigation.workflow.Workflow.check_radius_mm`) count.
    stray_touches_mm
        Nearest known point -> distance of a touch too far from it to be a check (mm): where the
        pointer was, not an error figure.
    states, loop_rate_hz, latency_p50_ms, latency_p99_ms
        Live loop figures (NaN latency on replay).
    screenshots
        PNG files written.
    events
        Workflow events (captures, registration, verifications) in order.
    replay_mismatches
        Replay only: guidance lines that differ from the recording (0 = exact).
    bones
        One array per bone: bone -> :class:`BoneSummary` of every bone registered (a run
        stopped after the femur has the femur only); empty for one array.
    bones_not_registered
        One array per bone: the bones not registered when the run ended.
    hip_centre
        The kinematic hip centre (one array per bone, when fitted): the fit's figures
        (:meth:`~orthonav.navigation.hip_centre.HipCentreFit.to_dict`), ``centre_ct_mm`` (femur
        CT LPS), ``from_ct_hip_centre_mm`` (distance to the CT's femoral head centre), ``frame``.
    """

    session_dir: Path | None
    registered: bool
    fre_mm: float
    predicted_tre_mm: dict[str, float] = field(default_factory=dict)
    registration_method: str = ""
    surface: dict[str, float] = field(default_factory=dict)
    refusal: str | None = None
    warnings: list[str] = field(default_factory=list)
    plan_changed: bool = False
    verification_mm: dict[str, float] = field(default_factory=dict)
    stray_touches_mm: dict[str, float] = field(default_factory=dict)
    states: int = 0
    loop_rate_hz: float = math.nan
    latency_p50_ms: float = math.nan
    latency_p99_ms: float = math.nan
    screenshots: list[Path] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    replay_mismatches: int = -1
    bones: dict[str, BoneSummary] = field(default_factory=dict)
    bones_not_registered: list[str] = field(default_factory=list)
    hip_centre: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON-able values (NaN -> None), as written to ``summary.json``."""
        num = finite_or_none
        out = self._to_json()
        if self.bones or self.bones_not_registered:  # one array per bone (a one-array summary.json is as before)
            out["bones"] = {b: v.to_json() for b, v in self.bones.items()}
            out["bones_not_registered"] = list(self.bones_not_registered)
            out["hip_centre"] = {k: _jsonable(v) for k, v in self.hip_centre.items()}
        return out

    def _to_json(self) -> dict[str, Any]:
        num = finite_or_none
        return {
            "session_dir": str(self.session_dir) if self.session_dir else None,
            "registered": self.registered,
            "registration_method": self.registration_method,
            "fre_mm": num(self.fre_mm),
            "predicted_tre_mm": self.predicted_tre_mm,
            "surface": {k: num(v) for k, v in self.surface.items()},
            "refusal": self.refusal,
            "warnings": self.warnings,
            "plan_changed": self.plan_changed,
            "verification_mm": self.verification_mm,
            "stray_touches_mm": self.stray_touches_mm,
            "states": self.states,
            "loop_rate_hz": num(self.loop_rate_hz),
            "latency_p50_ms": num(self.latency_p50_ms),
            "latency_p99_ms": num(self.latency_p99_ms),
            "screenshots": [str(p) for p in self.screenshots],
            "events": self.events,
            "replay_mismatches": self.replay_mismatches,
        }


def bone_summary(workflow: Workflow, bone: str, reg: Registration) -> BoneSummary:
    """The :class:`BoneSummary` of ``bone`` (one array per bone), registered by ``reg``."""
    rec = reg.record
    return BoneSummary(workflow.base_ctx.references.get(bone, ""), rec.method, rec.fre_mm, dict(rec.predicted_tre_mm),
                       dict(rec.surface) if rec.surface_refined else {}, workflow.verification_by_point(bone))


def hip_centre_summary(workflow: Workflow) -> dict[str, Any]:
    """The kinematic hip centre of ``workflow`` as JSON-able figures (empty when never fitted)."""
    fit = workflow.hip_centre
    if fit is None:
        return {}
    out = fit.to_dict()
    centre = workflow.hip_centre_ct_mm()
    knee = workflow.base_ctx.knee
    ct = None if knee is None else knee.landmarks.get("femoral_head_centre")
    out["centre_ct_mm"] = None if centre is None or not np.all(np.isfinite(centre)) else [float(v) for v in centre]
    out["from_ct_hip_centre_mm"] = (float(np.linalg.norm(centre - ct)) if centre is not None and ct is not None
                                    and np.all(np.isfinite(centre)) else math.nan)
    out["frame"] = f"pelvis array {knee.pelvis_reference}" if knee is not None and knee.pelvis_reference else "tracker (pelvis still)"
    out["fits"] = workflow.hip_fits
    return out


def workflow_summary(workflow: Workflow, session_dir: Path | None, **figures: Any) -> NavigationSummary:
    """A :class:`NavigationSummary` of ``workflow``'s registration, verifications and events,
    plus the run's own ``figures`` (``states``, ``loop_rate_hz``, ``screenshots``, ...).
    One array per bone: each registered bone's figures (``bones``), the top-level figures over
    the bones (see :class:`NavigationSummary`), and the kinematic hip centre."""
    if workflow.base_ctx.per_bone:
        return _per_bone_summary(workflow, session_dir, **figures)
    reg = workflow.registration
    return NavigationSummary(
        session_dir=session_dir,
        registered=reg is not None,
        fre_mm=reg.record.fre_mm if reg is not None else math.nan,
        predicted_tre_mm=dict(reg.record.predicted_tre_mm) if reg is not None else {},
        registration_method=reg.record.method if reg is not None else "",
        surface=dict(reg.record.surface) if reg is not None else {},
        refusal=workflow.refusal,
        verification_mm=workflow.verification_by_point(),
        stray_touches_mm=workflow.stray_by_point(),
        events=[e.text for e in workflow.events],
        **figures,
    )


def _per_bone_summary(workflow: Workflow, session_dir: Path | None, **figures: Any) -> NavigationSummary:
    bones = {b: bone_summary(workflow, b, r) for b, r in workflow.bone_registrations.items()}
    predicted: dict[str, float] = {}
    for b in bones.values():
        for k, v in b.predicted_tre_mm.items():
            predicted[k] = max(v, predicted.get(k, -math.inf))
    methods = {b.registration_method for b in bones.values()}
    return NavigationSummary(
        session_dir=session_dir,
        registered=workflow.registration is not None,
        fre_mm=max((b.fre_mm for b in bones.values()), default=math.nan),
        predicted_tre_mm=predicted,
        registration_method=(methods.pop() if len(methods) == 1 else "mixed") if methods else "",
        refusal=workflow.refusal,
        verification_mm=workflow.verification_by_point(),
        stray_touches_mm=workflow.stray_by_point(),
        events=[e.text for e in workflow.events],
        bones=bones,
        bones_not_registered=[b for b in workflow.base_ctx.references if b not in bones],
        hip_centre=hip_centre_summary(workflow),
        **figures,
    )


def _bone_words(bone: str, reg: Registration) -> str:
    """``femur FRE 0.31 / TRE 0.62 mm`` (+ surface RMS when refined)."""
    rec = reg.record
    tre = max(rec.predicted_tre_mm.values(), default=math.nan)
    words = f"{bone} FRE {rec.fre_mm:.2f}" + (f" / TRE {tre:.2f} mm" if math.isfinite(tre) else " mm")
    if rec.surface_refined:
        words += f" + surface RMS {rec.surface.get('rms_mm', math.nan):.2f} mm"
    return words


def _info_per_bone(workflow: Workflow) -> str:
    done = "  ".join(_bone_words(b, r) for b, r in workflow.bone_registrations.items())
    tail = f"  |  {done}" if done else ""
    bone = workflow.digitising_bone
    if workflow.refusal is not None:
        return f"REGISTRATION REFUSED ({bone}): fiducial layout (see the log){tail}"
    if bone is None:
        return f"Registered  {done}"
    ref = workflow.base_ctx.references.get(bone, "")
    if workflow.surface_phase:
        return f"Paint the {bone} surface ({ref})  {len(workflow.surface_samples)}/{workflow.config.surface_points}{tail}"
    nxt = workflow.digitiser.next_name or ""
    return f"Digitise {bone}: {nxt} ({ref})  {len(workflow.digitiser.captures)}/{len(workflow.fiducial_names)}{tail}"


def info_text(workflow: Workflow) -> str:
    """The overlay's status line for ``workflow``: what to digitise next, or the registration.

    One array per bone: the bone and array being digitised ("Digitise tibia: fiducial_5
    (TibiaRef)  1/4") or painted, and each registered bone's FRE / largest predicted TRE."""
    if workflow.base_ctx.per_bone:
        return _info_per_bone(workflow)
    if workflow.refusal is not None:
        return "REGISTRATION REFUSED: fiducial layout (see the log)"
    if workflow.registration is None:
        nxt = workflow.digitiser.next_name or ""
        return f"Digitise {nxt} ({len(workflow.digitiser.captures)}/{len(workflow.fiducial_names)})"
    rec = workflow.registration.record
    if rec.surface_refined:
        return f"Registered (fiducials + surface)  surface RMS {rec.surface.get('rms_mm', math.nan):.2f} mm"
    return f"Registered  FRE {rec.fre_mm:.2f} mm"


__all__ = ["BoneSummary", "NavigationSummary", "bone_summary", "finite_or_none", "hip_centre_summary", "info_text", "workflow_summary"]
