"""Run any tracker source for a while, optionally recording it; build sources from CLI options.

``orthonav track`` is a thin wrapper: it calls :func:`open_source` with the options it parsed
and :func:`run_track` with an ``on_update`` callback that draws the live table.
"""

from __future__ import annotations

import datetime as _dt
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from orthonav.core.errors import InputError

from .frame import SourceHealth, ToolStatus, TrackerSource, TrackingFrame
from .recording import RecordingWriter
from .tools import ToolSet, load_toolset

OnUpdate = Callable[[TrackingFrame, SourceHealth], None]


def parse_host_port(spec: str, *, default_port: int = 18944, allow_zero: bool = False) -> tuple[str, int]:
    """``"HOST:PORT"``, ``"HOST"`` or ``":PORT"`` -> (host, port); port 0 (any) only if allowed."""
    host, _, port_s = spec.rpartition(":") if ":" in spec else (spec, "", "")
    host = host or "127.0.0.1"
    try:
        port = int(port_s) if port_s else default_port
    except ValueError as e:
        raise InputError(None, f"'{spec}' is not HOST:PORT (port must be a number)") from e
    if not (0 if allow_zero else 1) <= port < 65536:
        raise InputError(None, f"port {port} out of range 1..65535")
    return host, port


def open_source(
    *,
    igtl: str | None = None,
    listen: int | None = None,
    aruco: str | None = None,
    ndi: str | None = None,
    replay: str | Path | None = None,
    tools: ToolSet | str | Path | None = None,
    camera: str | Path | None = None,
    speed: float | None = 1.0,
) -> TrackerSource:
    """Build (not start) the source selected by exactly one option.

    Parameters
    ----------
    igtl
        ``HOST:PORT`` of an OpenIGTLink server to connect to (PLUS, a tracker, the simulator).
    listen
        Port to listen on; trackers push OpenIGTLink to us (binds 127.0.0.1).
    aruco
        Camera index (``"0"``), a video file or a folder of frames; needs ``tools`` with ArUco
        markers and ``camera`` (a calibration file from ``orthonav calibrate-camera``).
    ndi
        Serial port (``/dev/ttyUSB0``, ``COM3``) or ``HOST[:PORT]`` of an NDI Vega; needs
        ``tools`` with ``rom_file`` for passive tools.
    replay
        A recording (``.jsonl``) or PLUS sequence (``.mha``); ``speed`` None = as fast as read.
    tools
        A ToolSet or the path of a tool file (timeouts, markers, ROM files).
    """
    chosen = [k for k, v in dict(igtl=igtl, listen=listen, aruco=aruco, ndi=ndi, replay=replay).items() if v is not None]
    if len(chosen) != 1:
        raise InputError(None, f"choose exactly one source (--igtl, --listen, --aruco, --ndi, --replay); got {chosen or 'none'}")
    toolset = load_toolset(tools) if isinstance(tools, (str, Path)) else tools
    if igtl is not None:
        from .igtl_client import IGTLClientSource

        host, port = parse_host_port(igtl)
        return IGTLClientSource(host, port, tools=toolset)
    if listen is not None:
        from .igtl_server import IGTLServerSource

        _host, port = parse_host_port(f":{listen}", allow_zero=True)
        return IGTLServerSource(port, tools=toolset)
    if replay is not None:
        from .recording import ReplaySource

        return ReplaySource(replay, speed=speed, tools=toolset)
    if aruco is not None:
        from .aruco import ArucoSource, load_camera_calibration

        if toolset is None:
            raise InputError(None, "--aruco needs --tools: a tool file with ArUco marker corners")
        if camera is None:
            raise InputError(None, "--aruco needs --camera: a camera calibration file (orthonav calibrate-camera)")
        return ArucoSource(aruco, toolset, load_camera_calibration(camera))
    from .ndi import NDISource

    if toolset is None:
        raise InputError(None, "--ndi needs --tools: a tool file (ROM files for passive tools)")
    return NDISource(str(ndi), toolset)


@dataclass
class ToolSummary:
    frames: int = 0
    live_frames: int = 0
    dropouts: int = 0

    @property
    def visible_fraction(self) -> float:
        return self.live_frames / self.frames if self.frames else math.nan


@dataclass
class TrackSummary:
    """What :func:`run_track` saw."""

    frames: int
    duration_s: float
    tools: dict[str, ToolSummary] = field(default_factory=dict)
    recording: Path | None = None
    health: SourceHealth | None = None


def run_track(
    source: TrackerSource,
    *,
    duration_s: float | None,
    record_dir: str | Path | None = None,
    on_update: OnUpdate | None = None,
    stop: threading.Event | None = None,
    max_frame_rate_hz: float | None = None,
) -> TrackSummary:
    """Start ``source``, take a frame whenever it updates, until ``duration_s`` or ``stop``.

    Parameters
    ----------
    duration_s
        Seconds to run; None = until ``stop`` is set or KeyboardInterrupt.
    record_dir
        If given, every frame taken is appended to ``record_dir/tracking-<UTC time>.jsonl``
        (closed and kept also when interrupted).
    on_update
        Called with each frame and the source's health (the CLI's live table).
    max_frame_rate_hz
        Take at most this many frames per second (None: every update).

    The source is stopped on return. Ctrl-C ends the run cleanly (summary returned).
    """
    stop = stop or threading.Event()
    writer = None
    path = None
    if record_dir is not None:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        path = Path(record_dir) / f"tracking-{stamp}.jsonl"
        writer = RecordingWriter(path, source=type(source).__name__)
    tools: dict[str, ToolSummary] = {}
    last_live: dict[str, bool] = {}
    frames = 0
    min_dt = 1.0 / max_frame_rate_hz if max_frame_rate_hz else 0.0
    t0 = time.monotonic()
    last_t = -math.inf
    try:
        with source:
            while not stop.is_set():
                elapsed = time.monotonic() - t0
                if duration_s is not None and elapsed >= duration_s:
                    break
                wait = 0.1 if duration_s is None else min(0.1, duration_s - elapsed)
                if not source.wait_for_update(max(wait, 0.0)):
                    if on_update is not None:  # keep the table alive (timeouts show) while idle
                        on_update(source.latest(), source.health())
                    continue
                if time.monotonic() - last_t < min_dt:
                    stop.wait(min_dt - (time.monotonic() - last_t))
                frame = source.latest()
                last_t = time.monotonic()
                frames += 1
                for name, pose in frame.tools.items():
                    s = tools.setdefault(name, ToolSummary())
                    s.frames += 1
                    live = pose.status is ToolStatus.LIVE
                    s.live_frames += live
                    if last_live.get(name) and not live:
                        s.dropouts += 1
                    last_live[name] = live
                if writer is not None:
                    writer.write(frame)
                if on_update is not None:
                    on_update(frame, source.health())
            health = source.health()
    except KeyboardInterrupt:
        health = None
    finally:
        if writer is not None:
            if writer.frames:
                writer.close()
            else:  # nothing recorded (e.g. the source failed to start): publish no empty file
                writer.abort()
                path = None
    return TrackSummary(frames, time.monotonic() - t0, tools, path, health)


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
    """``orthonav calibrate-tool TOOLS.json TOOL --igtl ...``: pivot-calibrate ``tool``'s tip.

    Collects ``n_poses`` fresh poses while the user pivots the tool in a divot, runs
    :func:`~orthonav.tracking.calibration.pivot_calibration` and rewrites the tool file
    (tip, RMS, date) atomically. Returns a summary line; raises InputError on poor data.
    """
    from .calibration import collect_poses, pivot_calibration, with_tip_calibration
    from .tools import save_toolset

    toolset = load_toolset(tools)
    if tool not in toolset.by_name():
        raise InputError(Path(tools), f"tool '{tool}' is not in the tool file (has {sorted(toolset.by_name())})")
    source = open_source(igtl=igtl, listen=listen, aruco=aruco, ndi=ndi, replay=replay, tools=toolset, camera=camera,
                         speed=None if replay is not None else 1.0)
    with source:
        poses = collect_poses(source, tool, n_poses, timeout_s=timeout_s)
    result = pivot_calibration(poses, method=method)
    save_toolset(tools, with_tip_calibration(toolset, tool, result))
    tip = result.tip_in_tool_mm
    return (
        f"{tool}: tip ({tip[0]:.2f}, {tip[1]:.2f}, {tip[2]:.2f}) mm in the tool frame, RMS {result.rms_mm:.3f} mm "
        f"over {int(result.inliers.sum())} of {len(poses)} poses ({result.method}, spread {result.spread_deg:.1f} deg); wrote {tools}"
    )
