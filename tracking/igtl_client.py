"""OpenIGTLink client source: connect to a tracker / PLUS server and keep the newest poses.

One receiver thread per source blocks in ``recv`` (no polling, idle CPU while nothing
arrives), feeds a :class:`~orthonav.tracking.igtl_protocol.StreamParser` and writes poses
into a :class:`~orthonav.tracking.store.PoseStore`. On disconnect every tool is marked not
visible at once and the thread reconnects with a capped exponential backoff (first retry
after 50 ms, never more than 0.5 s apart, so a returning peer is picked up within 1 s); the
wait between attempts is an Event wait, so :meth:`stop` interrupts it.

Mapping of messages (``<Tool>ToTracker`` device -> tool ``<Tool>``):

* TRANSFORM / POSITION: ``ras_tracker_from_tool`` on the wire (the tracker frame is
  RAS-based, the tool frame is the tool's own native frame), converted to LPS here with
  :func:`~orthonav.core.transforms.lps_from_ras_transform`, which flips only the output
  (tracker) frame: the tool frame, and so tool tips in ``ToolDefinition``, stay native, exactly
  as NDI / ArUco sources deliver them. This is the only receive-side conversion. A 12-byte
  (position-only) POSITION carries no orientation and counts as a bad message. v2 metadata ``TransformStatus`` other than ``OK`` (PLUS), a non-finite matrix
  or a non-rigid matrix -> NOT_VISIBLE (the last two also count as bad messages).
* TDATA: one element per tool; a tool seen before but missing from a TDATA message, or an
  element with a non-finite / all-zero matrix -> NOT_VISIBLE; a 3D-type (position-only)
  element -> NOT_VISIBLE and a bad message.
* STATUS on a tool's device with a code other than OK -> NOT_VISIBLE.
* STRING, POLYDATA, other STATUS and anything else -> a bounded queue (:meth:`messages`);
  when full the oldest is dropped and counted in ``health().dropped``.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from orthonav.core.errors import TrackingError
from orthonav.core.transforms import lps_from_ras_transform

from . import igtl_protocol as P
from .frame import SourceHealth
from .store import PoseStore, StoreBackedSource
from .tools import ToolSet

log = logging.getLogger(__name__)

#: Largest message body a tracking receiver accepts by default (bytes). Poses are < 1 kB;
#: a POLYDATA receiver may pass a bigger ``max_body`` explicitly.
TRACKING_MAX_BODY = 1 << 20
#: Disconnect and reconnect when this many bytes in a row could not be parsed.
MAX_GARBAGE_BYTES = 1 << 20
RIGID_TOL = 1e-3  # float32 on the wire: orthonormal to ~1e-7; anything worse is not a rigid pose


_EYE3 = np.eye(3)


def _rigid_or_none(m: NDArray[np.float64]) -> tuple[NDArray[np.float64] | None, str | None]:
    """(pose, None) if ``m`` is a finite proper rigid transform, else (None, problem)."""
    if not np.isfinite(m).all():
        return None, "non-finite matrix (not visible)"
    r = m[:3, :3]
    if np.abs(r @ r.T - _EYE3).max() > RIGID_TOL or np.linalg.det(r) < 0:
        return None, "matrix is not a proper rigid transform"
    return m, None


_POSE_TYPES = frozenset({"TRANSFORM", "POSITION"})


def coalesce(msgs: list[P.Message]) -> tuple[list[P.Message], int]:
    """Keep only the newest pose message per device within one received batch.

    A TRANSFORM / POSITION (or TDATA) superseded by a later one for the same device in the
    same batch changes nothing a consumer can see (the store keeps the newest pose per tool),
    so it is skipped; the order of what is kept is unchanged. STATUS messages are always kept
    (an OK status must not hide the pose before it; a not-OK one applies in order). This is what keeps the
    receiver ahead of a sender that outpaces Python's per-message cost. Returns the kept
    messages and how many were skipped.
    """
    if len(msgs) < 2:
        return msgs, 0
    seen: set[tuple[bool, str]] = set()
    keep: list[P.Message] = []
    for m in reversed(msgs):
        t = m.header.type
        if t in _POSE_TYPES or t == "TDATA":
            key = (t == "TDATA", m.header.device)
            if key in seen:
                continue
            seen.add(key)
        keep.append(m)
    keep.reverse()
    return keep, len(msgs) - len(keep)


class MessageRouter:
    """Applies decoded messages to a :class:`PoseStore` (shared by client and server sources)."""

    def __init__(self, store: PoseStore, *, queue_size: int = 256, tool_names: set[str] | None = None) -> None:
        self.store = store
        self.other: deque[P.Message] = deque()
        self.queue_size = queue_size
        self.known_tools: set[str] = set(tool_names or ())
        self._lock = threading.Lock()

    @property
    def coalesced(self) -> int:
        """Pose messages superseded within one received batch (not applied)."""
        return int(self.store.health_snapshot().extra.get("coalesced", 0.0))

    def _put(self, tool: str, pose: NDArray[np.float64] | None, header: P.Header, host_time_s: float) -> None:
        dev_t = header.timestamp_s if header.timestamp_s > 0 else math.nan
        with self._lock:
            self.known_tools.add(tool)
        self.store.put(tool, pose, device_time_s=dev_t, host_time_s=host_time_s)
        if dev_t > 1e9:  # epoch-based sender clock: lag against this host's wall clock
            self.store.set_lag(time.time() - dev_t)

    def _pose(self, tool: str, wire: NDArray[np.float64], header: P.Header, host_time_s: float, ok: bool = True) -> None:
        pose, problem = _rigid_or_none(wire)
        if problem is not None and "non-finite" not in problem:
            self.store.mark_error(f"{header.type} '{header.device}': {problem}", bad_message=True)
        if pose is not None and ok:
            pose = lps_from_ras_transform(pose)
        else:
            pose = None
        self._put(tool, pose, header, host_time_s)

    def apply(self, msg: P.Message, host_time_s: float) -> None:
        """Route one message; malformed content is counted as a bad message, never raised."""
        h = msg.header
        try:
            if h.type == "TRANSFORM":
                ok = msg.metadata.get("TransformStatus", "OK").upper() == "OK"
                self._pose(P.tool_from_device(h.device), P.unpack_transform(msg.content), h, host_time_s, ok)
            elif h.type == "POSITION":
                self._pose(P.tool_from_device(h.device), P.unpack_position(msg.content), h, host_time_s)
            elif h.type == "TDATA":
                seen = set()
                for name, kind, m in P.unpack_tdata_elements(msg.content):
                    tool = P.tool_from_device(name)
                    seen.add(tool)
                    if kind == P.TDATA_TYPE_3D:  # position only: no orientation, not a pose
                        self.store.mark_error(f"TDATA '{name}': 3D (position-only) element is not a pose", bad_message=True)
                        self._put(tool, None, h, host_time_s)
                        continue
                    valid = np.all(np.isfinite(m)) and np.any(m[:3, :3] != 0)
                    self._pose(tool, m if valid else np.full((4, 4), np.nan), h, host_time_s)
                with self._lock:
                    missing = sorted(self.known_tools - seen)
                for tool in missing:
                    self._put(tool, None, h, host_time_s)
            elif h.type == "STATUS" and (h.device.endswith("ToTracker") or h.device in self.known_tools):
                status = P.unpack_status(msg.content)
                if not status.ok:
                    self._put(P.tool_from_device(h.device), None, h, host_time_s)
            else:
                self._queue(msg)
        except P.IGTLProtocolError as e:
            self.store.mark_error(f"{h.type} '{h.device}': {e}", bad_message=True)

    def _queue(self, msg: P.Message) -> None:
        with self._lock:
            if len(self.other) >= self.queue_size:
                self.other.popleft()
                self.store.count(dropped=1)
            self.other.append(msg)

    def drain(self) -> list[P.Message]:
        with self._lock:
            out = list(self.other)
            self.other.clear()
        return out

    def all_not_visible(self, host_time_s: float) -> None:
        """Mark every tool seen so far as not visible (connection lost)."""
        with self._lock:
            tools = sorted(self.known_tools)
        for tool in tools:
            self.store.put(tool, None, device_time_s=math.nan, host_time_s=host_time_s)


def receive_stream(
    sock: socket.socket,
    parser: P.StreamParser,
    router: MessageRouter,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Blocking receive loop on a connected socket until the peer closes or an error occurs.

    Returns the reason the loop ended (for logs). Counts parser problems as bad messages.
    An unexpected exception while decoding or applying a message (a decoder bug) ends this
    connection with that reason, counted as a bad message: the caller then reconnects and
    marks the tools not visible; it never kills the receiving thread silently.
    """
    seen = 0
    good_at_skip = 0
    while True:
        try:
            data = sock.recv(1 << 16)
        except OSError as e:
            return f"receive failed: {e}"
        if not data:
            return "peer closed the connection"
        now = clock()
        try:
            msgs = parser.feed(data)
        except Exception as e:  # a decoder bug: drop this connection loudly, not the thread
            log.exception("OpenIGTLink decoder failed")
            router.store.mark_error(f"OpenIGTLink decoder failed: {e!r}", bad_message=True)
            return f"decoder failed: {e!r}"
        st = parser.stats
        bad = st.bad_crc + st.bad_header + st.oversized
        if bad > seen:
            router.store.count(bad_messages=bad - seen)
            router.store.mark_error(f"OpenIGTLink stream: {parser.last_error}")
            seen = bad
        kept, skipped = coalesce(msgs)
        if skipped:
            router.store.count_extra("coalesced", skipped)
        with router.store.batch():  # one wake-up per received batch, not per message
            for m in kept:
                try:
                    router.apply(m, now)
                except Exception as e:  # a bug in routing: end this connection loudly
                    log.exception("OpenIGTLink %s '%s' could not be applied", m.header.type, m.header.device)
                    router.store.mark_error(f"{m.header.type} '{m.header.device}': could not be applied: {e!r}", bad_message=True)
                    return f"message could not be applied: {e!r}"
        if msgs:
            good_at_skip = st.skipped_bytes
        elif st.skipped_bytes - good_at_skip > MAX_GARBAGE_BYTES:
            return f"{st.skipped_bytes - good_at_skip} bytes of garbage without a valid message"


class IGTLClientSource(StoreBackedSource):
    """Tracker source reading an OpenIGTLink server (PLUS, a tracker, Slicer, the simulator).

    Parameters
    ----------
    host, port
        Server address.
    tools
        Tool definitions: per-tool timeouts (tools not listed use the store default).
    reconnect
        Keep reconnecting (backoff 50 ms doubling to ``max_backoff_s``). With False, a refused
        first connection makes :meth:`start` raise :class:`TrackingError`.
    max_backoff_s
        Longest wait between connection attempts (s).
    max_body
        Largest message body accepted (bytes; 1 MiB by default, ample for poses); a receiver
        of big POLYDATA meshes passes more explicitly. Bigger messages count as oversized.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tools: ToolSet | None = None,
        reconnect: bool = True,
        max_backoff_s: float = 0.5,
        connect_timeout_s: float = 2.0,
        max_body: int = TRACKING_MAX_BODY,
        queue_size: int = 256,
    ) -> None:
        self.host, self.port = host, int(port)
        self.tools = tools
        self.reconnect = reconnect
        self.max_backoff_s = max_backoff_s
        self.connect_timeout_s = connect_timeout_s
        self.max_body = max_body
        super().__init__(PoseStore(tools.timeouts_s() if tools else None))
        self.router = MessageRouter(self.store, queue_size=queue_size, tool_names=set(tools.by_name()) if tools else None)
        self._connected = threading.Condition()
        self._sock: socket.socket | None = None
        self._sock_lock = threading.Lock()  # guards self._sock only, never held during I/O
        self._send_lock = threading.Lock()  # serialises sendall between callers of send()
        self._first: socket.socket | None = None  # the connection start() made (reconnect=False)
        self._parser_stats = P.ParserStats()
        self._connections = 0
        self._thread_name = f"igtl-client-{self.host}:{self.port}"

    # --- TrackerSource (lifecycle in StoreBackedSource) --------------------------------

    _connected_while_running = False  # the receiver thread reports each connection

    def _open(self) -> None:
        self._first = None if self.reconnect else self._connect()  # raises TrackingError when refused

    def _interrupt(self) -> None:
        with self._sock_lock:
            if self._sock is not None:
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def health(self) -> SourceHealth:
        h = self.store.health_snapshot()
        st = self._parser_stats
        h.extra.update(
            bad_crc=float(st.bad_crc),
            bad_header=float(st.bad_header),
            oversized=float(st.oversized),
            skipped_bytes=float(st.skipped_bytes),
        )
        h.extra.setdefault("coalesced", 0.0)
        return h

    # --- extras ------------------------------------------------------------------------

    def wait_connected(self, timeout_s: float) -> bool:
        """Block until connected (True) or ``timeout_s`` passes (False)."""
        with self._connected:
            return self._connected.wait_for(lambda: self.store.health.connected, timeout=timeout_s)

    def messages(self) -> list[P.Message]:
        """Take the queued non-pose messages (STRING, POLYDATA, STATUS of non-tools, ...)."""
        return self.router.drain()

    def send(self, data: bytes) -> None:
        """Send raw message bytes to the server (e.g. ``P.transform_message(...)``).

        Blocks while the peer does not read; :meth:`stop` (or a lost connection) makes it
        raise :class:`TrackingError` instead of hanging.
        """
        with self._sock_lock:
            sock = self._sock
        if sock is None:
            raise TrackingError(f"OpenIGTLink {self.host}:{self.port}: not connected")
        with self._send_lock:
            try:
                sock.sendall(data)
            except OSError as e:
                raise TrackingError(f"OpenIGTLink {self.host}:{self.port}: send failed ({e})") from e

    # --- internals ---------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout_s)
        except OSError as e:
            raise TrackingError(f"OpenIGTLink {self.host}:{self.port}: cannot connect ({e})") from e
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _set_connected(self, value: bool) -> None:
        with self._connected:
            self.store.set_connected(value)
            self._connected.notify_all()

    def _run(self) -> None:
        first, self._first = self._first, None
        try:
            self._run_connections(first)
        except BaseException as e:  # never die silently: say why, then fall through to finally
            log.exception("OpenIGTLink %s:%d receiver failed", self.host, self.port)
            self.store.mark_error(f"OpenIGTLink {self.host}:{self.port}: receiver failed: {e!r}")
            raise
        finally:
            self._disconnect(first)  # first: stopped before the loop adopted it

    def _disconnect(self, *others: socket.socket | None) -> None:
        """Close the current socket and ``others`` (closing twice is harmless), then mark the
        source disconnected and every tool seen so far not visible."""
        with self._sock_lock:
            sock, self._sock = self._sock, None
        for s in (sock, *others):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        self._set_connected(False)
        self.router.all_not_visible(time.monotonic())

    def _run_connections(self, first: socket.socket | None) -> None:
        backoff = 0.05
        sock = first
        while not self._stop.is_set():
            if sock is None:
                try:
                    sock = self._connect()
                except TrackingError as e:
                    self.store.mark_error(str(e))
                    if not self.reconnect:
                        return
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2.0, self.max_backoff_s)
                    continue
            backoff = 0.05
            with self._sock_lock:
                self._sock = sock
            if self._stop.is_set():
                break
            self._connections += 1
            if self._connections > 1:
                self.store.count(reconnects=1)
            self._set_connected(True)
            parser = P.StreamParser(max_body=self.max_body)
            self._parser_stats = parser.stats
            try:
                reason = receive_stream(sock, parser, self.router)
            finally:
                self._disconnect(sock)
            sock = None
            if not self._stop.is_set():
                self.store.mark_error(f"OpenIGTLink {self.host}:{self.port}: {reason}")
                log.info("OpenIGTLink %s:%d: %s", self.host, self.port, reason)
            if not self.reconnect:
                break
