"""``orthonav track`` and ``orthonav calibrate-tool``: parse the source options, call the
tracking API (:mod:`orthonav.tracking.run`), show the results.
"""

from __future__ import annotations

import math
from pathlib import Path

from rich.live import Live

from orthonav.cli.args import parse_host_port
from orthonav.cli.console import make_console
from orthonav.cli.track_view import tool_table
from orthonav.tracking.frame import SourceHealth, TrackingFrame
from orthonav.tracking.run import TrackSummary, calibrate_tool, open_source, run_track


def igtl_address(igtl: str | None) -> tuple[str, int] | None:
    """The ``--igtl HOST:PORT`` option as the tracking API takes it, ``(host, port)``; None
    when the option is not given (``--listen PORT`` is passed on as the integer it is).

    Raises
    ------
    InputError
        An address that is not HOST:PORT, or a port out of range.
    """
    return parse_host_port(igtl) if igtl is not None else None


def summary_lines(summary: TrackSummary) -> list[str]:
    """The end-of-run summary of ``orthonav track``: frames, per-tool visibility, the recording."""
    lines = [f"{summary.frames} frames in {summary.duration_s:.1f} s"]
    for name, s in summary.tools.items():
        lines.append(f"  {name}: visible {100 * s.visible_fraction:.1f}% of frames, {s.dropouts} dropouts")
    if summary.recording is not None:
        lines.append(f"recording: {summary.recording}")
    return lines


def run_track_cli(*, igtl: str | None, listen: int | None, aruco: str | None, tools: Path | None, camera: Path | None,
                  ndi: str | None, replay: Path | None, duration_s: float | None, record: Path | None,
                  listen_allow: str | None = None) -> None:
    """Open the chosen source, show the live table until ``duration_s``, the end of a replayed
    recording or Ctrl-C, print a summary. ``listen_allow``: comma-separated hosts a ``--listen``
    source accepts (default: the first peer's host only)."""
    allow = tuple(h.strip() for h in listen_allow.split(",") if h.strip()) if listen_allow else None
    source = open_source(igtl=igtl_address(igtl), listen=listen, aruco=aruco, ndi=ndi, replay=replay, tools=tools, camera=camera,
                         listen_allow=allow)
    console = make_console()
    shown = [-math.inf]

    with Live(console=console, refresh_per_second=10, transient=False) as live:

        def show(frame: TrackingFrame, health: SourceHealth) -> None:
            # Every frame is recorded; the table is rebuilt at most 10 times a second.
            if frame.host_time_s - shown[0] >= 0.1:
                shown[0] = frame.host_time_s
                live.update(tool_table(frame, health))

        summary = run_track(source, duration_s=duration_s, record_dir=record, on_update=show)
    for line in summary_lines(summary):
        console.print(line)


def calibrate_tool_cli(
    tools: str | Path,
    tool: str,
    *,
    n_poses: int = 300,
    method: str = "ransac",
    timeout_s: float = 120.0,
    igtl: str | None = None,
    listen: int | None = None,
    aruco: str | None = None,
    camera: str | Path | None = None,
    ndi: str | None = None,
    replay: str | Path | None = None,
) -> str:
    """``orthonav calibrate-tool TOOLS.json TOOL --igtl ...``: pivot-calibrate ``tool``'s tip
    (:func:`orthonav.tracking.run.calibrate_tool`) and return the summary line.

    Raises
    ------
    InputError
        A bad address, a tool not in the tool file, or poses too few or too poor to calibrate.
    """
    cal = calibrate_tool(tools, tool, n_poses=n_poses, method=method, timeout_s=timeout_s, igtl=igtl_address(igtl), listen=listen,
                         aruco=aruco, camera=camera, ndi=ndi, replay=replay)
    r = cal.result
    tip = r.tip_in_tool_mm
    return (
        f"{tool}: tip ({tip[0]:.2f}, {tip[1]:.2f}, {tip[2]:.2f}) mm in the tool frame, RMS {r.rms_mm:.3f} mm "
        f"over {int(r.inliers.sum())} of {cal.n_poses} poses ({r.method}"
        + (f", inlier threshold {r.threshold_mm:.2f} mm" if math.isfinite(r.threshold_mm) else "")
        + f", spread {r.spread_deg:.1f} deg); wrote {tools}"
    )


__all__ = ["igtl_address", "summary_lines", "run_track_cli", "calibrate_tool_cli"]
