"""The live table of ``orthonav track``: tool states, positions, age and quality, and the source's health."""

from __future__ import annotations

import math
import time

from rich.table import Table

from orthonav.tracking.frame import SourceHealth, ToolStatus, TrackingFrame

_STYLE = {ToolStatus.LIVE: "green", ToolStatus.NOT_VISIBLE: "yellow", ToolStatus.TIMED_OUT: "red", ToolStatus.NEVER_SEEN: "dim"}


def _num(x: float, fmt: str) -> str:
    """``x`` formatted, or '-' when the tracker gave no figure (never 'nan'); no '-0.00'."""
    if not math.isfinite(x):
        return "-"
    text = format(x, fmt)
    return text.lstrip("-") if float(text) == 0.0 else text


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
        t.add_row(name, f"[{_STYLE[pose.status]}]{pose.status.value.replace('_', ' ')}[/]", *(_num(v, ".2f") for v in xyz),
                  _num(age, ".0f"), _num(pose.quality, ".3f"))
    return t


__all__ = ["tool_table"]
