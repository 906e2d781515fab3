"""Navigate a case live: digitise, register, guide, record.

:func:`navigate_case` connects to a tracker source, digitises the plan's fiducials with the
pointer, registers (paired-point, FRE reported; rejected above ``max_fre_mm``), records
verification touches, runs the live loop (tracking thread at tracker rate, overlay at display
rate), saves overlay PNGs, records the whole session in ``CASE/sessions/<timestamp>/`` and
writes ``CASE/registration.json`` the moment registration succeeds (again at the end, with the
verification touches). Crash-safe: a run killed at any moment leaves the registration, and a
session that replays and validates up to the kill (see :mod:`orthonav.navigation.session`). A caller observes the run through ``on_state`` (every
state, in the tracking thread) and the recorded session; replay is
:mod:`orthonav.navigation.replay`.

With a tool set that fixes one reference array to each bone
(:func:`~orthonav.tracking.tools.knee_two_array_toolset`) each bone is digitised, registered
and navigated against its own array (:mod:`orthonav.navigation.workflow`), ``registration.json``
holds one record per bone (schema version 3, written as each bone registers), and the states
carry the live knee alignment and gaps (:mod:`orthonav.navigation.state`).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from orthonav.core.atomic import write_json
from orthonav.core.case import Case
from orthonav.core.errors import InputError
from orthonav.tracking.frame import TrackerSource
from orthonav.tracking.tools import ToolSet

from .inputs import default_check_points, load_navigation_inputs
from .registration import RegistrationRecord, write_registration
from .session import REGISTRATION, SUMMARY, SessionInfo, SessionRecorder
from .state import NavigationState, expire_state
from .summary import NavigationSummary, info_text, workflow_summary
from .workflow import Workflow, WorkflowConfig

Progress = Callable[[str], None]
StateObserver = Callable[[NavigationState, Workflow], None]


def _observers(*observers: StateObserver | None) -> StateObserver | None:
    """One ``on_state`` callback calling every given observer in order (None when there is none)."""
    active = [o for o in observers if o is not None]
    if not active:
        return None
    if len(active) == 1:
        return active[0]

    def notify(state: NavigationState, workflow: Workflow) -> None:
        for o in active:
            o(state, workflow)

    return notify


def tracker_problem(source: TrackerSource) -> str | None:
    """What the user must know about a tracker that is not delivering: "cannot connect to H:P
    (connection refused); retrying" while it is disconnected with an error, else None."""
    h = source.health()
    if h.connected or not h.last_error:
        return None
    return f"{h.last_error}; retrying"


def _registration_writer(case: Case, recorder: SessionRecorder | None) -> StateObserver:
    """An observer that writes ``CASE/registration.json`` (and the session's copy) the moment a
    registration is made or replaced (fiducial, then surface stage; with one array per bone,
    each bone's, the record holding the bones registered so far), so a navigation killed a
    second later keeps it. Runs in the tracking thread once per registration (a few ms)."""
    written: list[object] = [None]

    def observe(state: NavigationState, workflow: Workflow) -> None:
        reg = workflow.partial_registration
        if reg is None or reg is written[0]:
            return
        written[0] = reg
        write_registration(case.registration, reg.record)
        if recorder is not None:
            write_registration(recorder.dir / REGISTRATION, reg.record)

    return observe


def record_verifications(record: RegistrationRecord, workflow: Workflow) -> None:
    """Put ``workflow``'s verification touches into ``record`` (in place): one array, every
    check; one array per bone, each bone's record (``record.bones``) gets the touches measured
    with that bone's registration, and the top level (a copy of the first bone's record) the
    first bone's."""
    if not record.bones:
        record.verification_mm = workflow.verification_by_point()
        return
    for bone, rec in record.bones.items():
        rec.verification_mm = workflow.verification_by_point(bone)
    record.verification_mm = dict(next(iter(record.bones.values())).verification_mm)


def navigate_case(
    case_dir: str | Path,
    source: TrackerSource,
    *,
    duration_s: float | None,
    off_screen: bool = True,
    screenshot_every_s: float | None = 2.0,
    display_fps: float = 15.0,
    render: bool = True,
    progress: Progress | None = None,
    toolset: ToolSet | None = None,
    config: WorkflowConfig = WorkflowConfig(),
    check_points_ct_mm: Mapping[str, ArrayLike] | None = None,
    on_state: StateObserver | None = None,
    record: bool = True,
    stop: threading.Event | None = None,
    window_size: tuple[int, int] = (800, 600),
    stream_port: int | None = None,
    max_state_age_s: float = 0.5,
    stream_header_version: int = 1,
) -> NavigationSummary:
    """Navigate ``case_dir`` with live poses from ``source`` for ``duration_s`` seconds.

    Parameters
    ----------
    case_dir
        A case with ``plan.json`` (fiducial landmarks, cuts) and ``meshes/``.
    source
        A tracker source (started here if needed, stopped at the end).
    duration_s
        How long to navigate (s of wall time); None = until ``stop`` is set or Ctrl-C.
    off_screen, screenshot_every_s, display_fps, render, window_size
        Overlay settings; PNGs go to ``<session>/screenshots/``.
    progress
        Called with each workflow event as text.
    toolset, config
        Tools and workflow settings.
    check_points_ct_mm
        Verification points (name -> (3,) CT LPS mm): the pointer touches after registration
        are measured against them and the predicted TRE is reported there. Default: the plan's
        non-fiducial landmarks (:func:`~orthonav.navigation.inputs.default_check_points`).
    on_state
        Optional observer ``on_state(state, workflow)`` called in the tracking thread after
        every state (keep it fast: it runs at tracker rate).
    record
        Record the session in ``CASE/sessions/<timestamp>/``.
    stop
        Optional event to end early.
    stream_port
        If given, stream poses, models and guidance to 3D Slicer on 127.0.0.1:``stream_port``
        (:class:`~orthonav.navigation.stream.SlicerStream`, one more state observer; 0 = any free port).
        A stream error never stops navigation: it is caught and retried by the stream, and the
        first one is reported through ``progress``. Names longer than OpenIGTLink's 20 bytes
        are shortened (:func:`~orthonav.navigation.igtl_names.device_name_map`; reported
        through ``progress`` and sent as the ``DeviceNames`` STRING).
    stream_header_version
        OpenIGTLink header version of the Slicer stream: 1 (any peer; a hidden tool is a STATUS
        message) or 2 (Slicer 4.11+ / PLUS peers; every TRANSFORM carries ``TransformStatus``
        metadata, MISSING for a hidden tool, as PLUS sends it).
    max_state_age_s
        The display shows NOT TRACKING when the newest navigation state is older than this
        (s): a stalled tracking thread never leaves the last poses on screen as live
        (:func:`~orthonav.navigation.state.expire_state`).

    Returns
    -------
    NavigationSummary
    """
    from .loop import NavigationLoop

    if duration_s is not None and not (math.isfinite(duration_s) and duration_s > 0):
        raise InputError(None, f"duration_s must be positive (or None: until stopped), got {duration_s}")
    case = Case(case_dir)
    inputs = load_navigation_inputs(case_dir, toolset, ct=render)
    checks = ({k: np.asarray(v, dtype=np.float64) for k, v in check_points_ct_mm.items()} if check_points_ct_mm
              else default_check_points(inputs.plan))
    workflow = Workflow(inputs.context, inputs.fiducial_names, inputs.fiducials_ct_mm, check_points_ct_mm=checks, config=config,
                        bone_fiducials=inputs.bone_fiducials, point_bones=inputs.landmark_bones)
    recorder = None
    if record:
        sdir = case.new_session_dir()
        info = SessionInfo(case_dir=str(Path(case_dir).resolve()), plan_sha256=inputs.plan_sha256,
                           toolset=inputs.context.toolset, workflow=config.to_dict(),
                           started_utc=datetime.now(timezone.utc).isoformat(), source=type(source).__name__,
                           check_points_mm={k: [float(x) for x in v] for k, v in checks.items()})
        recorder = SessionRecorder(sdir, info)
    scene = None
    streamer = None
    try:
        if render:
            from .overlay import NavigationScene

            scene = NavigationScene(inputs.context.toolset, inputs.bones, cuts=inputs.context.cuts,
                                    trajectories=inputs.context.trajectories, off_screen=off_screen, window_size=window_size,
                                    ct=inputs.ct, implants=inputs.implants, cut_bones=inputs.context.cut_bones)
        if stream_port is not None:
            from .stream import SlicerStream

            streamer = SlicerStream(stream_port, bones=inputs.bones, cuts=inputs.context.cuts, header_version=stream_header_version,
                                    tools=[t for t in inputs.context.toolset.by_name() if t != inputs.context.reference],
                                    bone_names=list(inputs.context.references)).start()
    except BaseException:
        # Nothing half-made is left behind: no temporary session files, no window, no socket.
        if scene is not None:
            scene.close()
        if recorder is not None:
            recorder.abort()
        raise
    stop = stop or threading.Event()
    shots: list[Path] = []
    n_events = 0
    stream_error_reported = False

    def report_events() -> None:
        nonlocal n_events, stream_error_reported
        while n_events < len(workflow.events):
            if progress is not None:
                progress(workflow.events[n_events].text)
            n_events += 1
        # A stream error never stops navigation (SlicerStream catches, counts and retries it):
        # the first one is said once here; the count stays in streamer.health().
        if streamer is not None and not stream_error_reported and progress is not None:
            last = streamer.health().last_error
            if last:
                progress(f"Slicer stream error (navigation goes on, the stream retries): {last}")
                stream_error_reported = True

    started_here = False
    stream_state = None
    if streamer is not None:
        if progress is not None:
            progress(f"streaming to OpenIGTLink clients on 127.0.0.1:{streamer.port}")
            renamed = {k: v for k, v in streamer.device_names.items() if k != v}
            if renamed:  # OpenIGTLink device names have at most 20 bytes (the map is also sent as DeviceNames)
                progress("OpenIGTLink device names: " + ", ".join(f"{k} -> {v}" for k, v in sorted(renamed.items())))

        def stream_state(state: NavigationState, wf: Workflow) -> None:
            streamer.send_state(state, wf.ctx.ct_from_reference)

    saved_registration = _registration_writer(case, recorder)
    loop = NavigationLoop(source, workflow, recorder=recorder, on_state=_observers(saved_registration, stream_state, on_state))
    ok = False
    try:
        source.start()
        started_here = True
        loop.start()
        # The first picture shows the first state, not "no data yet" because this thread got
        # the CPU before the tracking thread (a silent tracker still shows NOT TRACKING after 1 s).
        loop.wait_for_state(-1, 1.0)
        t0 = time.monotonic()
        next_shot = t0
        reported_problem: str | None = None
        period = 1.0 / display_fps
        while not stop.is_set():
            now = time.monotonic()
            if (duration_s is not None and now - t0 >= duration_s) or loop.error is not None:
                break
            # A state older than max_state_age_s (tracking thread stalled) is shown as NOT TRACKING.
            state = expire_state(loop.latest_state(), time.monotonic(), max_state_age_s)
            report_events()
            problem = tracker_problem(source)
            if problem is not None and problem != reported_problem and progress is not None:
                progress(problem)
            reported_problem = problem
            if scene is not None:
                scene.update(state, info=info_text(workflow), tracker_problem=problem, registration=workflow.registration)
                if screenshot_every_s is not None and recorder is not None and now >= next_shot:
                    name = f"nav_{len(shots):04d}.png"
                    shots.append(scene.screenshot(recorder.screenshots_dir / name))
                    recorder.add_screenshot(name, state.sequence if state is not None else -1)
                    next_shot = now + screenshot_every_s
                else:
                    scene.render()
            stop.wait(max(0.0, period - (time.monotonic() - now)))
        ok = True
    except KeyboardInterrupt:  # Ctrl-C ends navigation cleanly: the session is still closed and summarised
        ok = True
    finally:
        try:
            loop.stop()
        finally:
            if started_here:
                source.stop()
            if streamer is not None:
                streamer.stop()
            if scene is not None and ok and recorder is not None and screenshot_every_s is not None:
                final = loop.latest_state()
                scene.update(final, info=info_text(workflow), tracker_problem=tracker_problem(source), registration=workflow.registration)
                name = f"nav_{len(shots):04d}.png"
                shots.append(scene.screenshot(recorder.screenshots_dir / name))
                recorder.add_screenshot(name, final.sequence if final is not None else -1)
            if scene is not None:
                scene.close()
            if recorder is not None:
                if ok or recorder.frames_written > 0:
                    recorder.close()  # a run that failed midway keeps what it recorded (replayable)
                else:
                    recorder.abort()
    report_events()
    reg = workflow.partial_registration
    if reg is not None:
        record_verifications(reg.record, workflow)
        write_registration(case.registration, reg.record)
        if recorder is not None:
            write_registration(recorder.dir / REGISTRATION, reg.record)
    stats = loop.stats()
    summary = workflow_summary(workflow, recorder.dir if recorder is not None else None, states=stats.states,
                               loop_rate_hz=stats.rate_hz, latency_p50_ms=stats.latency_p50_ms,
                               latency_p99_ms=stats.latency_p99_ms, screenshots=shots)
    if recorder is not None:
        write_json(recorder.dir / SUMMARY, summary.to_json())
    return summary


__all__ = ["StateObserver", "navigate_case", "record_verifications", "tracker_problem"]
