"""OrthoNav navigation: register a case to the patient and guide the tools live.

The public API is importable from the package itself::

    from orthonav.navigation import navigate_case, replay_session, NavigationSummary

* a live run: :func:`navigate_case`, observed through its ``on_state`` callback and the
  recorded session (no ground truth goes in: phantom scoring is :mod:`orthonav.phantoms.scoring`);
* replay: :func:`replay_session`, :func:`prepare_replay`;
* what a case gives navigation: :func:`load_navigation_inputs`, :func:`plan_cut_frames`,
  :func:`default_check_points`;
* registration: :func:`register_paired_points`, :func:`predict_tre`, :class:`RegistrationRecord`;
* per-frame guidance and the workflow: :func:`compute_state`, :class:`NavigationContext`,
  :class:`Workflow`, :class:`WorkflowConfig`, :class:`NavigationLoop`;
* sessions: :class:`SessionRecorder`, :func:`read_frames`, :func:`read_session_info`.

The overlay (:mod:`orthonav.navigation.overlay`) and the 3D Slicer stream
(:mod:`orthonav.navigation.stream`) are imported from their modules. Names are loaded on first
use (:func:`orthonav.core.lazy_exports`), so ``import orthonav.navigation`` imports no renderer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orthonav.core import lazy_exports

#: module (relative to this package) -> the public names it gives the package namespace.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "navigate": ("navigate_case",),
    "replay": ("SessionReplay", "prepare_replay", "replay_session"),
    "summary": ("BoneSummary", "NavigationSummary"),
    "inputs": ("CaseNavigationInputs", "default_check_points", "implant_ghosts", "load_navigation_inputs", "plan_cut_frames"),
    "registration": ("FRELimitExceeded", "Registration", "RegistrationRecord", "TRELimitExceeded", "load_registration",
                     "bone_registration", "per_bone_registration", "predict_tre", "register_paired_points", "write_registration"),
    "session": ("SessionInfo", "SessionRecorder", "read_frames", "read_guidance", "read_session_info"),
    "state": ("KneeInputs", "MAX_PAIR_SKEW_S", "NavStatus", "NavigationContext", "NavigationState", "compute_state", "expire_state",
              "knee_pose"),
    "guidance": ("BoneSurface", "CutFrame", "cut_frame", "drill_guidance", "saw_guidance"),
    "workflow": ("Workflow", "WorkflowConfig"),
    "loop": ("NavigationLoop",),
    "tre_map": ("registration_tre_maps", "tre_maps"),
    "web": ("NavigationWebView", "PlanWebView"),
    "alignment": ("KinematicSummary", "KneeAlignment", "KneeFrames", "kinematic_summary", "knee_alignment", "knee_frames", "rom_table"),
    "gaps": ("GapGeometry", "KneeGaps", "gap_geometry", "knee_gaps"),
    "hip_centre": ("HipCentreFit", "fit_hip_centre"),
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what static tools (mypy, IDEs) see; the same names as ``_EXPORTS``
    from .alignment import KinematicSummary, KneeAlignment, KneeFrames, kinematic_summary, knee_alignment, knee_frames, rom_table
    from .gaps import GapGeometry, KneeGaps, gap_geometry, knee_gaps
    from .guidance import BoneSurface, CutFrame, cut_frame, drill_guidance, saw_guidance
    from .hip_centre import HipCentreFit, fit_hip_centre
    from .inputs import CaseNavigationInputs, default_check_points, implant_ghosts, load_navigation_inputs, plan_cut_frames
    from .loop import NavigationLoop
    from .navigate import navigate_case
    from .registration import (
        FRELimitExceeded,
        Registration,
        RegistrationRecord,
        TRELimitExceeded,
        bone_registration,
        load_registration,
        per_bone_registration,
        predict_tre,
        register_paired_points,
        write_registration,
    )
    from .replay import SessionReplay, prepare_replay, replay_session
    from .session import SessionInfo, SessionRecorder, read_frames, read_guidance, read_session_info
    from .state import MAX_PAIR_SKEW_S, KneeInputs, NavigationContext, NavigationState, NavStatus, compute_state, expire_state, knee_pose
    from .summary import BoneSummary, NavigationSummary
    from .tre_map import registration_tre_maps, tre_maps
    from .web import NavigationWebView, PlanWebView
    from .workflow import Workflow, WorkflowConfig
