"""``orthonav navigate`` and ``orthonav replay``: argument handling and the rich summary table.

The work is done by :func:`orthonav.navigation.navigate_case` and
:func:`orthonav.navigation.replay_session`; this module only parses, prints and decides the
exit status.
"""

from __future__ import annotations

import math
from pathlib import Path

from rich.table import Table

from orthonav.cli.args import parse_host_port, require_display
from orthonav.cli.console import make_console
from orthonav.core.errors import InputError, RegistrationError
from orthonav.navigation import NavigationSummary, WorkflowConfig, navigate_case, replay_session
from orthonav.navigation.registration import PAIRED_POINT, PAIRED_POINT_SURFACE
from orthonav.tracking.tools import ToolSet


#: Registration methods in words.
METHOD_WORDS = {PAIRED_POINT_SURFACE: "paired fiducials, refined on the bone surface", PAIRED_POINT: "paired fiducials"}


def _mm(x: float, missing: str = "not measured") -> str:
    """``x`` mm with two decimals (a hundredth of a mm is below any tracker's accuracy), or what is missing."""
    return missing if not math.isfinite(x) else f"{x:.2f} mm".replace("-0.00", "0.00")


def _name(key: str) -> str:
    """A check point's plain name (``target_femoral_notch`` -> ``femoral notch``)."""
    return key.removeprefix("target_").replace("_", " ")


def _guidance_row(key: str, value: float) -> tuple[str, str]:
    from orthonav.planning.report import metric_label

    if key == "n":
        return "saw guidance: frames compared", f"{int(value)} samples" if math.isfinite(value) else "none"
    name, unit = metric_label(key)
    return f"saw guidance error: {name[:1].lower() + name[1:]}", (f"{value:.2f} {unit}".replace("-0.00", "0.00") if math.isfinite(value) else "not measured")


def summary_table(summary: NavigationSummary, title: str = "Navigation") -> Table:
    """A rich table of a :class:`~orthonav.navigation.NavigationSummary`. A summary scored
    against phantom truth (:class:`~orthonav.phantoms.scoring.ScoredNavigation`) also shows its
    true TRE and guidance errors."""
    t = Table(title=title)
    t.add_column("figure")
    t.add_column("value")
    t.add_row("session", str(summary.session_dir) if summary.session_dir else "(not recorded)")
    for w in summary.warnings:
        t.add_row("[bold yellow]WARNING[/]", w)
    if summary.bones or summary.bones_not_registered:  # one array per bone
        _per_bone_rows(t, summary)
    else:
        _registration_rows(t, summary)
    for k, v in getattr(summary, "stray_touches_mm", {}).items():
        t.add_row(f"touch away from the landmarks (nearest: {_name(k)})", f"{v:.1f} mm from it: not a check")
    for k, v in getattr(summary, "tre_mm", {}).items():
        t.add_row(f"true TRE at {_name(k)} (vs phantom truth)", _mm(v))
    for k, v in getattr(summary, "guidance_error", {}).items():
        t.add_row(*_guidance_row(k, v))
    t.add_row("navigation states computed", str(summary.states))
    t.add_row("loop rate", f"{summary.loop_rate_hz:.0f} Hz" if math.isfinite(summary.loop_rate_hz) else "not measured")
    t.add_row("latency receive -> state, p50 / p99", f"{summary.latency_p50_ms:.2f} / {summary.latency_p99_ms:.2f} ms"
              if math.isfinite(summary.latency_p99_ms) else "not measured (replay)" if summary.replay_mismatches >= 0 else "not measured")
    if summary.replay_mismatches >= 0:
        t.add_row("replayed states that differ from the recording", str(summary.replay_mismatches))
    t.add_row("screenshots", str(len(summary.screenshots)))
    return t


def _surface_rows(t: Table, surface: dict[str, float], prefix: str = "") -> None:
    inliers = surface.get("inlier_fraction", math.nan)
    constraint = surface.get("constraint", math.nan)
    t.add_row(f"{prefix}surface fit RMS", _mm(surface.get("rms_mm", math.nan)))
    t.add_row(f"{prefix}surface points on the bone", f"{inliers:.0%}" if math.isfinite(inliers) else "not measured")
    t.add_row(f"{prefix}surface constraint (0 = bone can slide, 1 = pinned)", f"{constraint:.2f}" if math.isfinite(constraint) else "not measured")
    t.add_row(f"{prefix}fiducials after surface fit (RMS)", _mm(surface.get("fiducial_rms_mm", math.nan)))


def _per_bone_rows(t: Table, summary: NavigationSummary) -> None:
    """One array per bone: each bone's registration, then the kinematic hip centre."""
    done, missing = list(summary.bones), list(summary.bones_not_registered)
    if summary.registered:
        t.add_row("registered", f"yes, each bone to its own array ({', '.join(done)})")
    elif summary.refusal is not None:
        t.add_row("registered", f"[bold red]REFUSED[/] ({summary.refusal})" + (f"; registered: {', '.join(done)}" if done else ""))
    elif done:
        t.add_row("registered", f"[bold red]PARTLY[/]: {', '.join(done)} only ({', '.join(missing)} not registered)")
    else:
        t.add_row("registered", "[bold red]NO[/] (not all fiducials digitised)")
    for bone, b in summary.bones.items():
        refined = b.registration_method == PAIRED_POINT_SURFACE
        stage = " (fiducial stage)" if refined else ""
        t.add_row(f"{bone}: registered to {b.reference}", METHOD_WORDS.get(b.registration_method, b.registration_method))
        t.add_row(f"{bone}: FRE{stage} (RMS)", _mm(b.fre_mm, "not registered"))
        for k, v in b.predicted_tre_mm.items():
            t.add_row(f"{bone}: predicted TRE at {_name(k)}{stage} (RMS)", _mm(v))
        if refined:
            _surface_rows(t, b.surface, f"{bone}: ")
        for k, v in b.verification_mm.items():
            t.add_row(f"{bone}: verification touch at {_name(k)}: distance from the planned point", _mm(v))
    for bone in missing:
        t.add_row(f"{bone}: registered", "[bold red]NO[/]")
    hip = summary.hip_centre
    if hip:
        frame = hip.get("frame", "")
        if hip.get("ok"):
            away = hip.get("from_ct_hip_centre_mm", math.nan)
            beside = f"; {away:.1f} mm from the CT hip centre" if isinstance(away, float) and math.isfinite(away) else ""
            t.add_row("kinematic hip centre", f"RMS {hip['rms_mm']:.2f} mm over {hip['range_deg']:.0f} deg, {hip['n_used']} poses, "
                                              f"{frame}{beside}")
        else:
            t.add_row("kinematic hip centre", f"[bold red]not found[/] ({hip.get('reason', '')})")


def _registration_rows(t: Table, summary: NavigationSummary) -> None:
    """One array: the registration's rows (as they always were)."""
    if summary.registered:
        t.add_row("registered", f"yes ({METHOD_WORDS.get(summary.registration_method, summary.registration_method)})")
    elif summary.refusal is not None:
        t.add_row("registered", f"[bold red]REFUSED[/] ({summary.refusal})")
    else:
        t.add_row("registered", "[bold red]NO[/] (not all fiducials digitised)")
    refined = summary.registration_method == PAIRED_POINT_SURFACE
    stage = " (fiducial stage)" if refined else ""
    t.add_row(f"FRE, fiducial registration error{stage} (RMS)", _mm(summary.fre_mm, "not registered"))
    for k, v in summary.predicted_tre_mm.items():
        t.add_row(f"predicted TRE at {_name(k)}{stage} (RMS)", _mm(v))
    if refined:
        _surface_rows(t, summary.surface)
    for k, v in summary.verification_mm.items():
        t.add_row(f"verification touch at {_name(k)}: distance from the planned point", _mm(v))


def navigate_cli(case: str | Path, *, igtl: str = "127.0.0.1:18944", duration_s: float | None = None, off_screen: bool = False,
                 stream_port: int | None = None, surface_points: int = 0, tools: str | Path | None = None,
                 max_predicted_tre_mm: float | None = WorkflowConfig.max_predicted_tre_mm, stream_version: int = 1,
                 web_port: int | None = None, web_host: str = "127.0.0.1", hip_circle: int = 0,
                 kinematic_hip: bool = False) -> Table:
    """``orthonav navigate``: navigate ``case`` with poses from an OpenIGTLink server; returns a rich table.

    Workflow events are printed as they happen. ``max_predicted_tre_mm``
    (``--max-predicted-tre``): registration is refused when the TRE predicted at the plan's
    landmarks exceeds it (mm); None or <= 0 disables the check. ``web_port`` (``--web PORT``,
    0 = any free port): also serve the navigation screen to web browsers
    (:class:`~orthonav.navigation.web.NavigationWebView`) on ``web_host`` (``--web-host``,
    127.0.0.1 unless told otherwise); its address is printed once it listens, and it stops when
    navigation ends. ``hip_circle`` (``--hip-circle N``, a tool file with one array per bone):
    fit the kinematic hip centre once N femur-array poses are collected while the leg is circled
    (in the pelvis array's frame if the tool file has an array with bone ``pelvis``, else in the
    tracker's: keep the pelvis still); ``kinematic_hip`` (``--kinematic-hip``, needs
    ``--hip-circle``): use it instead of the CT hip centre for the live alignment (image-free).

    Raises
    ------
    InputError
        Bad ``igtl`` address, missing plan / fiducials, bad tool file, ``--hip-circle`` without
        femur and tibia arrays (or below 10), ``--kinematic-hip`` without ``--hip-circle``.
    RegistrationError
        Registration did not complete (so the CLI exits non-zero); the table is printed first.
    """
    from orthonav.tracking.igtl_client import IGTLClientSource
    from orthonav.tracking.tools import default_toolset, load_toolset

    host, port = parse_host_port(igtl)
    if not off_screen:
        require_display("orthonav navigate")
    if max_predicted_tre_mm is not None and not math.isfinite(max_predicted_tre_mm):
        raise InputError(None, f"max_predicted_tre_mm must be a number of mm, got {max_predicted_tre_mm}")
    tre_limit = max_predicted_tre_mm if max_predicted_tre_mm is not None and max_predicted_tre_mm > 0 else None
    toolset = load_toolset(tools) if tools is not None else default_toolset()
    hip_config = hip_circle_config(toolset, hip_circle, kinematic_hip, tools)
    source = IGTLClientSource(host, port, tools=toolset)
    if stream_version not in (1, 2):
        raise InputError(None, f"--stream-version must be 1 or 2, got {stream_version}")
    web = None
    if web_port is not None:
        from orthonav.navigation.navigate import tracker_problem
        from orthonav.navigation.web import NavigationWebView

        web = NavigationWebView(case, toolset=toolset, host=web_host, port=web_port, tracker_problem=lambda: tracker_problem(source)).start()
        print(f"web view: {web.url}  (the navigation screen in a browser; it ends with navigation)", flush=True)
    try:
        summary = navigate_case(case, source, duration_s=duration_s, off_screen=off_screen, toolset=toolset, stream_port=stream_port,
                                stream_header_version=stream_version,
                                config=WorkflowConfig(surface_points=surface_points, max_predicted_tre_mm=tre_limit, **hip_config),
                                progress=lambda text: print(text, flush=True), on_state=web.observe if web is not None else None)
    finally:
        if web is not None:
            web.stop()
    table = summary_table(summary)
    if not summary.registered:
        make_console().print(table)
        why = f"registration was refused: {summary.refusal}" if summary.refusal else "not every plan fiducial was digitised"
        if summary.bones:
            raise RegistrationError(f"navigation ended with {', '.join(summary.bones)} registered but not "
                                    f"{', '.join(summary.bones_not_registered)}: {why} (session recorded in {summary.session_dir})")
        raise RegistrationError(f"navigation ended without a registration: {why} (session recorded in {summary.session_dir})")
    return table


def hip_circle_config(toolset: ToolSet, hip_circle: int, kinematic_hip: bool, tools: str | Path | None = None) -> dict[str, object]:
    """The :class:`~orthonav.navigation.WorkflowConfig` settings of ``--hip-circle N`` and
    ``--kinematic-hip`` (``hip_centre_poses``, ``use_kinematic_hip_centre``), checked.

    Raises
    ------
    InputError
        ``--kinematic-hip`` without ``--hip-circle``; N < 10 (the fit needs 10 poses); a tool
        set without a femur and a tibia array (``tools`` names the file).
    """
    from orthonav.navigation.inputs import knee_bones
    from orthonav.tracking.calibration import MIN_POSES

    if kinematic_hip and hip_circle <= 0:
        raise InputError(None, "--kinematic-hip needs --hip-circle N: the kinematic hip centre is fitted from the hip circle")
    if hip_circle <= 0:
        return {}
    if hip_circle < MIN_POSES:
        raise InputError(None, f"--hip-circle needs at least {MIN_POSES} poses, got {hip_circle}")
    if knee_bones(toolset.bone_references()) is None:
        raise InputError(tools, "--hip-circle needs a tool set with one array per bone, on the femur and the tibia "
                                "(e.g. FemurRef with bone 'femur', TibiaRef with bone 'tibia'); this one has "
                                f"{toolset.bone_references() or 'one patient reference'}")
    return {"hip_centre_poses": int(hip_circle), "use_kinematic_hip_centre": bool(kinematic_hip)}


def plan_web_cli(case: str | Path, *, port: int, host: str = "127.0.0.1") -> str:
    """``orthonav plan CASE --web PORT``: serve the case's plan read-only to web browsers
    (:class:`~orthonav.navigation.web.PlanWebView`) until Ctrl-C; prints the address once it
    listens and returns it when stopped."""
    from orthonav.navigation.web import PlanWebView

    view = PlanWebView(case, host=host, port=port).start()
    print(f"plan web view (read-only): {view.url}  (Ctrl-C stops it)", flush=True)
    try:
        while not view.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        view.stop()
    return view.url


def replay_cli(session: str | Path, *, off_screen: bool = True, allow_changed_plan: bool = False) -> Table:
    """``orthonav replay``: replay a session; returns a rich table; RegistrationError if numbers differ.

    ``allow_changed_plan`` (``--allow-changed-plan``): replay even if ``plan.json`` changed since
    recording (the table then starts with a WARNING row); without it that is an InputError.
    """
    if not off_screen:
        require_display("orthonav replay")
    summary = replay_session(session, off_screen=off_screen, allow_changed_plan=allow_changed_plan)
    if summary.replay_mismatches != 0 and not summary.plan_changed:
        raise RegistrationError(f"replay differs from the recorded guidance in {summary.replay_mismatches} states")
    return summary_table(summary, title="Replay")


__all__ = ["hip_circle_config", "navigate_cli", "plan_web_cli", "replay_cli", "summary_table"]
