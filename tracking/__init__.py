"""OrthoNav tracking: one tracker interface, its sources, recordings and tool calibration.

Every source is a :class:`TrackerSource` (``start``/``stop``, context manager, ``latest()`` ->
:class:`TrackingFrame`, ``wait_for_update``, ``health()``), so the caller never knows which
device it has::

    from orthonav.tracking import IGTLClientSource, load_toolset

    with IGTLClientSource("127.0.0.1", 18944, tools=load_toolset("tools.json")) as source:
        frame = source.latest()
        pose = frame.pose("Pointer")  # 4x4 tracker_from_tool (mm), or None when not live

Poses are ``tracker_from_tool`` (mm, LPS tracker frame); times are seconds (device clock and
this host's monotonic clock). The OpenIGTLink codec is the submodule
:mod:`orthonav.tracking.igtl_protocol` (no sockets). Nothing in this package prints or renders.
"""

from . import igtl_protocol
from .aruco import (
    ArucoSource,
    ArucoTracker,
    CameraCalibration,
    CharucoBoardSpec,
    ToolDetection,
    calibrate_camera,
    calibrate_camera_to_file,
    calibration_images,
    load_camera_calibration,
    render_plate,
    render_texture,
    save_camera_calibration,
)
from .calibration import (
    PivotResult,
    SpinResult,
    collect_poses,
    pivot_calibration,
    rotation_spread_deg,
    spin_calibration,
    with_tip_calibration,
)
from .frame import SourceHealth, ToolPose, ToolStatus, TrackerSource, TrackingFrame
from .igtl_client import IGTLClientSource
from .igtl_server import IGTLServer, IGTLServerSource
from .ndi import NDISource
from .recording import (
    RecordedFrame,
    RecordingWriter,
    ReplaySource,
    read_plus_sequence,
    read_recording,
    read_recording_frames,
)
from .run import OnUpdate, ToolCalibration, ToolSummary, TrackSummary, calibrate_tool, open_source, run_track
from .simulator import SimulatedSource, StreamStats, add_noise, stream_script
from .store import DEFAULT_TIMEOUT_S, PoseStore, StoreBackedSource
from .tools import ToolDefinition, ToolSet, default_toolset, knee_two_array_toolset, load_toolset, save_toolset

__all__ = [
    # the one interface and what it returns
    "TrackerSource",
    "TrackingFrame",
    "ToolPose",
    "ToolStatus",
    "SourceHealth",
    "PoseStore",
    "StoreBackedSource",
    "DEFAULT_TIMEOUT_S",
    # sources
    "IGTLClientSource",
    "IGTLServerSource",
    "IGTLServer",
    "ArucoSource",
    "NDISource",
    "ReplaySource",
    "SimulatedSource",
    "stream_script",
    "StreamStats",
    "add_noise",
    "open_source",
    # tools and calibration
    "ToolDefinition",
    "ToolSet",
    "default_toolset",
    "knee_two_array_toolset",
    "load_toolset",
    "save_toolset",
    "PivotResult",
    "SpinResult",
    "pivot_calibration",
    "spin_calibration",
    "rotation_spread_deg",
    "with_tip_calibration",
    "collect_poses",
    "ToolCalibration",
    "calibrate_tool",
    # ArUco camera tracking
    "ArucoTracker",
    "ToolDetection",
    "CameraCalibration",
    "CharucoBoardSpec",
    "calibrate_camera",
    "calibrate_camera_to_file",
    "calibration_images",
    "load_camera_calibration",
    "save_camera_calibration",
    "render_plate",
    "render_texture",
    # recordings and runs
    "RecordingWriter",
    "RecordedFrame",
    "read_recording",
    "read_recording_frames",
    "read_plus_sequence",
    "OnUpdate",
    "ToolSummary",
    "TrackSummary",
    "run_track",
    # the OpenIGTLink codec (submodule)
    "igtl_protocol",
]
