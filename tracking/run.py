"""Run any tracker source for a while, optionally recording it; build a source from options.

The API behind ``orthonav track`` and ``orthonav calibrate-tool``: :func:`open_source` builds
the source the options name, :func:`run_track` runs it (an ``on_update`` callback receives every
frame, e.g. to draw a live table) and :func:`calibrate_tool` pivot-calibrates a tool tip. No
function here prints: the command line (:mod:`orthonav.cli.track`) parses addresses and shows
the results.
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

from .calibration import PivotResult
from .frame import SourceHealth, ToolStatus, TrackerSource, TrackingFrame
from .recording import RecordingWriter
from .tools import ToolSet, load_toolset

OnUpdate = Callable[[TrackingFrame, SourceHealth], None]


def _check_port(port: object, *, allow_zero: bool) -> int:
    """``port`` as an int in 1..65535 (0..65535 with ``allow_zero``), else InputError."""
    lowest = 0 if allow_zero else 1
    if isinstance(port, bool) or not isinstance(port, int) or not lowest <= port < 65536:
        raise InputError(None, f"port {port!r} out of range {lowest}..65535")
    return port


def open_source(
    *,
    igtl: tuple[str, int] | None = None,
    listen: int | None = None,
    aruco: str | None = None,
    ndi: str | None = None,
    replay: str | Path | None = None,
    tools: ToolSet | str | Path | None = None,
    camera: str | Path | None = None,
    speed: float | None = 1.0,
    listen_allow: tuple[str, ...] | None = None,
) -> TrackerSource:
    """Build (not start) the source selected by exactly one option.

    Parameters
    ----------
    igtl
        ``(host, port)`` of an OpenIGTLink server to connect to (PLUS, a tracker, the
        simulator); the command line parses ``HOST:PORT`` into it
        (:func:`orthonav.cli.args.parse_host_port`).
    listen
        Port to listen on (0: any free port); trackers push OpenIGTLink to us (binds 127.0.0.1).
        One peer at a time: the first peer's host, or one of ``listen_allow``; others are refused.
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
    camera
        The camera calibration file of an ArUco source.
    speed
        Replay speed factor (None: as fast as the frames are read).

    Raises
    ------
    InputError
        Not exactly one source chosen, a port out of range, or a source missing its tool or
        camera file.
    """
    chosen = [k for k, v in dict(igtl=igtl, listen=listen, aruco=aruco, ndi=ndi, replay=replay).items() if v is not None]
    if len(chosen) != 1:
        raise InputError(None, f"choose exactly one source (--igtl, --listen, --aruco, --ndi, --replay); got {chosen or 'none'}")
    toolset = load_toolset(tools) if isinstance(tools, (str, Path)) else tools
    if igtl is not None:
        from .igtl_client import IGTLClientSource

        host, port = igtl
        return IGTLClientSource(host, _check_port(port, allow_zero=False), tools=toolset)
    if listen is not None:
        from .igtl_server import IGTLServerSource

        return IGTLServerSource(_check_port(listen, allow_zero=True), tools=toolset, allowed_hosts=listen_allow)
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
    """One tool over a :func:`run_track` run: frames taken, frames it was live in, live -> not
    live transitions (dropouts)."""

    frames: int = 0
    live_frames: int = 0
    dropouts: int = 0

    @property
    def visible_fraction(self) -> float:
        """Fraction of the frames in which the tool was live (NaN when no frame was taken)."""
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

    The source is stopped on return, and the run ends by itself when the source has ended
    (a replayed recording at its last frame). Ctrl-C ends the run cleanly (summary returned).
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
                if source.ended() and not source.wait_for_update(0.0):
                    break  # a recording replayed to its end: every frame has been taken
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


@dataclass(frozen=True)
class ToolCalibration:
    """What :func:`calibrate_tool` did.

    Attributes
    ----------
    tool
        The calibrated tool's name.
    result
        The pivot calibration (tip in the tool frame, RMS, inliers, spread; mm, deg).
    n_poses
        Poses collected (the RANSAC inliers are ``result.inliers.sum()`` of them).
    tools_path
        The tool file rewritten with the new tip, RMS and date.
    """

    tool: str
    result: PivotResult
    n_poses: int
    tools_path: Path


def calibrate_tool(
    tools: str | Path,
    tool: str,
    *,
    n_poses: int = 300,
    method: str = "ransac",
    timeout_s: float = 120.0,
    igtl: tuple[str, int] | None = None,
    listen: int | None = None,
    aruco: str | None = None,
    camera: str | Path | None = None,
    ndi: str | None = None,
    replay: str | Path | None = None,
) -> ToolCalibration:
    """Pivot-calibrate ``tool``'s tip from the source the options name (see :func:`open_source`).

    Collects ``n_poses`` fresh poses while the user pivots the tool in a divot (a replay is read
    as fast as possible), runs :func:`~orthonav.tracking.calibration.pivot_calibration` and
    rewrites the tool file (tip, RMS, date) atomically.

    Raises
    ------
    InputError
        ``tool`` is not in the tool file, or the poses are too few or too poor to calibrate.
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
    return ToolCalibration(tool, result, len(poses), Path(tools))


__all__ = ["OnUpdate", "open_source", "ToolSummary", "TrackSummary", "run_track", "ToolCalibration", "calibrate_tool"]
