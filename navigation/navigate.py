"""Navigate a case end to end, and replay a recorded session.

:func:`navigate_case` connects to a tracker source, digitises the plan's fiducials with the
pointer, registers (paired-point, FRE reported; rejected above ``max_fre_mm``), records
verification touches, runs the live loop (tracking thread at tracker rate, overlay at display
rate), saves overlay PNGs, records the whole session in ``CASE/sessions/<timestamp>/`` and
writes ``CASE/registration.json``. :func:`replay_session` feeds the recorded frames through the
same deterministic workflow and checks that every guidance number is reproduced exactly; it
refuses when ``plan.json`` has changed since the session was recorded (sha256 in
``session.json``) unless ``allow_changed_plan`` is given.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from orthonav.core.atomic import write_json
from orthonav.core.case import Case
from orthonav.core.errors import InputError
from orthonav.core.transforms import apply, invert
from orthonav.planning.schema import Plan, load_plan
from orthonav.tracking.frame import TrackerSource
from orthonav.tracking.tools import ToolSet, default_toolset

from .guidance import BoneSurface, CutFrame, cut_frame
from .registration import PAIRED_POINT_SURFACE, RegistrationRecord, write_registration
from .session import SUMMARY, SessionInfo, SessionRecorder, comparable, file_sha256, read_guidance, read_session_info, state_record
from .state import NavigationContext, NavigationState, expire_state
from .workflow import Workflow, WorkflowConfig

Progress = Callable[[str], None]


@dataclass(frozen=True)
class NavigationSummary:
    """What a navigation (or replay) run measured.

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
        Check point -> distance of the pointer touch nearest to it after registration (mm).
    tre_mm
        Target -> true TRE (mm) when the caller passed the true ``ct_from_reference``.
    guidance_error
        Max / RMS absolute saw guidance error against the scenario truth (deg, mm), ``n``.
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
    tre_mm: dict[str, float] = field(default_factory=dict)
    guidance_error: dict[str, float] = field(default_factory=dict)
    states: int = 0
    loop_rate_hz: float = math.nan
    latency_p50_ms: float = math.nan
    latency_p99_ms: float = math.nan
    screenshots: list[Path] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    replay_mismatches: int = -1

    def to_json(self) -> dict[str, Any]:
        def num(x: float) -> float | None:
            return None if not math.isfinite(x) else float(x)

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
            "tre_mm": self.tre_mm,
            "guidance_error": {k: num(v) for k, v in self.guidance_error.items()},
            "states": self.states,
            "loop_rate_hz": num(self.loop_rate_hz),
            "latency_p50_ms": num(self.latency_p50_ms),
            "latency_p99_ms": num(self.latency_p99_ms),
            "screenshots": [str(p) for p in self.screenshots],
            "events": self.events,
            "replay_mismatches": self.replay_mismatches,
        }


# --- building the context from a case --------------------------------------------------------


def _position(lm: object) -> NDArray[np.float64]:
    return np.asarray(getattr(lm, "position_lps_mm"), dtype=np.float64)


def medial_hint(plan: Plan, bone: str) -> NDArray[np.float64]:
    """A vector pointing medially for ``bone``: from landmarks, else from ``plan.side``.

    Femur: lateral -> medial epicondyle; tibia: lateral -> medial plateau centre. A bone named
    ``*_left`` / ``*_right`` (hip plans): from its side's acetabulum (or femoral head) centre
    towards the other side's, else by its side. Otherwise a right leg's medial side is LPS +x
    (towards the patient's left), a left leg's is -x.
    """
    pairs = {"femur": ("medial_epicondyle", "lateral_epicondyle"), "tibia": ("medial_plateau_centre", "lateral_plateau_centre")}
    lms = plan.landmarks
    for key, (m, l) in pairs.items():
        if bone.startswith(key) and m in lms and l in lms:
            return _position(lms[m]) - _position(lms[l])
    for m, l in pairs.values():
        if m in lms and l in lms:
            return _position(lms[m]) - _position(lms[l])
    for own, other in (("left", "right"), ("right", "left")):
        if bone.endswith(f"_{own}"):  # a bone of one side (hip plan): medial points towards the other side
            for key in ("acetabulum_centre", "femoral_head_centre"):
                if f"{key}_{own}" in lms and f"{key}_{other}" in lms:
                    return _position(lms[f"{key}_{other}"]) - _position(lms[f"{key}_{own}"])
            return np.array([-1.0, 0.0, 0.0]) if own == "left" else np.array([1.0, 0.0, 0.0])
    if plan.side in ("right", "left"):
        return np.array([1.0, 0.0, 0.0]) if plan.side == "right" else np.array([-1.0, 0.0, 0.0])
    raise InputError(None, "cannot tell medial from lateral: the plan has no epicondyle / plateau landmarks and no side")


def plan_cut_frames(plan: Plan) -> dict[str, CutFrame]:
    """Every planned cut as a :class:`CutFrame` (bone axes from the plan)."""
    return {name: cut_frame(c.point_lps_mm, c.normal_lps, medial_hint(plan, c.bone)) for name, c in plan.cuts.items()}


def plan_fiducials(plan: Plan) -> tuple[list[str], NDArray[np.float64]]:
    """The plan's ``fiducial_k`` landmarks in numeric order, (n, 3) CT LPS mm."""
    names = [k for k in plan.landmarks if k.startswith("fiducial_") and k.split("_", 1)[1].isdigit()]
    names.sort(key=lambda k: int(k.split("_", 1)[1]))
    pts = np.array([_position(plan.landmarks[k]) for k in names]).reshape(-1, 3)
    return names, pts


@dataclass(frozen=True)
class CaseNavigationInputs:
    """What a case provides for navigation."""

    plan: Plan
    context: NavigationContext
    fiducial_names: list[str]
    fiducials_ct_mm: NDArray[np.float64]
    bones: dict[str, Any]
    ct: Any = None  #: the CT (:class:`~orthonav.core.volume.Volume`) for reslices, if the case has one
    implants: dict[str, Any] = field(default_factory=dict)  #: '<family>_<i>' -> implant ghost mesh in CT LPS
    plan_sha256: str = ""  #: sha256 (hex) of the plan.json bytes read


def load_navigation_inputs(case_dir: str | Path, toolset: ToolSet | None = None, *, surfaces: bool = True,
                           ct: bool = False) -> CaseNavigationInputs:
    """Read ``plan.json`` and ``meshes/`` of a case and build the navigation context.

    Raises
    ------
    InputError
        No plan, fewer than 3 plan fiducials, or a mesh that cannot be read.
    """
    from .overlay import load_case_meshes

    case = Case(case_dir)
    plan_path = case.require(case.plan, "orthonav plan")
    plan_hash = file_sha256(plan_path)
    plan = load_plan(plan_path)
    if file_sha256(plan_path) != plan_hash:
        raise InputError(plan_path, "changed while it was being read; try again")
    names, pts = plan_fiducials(plan)
    if len(names) < 3:
        raise InputError(case.plan, f"has {len(names)} fiducial landmarks (fiducial_1..); registration needs at least 3")
    bones = load_case_meshes(case_dir)
    surf = {b: BoneSurface(m, b) for b, m in bones.items()} if surfaces else {}
    ctx = NavigationContext(
        toolset=toolset or default_toolset(),
        cuts=plan_cut_frames(plan),
        cut_bones={k: c.bone for k, c in plan.cuts.items()},
        trajectories={k: (np.asarray(t.entry_lps_mm, float), np.asarray(t.target_lps_mm, float)) for k, t in plan.trajectories.items()},
        surfaces=surf,
    )
    implants = implant_ghosts(plan) if ct else {}
    volume = None
    if ct and case.ct.is_file():
        from orthonav.core.volume import read_volume

        volume = read_volume(case.ct)
    return CaseNavigationInputs(plan, ctx, names, pts, bones, volume, implants, plan_hash)


def implant_ghosts(plan: Plan) -> dict[str, Any]:
    """Every planned implant's mesh placed in the CT (``ct_from_implant``), for display."""
    from orthonav.planning.implants import implant_model

    out: dict[str, Any] = {}
    for i, imp in enumerate(plan.implants):
        mesh = implant_model(imp.family, imp.size).mesh()
        out[f"{imp.family}_{i}"] = mesh.transform(np.asarray(imp.ct_from_implant, dtype=np.float64), inplace=False)
    return out


def _check_points(plan: Plan, truth_targets: Mapping[str, Any] | None) -> dict[str, NDArray[np.float64]]:
    if truth_targets:
        return {k: np.asarray(v, dtype=np.float64) for k, v in truth_targets.items()}
    return {k: _position(v) for k, v in plan.landmarks.items() if not k.startswith("fiducial_")}


def _truth_targets(truth: object | None) -> dict[str, NDArray[np.float64]] | None:
    if truth is None:
        return None
    t = truth.get("targets_lps_mm") if isinstance(truth, Mapping) else getattr(truth, "targets_lps_mm", None)
    return None if t is None else {k: np.asarray(v, dtype=np.float64) for k, v in t.items()}


# --- guidance vs scenario truth ----------------------------------------------------------------


class _GuidanceErrors:
    """Accumulates |measured - true| saw guidance over states (scenario truth by script time)."""

    def __init__(self, truth_at: Callable[[float], Any] | None, cut: str = "distal_femur", *, boundary_margin_s: float = 0.03) -> None:
        self.truth_at = truth_at
        self.cut = cut
        self.boundary_margin_s = boundary_margin_s
        self.err: list[tuple[float, float, float]] = []

    def add(self, state: NavigationState) -> None:
        if self.truth_at is None or self.cut not in state.saw:
            return
        saw = state.tools.get("Saw")
        if saw is None or not math.isfinite(saw.device_time_s):
            return
        tr = self.truth_at(saw.device_time_s)
        if not getattr(tr, "saw_visible", False):
            return
        # Over a socket the device time maps to script time only to within the sender's jitter:
        # a pose sampled just before a scripted jump (one hold to the next) must not be compared
        # with the truth just after it.
        ph = getattr(tr, "phase", None)
        m = self.boundary_margin_s
        if ph is not None and m > 0 and not (getattr(self.truth_at(saw.device_time_s - m), "phase", None) == ph
                                             and getattr(self.truth_at(saw.device_time_s + m), "phase", None) == ph):
            return  # (device time may be on another clock than the script: compare phases, not times)
        g = state.saw[self.cut]
        self.err.append((g.flexion_deg - tr.saw_flexion_deg, g.varus_deg - tr.saw_varus_deg, g.distance_mm - tr.saw_distance_mm))

    def summary(self) -> dict[str, float]:
        if not self.err:
            return {}
        e = np.abs(np.array(self.err))
        rms = np.sqrt(np.mean(e**2, axis=0))
        return {
            "n": float(len(e)),
            "flexion_deg_max": float(e[:, 0].max()),
            "varus_deg_max": float(e[:, 1].max()),
            "distance_mm_max": float(e[:, 2].max()),
            "flexion_deg_rms": float(rms[0]),
            "varus_deg_rms": float(rms[1]),
            "distance_mm_rms": float(rms[2]),
        }


def _true_tre(record: RegistrationRecord | None, true_ct_from_reference: NDArray[np.float64] | None,
              targets: Mapping[str, NDArray[np.float64]]) -> dict[str, float]:
    if record is None or true_ct_from_reference is None:
        return {}
    err = record.ct_from_reference_array() @ invert(true_ct_from_reference)
    return {k: float(np.linalg.norm(apply(err, v) - v)) for k, v in targets.items()}


# --- live navigation -----------------------------------------------------------------------------


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
    truth: object | None = None,
    true_ct_from_reference: NDArray[np.float64] | None = None,
    truth_at: Callable[[float], Any] | None = None,
    record: bool = True,
    stop: threading.Event | None = None,
    window_size: tuple[int, int] = (800, 600),
    stream_port: int | None = None,
    max_state_age_s: float = 0.5,
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
    truth
        Optional phantom truth (``truth.json`` object or dict): its targets become the
        verification check points, and predicted TRE is reported there.
    true_ct_from_reference
        Optional true registration (simulation): the summary reports the true TRE at the truth
        targets.
    truth_at
        Optional ``truth_at(device_time_s)`` (e.g. :meth:`Scenario.truth_at` when device time is
        the script time): the summary reports saw guidance errors against it.
    record
        Record the session in ``CASE/sessions/<timestamp>/``.
    stop
        Optional event to end early.
    stream_port
        If given, stream poses, models and guidance to 3D Slicer on 127.0.0.1:``stream_port``
        (:class:`~orthonav.navigation.stream.SlicerStream`; 0 = any free port).
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
    truth_targets = _truth_targets(truth)
    checks = _check_points(inputs.plan, truth_targets)
    workflow = Workflow(inputs.context, inputs.fiducial_names, inputs.fiducials_ct_mm, check_points_ct_mm=checks, config=config)
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
                                    ct=inputs.ct, implants=inputs.implants)
        if stream_port is not None:
            from .stream import SlicerStream

            streamer = SlicerStream(stream_port, bones=inputs.bones, cuts=inputs.context.cuts).start()
    except BaseException:
        # Nothing half-made is left behind: no temporary session files, no window, no socket.
        if scene is not None:
            scene.close()
        if recorder is not None:
            recorder.abort()
        raise
    stop = stop or threading.Event()
    # the cut the scripted saw follows (phantoms.scenario): the distal femoral cut, else the plan's first
    scored = "distal_femur" if "distal_femur" in inputs.context.cuts or not inputs.context.cuts else min(inputs.context.cuts)
    errors = _GuidanceErrors(truth_at, scored)
    shots: list[Path] = []
    n_events = 0

    def report_events() -> None:
        nonlocal n_events
        while n_events < len(workflow.events):
            if progress is not None:
                progress(workflow.events[n_events].text)
            n_events += 1

    started_here = False
    on_state = None
    if streamer is not None:
        if progress is not None:
            progress(f"streaming to OpenIGTLink clients on 127.0.0.1:{streamer.port}")

        def on_state(state: NavigationState, wf: Workflow) -> None:
            streamer.send_state(state, wf.ctx.ct_from_reference)

    loop = NavigationLoop(source, workflow, recorder=recorder, on_state=on_state)
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
        period = 1.0 / display_fps
        while not stop.is_set():
            now = time.monotonic()
            if (duration_s is not None and now - t0 >= duration_s) or loop.error is not None:
                break
            # A state older than max_state_age_s (tracking thread stalled) is shown as NOT TRACKING.
            state = expire_state(loop.latest_state(), time.monotonic(), max_state_age_s)
            report_events()
            if scene is not None:
                scene.update(state, info=_info_text(workflow))
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
                scene.update(final, info=_info_text(workflow))
                name = f"nav_{len(shots):04d}.png"
                shots.append(scene.screenshot(recorder.screenshots_dir / name))
                recorder.add_screenshot(name, final.sequence if final is not None else -1)
            if scene is not None:
                scene.close()
            if recorder is not None:
                if ok:
                    recorder.close()
                else:
                    recorder.abort()
    report_events()
    reg = workflow.registration
    if reg is not None:
        reg.record.verification_mm = workflow.verification_by_point()
        write_registration(case.registration, reg.record)
        if recorder is not None:
            write_registration(recorder.dir / "registration.json", reg.record)
    # Guidance errors from the recorded states when a truth is given.
    if truth_at is not None and recorder is not None:
        _accumulate_from_record(errors, recorder.dir, lambda: Workflow(inputs.context, inputs.fiducial_names, inputs.fiducials_ct_mm,
                                                                       check_points_ct_mm=checks, config=config))
    stats = loop.stats()
    summary = NavigationSummary(
        session_dir=recorder.dir if recorder is not None else None,
        registered=reg is not None,
        fre_mm=reg.record.fre_mm if reg is not None else math.nan,
        predicted_tre_mm=dict(reg.record.predicted_tre_mm) if reg is not None else {},
        registration_method=reg.record.method if reg is not None else "",
        surface=dict(reg.record.surface) if reg is not None else {},
        refusal=workflow.refusal,
        verification_mm=workflow.verification_by_point(),
        tre_mm=_true_tre(reg.record if reg else None, true_ct_from_reference, truth_targets or {}),
        guidance_error=errors.summary(),
        states=stats.states,
        loop_rate_hz=stats.rate_hz,
        latency_p50_ms=stats.latency_p50_ms,
        latency_p99_ms=stats.latency_p99_ms,
        screenshots=shots,
        events=[e.text for e in workflow.events],
    )
    if recorder is not None:
        write_json(recorder.dir / SUMMARY, summary.to_json())
    return summary


def _info_text(workflow: Workflow) -> str:
    if workflow.refusal is not None:
        return "REGISTRATION REFUSED: fiducial layout (see the log)"
    if workflow.registration is None:
        nxt = workflow.digitiser.next_name or ""
        return f"Digitise {nxt} ({len(workflow.digitiser.captures)}/{len(workflow.fiducial_names)})"
    rec = workflow.registration.record
    if rec.surface_refined:
        return f"Registered (fiducials + surface)  surface RMS {rec.surface.get('rms_mm', math.nan):.2f} mm"
    return f"Registered  FRE {rec.fre_mm:.2f} mm"


def _accumulate_from_record(errors: _GuidanceErrors, session_dir: Path, make_workflow: Callable[[], Workflow]) -> None:
    """Guidance errors over every recorded state, as displayed: the recorded frames are run
    through a fresh workflow (the same deterministic states as the live session, each with the
    registration that was in force at its frame, e.g. before and after a surface refinement)."""
    from orthonav.tracking.recording import read_recording

    workflow = make_workflow()
    for frame in read_recording(session_dir / "frames.jsonl"):
        st = workflow.process(frame, clock=None)
        if st.tracking:
            errors.add(st)


# --- replay --------------------------------------------------------------------------------------


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
    from orthonav.tracking.recording import read_recording

    sdir = Path(session_dir)
    info = read_session_info(sdir)
    inputs = load_navigation_inputs(info.case_dir, info.toolset, ct=render)
    warnings = _plan_check(info, inputs.plan_sha256, allow_changed_plan)
    plan_changed = bool(info.plan_sha256) and info.plan_sha256 != inputs.plan_sha256
    for w in warnings:
        if progress is not None:
            progress(f"WARNING: {w}")
    settings = dict(info.workflow)
    settings.setdefault("max_predicted_tre_mm", None)  # recorded before the TRE limit existed: replay as recorded
    cfg = WorkflowConfig(**settings)
    checks = {k: np.asarray(v, dtype=np.float64) for k, v in info.check_points_mm.items()}
    workflow = Workflow(inputs.context, inputs.fiducial_names, inputs.fiducials_ct_mm, check_points_ct_mm=checks, config=cfg)
    recorded = iter(read_guidance(sdir))
    shot_at: dict[int, list[str]] = {}
    for name, seq in info.screenshots.items():
        shot_at.setdefault(seq, []).append(name)
    scene = None
    if render and shot_at:
        from .overlay import NavigationScene

        scene = NavigationScene(inputs.context.toolset, inputs.bones, cuts=inputs.context.cuts, trajectories=inputs.context.trajectories,
                                off_screen=off_screen, ct=inputs.ct, implants=inputs.implants)
    mismatches = 0
    n = 0
    shots: list[Path] = []
    last_state = None

    def take(names: list[str], state: NavigationState | None) -> None:
        if scene is None:
            return
        scene.update(state, info=_info_text(workflow))
        for name in names:
            shots.append(scene.screenshot(sdir / "replay" / name))

    try:
        if scene is not None and -1 in shot_at:
            take(shot_at.pop(-1), None)  # pictures taken before the first state
        for frame in read_recording(sdir / "frames.jsonl"):
            state = workflow.process(frame, clock=None)
            rec = next(recorded, None)
            n += 1
            if rec is None or comparable(state_record(state)) != comparable(rec):
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
    for e in workflow.events:
        if progress is not None:
            progress(e.text)
    reg = workflow.registration
    del last_state
    return NavigationSummary(
        session_dir=sdir,
        registered=reg is not None,
        fre_mm=reg.record.fre_mm if reg is not None else math.nan,
        predicted_tre_mm=dict(reg.record.predicted_tre_mm) if reg is not None else {},
        registration_method=reg.record.method if reg is not None else "",
        surface=dict(reg.record.surface) if reg is not None else {},
        refusal=workflow.refusal,
        warnings=warnings,
        plan_changed=plan_changed,
        verification_mm=workflow.verification_by_point(),
        states=n,
        screenshots=shots,
        events=[e.text for e in workflow.events],
        replay_mismatches=mismatches,
    )


def _plan_check(info: SessionInfo, current_sha256: str, allow_changed_plan: bool) -> list[str]:
    """Warnings about the plan a replay rebuilds from; InputError when it changed and that is not allowed."""
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


def parse_host_port(text: str, *, default_port: int = 18944) -> tuple[str, int]:
    """``"HOST:PORT"`` (or ``"HOST"``) -> (host, port); InputError on a malformed value."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(default_port)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(None, f"expected HOST:PORT (e.g. 127.0.0.1:18944), got {text!r}")
    return host, int(port)


def summary_table(summary: NavigationSummary, title: str = "Navigation") -> Any:
    """A rich table of a :class:`NavigationSummary` (for the CLI)."""
    from rich.table import Table

    def mm(x: float) -> str:
        return "-" if not math.isfinite(x) else f"{x:.3f} mm"

    t = Table(title=title)
    t.add_column("figure")
    t.add_column("value")
    t.add_row("session", str(summary.session_dir) if summary.session_dir else "(not recorded)")
    for w in summary.warnings:
        t.add_row("[bold yellow]WARNING[/]", w)
    if summary.registered:
        t.add_row("registered", f"yes ({summary.registration_method})")
    elif summary.refusal is not None:
        t.add_row("registered", f"[bold red]REFUSED[/] ({summary.refusal})")
    else:
        t.add_row("registered", "[bold red]NO[/] (not all fiducials digitised)")
    refined = summary.registration_method == PAIRED_POINT_SURFACE
    stage = " (fiducial stage)" if refined else ""
    t.add_row(f"FRE{stage}", mm(summary.fre_mm))
    for k, v in summary.predicted_tre_mm.items():
        t.add_row(f"predicted TRE {k}{stage}", mm(v))
    if refined:
        sf = summary.surface
        t.add_row("surface RMS", mm(sf.get("rms_mm", math.nan)))
        t.add_row("surface inliers", f"{sf.get('inlier_fraction', math.nan):.0%}")
        t.add_row("surface constraint", f"{sf.get('constraint', math.nan):.3f}")
        t.add_row("fiducials after surface (RMS)", mm(sf.get("fiducial_rms_mm", math.nan)))
    for k, v in summary.verification_mm.items():
        t.add_row(f"touch check {k}", mm(v))
    for k, v in summary.tre_mm.items():
        t.add_row(f"true TRE {k}", mm(v))
    for k, v in summary.guidance_error.items():
        t.add_row(f"guidance error {k}", f"{v:.3f}")
    t.add_row("states", str(summary.states))
    t.add_row("loop rate", f"{summary.loop_rate_hz:.0f} Hz" if math.isfinite(summary.loop_rate_hz) else "-")
    t.add_row("latency p50 / p99", f"{summary.latency_p50_ms:.2f} / {summary.latency_p99_ms:.2f} ms"
              if math.isfinite(summary.latency_p99_ms) else "-")
    if summary.replay_mismatches >= 0:
        t.add_row("replay mismatches", str(summary.replay_mismatches))
    t.add_row("screenshots", str(len(summary.screenshots)))
    return t


def navigate_cli(case: str | Path, *, igtl: str = "127.0.0.1:18944", duration_s: float | None = None, off_screen: bool = False,
                 stream_port: int | None = None, surface_points: int = 0, tools: str | Path | None = None,
                 max_predicted_tre_mm: float | None = WorkflowConfig.max_predicted_tre_mm) -> Any:
    """``orthonav navigate``: navigate ``case`` with poses from an OpenIGTLink server; returns a rich table.

    ``max_predicted_tre_mm`` (``--max-predicted-tre``): registration is refused when the TRE
    predicted at the plan's landmarks exceeds it (mm); None or <= 0 disables the check.

    Raises
    ------
    InputError
        Bad ``igtl`` address, missing plan / fiducials, bad tool file.
    RegistrationError
        Registration did not complete (so the CLI exits non-zero).
    """
    from orthonav.core.errors import RegistrationError
    from orthonav.tracking.igtl_client import IGTLClientSource
    from orthonav.tracking.tools import load_toolset

    host, port = parse_host_port(igtl)
    if max_predicted_tre_mm is not None and not math.isfinite(max_predicted_tre_mm):
        raise InputError(None, f"max_predicted_tre_mm must be a number of mm, got {max_predicted_tre_mm}")
    tre_limit = max_predicted_tre_mm if max_predicted_tre_mm is not None and max_predicted_tre_mm > 0 else None
    toolset = load_toolset(tools) if tools is not None else default_toolset()
    source = IGTLClientSource(host, port, tools=toolset)
    summary = navigate_case(case, source, duration_s=duration_s, off_screen=off_screen, toolset=toolset, stream_port=stream_port,
                            config=WorkflowConfig(surface_points=surface_points, max_predicted_tre_mm=tre_limit),
                            progress=lambda text: print(text, flush=True))
    table = summary_table(summary)
    if not summary.registered:
        from rich.console import Console

        Console().print(table)
        why = f"registration was refused: {summary.refusal}" if summary.refusal else "not every plan fiducial was digitised"
        raise RegistrationError(f"navigation ended without a registration: {why} (session recorded in {summary.session_dir})")
    return table


def replay_cli(session: str | Path, *, off_screen: bool = True, allow_changed_plan: bool = False) -> Any:
    """``orthonav replay``: replay a session; returns a rich table; RegistrationError if numbers differ.

    ``allow_changed_plan`` (``--allow-changed-plan``): replay even if ``plan.json`` changed since
    recording (the table then starts with a WARNING row); without it that is an InputError.
    """
    from orthonav.core.errors import RegistrationError

    summary = replay_session(session, off_screen=off_screen, allow_changed_plan=allow_changed_plan)
    if summary.replay_mismatches != 0 and not summary.plan_changed:
        raise RegistrationError(f"replay differs from the recorded guidance in {summary.replay_mismatches} states")
    return summary_table(summary, title="Replay")


__all__ = [
    "NavigationSummary",
    "navigate_case",
    "navigate_cli",
    "replay_cli",
    "summary_table",
    "parse_host_port",
    "replay_session",
    "load_navigation_inputs",
    "plan_cut_frames",
    "plan_fiducials",
    "medial_hint",
]
