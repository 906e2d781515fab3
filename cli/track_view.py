"""``orthonav track``: a live table of tool states, rate and lag for any tracker source."""

from __future__ import annotations

import math
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from orthonav.tracking.frame import SourceHealth, ToolStatus, TrackingFrame

_STYLE = {ToolStatus.LIVE: "green", ToolStatus.NOT_VISIBLE: "yellow", ToolStatus.TIMED_OUT: "red", ToolStatus.NEVER_SEEN: "dim"}


def tool_table(frame: TrackingFrame, health: SourceHealth) -> Table:
    """One row per tool: state, tip-free position of the marker (tracker frame, LPS mm), age, quality."""
    now = time.monotonic()
    title = (
        f"{'connected' if health.connected else 'NOT CONNECTED'}  rate {health.rate_hz:.0f} Hz  "
        f"messages {health.messages}  bad {health.bad_messages}  dropped {health.dropped}  dropouts {health.dropouts}"
    )
    if health.last_error:  # cleared by the source on a successful (re)connection
        age = now - health.last_error_time_s
        when = f" ({age:.1f} s ago)" if math.isfinite(age) else ""
        title += f"\nlast error{when}: {health.last_error}"
    t = Table(title=title)
    for col in ("tool", "state", "x mm", "y mm", "z mm", "age ms", "quality"):
        t.add_column(col, justify="left" if col in ("tool", "state") else "right")
    for name, pose in sorted(frame.tools.items()):
        xyz = pose.tracker_from_tool[:3, 3] if pose.tracker_from_tool is not None else (math.nan,) * 3
        age = (now - pose.host_time_s) * 1e3 if math.isfinite(pose.host_time_s) else math.nan
        t.add_row(name, f"[{_STYLE[pose.status]}]{pose.status.value}[/]", *(f"{v:.2f}" for v in xyz), f"{age:.0f}", f"{pose.quality:.3f}")
    return t


def run_track_cli(*, igtl: str | None, listen: int | None, aruco: str | None, tools: Path | None, camera: Path | None,
                  ndi: str | None, replay: Path | None, duration_s: float | None, record: Path | None) -> None:
    """Open the chosen source, show the live table until ``duration_s`` or Ctrl-C, print a summary."""
    from orthonav.tracking.run import open_source, run_track

    source = open_source(igtl=igtl, listen=listen, aruco=aruco, ndi=ndi, replay=replay, tools=tools, camera=camera)
    console = Console()
    shown = [-math.inf]

    with Live(console=console, refresh_per_second=10, transient=False) as live:

        def show(frame: TrackingFrame, health: SourceHealth) -> None:
            # Every frame is recorded; the table is rebuilt at most 10 times a second.
            if frame.host_time_s - shown[0] >= 0.1:
                shown[0] = frame.host_time_s
                live.update(tool_table(frame, health))

        summary = run_track(source, duration_s=duration_s, record_dir=record, on_update=show)
    console.print(f"{summary.frames} frames in {summary.duration_s:.1f} s")
    for name, s in summary.tools.items():
        console.print(f"  {name}: visible {100 * s.visible_fraction:.1f}% of frames, {s.dropouts} dropouts")
    if summary.recording is not None:
        console.print(f"recording: {summary.recording}")
