"""What a navigation or replay run measured (:class:`NavigationSummary`), and the status line
the overlay shows for a workflow (shared by the live run and the replay)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .workflow import Workflow


def finite_or_none(x: float) -> float | None:
    """``x`` as a float, or None when it is NaN or infinite (JSON has no NaN)."""
    return None if not math.isfinite(x) else float(x)


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
        Whether registration succeeded.
    registration_method
        What produced the registration in force (``paired_point`` or
        ``paired_point+surface_icp``); '' if not registered.
    fre_mm
        FRE of the paired-point (fiducial) stage (RMS, mm); NaN if not registered.
    predicted_tre_mm
        Check point -> predicted RMS TRE (mm) of the fiducial stage (Fitzpatrick 1998); after a
        surface refinement it does not describe the registration in force.
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

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON-able values (NaN -> None), as written to ``summary.json``."""
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


def workflow_summary(workflow: Workflow, session_dir: Path | None, **figures: Any) -> NavigationSummary:
    """A :class:`NavigationSummary` of ``workflow``'s registration, verifications and events,
    plus the run's own ``figures`` (``states``, ``loop_rate_hz``, ``screenshots``, ...)."""
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


def info_text(workflow: Workflow) -> str:
    """The overlay's status line for ``workflow``: what to digitise next, or the registration."""
    if workflow.refusal is not None:
        return "REGISTRATION REFUSED: fiducial layout (see the log)"
    if workflow.registration is None:
        nxt = workflow.digitiser.next_name or ""
        return f"Digitise {nxt} ({len(workflow.digitiser.captures)}/{len(workflow.fiducial_names)})"
    rec = workflow.registration.record
    if rec.surface_refined:
        return f"Registered (fiducials + surface)  surface RMS {rec.surface.get('rms_mm', math.nan):.2f} mm"
    return f"Registered  FRE {rec.fre_mm:.2f} mm"


__all__ = ["NavigationSummary", "finite_or_none", "info_text", "workflow_summary"]
