"""The one tracking interface: tool poses with timestamps, per-source health, the source ABC.

Every tracker source (OpenIGTLink client/server, ArUco camera, NDI, recording, simulator)
implements :class:`TrackerSource`. The live loop only ever sees :class:`TrackingFrame`.

Times are seconds everywhere: ``device_time_s`` on the source's clock, ``host_time_s`` on
this host's ``time.monotonic()`` clock at receipt.
"""

from __future__ import annotations

import abc
import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType

import numpy as np
from numpy.typing import NDArray


class ToolStatus(str, enum.Enum):
    """State of one tool in one frame."""

    LIVE = "live"  #: a fresh pose, within the tool's timeout
    NOT_VISIBLE = "not_visible"  #: the tracker reported the tool as not visible / invalid
    TIMED_OUT = "timed_out"  #: no update for longer than the tool's timeout: not shown as live
    NEVER_SEEN = "never_seen"  #: no message for this tool yet


@dataclass(frozen=True)
class ToolPose:
    """One tool in one frame.

    Attributes
    ----------
    status
        :class:`ToolStatus`; only ``LIVE`` carries a pose.
    tracker_from_tool
        (4, 4) float64 pose in the tracker's frame (LPS-based, mm), or None unless LIVE.
    quality
        Source-specific error figure (NDI RMS mm, ArUco reprojection px, ...); NaN if unknown.
    device_time_s
        Timestamp on the source's clock (s) of the newest message for this tool.
    host_time_s
        ``time.monotonic()`` (s) when that message was received on this host.
    """

    status: ToolStatus
    tracker_from_tool: NDArray[np.float64] | None = None
    quality: float = math.nan
    device_time_s: float = math.nan
    host_time_s: float = math.nan

    def __post_init__(self) -> None:
        if (self.status is ToolStatus.LIVE) != (self.tracker_from_tool is not None):
            raise ValueError("a pose is present exactly when the tool is LIVE")

    @property
    def visible(self) -> bool:
        return self.status is ToolStatus.LIVE


@dataclass(frozen=True)
class TrackingFrame:
    """The newest state of every tool of a source at ``host_time_s`` (monotonic s)."""

    tools: Mapping[str, ToolPose]
    host_time_s: float
    sequence: int = 0

    def pose(self, name: str) -> NDArray[np.float64] | None:
        """``tracker_from_tool`` of a LIVE tool, else None (unknown names are None too)."""
        t = self.tools.get(name)
        return t.tracker_from_tool if t is not None else None

    def status(self, name: str) -> ToolStatus:
        t = self.tools.get(name)
        return t.status if t is not None else ToolStatus.NEVER_SEEN


@dataclass
class SourceHealth:
    """Running figures of one source (mutable, owned by the source)."""

    connected: bool = False
    messages: int = 0  #: messages accepted
    bad_messages: int = 0  #: malformed / bad CRC / unknown, counted and skipped
    dropped: int = 0  #: messages dropped because a bounded queue was full
    dropouts: int = 0  #: transitions of any tool from LIVE to not visible / timed out
    reconnects: int = 0
    rate_hz: float = 0.0  #: recent message rate
    lag_s: float = math.nan  #: recent host_time - device_time (only meaningful with a shared clock)
    #: The newest problem since the source last (re)connected: a successful connection clears it,
    #: so a resolved "cannot connect" is not shown as current.
    last_error: str | None = None
    last_error_time_s: float = math.nan  #: host ``time.monotonic()`` (s) of ``last_error``
    extra: dict[str, float] = field(default_factory=dict)


class TrackerSource(abc.ABC):
    """A tracker. Start it, poll :meth:`latest` (or wait on :meth:`wait_for_update`), stop it.

    Use as a context manager: ``with source: frame = source.latest()``.
    """

    @abc.abstractmethod
    def start(self) -> None:
        """Open the device / socket / file and begin receiving. Raises TrackingError."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop receiving and release resources. Safe to call twice."""

    @abc.abstractmethod
    def latest(self) -> TrackingFrame:
        """The newest state of every known tool, with timeouts applied at the time of the call."""

    @abc.abstractmethod
    def wait_for_update(self, timeout_s: float) -> bool:
        """Block until a message newer than the last :meth:`latest` call arrives; False on timeout."""

    @abc.abstractmethod
    def health(self) -> SourceHealth:
        """A snapshot of the source's health figures."""

    def ended(self) -> bool:
        """True once the source has nothing more to give (a recording replayed to its end).
        Live devices never end: they disconnect and reconnect, which :meth:`health` reports."""
        return False

    def __enter__(self) -> "TrackerSource":
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
