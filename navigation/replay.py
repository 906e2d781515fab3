"""Replay a recorded navigation session from its frames.

:func:`replay_session` feeds the recorded frames (:func:`~orthonav.navigation.session.read_frames`)
through the same deterministic workflow as the live run and checks that every guidance number
is reproduced exactly; it refuses when ``plan.json`` has changed since the session was
recorded (sha256 in ``session.json``) unless ``allow_changed_plan`` is given. With one array per
bone it also re-makes each bone's registration and compares it with the session's
``registration.json`` (:func:`registration_mismatches`).
:func:`prepare_replay` rebuilds the workflow a session started with, for an observer that
scores a session after the fact (e.g. :mod:`orthonav.phantoms.scoring`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from orthonav.core.case import Case
from orthonav.core.errors import InputError

from .inputs import CaseNavigationInputs, load_navigation_inputs
from .registration import load_registration
from .session import REGISTRATION, SUMMARY, SessionInfo, comparable, read_frames, read_guidance, read_session_info, session_closed, state_record
from .state import NavigationState
from .summary import NavigationSummary, info_text, workflow_summary
from .workflow import Workflow, WorkflowConfig

Progress = Callable[[str], None]


@dataclass(frozen=True)
class SessionReplay:
    """What a replay rebuilds from a session folder and its case.

    Attributes
    ----------
    session_dir
        The session folder.
    info
        Its ``session.json``.
    inputs
        The navigation inputs rebuilt from the case's current plan and meshes.
    config
        The workflow settings recorded with the session.
    check_points_ct_mm
        The verification points recorded with the session (CT LPS mm).
    warnings
        What the user must know (a changed or unhashed plan).
    plan_changed
        ``plan.json`` differs from the one recorded.
    """

    session_dir: Path
    info: SessionInfo
    inputs: CaseNavigationInputs
    config: WorkflowConfig
    check_points_ct_mm: dict[str, NDArray[np.float64]]
    warnings: list[str]
    plan_changed: bool

    def new_workflow(self) -> Workflow:
        """A fresh workflow in the state the live session started in."""
        return Workflow(self.inputs.context, self.inputs.fiducial_names, self.inputs.fiducials_ct_mm,
                        check_points_ct_mm=self.check_points_ct_mm, config=self.config,
                        bone_fiducials=self.inputs.bone_fiducials, point_bones=self.inputs.landmark_bones)


def plan_check(info: SessionInfo, current_sha256: str, allow_changed_plan: bool) -> list[str]:
    """Warnings about the plan a replay rebuilds from.

    Raises
    ------
    InputError
        The plan changed since the session was recorded and ``allow_changed_plan`` is False.
    """
    plan_path = Case(info.case_dir).plan
    if not info.plan_sha256:
        return [f"the session was recorded without a plan hash: cannot check that {plan_path} is the plan it navigated"]
    if info.plan_sha256 == current_sha256:
        return []
    what = (f"has changed since the session was recorded (sha256 {info.plan_sha256[:12]}... then, "
            f"{current_sha256[:12]}... now)")
    if not allow_changed_plan:
        raise InputError(plan_path, f"{what}: a replay would rebuild the guidance from a different plan. Restore the "
                                    f"recorded plan, or pass --allow-changed-plan to replay against the current one")
    return [f"{plan_path} {what}: replaying against the CURRENT plan; numbers may differ from the live session"]


def registration_mismatches(session_dir: str | Path, workflow: Workflow) -> list[str]:
    """The bones whose registration recorded in the session's ``registration.json`` differs from
    the one ``workflow`` rebuilt from the frames (one array per bone; exact comparison of
    ``ct_from_<bone>ref``). A bone the replay did not register (a session killed before its
    record was written) or a one-array record is not compared: [] then."""
    path = Path(session_dir) / REGISTRATION
    if not path.is_file() or not workflow.bone_registrations:
        return []
    record = load_registration(path)
    out = []
    for bone, rec in record.bones.items():
        reg = workflow.bone_registrations.get(bone)
        if reg is not None and not np.array_equal(np.asarray(rec.ct_from_reference, dtype=np.float64), reg.ct_from_reference):
            out.append(bone)
    return out


def prepare_replay(session_dir: str | Path, *, ct: bool = False, allow_changed_plan: bool = False) -> SessionReplay:
    """Read a session folder and rebuild what its replay needs (see :class:`SessionReplay`).

    Parameters
    ----------
    ct
        Also read the CT and implant ghosts (for re-rendered pictures).

    Raises
    ------
    InputError
        Not a session, or the plan changed since recording (without ``allow_changed_plan``).
    """
    sdir = Path(session_dir)
    info = read_session_info(sdir)
    inputs = load_navigation_inputs(info.case_dir, info.toolset, ct=ct)
    warnings = plan_check(info, inputs.plan_sha256, allow_changed_plan)
    plan_changed = bool(info.plan_sha256) and info.plan_sha256 != inputs.plan_sha256
    settings = dict(info.workflow)
    settings.setdefault("max_predicted_tre_mm", None)  # recorded before the TRE limit existed: replay as recorded
    checks = {k: np.asarray(v, dtype=np.float64) for k, v in info.check_points_mm.items()}
    return SessionReplay(sdir, info, inputs, WorkflowConfig(**settings), checks, warnings, plan_changed)


def replay_session(session_dir: str | Path, *, off_screen: bool = True, render: bool = True, progress: Progress | None = None,
                   allow_changed_plan: bool = False) -> NavigationSummary:
    """Re-run a recorded session from its frames and check the guidance numbers match exactly.

    Pictures are re-rendered at the frames the live session took its screenshots, into
    ``<session>/replay/``. ``replay_mismatches`` counts guidance lines that differ (0 = exact).

    The navigation context is rebuilt from the case's current ``plan.json``. If its sha256
    differs from the one recorded in ``session.json``, the replay is refused (InputError naming
    the plan) unless ``allow_changed_plan``; then it runs with a warning in ``warnings`` (and
    through ``progress``). A session recorded before plan hashing replays with a warning.

    Raises
    ------
    InputError
        Not a session, or the plan changed since recording (without ``allow_changed_plan``).
    """
    replay = prepare_replay(session_dir, ct=render, allow_changed_plan=allow_changed_plan)
    sdir, inputs, info = replay.session_dir, replay.inputs, replay.info
    for w in replay.warnings:
        if progress is not None:
            progress(f"WARNING: {w}")
    workflow = replay.new_workflow()
    recorded = iter(read_guidance(sdir))
    shot_at: dict[int, list[str]] = {}
    for name, seq in info.screenshots.items():
        shot_at.setdefault(seq, []).append(name)
    scene = None
    if render and shot_at:
        from .overlay import NavigationScene

        scene = NavigationScene(inputs.context.toolset, inputs.bones, cuts=inputs.context.cuts, trajectories=inputs.context.trajectories,
                                off_screen=off_screen, ct=inputs.ct, implants=inputs.implants, cut_bones=inputs.context.cut_bones)
    mismatches = 0
    n = 0
    unrecorded = 0  # frames of a killed session whose state line was never written
    closed = session_closed(sdir)
    shots: list[Path] = []
    last_state = None

    def take(names: list[str], state: NavigationState | None) -> None:
        if scene is None:
            return
        scene.update(state, info=info_text(workflow), registration=workflow.registration)
        for name in names:
            shots.append(scene.screenshot(sdir / "replay" / name))

    try:
        if scene is not None and -1 in shot_at:
            take(shot_at.pop(-1), None)  # pictures taken before the first state
        for frame in read_frames(sdir):
            state = workflow.process(frame, clock=None)
            rec = next(recorded, None)
            n += 1
            if rec is None and not closed:
                unrecorded += 1  # the session was killed between writing this frame and its state
            elif rec is None or comparable(state_record(state)) != comparable(rec):
                mismatches += 1
            last_state = state
            if scene is not None and state.sequence in shot_at:
                take(shot_at.pop(state.sequence), state)
        if next(recorded, None) is not None:
            mismatches += 1
        if scene is not None:
            for names in shot_at.values():  # e.g. the final picture, after the last new frame
                take(names, last_state)
    finally:
        if scene is not None:
            scene.close()
    warnings = list(replay.warnings)
    differ = registration_mismatches(sdir, workflow)
    if differ:  # one array per bone: each bone's recorded registration is re-made from the frames
        mismatches += len(differ)
        warnings.append(f"the registration of {', '.join(differ)} recorded in {REGISTRATION} differs from the one the replay made")
        if progress is not None:
            progress(f"WARNING: {warnings[-1]}")
    if not closed:
        warnings.append(f"the session did not end normally (no {SUMMARY}: the process was killed or crashed); replayed the "
                        f"{n} frames it recorded" + (f", {unrecorded} of them without a recorded state" if unrecorded else ""))
        if progress is not None:
            progress(f"WARNING: {warnings[-1]}")
    for e in workflow.events:
        if progress is not None:
            progress(e.text)
    return workflow_summary(workflow, sdir, warnings=warnings, plan_changed=replay.plan_changed, states=n,
                            screenshots=shots, replay_mismatches=mismatches)


__all__ = ["SessionReplay", "plan_check", "prepare_replay", "registration_mismatches", "replay_session"]
